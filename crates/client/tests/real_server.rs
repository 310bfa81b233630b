//! The client against a real `seedbed serve` on port 0 (the tiny fixture model).

use std::path::Path;

use futures::StreamExt;
use seedbed_client::{Client, ClientError};
use seedbed_server::serve::{RunningServer, ServeConfig, start};
use seedbed_types::{
    CreateKey, GenerationRequest, JobEvent, JobState, ResponseFormat, StreamEventType,
};

const KEY: &str = "admin-secret";

async fn server() -> (RunningServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), data.path().into(), models);
    config.api_keys = vec![KEY.into()];
    config.aliases = vec![("seedream-4-5-251128".into(), "tiny-sd".into())];
    (start(config).await.unwrap(), data)
}

fn client(server: &RunningServer, key: Option<&str>) -> Client {
    let mut builder = Client::builder(format!("http://{}", server.addr));
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    builder.build().unwrap()
}

fn tiny(images: u32) -> GenerationRequest {
    let mut request = GenerationRequest {
        model: Some("seedream-4-5-251128".into()),
        prompt: Some("a lighthouse at dusk".into()),
        steps: Some(2),
        ..Default::default()
    };
    if images > 1 {
        request.sequential_image_generation = Some(seedbed_types::SequentialMode::Auto);
        request.sequential_image_generation_options = Some(seedbed_types::SequentialOptions {
            max_images: Some(images),
        });
    }
    request
}

#[tokio::test]
async fn generations_plain_streamed_and_as_jobs() {
    let (server, _data) = server().await;
    let client = client(&server, Some(KEY));

    let health = client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(client.info().await.unwrap().name, "seedbed");
    let models = client.models().await.unwrap();
    assert!(models.data.iter().any(|m| m.id == "seedream-4-5-251128"));

    let generated = client.generate(&tiny(1)).await.unwrap();
    assert!(generated.job_id.is_some());
    assert_eq!(generated.request_id.len(), 34);
    let url = generated.response.data[0].url.clone().unwrap();
    let jpeg = client.download(&url).await.unwrap();
    assert_eq!(jpeg[..2], [0xFF, 0xD8]);

    let mut b64 = tiny(1);
    b64.response_format = Some(ResponseFormat::B64Json);
    let generated = client.generate(&b64).await.unwrap();
    assert!(generated.response.data[0].b64_json.is_some());

    let mut stream = client.generate_stream(&tiny(2)).await.unwrap();
    assert!(stream.job_id.is_some());
    let mut kinds = Vec::new();
    while let Some(event) = stream.next().await {
        kinds.push(event.unwrap().kind);
    }
    assert_eq!(
        kinds,
        [
            StreamEventType::PartialSucceeded,
            StreamEventType::PartialSucceeded,
            StreamEventType::Completed
        ]
    );

    let job = client.create_job(&tiny(2)).await.unwrap();
    assert_eq!(job.object, "job");
    let events: Vec<JobEvent> = client
        .follow_job(&job.id)
        .map(|item| item.unwrap().event)
        .collect()
        .await;
    assert!(
        matches!(events.first(), Some(JobEvent::Queued { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, JobEvent::Progress { .. }))
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, JobEvent::Image { .. }))
            .count(),
        2
    );
    assert!(matches!(events.last(), Some(JobEvent::Completed { .. })));

    // Resuming after the third event gives exactly the rest.
    let resumed: Vec<_> = client
        .job_events(&job.id, Some(3))
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(resumed.first().map(|i| i.seq), Some(4));
    assert_eq!(resumed.len(), events.len() - 3);

    let done = client.job(&job.id).await.unwrap();
    assert_eq!(done.status, JobState::Succeeded);
    assert_eq!(done.result.unwrap().data.len(), 2);
    let listed = client.jobs(Some(10)).await.unwrap();
    assert!(listed.data.iter().any(|j| j.id == job.id));
    let cancelled = client.cancel_job(&job.id).await.unwrap();
    assert_eq!(
        cancelled.status,
        JobState::Succeeded,
        "a finished job stays as it was"
    );

    let usage = client.usage(None).await.unwrap();
    assert_eq!(usage.totals.images, 6);
    server.stop().await;
}

#[tokio::test]
async fn errors_carry_status_code_param_and_request_id() {
    let (server, _data) = server().await;
    let anonymous = client(&server, None);
    let error = anonymous.generate(&tiny(1)).await.unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");
    assert!(error.request_id().is_some());
    let id = error.request_id().unwrap();
    assert!(error.to_string().contains(id), "{error}");

    let admin = client(&server, Some(KEY));
    let mut bad = tiny(1);
    bad.size = Some("3x3".into());
    match admin.generate(&bad).await.unwrap_err() {
        ClientError::Api {
            status,
            code,
            param,
            request_id,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(code, "InvalidParameter");
            assert_eq!(param.as_deref(), Some("size"));
            assert!(request_id.is_some());
        }
        other => panic!("{other:?}"),
    }
    let streamed = admin.generate_stream(&bad).await.err().unwrap();
    assert_eq!(
        streamed.status(),
        Some(400),
        "errors before a stream are JSON"
    );
    let missing = admin.job("job_nope").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));
    server.stop().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked() {
    let (server, _data) = server().await;
    let admin = client(&server, Some(KEY));
    let key = admin
        .create_key(&CreateKey {
            name: Some("ci".into()),
            images_per_minute: Some(5),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = key.secret.clone().unwrap();
    assert_eq!(key.scopes, ["generate"]);
    let listed = admin.keys().await.unwrap();
    assert!(
        listed
            .data
            .iter()
            .any(|k| k.id == key.id && k.secret.is_none())
    );

    let user = client(&server, Some(&secret));
    user.generate(&tiny(1)).await.unwrap();
    let forbidden = user.keys().await.unwrap_err();
    assert_eq!(forbidden.status(), Some(403));
    let usage = user.usage(None).await.unwrap();
    assert_eq!(usage.key_id.as_deref(), Some(key.id.as_str()));
    assert_eq!(usage.totals.images, 1);

    admin.revoke_key(&key.id).await.unwrap();
    assert_eq!(
        user.generate(&tiny(1)).await.unwrap_err().status(),
        Some(401)
    );
    server.stop().await;
}
