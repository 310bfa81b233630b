//! FLUX's packing. The pipeline itself is checked stage by stage against every FLUX reference
//! case by `parity` (crates/engine/tests/it/parity.rs).

use candle_core::{Device, IndexOp, Tensor};

use super::pipeline::{pack, unpack};

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
