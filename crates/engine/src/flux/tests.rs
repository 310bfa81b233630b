//! FLUX's packing. The pipeline itself is checked stage by stage against every FLUX reference
//! case by `parity` (crates/engine/tests/it/parity.rs).

use candle_core::{Device, IndexOp, Tensor};

use super::pipeline::{FluxPipeline, pack, unpack};
use crate::pipeline::LoadOptions;
use crate::test_support::dit_model_dir;

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
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&back), flat(&x));
}

/// A prompt encoded a moment ago comes from the cache: the very same tensors, not equal ones.
#[test]
fn a_repeated_prompt_is_encoded_once() {
    let dir = dit_model_dir("tiny-flux-schnell");
    let pipeline = FluxPipeline::load(&dir, LoadOptions::default()).unwrap();
    let first = pipeline.encode("a red fox", 256).unwrap();
    let again = pipeline.encode("a red fox", 256).unwrap();
    assert_eq!(first.text.id(), again.text.id());
    assert_eq!(first.pooled.id(), again.pooled.id());
    let longer = pipeline.encode("a red fox", 512).unwrap();
    assert_ne!(
        first.text.id(),
        longer.text.id(),
        "another T5 length is another entry"
    );
    assert_eq!(longer.text.dim(1).unwrap(), 512);
}
