//! Upstream providers as a backend: the client's body goes to the [`Gateway`] as it came and
//! each [`UpstreamEvent`] becomes a [`WorkEvent`]. A stop ends the stream at once; dropping
//! it closes the upstream connection, so a cancel reaches the provider.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use seedbed_gateway::{Gateway, UpstreamEvent};
use seedbed_types::RawRequest;
use seedbed_types::job_event::UpstreamStatus;
use tokio_util::sync::CancellationToken;

use super::{Backend, Done, Failure, NewImage, Work, WorkEvent};
use crate::spec::RunSpec;

pub(crate) struct GatewayBackend {
    gateway: Gateway,
}

impl GatewayBackend {
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

impl Backend for GatewayBackend {
    fn run(&self, work: Work, stop: CancellationToken) -> BoxStream<'static, WorkEvent> {
        let done = |failure| stream::iter([WorkEvent::Done(Done::Failed(failure))]);
        let raw = match &work.spec.run {
            RunSpec::Relay(relay) => RawRequest::parse(relay.body.as_bytes()),
            RunSpec::Local(_) => None,
        };
        let Some(raw) = raw else {
            return done(Failure::internal("a relayed job without its request")).boxed();
        };
        let silent = Failure {
            status: Some(502.into()),
            ..Failure::internal("the upstream relay ended without an answer")
        };
        self.gateway
            .run(&work.spec.model, raw)
            .map(from_upstream)
            .chain(done(silent))
            .take_until(stop.cancelled_owned())
            .chain(stream::iter([WorkEvent::Done(Done::Cancelled)]))
            .boxed()
    }
}

fn from_upstream(event: UpstreamEvent) -> WorkEvent {
    match event {
        UpstreamEvent::Image {
            index,
            image,
            extra,
        } => WorkEvent::Image(NewImage {
            index,
            bytes: image.bytes,
            url: image.url,
            width: image.width,
            height: image.height,
            format: image.format,
            seed: None,
            extra,
        }),
        UpstreamEvent::ImageFailed {
            index,
            code,
            message,
        } => WorkEvent::ImageFailed {
            index,
            code,
            message,
        },
        UpstreamEvent::Completed { usage, extra } => WorkEvent::Done(Done::Ok { usage, extra }),
        UpstreamEvent::Failed {
            status,
            code,
            message,
            param,
            retry_after,
        } => WorkEvent::Done(Done::Failed(Failure {
            code,
            message,
            status: Some(UpstreamStatus {
                status,
                retry_after_s: retry_after.map(whole_seconds),
            }),
            param,
        })),
    }
}

/// Whole seconds, rounded up: waiting less than asked is no use.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_failure_keeps_its_status_and_retry_after_rounded_up() {
        let event = from_upstream(UpstreamEvent::Failed {
            status: 429,
            code: "RateLimitExceeded".into(),
            message: "slow down".into(),
            param: Some("model".into()),
            retry_after: Some(Duration::from_millis(1200)),
        });
        let WorkEvent::Done(Done::Failed(failure)) = event else {
            panic!("not a failure: {event:?}");
        };
        assert_eq!(
            failure.status,
            Some(UpstreamStatus {
                status: 429,
                retry_after_s: Some(2)
            })
        );
        assert_eq!(failure.param.as_deref(), Some("model"));
    }
}
