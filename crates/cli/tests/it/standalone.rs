//! The repository stands alone: a clone with nothing beside it builds, passes its tests and runs
//! the README's quick start. The test models, reference cases and tokenizer live in `fixtures/`;
//! nothing may read material from a folder next to the checkout (as `../shared` once was).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Ways of naming the sibling folder that only some machines have: as a relative path, as a
/// path under it, or as a path component in a script (`os.path.join(..., "shared", ...)`).
const OUTSIDE: &[&str] = &[
    "../shared",
    "shared/fixtures",
    "shared/tools",
    "shared/design",
    "shared/spec",
    "\"shared\"",
];

/// Where the project's own text lives: the code, its tests and snapshots, scripts, CI and docs.
const ROOTS: &[&str] = &[
    "README.md",
    "SECURITY.md",
    "Cargo.toml",
    ".ci",
    "bench",
    "crates",
    "docs",
    "tools",
    "fixtures",
];

const TEXT: &[&str] = &[
    "rs", "toml", "md", "sh", "py", "json", "jsonl", "txt", "snap", "sql", "yml", "yaml",
];

/// The text files under `path`, without following links (`./models` is one) and without build
/// outputs or virtual environments. In `fixtures/` only the notes: the tokenizer files are
/// multi-megabyte vocabularies where any word may appear.
fn text_files(path: &Path, out: &mut Vec<PathBuf>) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if meta.is_dir() {
        if name == "target" || name == ".git" || name.starts_with(".venv") {
            return;
        }
        for entry in std::fs::read_dir(path).unwrap() {
            text_files(&entry.unwrap().path(), out);
        }
    } else if meta.is_file() {
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
        let in_fixtures = path
            .strip_prefix(repo())
            .is_ok_and(|p| p.starts_with("fixtures"));
        let wanted = match ext.as_deref() {
            None => path.parent().and_then(Path::file_name) == Some(".ci".as_ref()),
            Some("md") => true,
            Some(ext) => !in_fixtures && TEXT.contains(&ext),
        };
        if wanted {
            out.push(path.to_path_buf());
        }
    }
}

#[test]
fn nothing_refers_to_a_folder_beside_the_checkout() {
    let repo = repo();
    let this_file = repo.join(file!());
    let mut files = Vec::new();
    for root in ROOTS {
        text_files(&repo.join(root), &mut files);
    }
    assert!(files.len() > 100, "too few files found: {}", files.len());
    let mut found = Vec::new();
    for file in files.iter().filter(|f| **f != this_file) {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if OUTSIDE.iter().any(|p| line.contains(p)) {
                let shown = file.strip_prefix(&repo).unwrap_or(file);
                found.push(format!(
                    "{}:{}: {}",
                    shown.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use the repository's fixtures/ (and tools/reference/) instead of a sibling folder:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_fixtures_the_tests_and_quick_start_need_are_in_the_repository() {
    let fixtures = repo().join("fixtures");
    for path in [
        "README.md",
        "clip-tokenizer/vocab.json",
        "clip-tokenizer/merges.txt",
        "cases/cases.json",
        "models/tiny-sd/model_index.json",
        "models/tiny-sd/unet/diffusion_pytorch_model.safetensors",
        "models/tiny-sdxl/model_index.json",
        "models/tiny-sdxl/text_encoder_2/model.safetensors",
    ] {
        assert!(fixtures.join(path).is_file(), "fixtures/{path} is missing");
    }
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("cases/cases.json")).unwrap())
            .unwrap();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        assert!(
            fixtures.join(format!("cases/{name}.safetensors")).is_file(),
            "fixtures/cases/{name}.safetensors is missing"
        );
    }
}

/// The README's set-up links `./models` to the tiny models inside the checkout, never to a
/// folder beside it, and the link it makes resolves in the repository as committed.
#[test]
fn the_readme_setup_links_only_inside_the_checkout() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let links: Vec<&str> = readme
        .lines()
        .flat_map(|line| line.split("&&"))
        .map(str::trim)
        .filter(|step| step.starts_with("ln "))
        .collect();
    assert!(
        !links.is_empty(),
        "the README's set-up no longer links ./models"
    );
    for link in links {
        let words: Vec<&str> = link.split_whitespace().collect();
        let target = words[words.len() - 2];
        assert!(
            !target.starts_with("..") && !target.starts_with('/'),
            "`{link}` links outside the checkout"
        );
        assert!(
            repo()
                .join(target)
                .join("tiny-sd/model_index.json")
                .is_file(),
            "`{link}`: {target} holds no tiny-sd model"
        );
    }
}
