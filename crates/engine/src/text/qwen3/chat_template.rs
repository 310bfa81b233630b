//! The tokenizer's chat template: the Jinja template stored in `tokenizer_config.json` (or, as
//! newer transformers saves it, `chat_template.jinja`), rendered as transformers'
//! `apply_chat_template` renders it for Z-Image's pipeline: one user message,
//! `add_generation_prompt=True`, `enable_thinking=True`.
//!
//! The template is rendered rather than its result hard-coded so that a model folder with a
//! different template gets its own. transformers renders with jinja2's `trim_blocks` and
//! `lstrip_blocks` and gives templates Python's string methods (`startswith`, `split`, ...)
//! and a `raise_exception` function; minijinja is set up the same way. Like transformers, the
//! template also sees the tokenizer's special tokens (`bos_token`, `eos_token`, ...), which
//! some templates write out.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::error::{EngineError, Result};

pub struct ChatTemplate {
    source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token`: those the config names.
    special_tokens: BTreeMap<&'static str, String>,
}

const SPECIAL_TOKENS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

impl ChatTemplate {
    /// The template of a tokenizer folder whose parsed `tokenizer_config.json` is `config`.
    /// It is rendered once here, so that a template this renderer cannot handle is refused
    /// when the model loads rather than at the first prompt.
    pub fn load(dir: &Path, config: &serde_json::Value) -> Result<Self> {
        let jinja_file = dir.join("chat_template.jinja");
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(source)) => source.clone(),
            Some(_) => {
                return Err(EngineError::config(
                    dir.join("tokenizer_config.json"),
                    "`chat_template` is not a single template string (named templates are not \
                     supported)",
                ));
            }
            None if jinja_file.is_file() => std::fs::read_to_string(&jinja_file)
                .map_err(|e| EngineError::config(&jinja_file, e))?,
            None => {
                return Err(EngineError::config(
                    dir,
                    "no chat template: neither `chat_template` in tokenizer_config.json nor \
                     chat_template.jinja",
                ));
            }
        };
        let special_tokens = SPECIAL_TOKENS
            .into_iter()
            .filter_map(|key| Some((key, token_name(config.get(key))?.to_string())))
            .collect();
        let template = Self {
            source,
            special_tokens,
        };
        template.render("").map_err(|e| {
            EngineError::config(dir, format!("the chat template cannot be rendered: {e}"))
        })?;
        Ok(template)
    }

    /// `prompt` as one user message followed by the assistant's generation prompt.
    pub fn render(&self, prompt: &str) -> std::result::Result<String, Error> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let template = env.template_from_str(&self.source)?;
        template.render(context! {
            messages => vec![context! { role => "user", content => prompt }],
            add_generation_prompt => true,
            enable_thinking => true,
            ..Value::from(self.special_tokens.clone())
        })
    }
}

/// A special token in `tokenizer_config.json`: a plain string, or an `AddedToken` object
/// with its `content`.
pub fn token_name(value: Option<&serde_json::Value>) -> Option<&str> {
    match value? {
        serde_json::Value::String(name) => Some(name),
        serde_json::Value::Object(token) => token.get("content")?.as_str(),
        _ => None,
    }
}

/// What transformers gives templates to refuse a conversation they cannot format.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}
