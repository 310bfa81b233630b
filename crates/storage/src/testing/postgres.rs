//! A real, throwaway PostgreSQL server for tests: no Docker, no mock.
//!
//! The first caller in a test process starts one server (initdb into a temporary folder, a free
//! port on 127.0.0.1); every call to [`postgres_url`] then creates a fresh, empty database on
//! it, so tests never see each other's rows. Set `SEEDBED_TEST_POSTGRES_URL` to a server you run
//! yourself to use it instead (each call still gets a new database there, left behind after).
//!
//! The server must not outlive the test process, even one killed with SIGKILL, which runs no
//! destructor (and statics are never dropped anyway). So it is started by a small shell
//! watchdog whose stdin is a pipe whose only write end this process holds: when the process
//! ends, however it ends, the kernel closes that end, the watchdog's `read` returns, and it
//! stops the server and deletes the folder.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AssertSqlSafe, Connection, postgres::PgConnection};

/// A server someone runs themselves, used instead of starting one.
const SERVER_URL_ENV: &str = "SEEDBED_TEST_POSTGRES_URL";

/// The superuser initdb creates; trust authentication means it needs no password.
const SUPERUSER: &str = "postgres";

/// The binaries a throwaway server needs, all from one installation so their versions match.
const BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Said whenever no server can be had, so the fix is in the message.
const INSTALL_HINT: &str = "PostgreSQL is needed for these tests: install the Debian package \
                            `postgresql` (README set-up)";

/// The user the server runs as when the tests run as root: initdb and postgres refuse root.
const UNPRIVILEGED_USER: &str = "nobody";

/// How many ports to try: another process can take the free port found between the check and
/// the server binding it.
const START_ATTEMPTS: usize = 3;

/// Settings appended to the new cluster's postgresql.conf. Durability is pointless for a
/// database deleted at exit and costs the tests time; several pools per test process need
/// more than the default 100 connections; a small shared_buffers keeps parallel test
/// processes (each with its own server) light; the socket folder is the temporary one because
/// the system's (/var/run/postgresql) is not writable by the unprivileged user.
fn settings(socket_dir: &Path) -> String {
    format!(
        "\n# seedbed tests: a throwaway server\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\n\
         max_connections = 300\n\
         shared_buffers = 32MB\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n",
        socket_dir.display()
    )
}

/// The watchdog, which does the whole life of the server so that nothing is left behind
/// whenever this process dies, even during initdb: `$1` the binaries' folder, `$2` the
/// temporary folder (it gets the cluster in `data/`, the socket and the logs), `$3` the port,
/// `$4` the settings to append to postgresql.conf, then the command prefix that drops root
/// (maybe none). Once the server accepts connections (pg_ctl -w waits for that, up to a
/// minute: a loaded CI machine is slow, and a hung start must still fail) it prints `ready`
/// and blocks in `read` until this process's end of its stdin closes, then stops the server
/// and deletes the folder. A failed set-up prints `failed` and the logs instead (the folder
/// is deleted all the same). `read` only returns after the start: a process killed earlier
/// is noticed there, and the server is stopped as soon as it is up. initdb: trust
/// authentication (only loopback and the private socket reach it), the C locale and UTF-8 (the
/// same behaviour whatever the machine's locale), no fsync of a cluster deleted at exit.
const WATCHDOG: &str = r#"
# If this process dies before `ready` is printed, that echo would raise SIGPIPE and end the
# watchdog right there, leaving the server running: ignored, the echo just fails.
trap '' PIPE
bin=$1 dir=$2 port=$3 settings=$4
shift 4
data=$dir/data
if ! { "$@" "$bin/initdb" -D "$data" -U "$SUPERUSER" -A trust -E UTF8 --locale=C \
            --no-sync &&
       printf '%s\n' "$settings" >>"$data/postgresql.conf" &&
       "$@" "$bin/pg_ctl" start -w -s -t 60 -D "$data" -l "$dir/server.log" -o "-p $port"
     } >"$dir/setup.log" 2>&1; then
    "$@" "$bin/pg_ctl" stop -s -m immediate -D "$data" >/dev/null 2>&1
    echo failed
    cat "$dir/setup.log" "$dir/server.log" 2>/dev/null
    rm -rf "$dir"
    exit 1
fi
echo ready
read _
"$@" "$bin/pg_ctl" stop -w -s -m fast -D "$data" >/dev/null 2>&1
rm -rf "$dir"
"#;

