//! The models a server offers: every diffusers folder inside `--models-dir`, under its folder
//! name, plus public aliases (`seedream-4-5-251128=sdxl-turbo`).

#[cfg(test)]
mod dit_defaults;
mod unknown;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use seedbed_engine::checkpoint::ModelFormat;
use seedbed_engine::model::{Family, ModelSummary};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::loras::LoraFolder;

pub use unknown::UnknownModel;

/// Generation defaults of one model, from its optional `seedbed.json` or from its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    pub steps: u32,
    pub guidance_scale: f64,
    /// Overrides the training resolution that presets are relative to.
    #[serde(default)]
    pub native_size: Option<u32>,
}

impl ModelDefaults {
    /// What the model's family recommends (the engine reads it from the configs), except
    /// that SD and SDXL Turbo (adversarially distilled, told apart only by name) run in one
    /// step without guidance.
    fn guess(name: &str, summary: &ModelSummary) -> Self {
        let turbo = name.to_ascii_lowercase().contains("turbo");
        let (steps, guidance_scale) = if turbo && summary.family.is_unet() {
            (1, 0.0)
        } else {
            (
                summary.shape.default_steps,
                summary.shape.default_guidance_scale,
            )
        };
        Self {
            steps,
            guidance_scale,
            native_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The folder name, which is also its id.
    pub name: String,
    pub path: PathBuf,
    pub family: Family,
    /// Presets are relative to this: `1K` = native, `2K` = twice each side, `4K` four times.
    pub native_size: u32,
    pub latent_factor: u32,
    /// The longest side the model computes (SD3.5's position table ends before the engine's
    /// limit).
    pub max_side: u32,
    pub weights_bytes: u64,
    /// How it is stored: a folder, a checkpoint file.
    #[serde(default)]
    pub format: ModelFormat,
    pub defaults: ModelDefaults,
    /// Image-to-image takes exactly one reference picture.
    pub max_reference_images: usize,
}

impl ModelEntry {
    /// How `/v1/models` and `seedbed models list` describe it under the public `id`.
    pub fn view(&self, id: &str, loaded: bool) -> seedbed_types::ModelView {
        seedbed_types::ModelView {
            id: id.to_string(),
            object: "model".into(),
            local_model: self.name.clone(),
            family: format!("{:?}", self.family),
            native_size: self.native_size,
            default_steps: self.defaults.steps,
            default_guidance_scale: self.defaults.guidance_scale,
            format: self.format.to_string(),
            loaded,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: BTreeMap<String, ModelEntry>,
    /// Folders that look like models but whose configs are broken: requests for them fail
    /// with the reason instead of "not found".
    broken: BTreeMap<String, String>,
    aliases: BTreeMap<String, String>,
    /// Public names an upstream serves: not run here, but named when a model is not found.
    relayed: Vec<String>,
    /// What other nodes sharing the database run (see [`Announcement`]): requests for them
    /// are accepted here and wait for those nodes.
    peers: Announcement,
    /// `--loras-dir`: the LoRAs requests may name; none without it.
    loras: Option<LoraFolder>,
}

/// What a node tells the others it runs: its models under every public name (folders and
/// aliases), and the public names its upstreams serve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub models: BTreeMap<String, ModelEntry>,
    pub relayed: BTreeSet<String>,
}

/// A file in the models directory that may be a model: a `.safetensors` or `.gguf` checkpoint.
fn is_checkpoint(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e == "safetensors" || e == "gguf")
}

impl Catalog {
    /// Scan `dir` for model folders (those holding `model_index.json`) and checkpoint files
    /// (`*.safetensors`, `*.gguf`).
    pub fn scan(dir: &Path, aliases: &[(String, String)]) -> Result<Self> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| CoreError::Internal(format!("models directory {}: {e}", dir.display())))?;
        let mut folders = BTreeMap::new();
        let mut checkpoints = BTreeMap::new();
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.join("model_index.json").is_file()
                && let Some(name) = path.file_name().and_then(|n| n.to_str())
            {
                folders.insert(name.to_string(), path);
            } else if is_checkpoint(&path)
                && let Some(stem) = path.file_stem().and_then(|n| n.to_str())
            {
                // A checkpoint is served under its file name without the extension.
                checkpoints.insert(stem.to_string(), path);
            }
        }
        // Files a checkpoint's NAME.json names as its components are not models themselves.
        let parts: BTreeSet<PathBuf> = checkpoints
            .values()
            .flat_map(|path| seedbed_engine::checkpoint::component_files(path))
            .filter_map(|part| part.canonicalize().ok())
            .collect();
        checkpoints.retain(|_, path| !path.canonicalize().is_ok_and(|path| parts.contains(&path)));
        let mut catalog = Self::default();
        for (name, path) in checkpoints {
            if folders.contains_key(&name) {
                tracing::warn!(model = %name, file = %path.display(), "a folder has the checkpoint's name; serving the folder");
                continue;
            }
            folders.insert(name, path);
        }
        for (name, path) in folders {
            match Self::describe(&name, &path) {
                Ok(model) => {
                    catalog.models.insert(name, model);
                }
                Err(error) => {
                    tracing::warn!(model = %name, %error, "model cannot be served");
                    catalog.broken.insert(name, error.to_string());
                }
            }
        }
        for (public, local) in aliases {
            if !catalog.models.contains_key(local) && !catalog.broken.contains_key(local) {
                return Err(CoreError::Internal(format!(
                    "alias {public}={local}: there is no model folder {local} in {}",
                    dir.display()
                )));
            }
            catalog.aliases.insert(public.clone(), local.clone());
        }
        Ok(catalog)
    }

    fn describe(name: &str, path: &Path) -> Result<ModelEntry, seedbed_engine::EngineError> {
        let summary = ModelSummary::read(path)?;
        // A folder's own `seedbed.json`, or `NAME.seedbed.json` beside a checkpoint.
        let overrides = match summary.format {
            ModelFormat::Folder => path.join("seedbed.json"),
            _ => path.with_file_name(format!("{name}.seedbed.json")),
        };
        let defaults = if overrides.is_file() {
            seedbed_engine::config_files::read_json(&overrides)?
        } else {
            ModelDefaults::guess(name, &summary)
        };
        Ok(ModelEntry {
            name: name.to_string(),
            path: path.to_path_buf(),
            family: summary.family,
            native_size: defaults.native_size.unwrap_or(summary.shape.native_size),
            latent_factor: summary.shape.latent_factor,
            max_side: summary.shape.max_side,
            weights_bytes: summary.weights_bytes,
            format: summary.format,
            defaults,
            max_reference_images: 1,
        })
    }

    /// The model a public name (folder name or alias) stands for, here or on another node.
    pub fn resolve(&self, public: &str) -> Result<&ModelEntry> {
        let local = self.aliases.get(public).map_or(public, String::as_str);
        if let Some(model) = self.models.get(local) {
            return Ok(model);
        }
        if let Some(model) = self.peers.models.get(public)
            && !self.broken.contains_key(local)
        {
            return Ok(model);
        }
        match self.broken.get(local) {
            Some(reason) => Err(CoreError::ModelLoad {
                model: public.to_string(),
                message: reason.clone(),
            }),
            None => Err(CoreError::ModelNotFound {
                model: UnknownModel {
                    name: public.to_string(),
                    available: self.names(),
                },
            }),
        }
    }

    /// Also name `relayed` (the models an upstream serves) when a model is not found.
    /// Offer the LoRAs of `folder`.
    pub fn with_loras(mut self, folder: Option<LoraFolder>) -> Self {
        self.loras = folder;
        self
    }

    pub fn loras(&self) -> Option<&LoraFolder> {
        self.loras.as_ref()
    }

    pub fn with_relayed(mut self, relayed: impl IntoIterator<Item = String>) -> Self {
        self.relayed = relayed.into_iter().collect();
        self
    }

    /// Every name a request may use: folders, aliases, models an upstream serves, then what
    /// other nodes run.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.local_names();
        names.extend(self.relayed.iter().cloned());
        let peers = self.peers.models.keys().chain(&self.peers.relayed);
        for name in peers {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// What this node runs, to tell the others: its models if it runs the local queue, its
    /// upstreams' models if it runs the gateway's.
    pub fn announcement(&self, local: bool, gateway: bool) -> Announcement {
        let mut out = Announcement::default();
        if local {
            for name in self.local_names() {
                if let Ok(model) = self.resolve(&name) {
                    out.models.insert(name, model.clone());
                }
            }
        }
        if gateway {
            out.relayed = self.relayed.iter().cloned().collect();
        }
        out
    }

    /// This catalog with what other nodes announced (replacing what they announced before).
    pub fn with_peers(&self, peers: Announcement) -> Self {
        Self {
            peers,
            ..self.clone()
        }
    }

    /// Whether another node's upstream serves `public` (and this node's does not).
    pub fn relayed_elsewhere(&self, public: &str) -> bool {
        self.peers.relayed.contains(public)
    }

    /// `(public name, model)` of what only other nodes run.
    pub fn peer_models(&self) -> impl Iterator<Item = (&str, &ModelEntry)> {
        let own = |name: &str| self.models.contains_key(name) || self.aliases.contains_key(name);
        self.peers
            .models
            .iter()
            .filter(move |(name, _)| !own(name))
            .map(|(name, model)| (name.as_str(), model))
    }

    /// The names of the models this node runs itself: folders and their aliases.
    pub fn local_names(&self) -> Vec<String> {
        self.models
            .keys()
            .chain(self.aliases.keys())
            .cloned()
            .collect()
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// `(folder name, why it cannot be served)` for every broken model folder.
    pub fn broken(&self) -> impl Iterator<Item = (&str, &str)> {
        self.broken.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// `(public name, local model)` for every alias.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }
}

/// Parse `PUBLIC=LOCAL`.
pub fn parse_alias(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((public, local)) if !public.trim().is_empty() && !local.trim().is_empty() => {
            Ok((public.trim().to_string(), local.trim().to_string()))
        }
        _ => Err(format!(
            "`{text}` is not PUBLIC=LOCAL (e.g. seedream-4-5-251128=sdxl-turbo)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
    }

    #[test]
    fn checkpoint_files_are_served_under_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let single = fixtures().join("../single-file");
        std::fs::copy(
            single.join("tiny-sd.safetensors"),
            dir.path().join("my-sd.safetensors"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("my-sd.seedbed.json"),
            r#"{"steps": 7, "guidance_scale": 3.5}"#,
        )
        .unwrap();
        // A folder and a checkpoint of one name: the folder is served.
        std::os::unix::fs::symlink(fixtures().join("tiny-sd"), dir.path().join("tiny-sd")).unwrap();
        std::fs::copy(
            single.join("tiny-sdxl.safetensors"),
            dir.path().join("tiny-sd.safetensors"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.safetensors"), b"not weights").unwrap();
        // A FLUX transformer with its components beside it: they are its parts, not models.
        let flux = fixtures().join("../models-dit/tiny-flux-dev");
        std::fs::copy(
            single.join("tiny-flux-dev-bfl.safetensors"),
            dir.path().join("flux.safetensors"),
        )
        .unwrap();
        for (part, from) in [
            ("clip.safetensors", "text_encoder/model.safetensors"),
            ("t5.safetensors", "text_encoder_2/model.safetensors"),
            ("ae.safetensors", "vae/diffusion_pytorch_model.safetensors"),
        ] {
            std::fs::copy(flux.join(from), dir.path().join(part)).unwrap();
        }
        std::fs::write(
            dir.path().join("flux.json"),
            r#"{"text_encoder": "clip.safetensors", "text_encoder_2": "t5.safetensors", "vae": "ae.safetensors"}"#,
        )
        .unwrap();
        let aliases = [("sd".to_string(), "my-sd".to_string())];
        let catalog = Catalog::scan(dir.path(), &aliases).unwrap();
        let names: Vec<_> = catalog.models().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["flux", "my-sd", "tiny-sd"]);
        assert_eq!(
            catalog.broken().map(|(name, _)| name).collect::<Vec<_>>(),
            ["notes"]
        );
        assert_eq!(catalog.resolve("flux").unwrap().family, Family::Flux);
        let model = catalog.resolve("sd").unwrap();
        assert_eq!(model.format, ModelFormat::SingleFile);
        assert_eq!(
            (model.family, model.defaults.steps),
            (Family::StableDiffusion, 7)
        );
        assert_eq!(model.view("sd", false).format, "single file");
        assert_eq!(
            catalog.resolve("tiny-sd").unwrap().format,
            ModelFormat::Folder
        );
        let error = catalog.resolve("notes").unwrap_err().to_string();
        assert!(
            error.contains("notes.safetensors") && error.contains("safetensors"),
            "{error}"
        );
    }

    #[test]
    fn scans_fixture_models_and_aliases() {
        let aliases = [("seedream-4-5-251128".to_string(), "tiny-sd".to_string())];
        let catalog = Catalog::scan(&fixtures(), &aliases).unwrap();
        let names: Vec<_> = catalog.models().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["tiny-sd", "tiny-sdxl"]);
        let model = catalog.resolve("seedream-4-5-251128").unwrap();
        assert_eq!((model.name.as_str(), model.native_size), ("tiny-sd", 64));
        assert_eq!(model.defaults.steps, 30);
        assert!(matches!(
            catalog.resolve("nope"),
            Err(CoreError::ModelNotFound { .. })
        ));
        let relaying = catalog.with_relayed(["seedream-4-0".to_string()]);
        assert_eq!(
            relaying.resolve("tiny-sdd").unwrap_err().to_string(),
            "model `tiny-sdd` not found; available: tiny-sd, tiny-sdxl, seedream-4-5-251128, \
             seedream-4-0; did you mean `tiny-sd`?"
        );
        let error = Catalog::scan(&fixtures(), &[("a".into(), "missing".into())]).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn other_nodes_models_are_offered_after_our_own() {
        let aliases = [("seedream-4-5-251128".to_string(), "tiny-sd".to_string())];
        let worker = Catalog::scan(&fixtures(), &aliases)
            .unwrap()
            .with_relayed(["ark-model".to_string()]);
        let announced = worker.announcement(true, true);
        let names: Vec<_> = announced.models.keys().map(String::as_str).collect();
        assert_eq!(names, ["seedream-4-5-251128", "tiny-sd", "tiny-sdxl"]);
        assert_eq!(announced.relayed.iter().collect::<Vec<_>>(), ["ark-model"]);
        // What travels between nodes reads back the same.
        let json = serde_json::to_string(&announced).unwrap();
        assert_eq!(
            serde_json::from_str::<Announcement>(&json).unwrap(),
            announced
        );
        assert!(worker.announcement(false, false).models.is_empty());

        let front = Catalog::default().with_peers(announced);
        let model = front.resolve("seedream-4-5-251128").unwrap();
        assert_eq!((model.name.as_str(), model.native_size), ("tiny-sd", 64));
        assert!(front.relayed_elsewhere("ark-model") && !front.relayed_elsewhere("tiny-sd"));
        assert_eq!(front.peer_models().count(), 3);
        assert!(front.names().contains(&"ark-model".to_string()));
        // A node's own model of the same name is never shadowed by a peer's.
        let own = Catalog::scan(&fixtures(), &[])
            .unwrap()
            .with_peers(worker.announcement(true, false));
        assert_eq!(
            own.peer_models().map(|m| m.0).collect::<Vec<_>>(),
            ["seedream-4-5-251128"]
        );
    }

    /// FLUX's defaults and 1K come from its configs ([dev] has a guidance embedding); a
    /// `seedbed.json` beside them wins.
    #[test]
    fn flux_defaults_come_from_the_family_and_seedbed_json_overrides_them() {
        let dit = fixtures().join("../models-dit");
        let catalog = Catalog::scan(&dit, &[]).unwrap();
        let schnell = catalog.resolve("tiny-flux-schnell").unwrap();
        assert_eq!(schnell.family, Family::Flux);
        assert_eq!((schnell.native_size, schnell.latent_factor), (1024, 16));
        assert_eq!(
            (schnell.defaults.steps, schnell.defaults.guidance_scale),
            (4, 0.0)
        );
        let dev = catalog.resolve("tiny-flux-dev").unwrap();
        assert_eq!((dev.defaults.steps, dev.defaults.guidance_scale), (28, 3.5));

        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("flux-turbo-lora");
        std::fs::create_dir(&model).unwrap();
        for entry in std::fs::read_dir(dit.join("tiny-flux-schnell")).unwrap() {
            let entry = entry.unwrap();
            std::os::unix::fs::symlink(entry.path(), model.join(entry.file_name())).unwrap();
        }
        // "turbo" in a FLUX name does not make it a one-step SD Turbo.
        let catalog = Catalog::scan(dir.path(), &[]).unwrap();
        assert_eq!(
            catalog.resolve("flux-turbo-lora").unwrap().defaults.steps,
            4
        );
        std::fs::write(
            model.join("seedbed.json"),
            r#"{"steps": 8, "guidance_scale": 1.5, "native_size": 768}"#,
        )
        .unwrap();
        let catalog = Catalog::scan(dir.path(), &[]).unwrap();
        let entry = catalog.resolve("flux-turbo-lora").unwrap();
        assert_eq!(
            (entry.defaults.steps, entry.defaults.guidance_scale),
            (8, 1.5)
        );
        assert_eq!(entry.native_size, 768);
    }

    #[test]
    fn broken_folders_are_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken");
        std::fs::create_dir(&broken).unwrap();
        std::fs::write(broken.join("model_index.json"), "{").unwrap();
        let catalog = Catalog::scan(dir.path(), &[]).unwrap();
        let error = catalog.resolve("broken").unwrap_err();
        assert!(matches!(error, CoreError::ModelLoad { .. }), "{error}");
    }

    #[test]
    fn aliases_parse() {
        assert_eq!(
            parse_alias("a=b").unwrap(),
            ("a".to_string(), "b".to_string())
        );
        assert!(parse_alias("ab").unwrap_err().contains("PUBLIC=LOCAL"));
        assert!(parse_alias("=b").is_err());
    }
}
