//! `pull` against the fake hub: selection, verification, resume, auth, and re-pulls.

use std::path::{Path, PathBuf};

use seedbed_hub::fake::FakeHub;
use seedbed_hub::{NoProgress, PullError, PullOptions, pull};

fn tiny_sd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd")
}

/// The tiny SD fixture as a hub repository looks: plus fp16 variants, pickle duplicates, ONNX,
/// a single-file checkpoint and a README that a pull must leave behind.
fn fake_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_sd(), dir.path());
    let root = dir.path();
    for (from, to) in [
        (
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ),
        (
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin",
        ),
        (
            "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin",
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            "v1-5-pruned-emaonly.safetensors",
        ),
    ] {
        std::fs::copy(root.join(from), root.join(to)).unwrap();
    }
    std::fs::create_dir_all(root.join("onnx/unet")).unwrap();
    std::fs::write(root.join("onnx/unet/model.onnx"), b"onnx").unwrap();
    std::fs::write(root.join("README.md"), b"# tiny").unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().to_string();
            out.extend(files(&path).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(entry.file_name().to_string_lossy().to_string());
        }
    }
    out.sort();
    out
}

fn options(hub: &FakeHub, models: &Path) -> PullOptions {
    PullOptions {
        endpoint: hub.url.clone(),
        token: None,
        repo: "test/tiny-sd".into(),
        revision: "main".into(),
        models_dir: models.to_path_buf(),
        name: None,
        variant: None,
    }
}

async fn hub_with_repo() -> (FakeHub, tempfile::TempDir) {
    let hub = FakeHub::start().await;
    let repo = fake_repo();
    hub.add_repo("test/tiny-sd", repo.path());
    (hub, repo)
}

