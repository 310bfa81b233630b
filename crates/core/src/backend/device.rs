//! The local device as a backend: resolve the model, load the reference images, hand the job
//! to the device thread ([`Device`], unchanged) and turn its [`DeviceEvent`]s into
//! [`WorkEvent`]s. The runner's stop becomes the device's cancel flag, which the engine reads
//! between steps.
//!
//! One rule is the device's own: a run that ends without any image (the engine stops a batch
//! at its first failed image) is a failure with that image's message, where an upstream's
//! answer without images is the upstream's to judge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use futures::stream::BoxStream;
use seedbed_storage::Blobs;
use seedbed_types::ErrorCode;
use tokio_util::sync::CancellationToken;

use super::{Backend, Done, Failure, NewImage, Work, WorkEvent};
use crate::catalog::Catalog;
use crate::device::{Device, DeviceEvent, DeviceFailure, DeviceJob};
use crate::error::{CoreError, Result};

#[derive(Clone)]
pub(crate) struct DeviceBackend {
    device: Device,
    catalog: Catalog,
    blobs: Blobs,
}

impl DeviceBackend {
    pub fn new(device: Device, catalog: Catalog, blobs: Blobs) -> Self {
        Self {
            device,
            catalog,
            blobs,
        }
    }

    /// Run `work` on the device, sending what it makes to `out`; returns how it ended.
    async fn drive(
        &self,
        work: Work,
        stop: CancellationToken,
        out: &UnboundedSender<WorkEvent>,
    ) -> Result<Done> {
        let images = work.spec.images;
        let Some(spec) = work.spec.local().cloned() else {
            return Ok(Done::Failed(Failure::internal(
                "a relayed job reached the device",
            )));
        };
        let model = match self.catalog.resolve(&spec.local_model) {
            Ok(model) => model.clone(),
            Err(error) => {
                let code = match error {
                    CoreError::ModelLoad { .. } => ErrorCode::ModelLoadFailed,
                    _ => ErrorCode::ModelNotFound,
                };
                return Ok(Done::Failed(Failure::new(code, error.to_string())));
            }
        };
        let loras = match crate::loras::choices(&spec.loras, self.catalog.loras()) {
            Ok(loras) => loras,
            Err(error) => {
                return Ok(Done::Failed(Failure::new(
                    ErrorCode::InvalidParameter,
                    error.to_string(),
                )));
            }
        };
        let mut references = Vec::new();
        for key in &spec.reference_images {
            let bytes = self.blobs.get(key).await?.ok_or_else(|| {
                CoreError::Internal(format!(
                    "reference image {key} is missing from the blob store"
                ))
            })?;
            references.push(bytes);
        }
        let cancel = Arc::new(AtomicBool::new(stop.is_cancelled()));
        let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let format = spec.output_format.extension();
        self.device.submit(DeviceJob {
            job_id: work.id,
            images,
            spec,
            model_path: model.path.clone(),
            weights_bytes: model.weights_bytes,
            references,
            loras,
            cancel: cancel.clone(),
            events,
        })?;
        let mut made = 0;
        let mut last_failure = None;
        loop {
            let event = tokio::select! {
                event = receiver.recv() => event,
                _ = stop.cancelled(), if !cancel.load(Ordering::SeqCst) => {
                    cancel.store(true, Ordering::SeqCst);
                    continue;
                }
            };
            let event = match event {
                Some(DeviceEvent::Done(result)) => return Ok(ended(result, made, last_failure)),
                None => return Ok(Done::Failed(Failure::internal("the device thread stopped"))),
                Some(DeviceEvent::Progress {
                    image,
                    images,
                    step,
                    steps,
                    preview,
                }) => WorkEvent::Progress {
                    image,
                    images,
                    step,
                    steps,
                    preview,
                },
                Some(DeviceEvent::Image {
                    index,
                    bytes,
                    width,
                    height,
                    seed,
                }) => {
                    made += 1;
                    WorkEvent::Image(NewImage {
                        index,
                        bytes: Some(bytes.into()),
                        url: None,
                        width,
                        height,
                        format: format.to_string(),
                        seed: Some(seed),
                        extra: Default::default(),
                    })
                }
                Some(DeviceEvent::ImageFailed { index, message }) => {
                    last_failure = Some(message.clone());
                    WorkEvent::ImageFailed {
                        index,
                        code: ErrorCode::InternalServiceError.as_str().into(),
                        message,
                    }
                }
            };
            if out.unbounded_send(event).is_err() {
                // Nobody reads any more: free the device.
                cancel.store(true, Ordering::SeqCst);
                return Ok(Done::Cancelled);
            }
        }
    }
}

impl Backend for DeviceBackend {
    fn run(&self, work: Work, stop: CancellationToken) -> BoxStream<'static, WorkEvent> {
        let (out, events) = futures::channel::mpsc::unbounded();
        let backend = self.clone();
        tokio::spawn(async move {
            let done = match backend.drive(work, stop, &out).await {
                Ok(done) => done,
                Err(error) => Done::Failed(Failure::internal(error.to_string())),
            };
            let _ = out.unbounded_send(WorkEvent::Done(done));
        });
        events.boxed()
    }
}

/// How a device run ended, given how many images it made and its last failed image.
fn ended(result: std::result::Result<(), DeviceFailure>, made: u32, last: Option<String>) -> Done {
    match result {
        Ok(()) if made == 0 => Done::Failed(Failure::internal(
            last.unwrap_or_else(|| "no image was produced".into()),
        )),
        Ok(()) => Done::Ok {
            usage: None,
            extra: Default::default(),
        },
        Err(DeviceFailure::Cancelled) => Done::Cancelled,
        Err(DeviceFailure::ModelLoad(message)) => {
            Done::Failed(Failure::new(ErrorCode::ModelLoadFailed, message))
        }
        Err(DeviceFailure::Internal(message)) => Done::Failed(Failure::internal(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_images_fails_with_the_last_images_message() {
        let failed = |done: Done| match done {
            Done::Failed(failure) => (failure.code, failure.message),
            other => panic!("not a failure: {other:?}"),
        };
        assert_eq!(
            failed(ended(Ok(()), 0, Some("NaN latents".into()))),
            ("InternalServiceError".into(), "NaN latents".into())
        );
        assert_eq!(failed(ended(Ok(()), 0, None)).1, "no image was produced");
        assert!(matches!(
            ended(Ok(()), 1, None),
            Done::Ok { usage: None, .. }
        ));
        assert_eq!(
            failed(ended(Err(DeviceFailure::ModelLoad("bad".into())), 0, None)).0,
            "ModelLoadFailed"
        );
        assert!(matches!(
            ended(Err(DeviceFailure::Cancelled), 1, None),
            Done::Cancelled
        ));
    }
}
