//! The one thread that owns the compute device and the loaded models.
//!
//! Jobs arrive on a bounded channel; each carries its cancel flag and a channel for what it
//! produces. Models load on first use and are evicted least-recently-used to stay within a
//! memory budget. A panic while running a job fails that job only.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use seedbed_engine::output::{self, Provenance};
use seedbed_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, Pipeline, StageTimes};
use seedbed_types::job_event::Preview;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{CoreError, Result};
use crate::spec::LocalSpec;

/// One job for the device thread.
pub struct DeviceJob {
    pub job_id: String,
    pub images: u32,
    pub spec: LocalSpec,
    pub model_path: PathBuf,
    pub weights_bytes: u64,
    pub references: Vec<Bytes>,
    /// The spec's LoRAs, resolved in this node's LoRA folder.
    pub loras: Vec<seedbed_engine::lora::LoraChoice>,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<DeviceEvent>,
}

#[derive(Debug)]
pub enum DeviceEvent {
    Progress {
        image: u32,
        images: u32,
        step: u32,
        steps: u32,
        preview: Option<Preview>,
    },
    /// An encoded, watermarked picture ready to store.
    Image {
        index: u32,
        bytes: Vec<u8>,
        width: u32,
        height: u32,
        seed: u64,
    },
    ImageFailed {
        index: u32,
        message: String,
    },
    /// Always the last event of a job.
    Done(std::result::Result<(), DeviceFailure>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceFailure {
    ModelLoad(String),
    Cancelled,
    Internal(String),
}

#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub load: LoadOptions,
    /// Bytes of weights kept loaded at once (each model's weight files and its weights merged
    /// with LoRAs); least-recently-used models are dropped first.
    pub memory_budget: u64,
}

impl DeviceOptions {
    /// 16 GiB: an SDXL pipeline in f32 and a smaller model beside it.
    pub const DEFAULT_MEMORY_BUDGET: u64 = 16 << 30;
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            memory_budget: Self::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Handle to the device thread.
#[derive(Clone)]
pub struct Device {
    tx: SyncSender<DeviceJob>,
    alive: Arc<AtomicBool>,
    loaded: Arc<Mutex<Vec<String>>>,
    description: String,
}

impl Device {
    pub fn spawn(options: DeviceOptions) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let alive = Arc::new(AtomicBool::new(true));
        let loaded = Arc::new(Mutex::new(Vec::new()));
        let description = format!("{:?} {:?}", options.load.device, options.load.dtype);
        let thread_alive = alive.clone();
        let thread_loaded = loaded.clone();
        std::thread::Builder::new()
            .name("seedbed-device".into())
            .spawn(move || {
                device_loop(rx, ModelCache::new(options, thread_loaded));
                thread_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| CoreError::Internal(format!("cannot start the device thread: {e}")))?;
        Ok(Self {
            tx,
            alive,
            loaded,
            description,
        })
    }

    /// Hand a job to the device; fails if the thread is gone or still busy.
    pub fn submit(&self, job: DeviceJob) -> Result<()> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => CoreError::Internal("the device is busy".into()),
            TrySendError::Disconnected(_) => {
                CoreError::Internal("the device thread stopped".into())
            }
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Names of the models loaded now, most recently used last.
    pub fn loaded_models(&self) -> Vec<String> {
        self.loaded.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

fn device_loop(rx: Receiver<DeviceJob>, mut cache: ModelCache) {
    while let Ok(job) = rx.recv() {
        let span =
            tracing::info_span!("device_job", job = %job.job_id, model = %job.spec.local_model);
        let _entered = span.enter();
        let events = job.events.clone();
        // On a worker of the kernels' pool, so that their parallel ops split in place.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            seedbed_engine::cpu::on_workers(|| run_job(&mut cache, &job))
        }));
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(%message, "the job panicked on the device thread");
                Err(DeviceFailure::Internal(format!(
                    "the worker failed: {message}"
                )))
            }
        };
        let _ = events.send(DeviceEvent::Done(result));
    }
}