#[tokio::test]
async fn pulls_exactly_the_pipeline_files_verified() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    let report = pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap();
    let dest = models.path().join("tiny-sd");
    assert_eq!(report.dest, dest);
    assert!(!report.up_to_date);
    let mut expected = files(&tiny_sd());
    expected.push(".seedbed-pull.json".into());
    expected.sort();
    assert_eq!(files(&dest), expected);
    for file in files(&tiny_sd()) {
        assert_eq!(
            std::fs::read(dest.join(&file)).unwrap(),
            std::fs::read(tiny_sd().join(&file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(
        files(models.path())
            .iter()
            .filter(|f| !f.starts_with("tiny-sd/"))
            .count(),
        0
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".seedbed-pull.json")).unwrap()).unwrap();
    assert_eq!(manifest["commit"], seedbed_hub::fake::COMMIT);

    // Pulling again fetches nothing.
    let before = hub.requests().len();
    let again = pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap();
    assert!(again.up_to_date);
    assert_eq!(hub.requests().len(), before);
}

#[tokio::test]
async fn the_fp16_variant_when_asked() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    let mut options = options(&hub, models.path());
    options.variant = Some("fp16".into());
    options.name = Some("tiny-sd-fp16".into());
    pull(&options, &NoProgress).await.unwrap();
    let pulled = files(&models.path().join("tiny-sd-fp16"));
    assert!(pulled.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".into()));
    assert!(!pulled.contains(&"unet/diffusion_pytorch_model.safetensors".into()));
    // The text encoder has no fp16 file: the plain one.
    assert!(pulled.contains(&"text_encoder/model.safetensors".into()));
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_a_range_request() {
    let (hub, _repo) = hub_with_repo().await;
    let unet = "unet/diffusion_pytorch_model.safetensors";
    hub.cut_after(unet, 10_000);
    let models = tempfile::tempdir().unwrap();
    pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap();
    let ranges: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|(path, _)| path == unet)
        .map(|(_, range)| range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=10000-".into())]);
    assert_eq!(
        std::fs::read(models.path().join("tiny-sd").join(unet)).unwrap(),
        std::fs::read(tiny_sd().join(unet)).unwrap()
    );
}

#[tokio::test]
async fn an_interrupted_pull_resumes_in_the_next_run() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    // What a killed pull leaves: the staging folder with a partial file.
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let part = models
        .path()
        .join(".tiny-sd.partial")
        .join(format!("{vae}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let bytes = std::fs::read(tiny_sd().join(vae)).unwrap();
    std::fs::write(&part, &bytes[..5000]).unwrap();
    pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap();
    assert!(
        hub.requests()
            .contains(&(vae.into(), Some("bytes=5000-".into())))
    );
    assert_eq!(
        std::fs::read(models.path().join("tiny-sd").join(vae)).unwrap(),
        bytes
    );
    assert!(!models.path().join(".tiny-sd.partial").exists());
}

#[tokio::test]
async fn a_corrupted_download_fails_and_leaves_no_model() {
    let (hub, _repo) = hub_with_repo().await;
    hub.corrupt("unet/diffusion_pytorch_model.safetensors");
    let models = tempfile::tempdir().unwrap();
    let error = pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(error, PullError::Checksum { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("unet/diffusion_pytorch_model.safetensors")
    );
    assert!(!models.path().join("tiny-sd").exists(), "no half model");
    let part = models
        .path()
        .join(".tiny-sd.partial/unet/diffusion_pytorch_model.safetensors.part");
    assert!(!part.exists());
}

#[tokio::test]
async fn missing_and_gated_repositories() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    let mut missing = options(&hub, models.path());
    missing.repo = "test/nope".into();
    let error = pull(&missing, &NoProgress).await.unwrap_err();
    assert!(matches!(error, PullError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("test/nope"));

    hub.gate("test/tiny-sd", "hf_secret");
    let error = pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(error, PullError::Unauthorized { .. }), "{error}");
    assert!(error.to_string().contains("HF_TOKEN"));
    let mut with_token = options(&hub, models.path());
    with_token.token = Some("hf_secret".into());
    pull(&with_token, &NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_stale_partial_file_is_downloaded_again() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    // A part left by a pull of another commit: its bytes do not match this file.
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let part = models
        .path()
        .join(".tiny-sd.partial")
        .join(format!("{vae}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![7u8; 5000]).unwrap();
    pull(&options(&hub, models.path()), &NoProgress)
        .await
        .unwrap();
    let requests: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|(p, _)| p == vae)
        .collect();
    assert_eq!(
        requests,
        [(vae.into(), Some("bytes=5000-".into())), (vae.into(), None)]
    );
    assert_eq!(
        std::fs::read(models.path().join("tiny-sd").join(vae)).unwrap(),
        std::fs::read(tiny_sd().join(vae)).unwrap()
    );
}

const SCHEDULER: &str = "scheduler/scheduler_config.json";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";

/// A pull that must end on its own: a loop shows up as this timeout, not a hung test.
async fn pull_bounded(options: &PullOptions) -> Result<seedbed_hub::PullReport, PullError> {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        pull(options, &NoProgress),
    )
    .await
    .expect("the pull kept going: a download loop")
}

fn requests_for(hub: &FakeHub, file: &str) -> Vec<Option<String>> {
    hub.requests()
        .into_iter()
        .filter(|(path, _)| path == file)
        .map(|(_, range)| range)
        .collect()
}

fn real_size(file: &str) -> u64 {
    std::fs::metadata(tiny_sd().join(file)).unwrap().len()
}

/// Neither the model nor the file under its final name, in the folder or in staging.
fn assert_nothing_promoted(models: &Path, file: &str) {
    assert!(!models.join("tiny-sd").exists(), "no half model");
    assert!(!models.join(".tiny-sd.partial").join(file).exists());
}

#[tokio::test]
async fn a_416_to_a_plain_request_ends_the_pull() {
    let (hub, _repo) = hub_with_repo().await;
    hub.always_416(SCHEDULER);
    let models = tempfile::tempdir().unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PullError::RangeNotSatisfiable { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains(SCHEDULER), "{message}");
    assert!(
        message.contains(&format!("{}/test/tiny-sd/resolve/", hub.url)),
        "{message}"
    );
    assert_eq!(requests_for(&hub, SCHEDULER), [None], "asked once");
    assert_nothing_promoted(models.path(), SCHEDULER);
}

#[tokio::test]
async fn a_repeated_416_ends_the_pull() {
    let (hub, _repo) = hub_with_repo().await;
    hub.always_416(VAE);
    let models = tempfile::tempdir().unwrap();
    // A part from an earlier run: the resume gets 416, the fresh download too.
    let part = models
        .path()
        .join(".tiny-sd.partial")
        .join(format!("{VAE}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let bytes = std::fs::read(tiny_sd().join(VAE)).unwrap();
    std::fs::write(&part, &bytes[..5000]).unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PullError::RangeNotSatisfiable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(VAE), "{error}");
    assert_eq!(requests_for(&hub, VAE), [Some("bytes=5000-".into()), None]);
    assert_nothing_promoted(models.path(), VAE);
}

#[tokio::test]
async fn a_complete_part_answered_416_is_verified_and_kept() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    // A run stopped between the last byte and the rename.
    let part = models
        .path()
        .join(".tiny-sd.partial")
        .join(format!("{VAE}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let bytes = std::fs::read(tiny_sd().join(VAE)).unwrap();
    std::fs::write(&part, &bytes).unwrap();
    pull_bounded(&options(&hub, models.path())).await.unwrap();
    assert_eq!(
        requests_for(&hub, VAE),
        [Some(format!("bytes={}-", bytes.len()))]
    );
    assert_eq!(
        std::fs::read(models.path().join("tiny-sd").join(VAE)).unwrap(),
        bytes
    );
}

#[tokio::test]
async fn a_full_length_stale_part_answered_416_is_downloaded_again() {
    let (hub, _repo) = hub_with_repo().await;
    let models = tempfile::tempdir().unwrap();
    let part = models
        .path()
        .join(".tiny-sd.partial")
        .join(format!("{VAE}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let size = real_size(VAE) as usize;
    std::fs::write(&part, vec![7u8; size]).unwrap();
    pull_bounded(&options(&hub, models.path())).await.unwrap();
    assert_eq!(
        requests_for(&hub, VAE),
        [Some(format!("bytes={size}-")), None]
    );
    assert_eq!(
        std::fs::read(models.path().join("tiny-sd").join(VAE)).unwrap(),
        std::fs::read(tiny_sd().join(VAE)).unwrap()
    );
}

/// The size error for `file`: expected and actual sizes, and the file, in the message.
fn assert_size_error(error: &PullError, file: &str, expected: u64, actual: u64) {
    match error {
        PullError::Size {
            path,
            expected: e,
            actual: a,
            ..
        } => {
            assert_eq!((path.as_str(), *e, *a), (file, expected, actual), "{error}");
        }
        other => panic!("expected a size error, got: {other}"),
    }
    let message = error.to_string();
    for needle in [file.to_string(), expected.to_string(), actual.to_string()] {
        assert!(message.contains(&needle), "{message} lacks {needle}");
    }
}

#[tokio::test]
async fn an_unhashed_file_shorter_than_listed_is_a_size_error() {
    let (hub, _repo) = hub_with_repo().await;
    let real = real_size(SCHEDULER);
    hub.unhashed(SCHEDULER);
    hub.list_size(SCHEDULER, Some(real + 10));
    let models = tempfile::tempdir().unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    assert_size_error(&error, SCHEDULER, real + 10, real);
    assert_eq!(requests_for(&hub, SCHEDULER), [None], "not retried");
    assert_nothing_promoted(models.path(), SCHEDULER);
    assert!(
        !models
            .path()
            .join(format!(".tiny-sd.partial/{SCHEDULER}.part"))
            .exists()
    );
}

#[tokio::test]
async fn an_unhashed_file_longer_than_listed_is_a_size_error() {
    let (hub, _repo) = hub_with_repo().await;
    let real = real_size(SCHEDULER);
    hub.unhashed(SCHEDULER);
    hub.list_size(SCHEDULER, Some(real - 10));
    let models = tempfile::tempdir().unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    assert_size_error(&error, SCHEDULER, real - 10, real);
    assert_nothing_promoted(models.path(), SCHEDULER);
}

/// Without `Content-Length` only the listing's size bounds the body.
#[tokio::test]
async fn an_unhashed_file_without_a_length_is_checked_against_the_listing() {
    let real = real_size(SCHEDULER);

    let (hub, _repo) = hub_with_repo().await;
    hub.unhashed(SCHEDULER);
    hub.chunked(SCHEDULER);
    hub.list_size(SCHEDULER, Some(real - 10));
    let models = tempfile::tempdir().unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    // The download stops at the first byte too many.
    assert!(
        matches!(error, PullError::Size { expected, actual, .. } if expected == real - 10 && actual > expected),
        "{error}"
    );
    assert!(error.to_string().contains(SCHEDULER), "{error}");
    assert_nothing_promoted(models.path(), SCHEDULER);

    // Shorter: the body ends early, the resume finds nothing past it (416 `bytes */LENGTH`).
    let (hub, _repo) = hub_with_repo().await;
    hub.unhashed(SCHEDULER);
    hub.chunked(SCHEDULER);
    hub.list_size(SCHEDULER, Some(real + 10));
    let models = tempfile::tempdir().unwrap();
    let error = pull_bounded(&options(&hub, models.path()))
        .await
        .unwrap_err();
    assert_size_error(&error, SCHEDULER, real + 10, real);
    assert_eq!(
        requests_for(&hub, SCHEDULER),
        [None, Some(format!("bytes={real}-"))]
    );
    assert_nothing_promoted(models.path(), SCHEDULER);
}

#[tokio::test]
async fn unhashed_files_of_the_right_size_are_pulled() {
    let (hub, _repo) = hub_with_repo().await;
    hub.unhashed(SCHEDULER);
    hub.unhashed(VAE);
    // No size in the listing either: the hub's Content-Length is checked instead.
    hub.list_size(VAE, None);
    let models = tempfile::tempdir().unwrap();
    pull_bounded(&options(&hub, models.path())).await.unwrap();
    for file in [SCHEDULER, VAE] {
        assert_eq!(
            std::fs::read(models.path().join("tiny-sd").join(file)).unwrap(),
            std::fs::read(tiny_sd().join(file)).unwrap(),
            "{file}"
        );
    }
}
