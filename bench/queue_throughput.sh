#!/usr/bin/env bash
# Jobs per second through the shared Postgres queue with 1, 2 and 3 `seedbed serve` nodes (issue 20).
#
# Each job is the tiny fixture model at 64x64 and one step, the smallest job there is, so the queue's
# share (admission, claiming, leases, events, storing, billing) of each job's time is as large as it
# gets. Every node runs on this one machine, so nodes share its cores: on a small machine more nodes
# cannot mean more compute, only more claimers contending for the same rows.
#
#   bash bench/queue_throughput.sh                       # a throwaway Postgres, 200 jobs, N = 1 2 3
#   DATABASE_URL=postgres://u:p@host/postgres bash bench/queue_throughput.sh   # your server
#   JOBS=500 NODES="1 3" SEEDBED_BIN=target/release/seedbed bash bench/queue_throughput.sh
#
# With DATABASE_URL each run creates (and leaves behind) a fresh database on that server, so runs
# never count each other's jobs. Needs curl, python3 and psql; the throwaway server needs initdb and
# pg_ctl (Debian's postgresql package), run as `nobody` when this runs as root (PostgreSQL refuses
# root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${JOBS:-200}"
NODES="${NODES:-1 2 3}"
# Submitting from several threads at once, as several clients would; one client would measure its
# own round trips instead of the queue.
SUBMITTERS="${SUBMITTERS:-8}"
KEY="bench-queue-key"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

if [[ -n "${SEEDBED_BIN:-}" ]]; then
    BIN="$SEEDBED_BIN"
    PROFILE="given ($BIN)"
elif [[ -x "$TARGET/release/seedbed" ]]; then
    BIN="$TARGET/release/seedbed"
    PROFILE="release"
elif [[ -x "$TARGET/debug/seedbed" ]]; then
    BIN="$TARGET/debug/seedbed"
    PROFILE="debug (dev profile: opt-level 1, the engine's kernels at 3)"
else
    echo "no seedbed binary: cargo build --release -p seedbed (or set SEEDBED_BIN)" >&2
    exit 1
fi

WORK="$(mktemp -d -t seedbed-queue-bench.XXXXXX)"
PIDS=()
SUMMARY=()
PG_DATA=""
AS_PG=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [[ -n "$PG_DATA" ]]; then
        "${AS_PG[@]}" "$PG_BIN/pg_ctl" stop -s -m immediate -D "$PG_DATA" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The server URL (its `postgres` database): the one given, or a throwaway one started here.
if [[ -n "${DATABASE_URL:-}" ]]; then
    SERVER_URL="$DATABASE_URL"
    echo "postgres: $SERVER_URL (given)"
