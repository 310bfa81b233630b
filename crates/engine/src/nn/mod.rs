//! Building blocks shared by the text encoder, the UNet and the VAE.

pub mod attention;
pub mod resnet;
