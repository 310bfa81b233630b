//! The endpoints: Seedream generations (plain and streamed) and seedbed's own API.

use bytes::Bytes;
use reqwest::Method;
use seedbed_types::{
    CreateKey, GenerationRequest, Health, ImagesResponse, JobList, JobView, KeyList, KeyView,
    ModelList, ServerInfo, UsageView,
};

use crate::client::{Client, api_error, is_event_stream};
use crate::stream::{GenerationStream, JobEventStream, follow, job_event_stream};
use crate::{ClientError, Generated};

impl Client {
    /// `POST images/generations` without streaming.
    pub async fn generate(&self, request: &GenerationRequest) -> Result<Generated, ClientError> {
        self.generate_raw(json_body(&with_stream(request, false)))
            .await
    }

    /// Like [`Client::generate`] with a body sent exactly as given (a gateway relaying a
    /// client's request byte for byte); the caller sets `stream`.
    pub async fn generate_raw(&self, body: Bytes) -> Result<Generated, ClientError> {
        let answer = self.post_generations(body).await?;
        let job_id = answer.job_id();
        let request_id = answer.request_id.clone();
        let response: ImagesResponse = answer.json().await?;
        Ok(Generated {
            response,
            request_id,
            job_id,
        })
    }

    /// `POST images/generations` with `stream: true`: one event per image as it is stored,
    /// then `image_generation.completed`. Errors before the first event come back here.
    pub async fn generate_stream(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationStream, ClientError> {
        self.generate_stream_raw(json_body(&with_stream(request, true)))
            .await
    }

    /// Like [`Client::generate_stream`] with a body sent exactly as given.
    pub async fn generate_stream_raw(&self, body: Bytes) -> Result<GenerationStream, ClientError> {
        let answer = self.post_generations(body).await?;
        if !is_event_stream(&answer.response) {
            return Err(ClientError::Decode {
                request_id: Some(answer.request_id),
                message: "expected an event stream (text/event-stream)".into(),
            });
        }
        Ok(GenerationStream::new(answer))
    }

    /// Submit as a job (`Prefer: respond-async`): the job comes back at once (202).
    pub async fn create_job(&self, request: &GenerationRequest) -> Result<JobView, ClientError> {
        let body = with_stream(request, false);
        let url = self.generations_url();
        let answer = self
            .send(|| {
                self.request(Method::POST, &url)
                    .header("prefer", "respond-async")
                    .json(&body)
            })
            .await?;
        if answer.response.status() != reqwest::StatusCode::ACCEPTED {
            return Err(ClientError::Decode {
                request_id: Some(answer.request_id),
                message:
                    "the server does not run requests as jobs (no 202 for Prefer: respond-async)"
                        .into(),
            });
        }
        answer.json().await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// The caller's jobs, newest first (`limit` 1..100, default 20).
    pub async fn jobs(&self, limit: Option<u32>) -> Result<JobList, ClientError> {
        match limit {
            Some(limit) => self.get_json(&format!("/v1/jobs?limit={limit}")).await,
            None => self.get_json("/v1/jobs").await,
        }
    }

    pub async fn cancel_job(&self, id: &str) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/cancel"));
        self.send(|| self.request(Method::POST, &url))
            .await?
            .json()
            .await
    }

    /// A job's events from after `last_event_id` (from the start when `None`), ending after its
    /// final event or when the connection drops.
    pub async fn job_events(
        &self,
        id: &str,
        last_event_id: Option<i64>,
    ) -> Result<JobEventStream, ClientError> {
        job_event_stream(self, id, last_event_id).await
    }

    /// Like [`Client::job_events`] from the start, reconnecting with `Last-Event-ID` after a
    /// dropped connection until the job's final event.
    pub fn follow_job(&self, id: &str) -> JobEventStream {
        follow(self.clone(), id.to_string())
    }

    pub async fn create_key(&self, request: &CreateKey) -> Result<KeyView, ClientError> {
        let url = self.url("/v1/keys");
        self.send(|| self.request(Method::POST, &url).json(request))
            .await?
            .json()
            .await
    }

    pub async fn keys(&self) -> Result<KeyList, ClientError> {
        self.get_json("/v1/keys").await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<KeyView, ClientError> {
        let url = self.url(&format!("/v1/keys/{id}"));
        self.send(|| self.request(Method::DELETE, &url))
            .await?
            .json()
            .await
    }

    /// What the caller's key was billed since `since` (Unix seconds).
    pub async fn usage(&self, since: Option<i64>) -> Result<UsageView, ClientError> {
        match since {
            Some(since) => self.get_json(&format!("/v1/usage?since={since}")).await,
            None => self.get_json("/v1/usage").await,
        }
    }

    pub async fn models(&self) -> Result<ModelList, ClientError> {
        self.get_json("/v1/models").await
    }

    pub async fn info(&self) -> Result<ServerInfo, ClientError> {
        self.get_json("/info").await
    }

    /// `/health`; a 503 that says why is still an answer (`status: unavailable`), not an error.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let url = self.url("/health");
        let request_id = seedbed_types::new_request_id();
        let response = self
            .request(Method::GET, &url)
            .header(crate::client::REQUEST_ID_HEADER, &request_id)
            .send()
            .await
            .map_err(|e| ClientError::from_transport(e, &request_id))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::from_transport(e, &request_id))?;
            if let Ok(health) = serde_json::from_slice::<Health>(&bytes) {
                return Ok(health);
            }
            return Err(ClientError::Decode {
                request_id: Some(request_id),
                message: "the health answer is not seedbed's".into(),
            });
        }
        Err(api_error(response, &request_id).await)
    }

    /// Fetch an image link from a response. The key goes along only when the link is on the
    /// base's origin (scheme, host and port) and under the base's path; never to another host,
    /// nor across a redirect to one.
    pub async fn download(&self, url: &str) -> Result<Bytes, ClientError> {
        let answer = self.send(|| self.request_link(Method::GET, url)).await?;
        let request_id = answer.request_id;
        answer
            .response
            .bytes()
            .await
            .map_err(|e| ClientError::from_transport(e, &request_id))
    }
}

impl Client {
    async fn post_generations(&self, body: Bytes) -> Result<crate::client::Answer, ClientError> {
        let url = self.generations_url();
        self.send(|| {
            self.request(Method::POST, &url)
                .header("content-type", "application/json")
                .body(body.clone())
        })
        .await
    }
}

fn json_body(request: &GenerationRequest) -> Bytes {
    Bytes::from(serde_json::to_vec(request).unwrap_or_default())
}

/// The request as JSON with `stream` set; every other field, unknown ones too, kept as is.
fn with_stream(request: &GenerationRequest, stream: bool) -> GenerationRequest {
    let mut body = request.clone();
    body.stream = Some(stream);
    body
}
