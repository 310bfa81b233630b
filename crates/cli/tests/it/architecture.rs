//! `docs/architecture.md` stays true: its dependency graph is the one the crates' manifests
//! declare, and it names every crate folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each crate folder under `crates/` with the seedbed crates (by folder) in its `[dependencies]`.
fn declared() -> BTreeMap<String, BTreeSet<String>> {
    let mut manifests = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let manifest: toml::Table = text.parse().unwrap();
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        manifests.insert(folder, manifest);
    }
    let folder_of: BTreeMap<String, String> = manifests
        .iter()
        .map(|(folder, manifest)| {
            let name = manifest["package"]["name"].as_str().unwrap().to_string();
            (name, folder.clone())
        })
        .collect();
    manifests
        .iter()
        .map(|(folder, manifest)| {
            let deps = manifest
                .get("dependencies")
                .and_then(toml::Value::as_table)
                .map(|deps| {
                    deps.keys()
                        .filter_map(|name| folder_of.get(name).cloned())
                        .collect()
                })
                .unwrap_or_default();
            (folder.clone(), deps)
        })
        .collect()
}

/// The graph as the page draws it: the first fenced block after "## Who depends on whom",
/// one `crate -> dep, dep` line per crate.
fn documented(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = page
        .split("## Who depends on whom")
        .nth(1)
        .expect("docs/architecture.md has no \"## Who depends on whom\" section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section has no fenced graph");
    block
        .lines()
        .filter_map(|line| line.split_once("->"))
        .map(|(name, deps)| {
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            (name.trim().to_string(), deps)
        })
        .collect()
}

#[test]
fn the_documented_dependency_graph_is_the_declared_one() {
    let page = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let declared = declared();
    let documented = documented(&page);
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        declared.keys().collect::<Vec<_>>(),
        "docs/architecture.md's graph must name every crate folder, and only those"
    );
    for (folder, deps) in &declared {
        assert_eq!(
            &documented[folder], deps,
            "crates/{folder}/Cargo.toml's seedbed dependencies differ from docs/architecture.md"
        );
        assert!(
            page.contains(&format!("| `crates/{folder}` |")),
            "docs/architecture.md's crate table has no row for crates/{folder}"
        );
    }
}

/// Every repository path the page names in backticks (`crates/...`, `fixtures/...`, ...) exists,
/// so a file that moves takes its line on the map with it.
#[test]
fn every_path_the_page_names_exists() {
    let page = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let roots = ["crates/", "fixtures/", "tools/", "docs/", "bench/", ".ci/"];
    let missing: Vec<&str> = page
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            roots.iter().any(|root| quoted.starts_with(root)) && !quoted.contains("...")
        })
        .filter(|path| !repo().join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist (update the page): {missing:?}"
    );
}
