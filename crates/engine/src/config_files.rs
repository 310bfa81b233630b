//! Reading a model folder's config files, every error naming the file (and the key). A leaf:
//! the modules that read configs depend on it, it depends on nothing but the error type.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{EngineError, Result};

/// Read a text file; a missing file is `MissingFile`, other failures `Io`, both naming it.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EngineError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => EngineError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Read and parse a JSON file, naming the file in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::config(path, e))?;
    parse_json(value, path)
}

/// Deserialize a parsed JSON value; errors name the offending key.
pub fn parse_json<T: DeserializeOwned>(value: serde_json::Value, path: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        if key == "." {
            EngineError::config(path, e.into_inner())
        } else {
            EngineError::config(path, format!("`{key}`: {}", e.into_inner()))
        }
    })
}
