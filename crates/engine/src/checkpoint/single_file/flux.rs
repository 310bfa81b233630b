//! A FLUX.1 transformer file (`flux1-dev.safetensors`, a fine-tune, city96's GGUF) described as
//! a `FluxPipeline` folder: the transformer from the file, CLIP-L, T5 and the autoencoder from
//! files named in `NAME.json` (`clip_l.safetensors`, `t5xxl_fp16.safetensors`, `ae.safetensors`,
//! as ComfyUI users keep them) or from a base folder, tokenizers built in.

use serde_json::json;

use super::{Problem, Writer, write_json};
use crate::checkpoint::component_file::Role;
use crate::checkpoint::{Layout, flux_bfl};
use crate::error::{EngineError, Result};

/// T5's SentencePiece tokenizer, as transformers' `T5TokenizerFast` writes it.
const T5_TOKENIZER: &[u8] =
    include_bytes!("../../../../../fixtures/models-dit/tiny-flux-dev/tokenizer_2/tokenizer.json");

/// FLUX.1's autoencoder latent scale and shift.
const FLUX_VAE: Role = Role::Vae {
    scale: 0.3611,
    shift: Some(0.1159),
};

impl Writer<'_> {
    pub(super) fn write_flux(&self) -> Result<(), Problem> {
        let config = flux_bfl::config(self.shapes)?;
        let mut config = serde_json::to_value(&config).expect("a config serializes");
        config["_class_name"] = json!("FluxTransformer2DModel");
        self.component("transformer", Some((Layout::FluxBfl, config)), None)?;
        let clip = Role::TextEncoder {
            clip_act: "quick_gelu",
        };
        self.component("text_encoder", None, Some(clip))?;
        // The T5 in this place; a CLIP activation does not apply.
        let t5 = Role::TextEncoder { clip_act: "gelu" };
        self.component("text_encoder_2", None, Some(t5))?;
        self.component("vae", None, Some(FLUX_VAE))?;
        self.tokenizer("tokenizer", "<|endoftext|>")?;
        Ok(self.t5_tokenizer()?)
    }

    fn t5_tokenizer(&self) -> Result<()> {
        if let Some(base) = self.base_dir("tokenizer_2") {
            return super::link(&base, &self.out.join("tokenizer_2"));
        }
        let dir = self.out.join("tokenizer_2");
        super::create(&dir)?;
        super::write(&dir.join("tokenizer.json"), T5_TOKENIZER)
    }

    /// FLUX.1's flow-match schedule: \[dev\] (guidance-distilled) shifts by resolution, \[schnell\]
    /// not at all.
    pub(super) fn flux_scheduler(&self) -> Result<()> {
        let dev = flux_bfl::config(self.shapes)
            .map(|config| config.guidance_embeds)
            .map_err(|message| EngineError::Weights {
                path: self.file.to_path_buf(),
                message,
            })?;
        let config = json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": if dev { 3.0 } else { 1.0 },
            "use_dynamic_shifting": dev,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
            "time_shift_type": "exponential",
        });
        let dir = self.out.join("scheduler");
        super::create(&dir)?;
        write_json(&dir.join("scheduler_config.json"), &config)
    }
}
