//! Live previews: a denoise's latents as a small picture, without running the VAE decoder on
//! them.
//!
//! A latent pixel's colour is close to a linear function of its channels; tools keep a table
//! of those coefficients per model family. Ours are fitted to the model's own decoder on the
//! first preview it is asked for: one decode of a 16x16 patch of unit-normal latents, each
//! latent pixel's channels against the mean colour of the 8x8 (or 16x16) pixels it decodes
//! to, least squares with a bias. That works for any VAE, including the tiny test models, and
//! costs one small decode per loaded model; a preview afterwards is a `C x 3` product per
//! latent pixel, a picture of the latents' size (64x64 for a 512x512 SD image).

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::noise::SeededNoise;
use crate::vae::{Vae, VaeTiling};

/// Latent pixels per side of the patch the projection is fitted on.
const FIT_SIDE: usize = 16;

/// A model's latent-to-RGB projection, fitted on first use.
#[derive(Debug, Default)]
pub struct LatentPreview {
    projection: OnceLock<Projection>,
}

/// `rgb = bias + sum_c weights[c] x latent[c]`, in [0, 1] before clamping.
#[derive(Debug, Clone, PartialEq)]
struct Projection {
    weights: Vec<[f32; 3]>,
    bias: [f32; 3],
}

impl LatentPreview {
    /// `latents` `(1, C, h, w)` (scaled, as the denoiser holds them) as an `h x w` picture.
    pub fn render(&self, vae: &Vae, latents: &Tensor) -> Result<RgbImage> {
        let projection = match self.projection.get() {
            Some(projection) => projection,
            None => {
                let fitted = Projection::fit(vae, latents.device())?;
                self.projection.get_or_init(|| fitted)
            }
        };
        projection.render(latents)
    }
}

impl Projection {
    fn fit(vae: &Vae, device: &Device) -> Result<Self> {
        let channels = vae.config().latent_channels;
        let latents = SeededNoise::new(0).randn(&[1, channels, FIT_SIDE, FIT_SIDE], device)?;
        // (1, H, W, 3) in [0, 1], H = FIT_SIDE x factor.
        let pixels = vae.decode_scaled(&latents, VaeTiling::Never)?;
        let factor = vae.downscale_factor();
        let pixels = pixels
            .reshape((FIT_SIDE, factor, FIT_SIDE, factor, 3))?
            .mean(3)?
            .mean(1)?
            .reshape((FIT_SIDE * FIT_SIDE, 3))?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let inputs = latents
            .reshape((channels, FIT_SIDE * FIT_SIDE))?
            .t()?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let mut rows = Vec::with_capacity(inputs.len());
        for (mut x, rgb) in inputs.into_iter().zip(&pixels) {
            x.push(1.0);
            rows.push((x, rgb));
        }
        let solved = least_squares(&rows, channels + 1)?;
        let weights = (0..channels)
            .map(|c| {
                [
                    solved[0][c] as f32,
                    solved[1][c] as f32,
                    solved[2][c] as f32,
                ]
            })
            .collect();
        let bias = [0, 1, 2].map(|k| solved[k][channels] as f32);
        Ok(Self { weights, bias })
    }

    fn render(&self, latents: &Tensor) -> Result<RgbImage> {
        let (_, channels, h, w) = latents.dims4()?;
        if channels != self.weights.len() {
            return Err(EngineError::Compute(candle_core::Error::msg(format!(
                "preview: {channels} latent channels, the projection has {}",
                self.weights.len()
            ))));
        }
        let values = latents
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let plane = h * w;
        let mut picture = RgbImage::new(w as u32, h as u32);
        for (p, pixel) in picture.pixels_mut().enumerate() {
            let mut rgb = self.bias;
            for (c, weights) in self.weights.iter().enumerate() {
                let v = values[c * plane + p];
                for (out, weight) in rgb.iter_mut().zip(weights) {
                    *out += weight * v;
                }
            }
            pixel.0 = rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        Ok(picture)
    }
}

/// Least squares for each of 3 outputs over `(inputs, outputs)` rows, by the normal equations
/// with a little ridge so that an unused channel does not make them singular; `[output][input]`.
fn least_squares(rows: &[(Vec<f64>, &Vec<f64>)], inputs: usize) -> Result<[Vec<f64>; 3]> {
    let mut gram = vec![vec![0f64; inputs]; inputs];
    let mut moments = [vec![0f64; inputs], vec![0f64; inputs], vec![0f64; inputs]];
    for (x, y) in rows {
        for i in 0..inputs {
            for j in 0..inputs {
                gram[i][j] += x[i] * x[j];
            }
            for (k, moment) in moments.iter_mut().enumerate() {
                moment[i] += x[i] * y[k];
            }
        }
    }
    for (i, row) in gram.iter_mut().enumerate() {
        row[i] += 1e-6 * rows.len() as f64;
    }
    let mut solved = moments.clone();
    for target in &mut solved {
        *target = solve(gram.clone(), target.clone())?;
    }
    Ok(solved)
}

/// `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() < 1e-12 {
            return Err(candle_core::Error::msg("preview: singular fit").into());
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in below.iter_mut().enumerate() {
            let factor = row[col] / pivot_row[col];
            for (value, pivot) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * pivot;
            }
            b[col + 1 + offset] -= factor * b[col];
        }
    }
    let mut x = vec![0f64; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::model_dir;
    use crate::weights::Variant;

    #[test]
    fn a_linear_system_is_solved() {
        let a = vec![vec![2.0, 1.0], vec![1.0, 3.0]];
        let x = solve(a, vec![5.0, 10.0]).unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-12 && (x[1] - 3.0).abs() < 1e-12,
            "{x:?}"
        );
    }

    /// The fitted projection of the tiny SD VAE predicts the colours its decoder gives new
    /// latents clearly better than their mean colour does, and a preview has the latents' size.
    #[test]
    fn the_projection_follows_the_decoder() {
        let vae = Vae::load(
            &model_dir("tiny-sd").join("vae"),
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let preview = LatentPreview::default();
        let latents = SeededNoise::new(7)
            .randn(&[1, 4, 12, 10], &Device::Cpu)
            .unwrap();
        let picture = preview.render(&vae, &latents).unwrap();
        assert_eq!(picture.dimensions(), (10, 12));
        let decoded = vae.decode_scaled(&latents, VaeTiling::Never).unwrap();
        let factor = vae.downscale_factor();
        let means = decoded
            .reshape((12, factor, 10, factor, 3))
            .unwrap()
            .mean(3)
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let predicted: Vec<f32> = picture.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
        let average = means.iter().sum::<f32>() / means.len() as f32;
        let error = |guess: &dyn Fn(usize) -> f32| {
            (0..means.len())
                .map(|i| (means[i] - guess(i)).powi(2))
                .sum::<f32>()
        };
        let fitted = error(&|i| predicted[i]);
        let flat = error(&|_| average);
        // The tiny VAE's random weights are far less linear than a trained decoder: the map
        // explains about a third of the colour variance of latents it was not fitted on.
        assert!(fitted < 0.8 * flat, "fitted {fitted} vs flat {flat}");
    }
}
