//! Tidy checks over the workspace, run by `cargo xtask tidy` and as tests:
//! crate layering (what each layer may depend on), `//!` docs on every module, no `#[ignore]`.
//!
//! The layer of every crate is declared in [`LAYERS`]; an unclassified crate is itself a problem,
//! so a new crate gets a layer when it is added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Where a crate sits in the architecture (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "every layer is checked by the tests; crates fill them as the workspace grows")]
pub enum Layer {
    /// No I/O, no async: model, rules, expression language, engine.
    PureCore,
    /// Traits and conformance kits between the core and the outside.
    Port,
    /// Implements one port with one I/O library.
    Adapter,
    /// Owns I/O and orchestration; depends on ports, never on adapters.
    Service,
    /// Composition root: may depend on anything.
    Binary,
    /// Test support and automation: never a normal dependency of product crates.
    TestSupport,
}

/// Every workspace crate and its layer.
pub const LAYERS: &[(&str, Layer)] = &[
    ("model", Layer::PureCore),
    ("dirgen", Layer::PureCore),
    ("sync-expr", Layer::PureCore),
    ("sync-rules", Layer::PureCore),
    ("sync-engine", Layer::PureCore),
    ("phs", Layer::PureCore),
    ("pta", Layer::PureCore),
    ("health", Layer::PureCore),
    ("store", Layer::Port),
    ("connector-api", Layer::Port),
    ("connector-memory", Layer::Adapter),
    ("connector-ldap", Layer::Adapter),
    ("connector-graph", Layer::Adapter),
    ("drsr", Layer::Adapter),
    ("telemetry", Layer::Adapter),
    ("sync-runner", Layer::Service),
    ("tenant", Layer::Service),
    ("pta-agent", Layer::Service),
    ("password-sync", Layer::Service),
    ("store-sqlite", Layer::Adapter),
    ("store-postgres", Layer::Adapter),
    ("isthmus", Layer::Binary),
    ("testkit", Layer::TestSupport),
    ("xtask", Layer::TestSupport),
];

/// Crates that do I/O or async; the pure core must not reach them, even transitively.
pub const IO_CRATES: &[&str] = &["tokio", "axum", "hyper", "ldap3", "rusqlite", "sqlx", "reqwest", "tokio-postgres", "postgres", "mio"];

/// The dependency graph tidy reasons about: normal (non-dev, non-build) edges only.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// Workspace crate names.
    pub members: BTreeSet<String>,
    /// Crate name → names of its normal dependencies (workspace and external).
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn closure(&self, start: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.to_string()];
        while let Some(name) = stack.pop() {
            for dep in self.edges.get(&name).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }
}

/// Layering problems of `graph` under `layers`.
pub fn check_layering(graph: &Graph, layers: &[(&str, Layer)]) -> Vec<String> {
    let layer_of = |name: &str| layers.iter().find(|(crate_name, _)| *crate_name == name).map(|(_, layer)| *layer);
    let mut problems = Vec::new();
    for member in &graph.members {
        let Some(layer) = layer_of(member) else {
            problems.push(format!("crate `{member}` has no layer: add it to LAYERS in xtask/src/tidy.rs"));
            continue;
        };
        let direct: BTreeSet<String> = graph.edges.get(member).cloned().unwrap_or_default();
        match layer {
            Layer::PureCore => {
                for dep in graph.closure(member) {
                    if IO_CRATES.contains(&dep.as_str()) {
                        problems.push(format!("pure-core crate `{member}` depends on I/O crate `{dep}`"));
                    }
                }
                for dep in direct.iter().filter(|dep| graph.members.contains(*dep)) {
                    if layer_of(dep) != Some(Layer::PureCore) {
                        problems.push(format!("pure-core crate `{member}` depends on non-core crate `{dep}`"));
                    }
                }
            }
            Layer::Adapter | Layer::Service | Layer::Port => {
                for dep in direct.iter().filter(|dep| graph.members.contains(*dep)) {
                    let dep_layer = layer_of(dep);
                    let forbidden = match layer {
                        Layer::Adapter => matches!(dep_layer, Some(Layer::Adapter | Layer::Service | Layer::Binary)),
                        Layer::Service => matches!(dep_layer, Some(Layer::Adapter | Layer::Binary)),
                        _ => matches!(dep_layer, Some(Layer::Adapter | Layer::Service | Layer::Binary)),
                    };
                    if forbidden || dep_layer == Some(Layer::TestSupport) {
                        problems.push(format!("{layer:?} crate `{member}` must not depend on `{dep}` ({dep_layer:?})"));
                    }
                }
            }
            Layer::Binary => {
                for dep in direct.iter().filter(|dep| layer_of(dep) == Some(Layer::TestSupport)) {
                    problems.push(format!("binary `{member}` must not depend on test support crate `{dep}`"));
                }
            }
            Layer::TestSupport => {}
        }
    }
    problems
}