/// The one server of this test process.
struct Server {
    /// Superuser URL of the server's `postgres` database (or the URL from the environment).
    url: String,
    /// The write end of the watchdog's stdin, never written: holding it open is what keeps
    /// the server alive. `None` for a server from the environment, which is not ours to stop.
    _watchdog: Option<ChildStdin>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// Numbers this process's databases, so its own calls never collide.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// The server's superuser URL (its `postgres` database), starting the server on first use.
///
/// Blocks for the few seconds a first start takes; from async code prefer [`postgres_url`],
/// which does that on tokio's blocking pool.
pub fn postgres_server_url() -> String {
    SERVER
        .get_or_init(|| match std::env::var(SERVER_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Server {
                url: with_default_database(url.trim()),
                _watchdog: None,
            },
            _ => start(),
        })
        .url
        .clone()
}

/// The URL of a new, empty database, `postgres://postgres@127.0.0.1:PORT/NAME`, created for
/// this caller alone on this test process's server (started on first use).
///
/// # Panics
///
/// When PostgreSQL is not installed, does not start (the message holds its log), or refuses
/// `CREATE DATABASE`: these are test helpers, and a panic names the problem where it happens.
pub async fn postgres_url() -> String {
    // The first call runs initdb and waits for the server: off the async worker, so a
    // current-thread test runtime is not frozen meanwhile. A panic there is re-raised as is,
    // keeping its message (the install hint or the server's log).
    let server_url = match tokio::task::spawn_blocking(postgres_server_url).await {
        Ok(url) => url,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    };
    // Process id and a random part as well as the counter: a server from the environment keeps
    // databases from earlier runs and is shared with other test processes.
    let name = format!(
        "seedbed_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let mut admin = PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|e| {
            let origin = match std::env::var_os(SERVER_URL_ENV) {
                Some(_) => format!(" (from {SERVER_URL_ENV})"),
                None => String::new(),
            };
            panic!("connecting to the test PostgreSQL at {server_url}{origin}: {e}")
        });
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating database {name} at {server_url}: {e}"));
    // Closing politely; a failure here cannot affect the database just made.
    let _ = admin.close().await;
    with_database(&server_url, &name)
}

/// A server URL as given, or, when it names no database, with `postgres`, which every server
/// has: without one PostgreSQL picks the database named after the user, which may not exist.
fn with_default_database(url: &str) -> String {
    let (_, database, _) = split_url(url);
    if database.is_empty() {
        with_database(url, "postgres")
    } else {
        url.to_owned()
    }
}

/// `url` with its database (the path) replaced by `name`, keeping any `?options`.
fn with_database(url: &str, name: &str) -> String {
    let (base, _, options) = split_url(url);
    match options {
        Some(options) => format!("{base}/{name}?{options}"),
        None => format!("{base}/{name}"),
    }
}

/// `scheme://authority`, the database (without its `/`, maybe empty) and the options after `?`.
fn split_url(url: &str) -> (&str, &str, Option<&str>) {
    let (rest, options) = match url.split_once('?') {
        Some((rest, options)) => (rest, Some(options)),
        None => (url, None),
    };
    let authority = rest.find("://").map_or(0, |i| i + 3);
    match rest[authority..].find('/') {
        Some(slash) => (
            &rest[..authority + slash],
            &rest[authority + slash + 1..],
            options,
        ),
        None => (rest, "", options),
    }
}

/// Starts this process's server; panics with the reason (and the server's log) if it cannot.
fn start() -> Server {
    let bin = find_binaries().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port();
        match launch(&bin, port) {
            Ok(watchdog) => {
                return Server {
                    url: format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres"),
                    _watchdog: Some(watchdog),
                };
            }
            Err(failure) => {
                let port_taken = failure.contains("could not bind")
                    || failure.contains("could not create any TCP/IP sockets");
                if !(port_taken && attempt < START_ATTEMPTS) {
                    panic!(
                        "the test PostgreSQL ({}) did not start on port {port}: {failure}",
                        bin.display()
                    );
                }
            }
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Starts the watchdog in a new temporary folder, which starts the server, and waits for its
/// `ready`. Returns the watchdog's stdin to hold, or what went wrong with the logs.
fn launch(bin: &Path, port: u16) -> Result<ChildStdin, String> {
    let folder = tempfile::Builder::new()
        .prefix("seedbed-pg-")
        .tempdir()
        .map_err(|e| format!("creating a temporary folder: {e}"))?;
    let dir = folder.path();

    // The new folder's owner is whoever this process creates files as, which is what initdb
    // checks: owned by root means root, so the server runs as an unprivileged user, who must
    // own the folder it writes the cluster, socket and logs into.
    let owner = fs::metadata(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .uid();
    let drop_root = if owner == 0 {
        let (uid, gid) = unprivileged_ids();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("handing {} to {UNPRIVILEGED_USER}: {e}", dir.display()))?;
        drop_root_prefix(uid, gid)
    } else {
        Vec::new()
    };

    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(bin)
        .arg(dir)
        .arg(port.to_string())
        .arg(settings(dir))
        .args(&drop_root)
        .env("SUPERUSER", SUPERUSER)
        // As `nobody`, initdb and postgres may not be allowed into this process's working
        // folder; this one is theirs.
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Everything worth reading goes to stdout on failure; at the end, after this process
        // is gone, nothing should be printed to its terminal.
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C at the terminal interrupts the tests, and the
        // watchdog must outlive them to clean up rather than die with them.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running sh: {e}"))?;
    // From here the watchdog deletes the folder, whatever happens: the TempDir must not.
    let dir = folder.keep();
    let stdin = child.stdin.take().expect("stdin was piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout was piped"));
    let mut line = String::new();
    // Returns at `ready`, or at `failed`, or at end of file if the watchdog died.
    let _ = stdout.read_line(&mut line);
    if line.trim() == "ready" {
        return Ok(stdin);
    }
    let mut logs = String::new();
    let _ = stdout.read_to_string(&mut logs);
    let status = child
        .wait()
        .map_or_else(|e| e.to_string(), |s| s.to_string());
    // As `nobody`, the usual surprise is a temporary folder it cannot enter (TMPDIR under /root).
    let hint = if drop_root.is_empty() {
        String::new()
    } else {
        format!(" (run as {UNPRIVILEGED_USER}, in {})", dir.display())
    };
    Err(format!(
        "set-up failed{hint} ({status}); its output:\n{logs}"
    ))
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("finding a free port on 127.0.0.1: {e}"))
        .port()
}

