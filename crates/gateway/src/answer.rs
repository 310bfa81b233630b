//! The non-streamed call to an upstream, with its answer read within a size cap.
//!
//! seedbed-client reads an answer whole, however large it is; a gateway cannot afford that: an
//! upstream (or whatever answers in its name) could exhaust the node's memory with one reply,
//! and up to 32 relays run at once. So the gateway makes this one call itself and stops reading
//! past `max_bytes`, with the client's error type so failover and retries treat it the same.

use bytes::Bytes;
use futures::StreamExt;
use seedbed_client::ClientError;
use seedbed_types::ImagesResponse;

use crate::Upstream;

const REQUEST_ID_HEADER: &str = "x-client-request-id";
/// An error envelope is small; more than this is not one.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// `POST {base}/images/generations` with `body`; the JSON answer or the upstream's error.
pub async fn generate(
    upstream: &Upstream,
    body: Bytes,
    max_bytes: usize,
) -> Result<ImagesResponse, ClientError> {
    let request_id = seedbed_types::new_request_id();
    let mut request = upstream
        .http
        .post(upstream.client.generations_url())
        .header("content-type", "application/json")
        .header(REQUEST_ID_HEADER, &request_id)
        .body(body);
    if let Some(key) = &upstream.key {
        request = request.bearer_auth(key.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|e| transport(e, &request_id))?;
    let request_id = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or(request_id, str::to_string);
    if !response.status().is_success() {
        return Err(api_error(response, request_id).await);
    }
    let body = match read(response, max_bytes, &request_id).await? {
        Some(body) => body,
        None => {
            return Err(ClientError::Decode {
                request_id: Some(request_id),
                message: format!("the answer is larger than {max_bytes} bytes"),
            });
        }
    };
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        request_id: Some(request_id),
        message: format!(
            "{e} in {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    })
}

/// The body, or `None` once it passes `max_bytes` (by `Content-Length` or as it comes).
async fn read(
    response: reqwest::Response,
    max_bytes: usize,
    request_id: &str,
) -> Result<Option<Vec<u8>>, ClientError> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(e, request_id))?;
        if body.len() + chunk.len() > max_bytes {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// As seedbed-client classifies them: timeouts and broken bodies apart from failed connections
/// (only those and API errors are worth another try).
fn transport(error: reqwest::Error, request_id: &str) -> ClientError {
    let request_id = Some(request_id.to_string());
    if error.is_timeout() {
        ClientError::Timeout { request_id }
    } else if error.is_decode() || error.is_body() {
        ClientError::Stream {
            request_id,
            message: error.to_string(),
        }
    } else {
        ClientError::Connect {
            request_id,
            source: error,
        }
    }
}

/// The upstream's error answer, of which at most `MAX_ERROR_BYTES` are read, as the client
/// crate reads any error answer.
async fn api_error(response: reqwest::Response, request_id: String) -> ClientError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = read(response, MAX_ERROR_BYTES, &request_id)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    seedbed_client::error_from_answer(status, &headers, &body, &request_id)
}
