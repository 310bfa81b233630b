use std::ffi::OsString;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use seedbed_server::serve::ServeConfig;

use super::*;

/// `seedbed serve ARGS...` as `main` reads it, the config file included.
fn config_from(args: &[&str]) -> Result<ServeConfig> {
    let argv: Vec<OsString> = ["seedbed", "serve"]
        .iter()
        .chain(args)
        .map(OsString::from)
        .collect();
    let mut cli = crate::Cli::try_parse_from(&argv)?;
    let crate::Command::Serve(args) = &cli.command else {
        unreachable!()
    };
    if let Some(file) = args.config.clone() {
        cli = with_config_file(&file, argv)?;
    }
    match cli.command {
        crate::Command::Serve(args) => args.into_config(),
        _ => unreachable!(),
    }
}

fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seedbed.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn request_limits_come_from_the_file_and_flags_and_are_never_zero() {
    let (_dir, path) = file("max_streams = 40\nbody_timeout_secs = 9\n");
    let config = config_from(&[
        "--config",
        &path,
        "--max-in-flight",
        "7",
        "--max-streams-per-key",
        "3",
        "--body-timeout-secs",
        "5",
    ])
    .unwrap();
    assert_eq!(config.http.max_in_flight, 7);
    assert_eq!(config.http.streams_per_key, 3);
    assert_eq!(config.http.streams_total, 40, "from the file");
    assert_eq!(
        config.http.body_timeout,
        Duration::from_secs(5),
        "the flag wins"
    );
    let defaults = seedbed_server::HttpLimits::default();
    assert_eq!(config.http.sse_keep_alive, defaults.sse_keep_alive);

    let error = config_from(&["--header-timeout-secs", "0"]).unwrap_err();
    assert!(error.to_string().contains("header-timeout-secs"), "{error}");
    let (_dir, path) = file("max_in_flight = 0\n");
    let error = format!("{:#}", config_from(&["--config", &path]).unwrap_err());
    assert!(
        error.contains("seedbed.toml: `max_in_flight`") && error.contains('0'),
        "{error}"
    );
}

#[test]
fn without_flags_the_config_is_the_servers_own_defaults() {
    let config = config_from(&[]).unwrap();
    let server = ServeConfig::new(config.listen, config.data_dir.clone(), "models".into());
    assert_eq!(format!("{:?}", config.jobs), format!("{:?}", server.jobs));
    assert_eq!(format!("{:?}", config.http), format!("{:?}", server.http));
    assert_eq!(config.device.memory_budget, server.device.memory_budget);
    assert_eq!(config.listen.to_string(), args::DEFAULT_LISTEN);
}

#[test]
fn every_option_can_be_set_in_the_file_under_its_flag_name() {
    let (dir, path) = file(
        r#"
listen = "127.0.0.1:9999"
models_dir = "my-models"
loras_dir = "my-loras"
alias = ["seedream=tiny-sd"]
api_key = ["sk-one", "sk-two"]
metrics_key = "scrape"
queue_size = 5
max_body_bytes = 1000
max_input_image_bytes = 999
image_ttl_secs = 60
allow_private_urls = true
model_memory_gb = 2
shutdown_grace_secs = 4
sse_keep_alive_secs = 3
device = "cpu"
dtype = "f16"
prefer_fp16 = true
vae_tiling = "never"
"#,
    );
    let data = dir.path().join("data");
    let config = config_from(&["--config", &path, "--data-dir", data.to_str().unwrap()]).unwrap();
    assert_eq!(config.listen.port(), 9999);
    assert_eq!(config.models_dir, std::path::Path::new("my-models"));
    assert_eq!(
        config.loras_dir.as_deref(),
        Some(std::path::Path::new("my-loras"))
    );
    assert_eq!(config.data_dir, data);
    assert_eq!(config.aliases, [("seedream".into(), "tiny-sd".into())]);
    let keys: Vec<_> = config.api_keys.iter().map(|k| k.expose()).collect();
    assert_eq!(keys, ["sk-one", "sk-two"]);
    assert_eq!(config.metrics_key.as_ref().unwrap().expose(), "scrape");
    assert_eq!(config.jobs.queue_size, 5);
    assert_eq!(config.http.body_bytes, 1000);
    assert_eq!(config.jobs.inputs.max_bytes, 999);
    assert_eq!(config.jobs.image_ttl, Duration::from_secs(60));
    assert!(config.jobs.inputs.allow_private_urls);
    assert_eq!(config.device.memory_budget, 2 << 30);
    assert_eq!(config.jobs.shutdown_grace, Duration::from_secs(4));
    assert_eq!(config.http.sse_keep_alive, Duration::from_secs(3));
    assert_eq!(config.device.load.dtype, seedbed_engine::candle::DType::F16);
}