/// The folder holding initdb, pg_ctl and postgres: the first on `$PATH` that has all three,
/// else Debian's per-version folder with the highest version (Debian keeps the server
/// binaries off `$PATH`).
fn find_binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| BINARIES.iter().all(|name| dir.join(name).is_file());
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| complete(dir))
    {
        return Some(dir);
    }
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// `nobody`'s user and group ids, through `id` so that any user database (not only
/// /etc/passwd) is consulted.
fn unprivileged_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, UNPRIVILEGED_USER])
            .output()
            .unwrap_or_else(|e| panic!("running id: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "the tests run as root, and PostgreSQL refuses to: they run it as \
                     `{UNPRIVILEGED_USER}`, but `id {flag} {UNPRIVILEGED_USER}` said: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
    };
    (id("-u"), id("-g"))
}

/// The command prefix that runs a program as `uid`/`gid`: setpriv, which execs the program in
/// place (no extra process, no PAM session), else runuser; both are in util-linux.
fn drop_root_prefix(uid: u32, gid: u32) -> Vec<String> {
    if on_path("setpriv") {
        vec![
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ]
    } else if on_path("runuser") {
        ["runuser", "-u", UNPRIVILEGED_USER, "--"]
            .map(String::from)
            .to_vec()
    } else {
        panic!(
            "the tests run as root, and PostgreSQL refuses to: running it as \
             `{UNPRIVILEGED_USER}` needs setpriv or runuser (Debian package util-linux)"
        )
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    /// Connects to `url` and returns the database's name and how many tables it holds, after
    /// checking it answers a query.
    async fn inspect(url: &str) -> (String, i64) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let row = sqlx::query(
            "SELECT current_database()::text, \
             (SELECT count(*) FROM information_schema.tables \
              WHERE table_schema NOT IN ('pg_catalog', 'information_schema'))",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        (row.get(0), row.get(1))
    }

    #[tokio::test]
    async fn each_call_gives_a_new_empty_database() {
        let first = postgres_url().await;
        let second = postgres_url().await;
        assert_ne!(first, second);
        for url in [&first, &second] {
            let (name, tables) = inspect(url).await;
            assert_eq!(&with_database(url, &name), url, "connected to {name}");
            assert_eq!(tables, 0, "{url} is not empty");
        }

        // And they are separate: a table made in one is not in the other.
        let mut conn = PgConnection::connect(&first).await.unwrap();
        sqlx::query("CREATE TABLE t (x INT)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        assert_eq!(inspect(&first).await.1, 1);
        assert_eq!(inspect(&second).await.1, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_server() {
        let urls = futures::future::join_all((0..8).map(|_| tokio::spawn(postgres_url()))).await;
        let urls: Vec<String> = urls.into_iter().map(Result::unwrap).collect();
        let server = postgres_server_url();
        for (i, url) in urls.iter().enumerate() {
            let name = url.split('?').next().unwrap().rsplit('/').next().unwrap();
            assert_eq!(&with_database(&server, name), url, "not on {server}");
            assert!(!urls[..i].contains(url), "{url} was handed out twice");
        }
    }

    #[test]
    fn the_database_replaces_the_urls_path() {
        let name = "db";
        for (url, expected) in [
            ("postgres://u@h:1/postgres", "postgres://u@h:1/db"),
            ("postgres://u@h:1", "postgres://u@h:1/db"),
            ("postgres://u@h:1/", "postgres://u@h:1/db"),
            (
                "postgres://u:p@h:1/x?sslmode=disable",
                "postgres://u:p@h:1/db?sslmode=disable",
            ),
            (
                "postgres://h?sslmode=disable",
                "postgres://h/db?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, name), expected, "from {url}");
        }
    }

    #[test]
    fn a_server_url_without_a_database_gets_postgres() {
        for (url, expected) in [
            ("postgres://u@h:1", "postgres://u@h:1/postgres"),
            ("postgres://u@h:1/", "postgres://u@h:1/postgres"),
            (
                "postgres://u@h:1?sslmode=disable",
                "postgres://u@h:1/postgres?sslmode=disable",
            ),
            ("postgres://u@h:1/admin", "postgres://u@h:1/admin"),
        ] {
            assert_eq!(with_default_database(url), expected, "from {url}");
        }
    }
}
