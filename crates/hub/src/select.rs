//! Which files of a diffusers repository the pipeline needs: `model_index.json`, each
//! component's configs and tokenizer files, and one set of safetensors weights per component
//! (the `fp16` variant when asked and present). Everything else (pickle, ONNX, Flax, OpenVINO,
//! single-file checkpoints, images) stays on the hub.

use std::collections::BTreeSet;

use crate::error::{PullError, Result};
use crate::listing::Sibling;

/// Components seedbed never loads: SD 1.x's safety checker alone is 1.2 GB.
const UNUSED: &[&str] = &["safety_checker", "feature_extractor"];

/// The component folders `model_index.json` names (`"unet": ["diffusers", "UNet2DConditionModel"]`).
pub fn components(model_index: &serde_json::Value) -> Vec<String> {
    let Some(entries) = model_index.as_object() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|(name, _)| !name.starts_with('_') && !UNUSED.contains(&name.as_str()))
        .filter(|(_, value)| {
            value
                .as_array()
                .is_some_and(|pair| pair.len() == 2 && pair.iter().all(|v| v.is_string()))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The files to fetch, in listing order.
pub fn select<'a>(
    repo: &str,
    siblings: &'a [Sibling],
    components: &[String],
    variant: Option<&str>,
) -> Result<Vec<&'a Sibling>> {
    let mut keep: BTreeSet<String> = BTreeSet::new();
    if !siblings.iter().any(|s| s.rfilename == "model_index.json") {
        return Err(PullError::NotAPipeline { repo: repo.into() });
    }
    keep.insert("model_index.json".into());
    if let Some(bad) = siblings.iter().find(|s| !is_safe_path(&s.rfilename)) {
        return Err(PullError::Protocol(format!(
            "{repo} lists a file outside the repository: {}",
            bad.rfilename
        )));
    }
    for component in components {
        let prefix = format!("{component}/");
        let files: Vec<&str> = siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter_map(|path| path.strip_prefix(&prefix))
            .filter(|name| !name.contains('/'))
            .collect();
        for name in &files {
            if is_support_file(name) {
                keep.insert(format!("{prefix}{name}"));
            }
        }
        match weights(&files, variant) {
            Some(chosen) => {
                keep.extend(chosen.into_iter().map(|name| format!("{prefix}{name}")));
            }
            None if files.iter().any(|n| n.ends_with(".bin")) => {
                return Err(PullError::OnlyPickle {
                    repo: repo.into(),
                    component: component.clone(),
                });
            }
            None => {} // scheduler, tokenizer: no weights
        }
    }
    Ok(siblings
        .iter()
        .filter(|s| keep.contains(&s.rfilename))
        .collect())
}

/// A relative path that stays inside the model folder on every platform.
pub fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains(':')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Configs and tokenizer files; weight indexes are chosen with their weights instead.
fn is_support_file(name: &str) -> bool {
    if name.contains(".safetensors.index") || name.ends_with(".index.json") {
        return false;
    }
    name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".model")
}

/// One weights set: a single file or an index with its shards; the variant first when asked,
/// else the plain set, else (a repo with only variant files) the variant.
fn weights<'a>(files: &[&'a str], variant: Option<&str>) -> Option<Vec<&'a str>> {
    let plain = weight_set(files, None);
    match variant {
        Some(v) => weight_set(files, Some(v)).or(plain),
        None => plain.or_else(|| weight_set(files, Some("fp16"))),
    }
}