/// Reads the real workspace graph from `cargo metadata`.
pub fn workspace_graph(root: &Path) -> anyhow::Result<Graph> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("run cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("parse cargo metadata")?;
    let name_of_id = |id: &str| -> Option<String> {
        metadata["packages"].as_array()?.iter().find(|pkg| pkg["id"] == id).and_then(|pkg| pkg["name"].as_str()).map(str::to_string)
    };
    let mut graph = Graph::default();
    for id in metadata["workspace_members"].as_array().into_iter().flatten().filter_map(|id| id.as_str()) {
        graph.members.extend(name_of_id(id));
    }
    for node in metadata["resolve"]["nodes"].as_array().into_iter().flatten() {
        let Some(name) = node["id"].as_str().and_then(name_of_id) else {
            continue;
        };
        let deps = graph.edges.entry(name).or_default();
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|kind| kind["kind"].is_null());
            if normal && let Some(dep_name) = dep["pkg"].as_str().and_then(name_of_id) {
                deps.insert(dep_name);
            }
        }
    }
    Ok(graph)
}

/// Problems in Rust sources: modules without `//!` docs, `#[ignore]`d tests.
pub fn check_sources(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for top in ["crates", "xtask"] {
        collect_rs(&root.join(top), &mut files)?;
    }
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let relative = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        let in_src = relative.contains("/src/");
        if in_src && !text.trim_start().starts_with("//!") {
            problems.push(format!("{relative}: module has no `//!` doc saying what it owns and does not know"));
        }
        let ignore_attr = concat!("#[", "ignore");
        if text.lines().any(|line| line.trim_start().starts_with(ignore_attr)) {
            problems.push(format!("{relative}: `#[ignore]` hides a test; assert today's behaviour with a FIXME instead"));
        }
    }
    Ok(problems)
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            collect_rs(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// All tidy problems of the real workspace.
pub fn check_workspace() -> anyhow::Result<Vec<String>> {
    let root = workspace_root();
    let mut problems = check_layering(&workspace_graph(&root)?, LAYERS);
    problems.extend(check_sources(&root)?);
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(members: &[&str], edges: &[(&str, &str)]) -> Graph {
        let mut graph = Graph { members: members.iter().map(|m| m.to_string()).collect(), ..Graph::default() };
        for (from, to) in edges {
            graph.edges.entry(from.to_string()).or_default().insert(to.to_string());
        }
        graph
    }

    const TEST_LAYERS: &[(&str, Layer)] = &[
        ("model", Layer::PureCore),
        ("dirgen", Layer::PureCore),
        ("store", Layer::Port),
        ("connector-api", Layer::Port),
        ("connector-memory", Layer::Adapter),
        ("sync-runner", Layer::Service),
        ("tenant", Layer::Service),
        ("store-sqlite", Layer::Adapter),
        ("store-postgres", Layer::Adapter),
        ("connector-ldap", Layer::Adapter),
        ("connector-graph", Layer::Adapter),
        ("sync-runner", Layer::Service),
        ("tenant", Layer::Service),
        ("isthmus", Layer::Binary),
        ("testkit", Layer::TestSupport),
    ];

    #[test]
    fn workspace_is_tidy() {
        let problems = check_workspace().unwrap();
        assert!(problems.is_empty(), "tidy problems:\n{}", problems.join("\n"));
    }

    #[test]
    fn pure_core_reaching_tokio_transitively_is_flagged() {
        let g = graph(&["model", "helper"], &[("model", "helper"), ("helper", "tokio")]);
        let layers = &[("model", Layer::PureCore), ("helper", Layer::PureCore)];
        let problems = check_layering(&g, layers);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("depends on I/O crate `tokio`")));
    }

    #[test]
    fn adapter_on_adapter_and_service_on_adapter_are_flagged() {
        let g = graph(
            &["store", "store-sqlite", "connector-ldap", "sync-runner", "isthmus"],
            &[("connector-ldap", "store-sqlite"), ("sync-runner", "store-sqlite"), ("sync-runner", "store"), ("isthmus", "store-sqlite")],
        );
        let problems = check_layering(&g, TEST_LAYERS);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`connector-ldap` must not depend on `store-sqlite`"));
        assert!(problems[1].contains("`sync-runner` must not depend on `store-sqlite`"));
    }

    #[test]
    fn unclassified_crate_and_testkit_in_binary_are_flagged() {
        let g = graph(&["isthmus", "newcrate", "testkit"], &[("isthmus", "testkit")]);
        let problems = check_layering(&g, TEST_LAYERS);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`newcrate` has no layer")));
        assert!(problems.iter().any(|p| p.contains("must not depend on test support crate `testkit`")));
    }

    #[test]
    fn sources_without_docs_or_with_ignore_are_flagged() {
        let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let src = dir.join("crates").join("demo").join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("lib.rs"), "pub fn f() {}\n").unwrap();
        std::fs::write(src.join("ok.rs"), format!("//! Fine.\n#[test]\n{}]\nfn t() {{}}\n", concat!("#[", "ignore"))).unwrap();
        let mut problems = check_sources(&dir).unwrap();
        problems.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("lib.rs: module has no `//!` doc"));
        assert!(problems[1].contains("ok.rs: `#[ignore]` hides a test"));
    }
}
