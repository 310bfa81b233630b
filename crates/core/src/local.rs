//! Generation without a server or a database: what `seedbed generate` runs when no `--server`
//! is given.
//!
//! It exists so the command line cannot drift from the server: a request is validated by
//! [`spec::validate`] against the same [`Catalog`] (sizes, per-model defaults, `seedbed.json`,
//! seeds), its reference images are checked by [`inputs::load`], and the spec runs on a
//! [`Device`] as the same [`DeviceJob`] the server's runner submits, so watermark, provenance
//! and encoding happen in one place and the same request makes the same bytes on either path.
//! What the server adds around it (job rows, blobs, usage) is left out: references stay in
//! memory and the encoded pictures go to the caller.
//!
//! [`spec::validate`]: crate::spec::validate

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use seedbed_types::GenerationRequest;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::catalog::{Catalog, ModelEntry};
use crate::device::{Device, DeviceEvent, DeviceJob};
use crate::error::{CoreError, Result};
use crate::inputs::{self, InputPolicy};
use crate::spec::{self, LocalSpec, RunSpec};

/// A request made ready to run: its spec, the model it runs on and its reference pictures.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub images: u32,
    pub spec: LocalSpec,
    pub model: ModelEntry,
    pub references: Vec<Bytes>,
    /// The spec's LoRAs, resolved in the catalog's LoRA folder.
    pub loras: Vec<seedbed_engine::lora::LoraChoice>,
}

/// Validate `request` as the server does and load its reference images within `policy`.
pub async fn prepare(
    request: &GenerationRequest,
    catalog: &Catalog,
    policy: &InputPolicy,
) -> Result<Prepared> {
    let (spec, sources) = spec::validate(request, catalog)?;
    let images = spec.images;
    let spec = match spec.run {
        RunSpec::Local(local) => local,
        RunSpec::Relay(_) => return Err(CoreError::Internal("validation made a relay".into())),
    };
    let model = catalog.resolve(&spec.local_model)?.clone();
    let loras = crate::loras::choices(&spec.loras, catalog.loras())?;
    let references = inputs::load(sources, policy).await?;
    Ok(Prepared {
        images,
        spec,
        model,
        references,
        loras,
    })
}

/// Hand `prepared` to `device`. Its events arrive on the returned receiver (read it with
/// `blocking_recv` outside an async runtime), [`DeviceEvent::Done`] last; setting `cancel`
/// stops the run between steps.
pub fn start(
    device: &Device,
    prepared: Prepared,
    cancel: Arc<AtomicBool>,
) -> Result<UnboundedReceiver<DeviceEvent>> {
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    device.submit(DeviceJob {
        job_id: "local".into(),
        images: prepared.images,
        spec: prepared.spec,
        model_path: prepared.model.path,
        weights_bytes: prepared.model.weights_bytes,
        references: prepared.references,
        loras: prepared.loras,
        cancel,
        events,
    })?;
    Ok(receiver)
}
