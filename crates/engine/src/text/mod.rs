//! Text encoders and their tokenizers, shared by the families that condition on them.

pub mod clip;
pub mod qwen3;
pub mod t5;
