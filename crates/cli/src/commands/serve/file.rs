//! The `--config` file: TOML whose keys are `seedbed serve`'s own flags (`_` or `-`), each
//! value made that flag's default. So a file can set exactly what a flag can, checked by the
//! flag's own parser, and a flag or a `SEEDBED_*` variable still wins over it. `[[upstream]]`
//! tables are the one addition: an upstream with more than `--upstream` can say.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Arg, ArgAction, Command};
use seedbed_gateway::UpstreamConfig;
use toml::Value;

/// Shown below `seedbed serve --help`; a test checks it names every option.
pub const HELP: &str = "\
Config file (--config): TOML with the options above under their flag names, `_` for `-`:
  listen, data_dir, models_dir, loras_dir, alias, api_key, key_secret_file, metrics_key,
  public_url, database_url, node_id, lease_secs, runs, blob_url, queue_size, max_body_bytes,
  max_input_image_bytes, image_ttl_secs, allow_private_urls, model_memory_gb,
  shutdown_grace_secs, max_in_flight,
  header_timeout_secs, body_timeout_secs, max_streams_per_key, max_streams,
  sse_keep_alive_secs, upstream, route, device, dtype, prefer_fp16, vae_tiling,
  memory_plan.
A repeatable option takes a list (api_key = [\"sk-1\", \"sk-2\"]); `upstream` also takes
[[upstream]] tables (name, kind, base_url, api_key or api_key_env, timeout_secs, rehost,
[upstream.models]).

Examples:
  seedbed serve
  seedbed serve --models-dir ~/models --alias seedream-4-5-251128=sdxl-turbo
  SEEDBED_API_KEY=sk-secret seedbed serve --listen 0.0.0.0:8080 --config seedbed.toml";

/// Read `path` and make its values the defaults of `serve`'s arguments; the `[[upstream]]`
/// tables come back on their own.
pub fn apply(serve: Command, path: &Path) -> Result<(Command, Vec<UpstreamConfig>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut serve = serve;
    let mut upstreams = Vec::new();
    for (key, value) in table {
        let in_file = |e: anyhow::Error| e.context(format!("{}: `{key}`", path.display()));
        if key == "upstream" && is_tables(&value) {
            // `[upstream]` (one table) reads as well as `[[upstream]]` (a list of them).
            let list = match value {
                Value::Table(one) => Value::Array(vec![Value::Table(one)]),
                list => list,
            };
            upstreams = list.try_into().map_err(|e| in_file(anyhow!("{e}")))?;
            continue;
        }
        let arg = find(&serve, &key).ok_or_else(|| {
            anyhow!(
                "{}: `{key}` is not an option of seedbed serve (see the list in --help)",
                path.display()
            )
        })?;
        let values = values(arg, &value).map_err(in_file)?;
        for text in &values {
            check(arg, text).map_err(in_file)?;
        }
        let id = arg.get_id().clone();
        serve = serve.mut_arg(id, |arg| arg.default_values(values));
    }
    Ok((serve, upstreams))
}

/// The argument a file key names: its long flag with `_` for `-`, or its field name.
fn find<'a>(serve: &'a Command, key: &str) -> Option<&'a Arg> {
    let key = key.replace('-', "_");
    serve.get_arguments().find(|arg| {
        arg.get_id() != "config"
            && !arg.is_hide_set()
            && (arg.get_id() == key.as_str()
                || arg
                    .get_long()
                    .is_some_and(|long| long.replace('-', "_") == key))
    })
}

fn is_tables(value: &Value) -> bool {
    matches!(value, Value::Array(items) if items.iter().all(Value::is_table)) || value.is_table()
}

/// The flag values a TOML value stands for: a list only where the flag repeats.
fn values(arg: &Arg, value: &Value) -> Result<Vec<String>> {
    let repeats = matches!(arg.get_action(), ArgAction::Append);
    match value {
        Value::Array(items) if repeats => items.iter().map(scalar).collect(),
        Value::Array(_) => bail!("takes one value, not a list"),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &Value) -> Result<String> {
    Ok(match value {
        Value::String(text) => text.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) | Value::Table(_) => bail!("takes a plain value, not {}", value.type_str()),
    })
}

/// Run the flag's own parser on a file value, so a bad one is reported with the file's name
/// rather than as if it had been typed.
fn check(arg: &Arg, text: &str) -> Result<()> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match text {
            "true" | "false" => Ok(()),
            _ => bail!("takes true or false, not {text}"),
        };
    }
    let long = arg.get_long().context("a file key names a flag")?;
    Command::new("seedbed serve")
        .arg(arg.clone().env(None).default_values(None::<&str>))
        .try_get_matches_from(["seedbed serve".to_string(), format!("--{long}={text}")])
        .map(drop)
        .map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default();
            anyhow!("{}", first.trim_start_matches("error: "))
        })
}