#[test]
fn bad_file_values_name_the_file_and_the_key() {
    let (_dir, path) = file("queue_size = \"many\"\n");
    let error = format!("{:#}", config_from(&["--config", &path]).unwrap_err());
    assert!(
        error.contains("`queue_size`") && error.contains("many"),
        "{error}"
    );

    let (_dir, path) = file("queue_sise = 3\n");
    let error = format!("{:#}", config_from(&["--config", &path]).unwrap_err());
    assert!(error.contains("`queue_sise` is not an option"), "{error}");

    let (_dir, path) = file("listen = [\"a\", \"b\"]\n");
    let error = format!("{:#}", config_from(&["--config", &path]).unwrap_err());
    assert!(error.contains("takes one value"), "{error}");
}

/// The help lists every option the file can set.
#[test]
fn the_help_lists_every_file_key() {
    let root = crate::Cli::command();
    let serve = root.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "config" || long == "help" {
            continue;
        }
        let key = long.replace('-', "_");
        assert!(
            file::HELP.contains(&format!(" {key},")) || file::HELP.contains(&format!(" {key}.")),
            "{key} is missing from the config file help"
        );
    }
}

/// The help's defaults are the server's constants.
#[test]
fn the_help_states_the_servers_default_limits() {
    use seedbed_server::limits::defaults;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let help = Cli::command().render_long_help().to_string();
    let secs = |d: Duration| d.as_secs() as usize;
    for (flag, default) in [
        ("--max-in-flight", defaults::MAX_IN_FLIGHT),
        ("--header-timeout-secs", secs(defaults::HEADER_TIMEOUT)),
        ("--body-timeout-secs", secs(defaults::BODY_TIMEOUT)),
        ("--max-streams-per-key", defaults::STREAMS_PER_KEY),
        ("--max-streams", defaults::STREAMS_TOTAL),
        ("--sse-keep-alive-secs", secs(defaults::SSE_KEEP_ALIVE)),
        ("--queue-size", 64),
        ("--model-memory-gb", 16),
    ] {
        let entry = help
            .split(&format!("{flag} <"))
            .nth(1)
            .and_then(|rest| rest.split("\n      --").next())
            .unwrap_or_else(|| panic!("{flag} is not in the help"));
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag}: {entry}"
        );
    }
}

#[test]
fn a_listen_address_may_be_a_host_name() {
    let config = config_from(&["--listen", "localhost:8181"]).unwrap();
    assert!(config.listen.ip().is_loopback(), "{}", config.listen);
    assert_eq!(config.listen.port(), 8181);
    assert!(
        config_from(&["--listen", "localhost"]).is_err(),
        "needs a port"
    );
}

#[test]
fn upstreams_come_from_the_file_and_flags() {
    let (_dir, path) = file(
        r#"
route = ["fast=seedbed2:tiny-sd"]

[[upstream]]
name = "ark"
kind = "ark"
base_url = "https://ark.ap-southeast.bytepluses.com/api/v3"
api_key = "sk-from-file"
timeout_secs = 120
rehost = false
[upstream.models]
"seedream" = "seedream-4-5-251128"
"#,
    );
    let config = config_from(&[
        "--config",
        &path,
        "--upstream",
        "seedbed2=seedbed,http://10.0.0.2:8080",
        "--route",
        "seedream=seedbed2:tiny-sd",
    ])
    .unwrap();
    let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["ark", "seedbed2"]);
    assert!(!config.upstreams[0].rehost);
    assert_eq!(
        config.upstreams[0].models["seedream"],
        "seedream-4-5-251128"
    );
    assert_eq!(config.upstreams[0].key().unwrap().expose(), "sk-from-file");
    assert!(
        !format!("{config:?}").contains("sk-from-file"),
        "keys never in logs"
    );
    // A flag replaces the file's list, as any flag replaces a default.
    assert_eq!(
        config.routes,
        [("seedream".into(), "seedbed2".into(), "tiny-sd".into())]
    );
}