fn weight_set<'a>(files: &[&'a str], variant: Option<&str>) -> Option<Vec<&'a str>> {
    let infix = variant.map(|v| format!(".{v}")).unwrap_or_default();
    let mut stems: Vec<&str> = Vec::new();
    for name in files {
        if let Some(stem) = name.strip_suffix(&format!("{infix}.safetensors"))
            && !stem.contains('.')
            && !stem.contains("-of-")
        {
            stems.push(stem);
        }
    }
    if let Some(stem) = stems.first() {
        let single = files
            .iter()
            .find(|n| **n == format!("{stem}{infix}.safetensors"))?;
        return Some(vec![single]);
    }
    // Sharded: `x.safetensors.index{infix}.json` (diffusers) or `x{infix}.safetensors.index.json`,
    // with shards `x{infix}-00001-of-00002.safetensors`.
    let index = files.iter().find(|name| {
        name.ends_with(&format!(".safetensors.index{infix}.json"))
            && !name
                .trim_end_matches(&format!(".safetensors.index{infix}.json"))
                .contains('.')
            || name.ends_with(&format!("{infix}.safetensors.index.json"))
                && !name
                    .trim_end_matches(&format!("{infix}.safetensors.index.json"))
                    .contains('.')
    })?;
    let stem = index.split('.').next()?;
    let mut set = vec![*index];
    set.extend(files.iter().filter(|name| {
        name.strip_prefix(&format!("{stem}{infix}-"))
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .is_some_and(|rest| rest.contains("-of-") && !rest.contains('.'))
    }));
    (set.len() > 1).then_some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(paths: &[&str]) -> Vec<Sibling> {
        paths
            .iter()
            .map(|p| Sibling {
                rfilename: p.to_string(),
                size: Some(1),
                blob_id: None,
                lfs: None,
            })
            .collect()
    }

    fn names(selected: &[&Sibling]) -> Vec<String> {
        selected.iter().map(|s| s.rfilename.clone()).collect()
    }

    const REPO: &[&str] = &[
        ".gitattributes",
        "README.md",
        "model_index.json",
        "sd_xl_turbo_1.0.safetensors",
        "sd_xl_turbo_1.0_fp16.safetensors",
        "image.png",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "text_encoder/flax_model.msgpack",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/openvino_model.xml",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_flax_model.msgpack",
        "vae_decoder/model.onnx",
        "onnx/unet/model.onnx",
    ];
    const COMPONENTS: &[&str] = &["scheduler", "text_encoder", "tokenizer", "unet", "vae"];

    fn components() -> Vec<String> {
        COMPONENTS.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn plain_weights_by_default() {
        let siblings = listing(REPO);
        let chosen = names(&select("r", &siblings, &components(), None).unwrap());
        assert_eq!(
            chosen,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors.index.json",
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
    }

    /// FLUX.1-schnell's layout: T5's sentencepiece model comes along; the single-file
    /// checkpoints beside the diffusers folders (`flux1-schnell.safetensors`, `ae.safetensors`)
    /// stay on the hub.
    #[test]
    fn a_flux_repository() {
        let siblings = listing(&[
            "model_index.json",
            "flux1-schnell.safetensors",
            "ae.safetensors",
            "schnell_grid.jpeg",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder_2/config.json",
            "text_encoder_2/model-00001-of-00002.safetensors",
            "text_encoder_2/model-00002-of-00002.safetensors",
            "text_encoder_2/model.safetensors.index.json",
            "tokenizer_2/special_tokens_map.json",
            "tokenizer_2/spiece.model",
            "tokenizer_2/tokenizer.json",
            "tokenizer_2/tokenizer_config.json",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
            "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
            "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]);
        let components: Vec<String> = [
            "scheduler",
            "text_encoder",
            "text_encoder_2",
            "tokenizer_2",
            "transformer",
            "vae",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        let chosen = names(&select("r", &siblings, &components, None).unwrap());
        assert_eq!(chosen.len(), 19, "{chosen:?}");
        for wanted in [
            "tokenizer_2/spiece.model",
            "text_encoder_2/model.safetensors.index.json",
            "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
        ] {
            assert!(chosen.contains(&wanted.to_string()), "{wanted}: {chosen:?}");
        }
        for unwanted in [
            "flux1-schnell.safetensors",
            "ae.safetensors",
            "schnell_grid.jpeg",
        ] {
            assert!(!chosen.contains(&unwanted.to_string()), "{chosen:?}");
        }
    }

    #[test]
    fn fp16_variant_when_asked() {
        let siblings = listing(REPO);
        let chosen = names(&select("r", &siblings, &components(), Some("fp16")).unwrap());
        assert!(chosen.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(chosen.contains(&"text_encoder/model.fp16.safetensors".to_string()));
        assert!(chosen.contains(&"vae/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(!chosen.iter().any(|c| c.contains("00001-of")), "{chosen:?}");
        assert!(!chosen.contains(&"vae/diffusion_pytorch_model.safetensors".to_string()));
    }

    #[test]
    fn sharded_fp16_with_the_diffusers_index_name() {
        let files = [
            "diffusion_pytorch_model.safetensors.index.fp16.json",
            "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
            "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors",
        ];
        let fp16 = weights(&files, Some("fp16")).unwrap();
        assert_eq!(fp16, &files[..3]);
        assert_eq!(weights(&files, None).unwrap(), &files[3..]);
    }

    #[test]
    fn only_variant_files_are_used_without_asking() {
        let files = ["model.fp16.safetensors", "config.json"];
        assert_eq!(weights(&files, None).unwrap(), ["model.fp16.safetensors"]);
    }

    #[test]
    fn pickle_only_and_non_pipelines_are_refused() {
        let siblings = listing(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
        ]);
        let error = select("r", &siblings, &["unet".into()], None).unwrap_err();
        assert!(
            error.to_string().contains("`unet` has only pickle"),
            "{error}"
        );
        let siblings = listing(&["v1-5-pruned.safetensors"]);
        assert!(matches!(
            select("r", &siblings, &[], None),
            Err(PullError::NotAPipeline { .. })
        ));
    }

    #[test]
    fn paths_that_escape_the_folder_are_refused() {
        for bad in [
            "../evil.json",
            "unet/../../x",
            "/etc/passwd",
            "a\\b",
            "C:x",
            "a//b",
        ] {
            assert!(!is_safe_path(bad), "{bad}");
        }
        assert!(is_safe_path("unet/config.json"));
        let siblings = listing(&["model_index.json", "unet/../../evil.safetensors"]);
        assert!(select("r", &siblings, &["unet".into()], None).is_err());
    }

    #[test]
    fn components_come_from_model_index() {
        let index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": [null, null], "requires_safety_checker": true,
            "tokenizer": ["transformers", "CLIPTokenizer"],
        });
        assert_eq!(super::components(&index), ["tokenizer", "unet"]);
    }
}
