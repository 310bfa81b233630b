//! Helpers for unit tests that compare against the diffusers reference fixtures.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The repository's `fixtures/` folder (tiny models, reference cases, CLIP tokenizer).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures_dir().join("models").join(name)
}

/// The tensors of one reference case, e.g. `sd-ddim-cfg`.
pub fn case_tensors(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir()
        .join("cases")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tensors of one reference case of the transformer families, e.g. `flux-dev-guidance`.
pub fn dit_case_tensors(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir()
        .join("cases-dit")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The transformer families' `cases.json`, read into the fields a test needs.
pub fn dit_cases<T: serde::de::DeserializeOwned>() -> Vec<T> {
    crate::config_files::read_json(&fixtures_dir().join("cases-dit/cases.json")).unwrap()
}

/// A transformer-family model folder, e.g. `tiny-flux-dev`.
pub fn dit_model_dir(name: &str) -> PathBuf {
    fixtures_dir().join("models-dit").join(name)
}

/// The largest magnitude in `t`, as f32.
pub fn max_abs(t: &Tensor) -> f32 {
    let t = t.to_dtype(DType::F32).unwrap();
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The fixtures' tolerance for intermediate tensors: `1e-3 * max(1, max|reference|)`.
pub fn assert_close(name: &str, got: &Tensor, reference: &Tensor) {
    assert_eq!(got.dims(), reference.dims(), "{name}: shape");
    let got = got.to_dtype(DType::F32).unwrap();
    let reference = reference.to_dtype(DType::F32).unwrap();
    let scale = max_abs(&reference);
    let diff = max_abs(&(got - &reference).unwrap());
    let bound = 1e-3 * scale.max(1.0);
    assert!(diff <= bound, "{name}: max_abs {diff} > {bound}");
}
