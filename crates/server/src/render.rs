//! Job events rendered as Seedream responses: the JSON body, SSE events, the job object.

use base64::Engine as _;
use seedbed_core::{GenerationSpec, JobEvent};
use seedbed_types::{
    ErrorCode, ImageData, ImageError, ImagesResponse, ResponseFormat, StreamEvent, StreamEventType,
    Usage,
};

use crate::error::ApiFailure;
use crate::links::LinkSigner;
use crate::state::AppState;

/// Renders one job's images as links or base64, per its spec.
pub struct Renderer<'a> {
    pub state: &'a AppState,
    pub job_id: &'a str,
    pub spec: &'a GenerationSpec,
    /// Unix seconds the job was created (the response's `created`).
    pub created: i64,
}

impl Renderer<'_> {
    /// A signed link to a stored image, valid as long as the image is kept.
    pub async fn link(&self, index: u32) -> Result<String, ApiFailure> {
        let row = self.row(index).await?;
        let path = LinkSigner::path(self.job_id, index, &row.format);
        Ok(self.state.signer().url(&path, row.expires_at / 1000))
    }

    async fn row(&self, index: u32) -> Result<seedbed_storage::ImageRow, ApiFailure> {
        let row = self.state.jobs().image_row(self.job_id, index).await?;
        row.ok_or_else(|| {
            ApiFailure::new(
                ErrorCode::NotFound,
                "The image has expired or does not exist.",
            )
        })
    }

    /// An `Image` event as a `data` entry: our stored image, or an upstream's own link, with
    /// the upstream's other fields relayed.
    pub async fn image_data(&self, event: &JobEvent) -> Result<ImageData, ApiFailure> {
        let JobEvent::Image {
            index,
            width,
            height,
            url,
            extra,
            ..
        } = event
        else {
            return Err(ApiFailure::internal());
        };
        let mut data = match url {
            Some(url) => ImageData {
                url: Some(url.clone()),
                size: Some(format!("{width}x{height}")),
                ..ImageData::default()
            },
            None => self.image(*index).await?,
        };
        data.extra = extra.clone();
        Ok(data)
    }

    /// `url` or `b64_json`, plus `size`, of a stored image.
    pub async fn image(&self, index: u32) -> Result<ImageData, ApiFailure> {
        let jobs = self.state.jobs();
        let row = self.row(index).await?;
        let size = Some(format!("{}x{}", row.width, row.height));
        match self.spec.response_format {
            ResponseFormat::Url => {
                let path = LinkSigner::path(self.job_id, index, &row.format);
                Ok(ImageData {
                    url: Some(self.state.signer().url(&path, row.expires_at / 1000)),
                    size,
                    ..ImageData::default()
                })
            }
            ResponseFormat::B64Json => {
                let (_, bytes) = jobs.image(self.job_id, index).await?.ok_or_else(|| {
                    ApiFailure::new(ErrorCode::NotFound, "The image has expired.")
                })?;
                Ok(ImageData {
                    b64_json: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    size,
                    ..ImageData::default()
                })
            }
        }
    }

    /// The Seedream stream event for a job event, if it has one.
    pub async fn stream_event(&self, event: &JobEvent) -> Result<Option<StreamEvent>, ApiFailure> {
        let base = |kind, created| StreamEvent {
            kind,
            model: self.spec.model.clone(),
            created,
            image_index: None,
            url: None,
            b64_json: None,
            size: None,
            error: None,
            usage: None,
            extra: Default::default(),
        };
        Ok(Some(match event {
            JobEvent::Image { index, created, .. } => {
                let data = self.image_data(event).await?;
                StreamEvent {
                    image_index: Some(*index),
                    url: data.url,
                    b64_json: data.b64_json,
                    size: data.size,
                    extra: data.extra,
                    ..base(StreamEventType::PartialSucceeded, *created)
                }
            }
            JobEvent::ImageFailed {
                index,
                code,
                message,
                created,
            } => StreamEvent {
                image_index: Some(*index),
                error: Some(ImageError {
                    code: code.clone(),
                    message: message.clone(),
                }),
                ..base(StreamEventType::PartialFailed, *created)
            },
            JobEvent::Completed {
                usage,
                created,
                extra,
            } => StreamEvent {
                usage: Some(*usage),
                extra: extra.clone(),
                ..base(StreamEventType::Completed, *created)
            },
            // A top-level failure after the stream started: `completed` with the error.
            JobEvent::Failed { code, message, .. } => StreamEvent {
                error: Some(ImageError {
                    code: code.clone(),
                    message: message.clone(),
                }),
                usage: Some(Usage::default()),
                ..base(StreamEventType::Completed, now_s())
            },
            JobEvent::Cancelled => StreamEvent {
                error: Some(ImageError {
                    code: ErrorCode::Cancelled.as_str().into(),
                    message: "The job was cancelled.".into(),
                }),
                usage: Some(Usage::default()),
                ..base(StreamEventType::Completed, now_s())
            },
            JobEvent::Queued { .. } | JobEvent::Started { .. } | JobEvent::Progress { .. } => {
                return Ok(None);
            }
        }))
    }
}

pub fn now_s() -> i64 {
    seedbed_storage::now_ms() / 1000
}

/// Folds a job's events into the non-streaming response.
#[derive(Default)]
pub struct ResponseBuilder {
    data: std::collections::BTreeMap<u32, ImageData>,
    pub usage: Option<Usage>,
    pub failure: Option<ApiFailure>,
    /// Relayed top-level fields of an upstream's response.
    extra: serde_json::Map<String, serde_json::Value>,
}

impl ResponseBuilder {
    /// Take one event; true once the job has ended.
    pub async fn push(
        &mut self,
        renderer: &Renderer<'_>,
        event: &JobEvent,
    ) -> Result<bool, ApiFailure> {
        match event {
            // A job run again after a restart makes its images anew.
            JobEvent::Started { attempt } if *attempt > 1 => self.data.clear(),
            JobEvent::Image { index, .. } => {
                let image = renderer.image_data(event).await?;
                self.data.insert(*index, image);
            }
            JobEvent::ImageFailed {
                index,
                code,
                message,
                ..
            } => {
                self.data.insert(
                    *index,
                    ImageData {
                        error: Some(ImageError {
                            code: code.clone(),
                            message: message.clone(),
                        }),
                        ..ImageData::default()
                    },
                );
            }
            JobEvent::Completed { usage, extra, .. } => {
                self.usage = Some(*usage);
                self.extra = extra.clone();
            }
            JobEvent::Failed { .. } => self.failure = ApiFailure::from_job_event(event),
            JobEvent::Cancelled => {
                self.failure = Some(ApiFailure::new(
                    ErrorCode::Cancelled,
                    "The job was cancelled.",
                ));
            }
            _ => {}
        }
        Ok(event.is_final())
    }

    pub fn has_data(&self) -> bool {
        !self.data.is_empty()
    }

    pub fn response(self, renderer: &Renderer<'_>) -> ImagesResponse {
        ImagesResponse {
            model: renderer.spec.model.clone(),
            created: renderer.created,
            data: self.data.into_values().collect(),
            usage: self.usage,
            error: None,
            extra: self.extra,
        }
    }
}