else
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -z "$PG_BIN" ]] && command -v initdb >/dev/null; then PG_BIN="$(dirname "$(command -v initdb)")"; fi
    [[ -x "$PG_BIN/initdb" ]] || { echo "no initdb: install postgresql or set DATABASE_URL" >&2; exit 1; }
    mkdir "$WORK/pg"
    if [[ "$(id -u)" == 0 ]]; then
        chown nobody "$WORK/pg"
        chmod 755 "$WORK"
        AS_PG=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups)
    fi
    PG_DATA="$WORK/pg/data"
    PG_PORT="$(free_port)"
    (cd "$WORK/pg" && "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 \
        --locale=C --no-sync >"$WORK/pg/initdb.log" 2>&1)
    # As the test server: durability is pointless for a database deleted at exit; the nodes' pools
    # together need more than the default 100 connections.
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/pg'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    (cd "$WORK/pg" && "${AS_PG[@]}" "$PG_BIN/pg_ctl" start -w -s -t 60 -D "$PG_DATA" \
        -l "$WORK/pg/server.log" -o "-p $PG_PORT")
    SERVER_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "postgres: throwaway $("$PG_BIN/postgres" --version) on port $PG_PORT, fsync off"
fi

echo "binary: $BIN, build profile: $PROFILE"
echo "machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -n 1)); every node and" \
     "Postgres share them"
echo "jobs per run: $JOBS (tiny-sd, 64x64, steps 1, async), submitted round robin over the nodes" \
     "by $SUBMITTERS client threads"
echo

# Start `seedbed serve` node $1 of the run in folder $2 on database $3, in the background.
start_node() {
    local index="$1" dir="$2" database="$3"
    mkdir -p "$dir/data-$index"
    "$BIN" serve --listen 127.0.0.1:0 --api-key "$KEY" --log warn \
        --models-dir "$ROOT/fixtures/models" --data-dir "$dir/data-$index" \
        --database-url "$database" --node-id "node-$index" \
        --blob-url "$dir/blobs" --key-secret-file "$dir/key-hash.secret" \
        --queue-size $((JOBS + 10)) >/dev/null 2>"$dir/node-$index.log" &
    PIDS+=("$!")
}

# The base URL node $1 (pid $3) says it listens on in its log in folder $2, once it does.
node_url() {
    local index="$1" dir="$2" pid="$3" log url
    log="$dir/node-$index.log"
    for _ in $(seq 600); do
        url="$(sed -n 's/^seedbed listening on \([^ ]*\).*/\1/p' "$log" | head -n 1)"
        if [[ -n "$url" ]]; then echo "$url"; return; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "node $index did not start:" >&2
    cat "$log" >&2
    exit 1
}

# Submit $JOBS jobs round robin over the URLs given, then wait for the database to say every one
# ended. Prints the throughput line; the clock is the database's (first created_at to last
# finished_at), so polling does not blur it.
measure() {
    local database="$1"
    shift
    python3 - "$database" "$JOBS" "$SUBMITTERS" "$KEY" "$@" <<'EOF'
import json, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

database, jobs, submitters, key, urls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]

def submit(i):
    body = json.dumps({"model": "tiny-sd", "prompt": f"queue bench {i}", "size": "64x64",
                       "steps": 1, "seed": i}).encode()
    request = urllib.request.Request(urls[i % len(urls)] + "/api/v3/images/generations", body, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json",
        "Prefer": "respond-async"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["id"]

def sql(query):
    out = subprocess.run(["psql", "-qAt", "-F", " ", database, "-c", query],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()

start = time.monotonic()
with ThreadPoolExecutor(submitters) as pool:
    ids = list(pool.map(submit, range(jobs)))
submitted = time.monotonic() - start
while True:
    left = int(sql("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"))
    if left == 0:
        break
    if time.monotonic() - start > 1800:
        sys.exit(f"{left} jobs still unfinished after 30 minutes")
    time.sleep(0.2)
wall = time.monotonic() - start
first, last = map(int, sql("SELECT min(created_at), max(finished_at) FROM jobs").split())
span = (last - first) / 1000
statuses = sql("SELECT status || '=' || count(*) FROM jobs GROUP BY status ORDER BY status").split()
per_node = sql("SELECT ran_on || '=' || count(*) FROM jobs GROUP BY ran_on ORDER BY ran_on").split()
attempts = sql("SELECT max(attempts) FROM jobs")
print(f"nodes={len(urls)} jobs={len(ids)} span={span:.2f}s jobs_per_s={jobs / span:.2f} "
      f"(submitting took {submitted:.2f}s; wall incl. polling {wall:.2f}s) "
      f"statuses: {' '.join(statuses)}; per node: {' '.join(per_node)}; max attempts {attempts}")
EOF
}

for n in $NODES; do
    run="$WORK/run-$n"
    mkdir -p "$run"
    name="seedbed_queue_bench_$$_$n"
    psql -qAt "$SERVER_URL" -c "CREATE DATABASE $name" >/dev/null
    database="${SERVER_URL%/*}/$name"
    urls=()
    # One at a time: the first creates the schema and the key secret the others then read.
    for i in $(seq "$n"); do
        start_node "$i" "$run" "$database"
        urls+=("$(node_url "$i" "$run" "${PIDS[-1]}")")
    done
    line="$(measure "$database" "${urls[@]}")"
    echo "$line"
    SUMMARY+=("$n node(s): $(sed -n 's/.*jobs_per_s=\([0-9.]*\).*/\1/p' <<<"$line") jobs/s")
    # A clean stop: every job has ended, so each node exits at once.
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
done

echo
echo "summary ($JOBS jobs each, $PROFILE build, $(nproc) cores):"
printf '  %s\n' "${SUMMARY[@]}"
