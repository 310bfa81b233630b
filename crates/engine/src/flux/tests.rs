//! FLUX's packing. The pipeline itself is checked stage by stage against every FLUX reference
//! case by `parity` (crates/engine/tests/it/parity.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::pipeline::{FluxPipeline, FluxRun, pack, unpack};
use crate::pipeline::LoadOptions;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    steps: usize,
    guidance_scale: f64,
    max_sequence_length: usize,
    true_cfg_scale: Option<f64>,
}

fn max_diff(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    let diff = (ours.to_dtype(DType::F32).unwrap() - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff, scale)
}

fn ids(t: &HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    t[name]
        .to_dtype(DType::U32)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn packing_orders_features_channel_then_dy_then_dx_and_unpacks_back() {
    let x = Tensor::arange(0f32, 2.0 * 4.0 * 4.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 4, 4))
        .unwrap();
    let packed = pack(&x).unwrap();
    assert_eq!(packed.dims(), [1, 4, 8]);
    // Token (0, 0): channel 0's 2x2 patch (0, 1, 4, 5), then channel 1's (16, 17, 20, 21).
    let first: Vec<f32> = packed.i((0, 0)).unwrap().to_vec1().unwrap();
    assert_eq!(first, [0.0, 1.0, 4.0, 5.0, 16.0, 17.0, 20.0, 21.0]);
    let back = unpack(&packed, 2, 2, 2).unwrap();
    let (diff, _) = max_diff(&back, &x);
    assert_eq!(diff, 0.0);
}