fn run_job(cache: &mut ModelCache, job: &DeviceJob) -> std::result::Result<(), DeviceFailure> {
    let spec = &job.spec;
    let pipeline = cache
        .get(&spec.local_model, &job.model_path, job.weights_bytes)
        .map_err(|e| DeviceFailure::ModelLoad(e.to_string()))?;
    let init = match job.references.first() {
        Some(bytes) => Some(InitImage {
            image: image::load_from_memory(bytes)
                .map_err(|e| DeviceFailure::Internal(format!("reference image: {e}")))?,
            strength: spec.strength,
        }),
        None => None,
    };
    for index in 0..job.images {
        if job.cancel.load(Ordering::SeqCst) {
            return Err(DeviceFailure::Cancelled);
        }
        let seed = seedbed_engine::pipeline::image_seed(spec.seed, u64::from(index));
        let request = GenerateRequest {
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            width: spec.compute_width,
            height: spec.compute_height,
            steps: spec.steps as usize,
            guidance_scale: spec.guidance_scale,
            scheduler: spec.scheduler,
            karras_sigmas: spec.karras_sigmas,
            true_cfg_scale: spec.true_cfg_scale,
            seed,
            count: 1,
            init_image: init.clone(),
        };
        let mut on_progress = |p: seedbed_engine::Progress| {
            let preview = match spec.preview && previews_at(p.step, p.steps) {
                true => preview(pipeline, &p.latents),
                false => None,
            };
            let _ = job.events.send(DeviceEvent::Progress {
                image: index,
                images: job.images,
                step: p.step as u32,
                steps: p.steps as u32,
                preview,
            });
        };
        let started = Instant::now();
        match pipeline.generate_with_loras(&request, &job.loras, &mut on_progress, &job.cancel) {
            Ok(mut images) => {
                let Some(picture) = images.pop() else {
                    return Err(DeviceFailure::Internal(
                        "the engine returned no image".into(),
                    ));
                };
                let encoding = Instant::now();
                let bytes = finish_picture(picture.image, spec, seed)?;
                record_stages(&spec.local_model, &picture.times, encoding.elapsed());
                tracing::info!(
                    index,
                    seconds = started.elapsed().as_secs_f64(),
                    text_encode_s = picture.times.text_encode.as_secs_f64(),
                    denoise_s = picture.times.denoise.as_secs_f64(),
                    decode_s = picture.times.decode.as_secs_f64(),
                    "image done"
                );
                let _ = job.events.send(DeviceEvent::Image {
                    index,
                    bytes,
                    width: spec.width,
                    height: spec.height,
                    seed,
                });
            }
            Err(EngineError::Cancelled) => return Err(DeviceFailure::Cancelled),
            Err(error) => {
                // Upstream stops a batch after an internal error; so do we.
                tracing::error!(%error, index, "image failed");
                let _ = job.events.send(DeviceEvent::ImageFailed {
                    index,
                    message: error.to_string(),
                });
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `seedbed_stage_seconds{stage, model}`: where a job's time goes on the device.
fn record_stages(model: &str, times: &StageTimes, output: Duration) {
    let stages = [
        ("text_encode", times.text_encode),
        ("denoise", times.denoise),
        ("vae_decode", times.decode),
        ("output_encode", output),
    ];
    for (stage, time) in stages {
        // Later images of a batch reuse the first one's prompt encoding.
        if stage == "text_encode" && time.is_zero() {
            continue;
        }
        metrics::histogram!("seedbed_stage_seconds", "stage" => stage, "model" => model.to_string())
            .record(time.as_secs_f64());
    }
}

/// Resize to the delivered size, watermark, encode with provenance metadata.
fn finish_picture(
    mut picture: image::RgbImage,
    spec: &LocalSpec,
    seed: u64,
) -> std::result::Result<Vec<u8>, DeviceFailure> {
    if picture.dimensions() != (spec.width, spec.height) {
        picture = image::imageops::resize(
            &picture,
            spec.width,
            spec.height,
            image::imageops::FilterType::Lanczos3,
        );
    }
    if spec.watermark && output::apply_watermark(&mut picture) == output::Watermark::Omitted {
        tracing::debug!(
            width = spec.width,
            height = spec.height,
            "no visible watermark: the shorter side is under {} px (the XMP still marks the image)",
            output::WATERMARK_MIN_SIDE
        );
    }
    let provenance = Provenance {
        model: spec.local_model.clone(),
        seed,
        software: format!("seedbed {}", env!("CARGO_PKG_VERSION")),
        created_unix: provenance_time(),
    };
    output::encode(&picture, spec.output_format, &provenance)
        .map_err(|e| DeviceFailure::Internal(e.to_string()))
}

/// When a picture was made, in unix seconds: `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention, so a run can be repeated byte for byte), else now.
fn provenance_time() -> i64 {
    let now = || seedbed_storage::now_ms() / 1000;
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => now(),
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(%text, "SOURCE_DATE_EPOCH is not unix seconds; using the clock");
            now()
        }),
    }
}

/// Previews per image, about: every `steps / PREVIEWS` steps and at the last one.
const PREVIEWS: usize = 8;

/// Whether step `step` (1-based) of `steps` carries a preview.
fn previews_at(step: usize, steps: usize) -> bool {
    step == steps || step.is_multiple_of(steps.div_ceil(PREVIEWS).max(1))
}

/// The latents as a small JPEG; none (with a warning) if that fails: a preview is never worth
/// failing the job for.
fn preview(pipeline: &Pipeline, latents: &seedbed_engine::candle::Tensor) -> Option<Preview> {
    let made = pipeline
        .preview(latents)
        .map_err(|e| e.to_string())
        .and_then(|picture| {
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                .encode_image(&picture)
                .map_err(|e| e.to_string())?;
            Ok(Preview {
                format: "jpeg".into(),
                width: picture.width(),
                height: picture.height(),
                b64_json: base64::engine::general_purpose::STANDARD.encode(jpeg),
            })
        });
    made.map_err(|error| tracing::warn!(%error, "no preview"))
        .ok()
}

/// Loaded pipelines, least recently used first.
struct ModelCache {
    options: DeviceOptions,
    entries: Vec<(String, u64, Pipeline)>,
    names: Arc<Mutex<Vec<String>>>,
}

impl ModelCache {
    fn new(options: DeviceOptions, names: Arc<Mutex<Vec<String>>>) -> Self {
        Self {
            options,
            entries: Vec::new(),
            names,
        }
    }

    fn get(
        &mut self,
        name: &str,
        path: &std::path::Path,
        bytes: u64,
    ) -> Result<&Pipeline, EngineError> {
        if let Some(position) = self.entries.iter().position(|(n, _, _)| n == name) {
            let entry = self.entries.remove(position);
            self.entries.push(entry);
        } else {
            self.make_room(bytes, 0);
            let started = Instant::now();
            let pipeline = Pipeline::load(path, self.options.load.clone())?;
            let seconds = started.elapsed().as_secs_f64();
            metrics::histogram!("seedbed_stage_seconds", "stage" => "model_load", "model" => name.to_string())
                .record(seconds);
            tracing::info!(model = %name, seconds, "model loaded");
            self.entries.push((name.to_string(), bytes, pipeline));
        }
        // Weights merged with LoRAs grow with the requests a model serves: the other models
        // make room for them too.
        self.make_room(0, 1);
        if let Ok(mut names) = self.names.lock() {
            *names = self.entries.iter().map(|(n, _, _)| n.clone()).collect();
        }
        let (_, _, pipeline) = self.entries.last().expect("an entry was just pushed");
        Ok(pipeline)
    }

    /// Evicts the least recently used models, keeping the `keep` most recent, until `extra`
    /// more bytes fit in the budget beside each model's weight files and LoRA-merged weights.
    fn make_room(&mut self, extra: u64, keep: usize) {
        let footprint = |(_, bytes, pipeline): &(String, u64, Pipeline)| {
            bytes.saturating_add(pipeline.lora_bytes())
        };
        let mut used: u64 = self.entries.iter().map(footprint).sum();
        while self.entries.len() > keep && used.saturating_add(extra) > self.options.memory_budget {
            let entry = self.entries.remove(0);
            let freed = footprint(&entry);
            tracing::info!(model = %entry.0, bytes = freed, "evicting model to stay within the memory budget");
            used -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seedbed_engine::lora::LoraChoice;
    use std::path::Path;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// About eight previews an image whatever its steps, always one at the last step.
    #[test]
    fn previews_come_every_few_steps_and_at_the_last() {
        let at = |steps: usize| {
            (1..=steps)
                .filter(|&s| previews_at(s, steps))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(1), [1]);
        assert_eq!(at(4), [1, 2, 3, 4]);
        assert_eq!(at(30), [4, 8, 12, 16, 20, 24, 28, 30]);
        assert_eq!(at(500).len(), 8);
        assert_eq!(at(500).last(), Some(&500));
    }

    fn cache(memory_budget: u64) -> ModelCache {
        let options = DeviceOptions {
            memory_budget,
            ..DeviceOptions::default()
        };
        ModelCache::new(options, Arc::default())
    }

    fn loaded(cache: &ModelCache) -> Vec<&str> {
        cache
            .entries
            .iter()
            .map(|(name, _, _)| name.as_str())
            .collect()
    }

    /// Each entry's weight files are counted as 100 bytes against the budget.
    fn get(cache: &mut ModelCache, name: &str, model: &str) {
        let path = fixtures().join("models").join(model);
        cache.get(name, &path, 100).unwrap();
    }

    #[test]
    fn the_least_recently_used_model_makes_room_for_a_new_one() {
        let mut cache = cache(250);
        get(&mut cache, "a", "tiny-sd");
        get(&mut cache, "b", "tiny-sd");
        get(&mut cache, "a", "tiny-sd");
        assert_eq!(loaded(&cache), ["b", "a"]);
        get(&mut cache, "c", "tiny-sd");
        assert_eq!(loaded(&cache), ["a", "c"], "b was the least recently used");
        assert_eq!(*cache.names.lock().unwrap(), ["a", "c"]);
    }

    /// Weights merged with a request's LoRAs count against the budget: once they no longer
    /// fit beside the other models, the least recently used one goes, never the model in use.
    #[test]
    fn weights_merged_with_loras_count_against_the_budget() {
        let mut cache = cache(201);
        get(&mut cache, "plain", "tiny-sd");
        get(&mut cache, "styled", "tiny-sd");
        let pipeline = &cache.entries.last().unwrap().2;
        let request = GenerateRequest {
            prompt: "a red cube".into(),
            negative_prompt: None,
            width: 64,
            height: 64,
            steps: 1,
            guidance_scale: 1.0,
            scheduler: None,
            karras_sigmas: false,
            true_cfg_scale: None,
            seed: 1,
            count: 1,
            init_image: None,
        };
        let lora = LoraChoice {
            name: "tiny-sd-peft".into(),
            path: fixtures().join("loras/tiny-sd-peft.safetensors"),
            scale: 1.0,
        };
        let cancel = AtomicBool::new(false);
        pipeline
            .generate_with_loras(&request, &[lora], &mut |_| {}, &cancel)
            .unwrap();
        assert!(pipeline.lora_bytes() > 0, "the LoRA's layers were merged");
        assert_eq!(
            loaded(&cache),
            ["plain", "styled"],
            "nothing evicted mid-job"
        );
        get(&mut cache, "styled", "tiny-sd");
        assert_eq!(loaded(&cache), ["styled"]);
        // Alone over the budget, the model in use stays.
        let mut alone = self::cache(1);
        get(&mut alone, "only", "tiny-sd");
        assert_eq!(loaded(&alone), ["only"]);
    }
}
