//! Building blocks shared by the text encoder, the UNet and the VAE.

pub mod activation;
pub mod attention;
pub mod bf16;
pub mod conv;
pub mod embeddings;
pub mod gemm;
pub mod im2col;
pub mod layers;
pub mod mapped;
pub mod math;
pub mod norm;
pub mod quantized;
pub mod resnet;
pub mod stored;
pub mod transpose;
pub mod winograd;
