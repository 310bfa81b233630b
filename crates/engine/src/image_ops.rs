//! Conversions between decoded tensors and pictures.

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};

/// `(B, 3, H, W)` decoded in about [-1, 1] to `(B, H, W, 3)` f32 in [0, 1]:
/// `clamp(x / 2 + 0.5, 0, 1)`, the reference's `image` before 8-bit rounding.
pub fn to_unit_range(decoded: &Tensor) -> candle_core::Result<Tensor> {
    ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((0, 2, 3, 1))
}

/// `(B, H, W, 3)` in [0, 1] to one RGB picture per batch item, rounding as the reference
/// (`round(x * 255)`).
pub fn to_rgb8(images: &Tensor) -> candle_core::Result<Vec<RgbImage>> {
    let (batch, height, width, _) = images.dims4()?;
    let bytes = (images.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .to_device(&Device::Cpu)?;
    (0..batch)
        .map(|b| {
            let data: Vec<u8> = bytes.get(b)?.flatten_all()?.to_vec1()?;
            RgbImage::from_raw(width as u32, height as u32, data)
                .ok_or_else(|| candle_core::Error::msg("image buffer has the wrong size"))
        })
        .collect()
}

/// A decoded picture to `(1, 3, H, W)` in [-1, 1], resized (Lanczos, as the reference's
/// image processor) to `width` x `height` when its size differs.
pub fn from_picture(
    picture: &DynamicImage,
    width: u32,
    height: u32,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let rgb = if picture.width() == width && picture.height() == height {
        picture.to_rgb8()
    } else {
        picture
            .resize_exact(width, height, FilterType::Lanczos3)
            .to_rgb8()
    };
    let data = rgb.into_raw();
    Tensor::from_vec(data, (height as usize, width as usize, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(DType::F32)?
        .affine(2.0 / 255.0, -1.0)?
        .to_dtype(dtype)?
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_round_trip_through_tensors() {
        let picture =
            RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 100, 255]));
        let tensor = from_picture(
            &DynamicImage::ImageRgb8(picture.clone()),
            5,
            3,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        assert_eq!(tensor.dims(), &[1, 3, 3, 5]);
        let back = to_rgb8(&to_unit_range(&tensor).unwrap()).unwrap();
        assert_eq!(back[0], picture);
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let t = Tensor::new(&[[[[-3f32]], [[0.0]], [[3.0]]]], &Device::Cpu).unwrap();
        let rgb = to_rgb8(&to_unit_range(&t).unwrap()).unwrap();
        assert_eq!(rgb[0].get_pixel(0, 0).0, [0, 128, 255]);
    }
}
