//! Seeded Gaussian noise. Noise is drawn on the CPU from a portable RNG and then moved to
//! the device, so a seed gives the same starting latents on every device and build.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::scheduler::NoiseSource;

pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Unit-normal f32 noise of `shape` on `device`.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)
    }
}

impl NoiseSource for SeededNoise {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        self.randn(like.dims(), like.device())?
            .to_dtype(like.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_unit_variance() {
        let a = SeededNoise::new(42)
            .randn(&[1, 4, 32, 32], &Device::Cpu)
            .unwrap();
        let b = SeededNoise::new(42)
            .randn(&[1, 4, 32, 32], &Device::Cpu)
            .unwrap();
        let c = SeededNoise::new(43)
            .randn(&[1, 4, 32, 32], &Device::Cpu)
            .unwrap();
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 0.1);
        let var = a
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((var - 1.0).abs() < 0.1, "variance {var}");
    }
}
