//! `cargo xtask tidy`: the architecture's rules, checked. Also run by
//! `cargo test` (see the tests below), so a forbidden edge fails the build.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util;

/// Crates the CLI's dependency graph must never contain.
const CLI_FORBIDDEN_ANYWHERE: [&str; 4] = ["bollard", "libbpf-rs", "libbpf-sys", "cedar-policy"];
/// Crates the CLI must not depend on directly.
const CLI_FORBIDDEN_DIRECT: [&str; 4] = ["rustls", "rcgen", "axum", "rusqlite"];
/// Heavy technologies and the only workspace crates that may use them (in
/// what they ship: tests, and the test kit, may stand up a TLS server).
const OWNERS: [(&str, &[&str]); 8] = [
    ("hyper", &["leash-proxy", "leashd"]),
    ("bollard", &["leashd"]),
    ("libbpf-rs", &["leash-sensor"]),
    ("cedar-policy", &["leash-policy"]),
    ("rustls", &["leash-proxy"]),
    ("rcgen", &["leash-proxy"]),
    ("axum", &["leashd"]),
    ("rusqlite", &["leashd"]),
];
/// Crates that build a process: nothing may depend on them (they talk over
/// sockets, never by linking each other).
const PROCESS_CRATES: [&str; 6] = ["leash-cli", "leashd", "leash-policy", "leash-sensor", "leash-proxy", "leash-entry"];
/// The domain crate stays free of IO and RPC.
const CORE_FORBIDDEN: [&str; 5] = ["tokio", "tonic", "prost", "bollard", "serde"];

/// What leash-entry (static, in every container) may link.
const ENTRY_DEPENDENCIES: [&str; 3] = ["nix", "rustix", "leash-core"];

pub fn run() -> anyhow::Result<()> {
    let meta = metadata()?;
    let mut problems = dependency_problems(&meta)?;
    problems.extend(header_problems(&util::root())?);
    if !problems.is_empty() {
        bail!("tidy found {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    util::out("tidy: dependency rules and file headers hold");
    Ok(())
}

fn metadata() -> anyhow::Result<Value> {
    let bytes = util::output(util::cargo().args(["metadata", "--format-version", "1", "--locked"]))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A dependency edge kind: normal, build or dev.
fn kinds(dep: &Value) -> BTreeSet<String> {
    dep["dep_kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["kind"].as_str().unwrap_or("normal").to_owned())
        .collect()
}

/// Every rule about edges, as a list of human-readable violations.
pub fn dependency_problems(meta: &Value) -> anyhow::Result<Vec<String>> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .map(|p| (p["id"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or("")))
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .map(|id| names[id])
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("resolve.nodes")?
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or(""), n))
        .collect();
    let id_of = |name: &str| names.iter().find(|(_, n)| **n == name).map(|(id, _)| *id);
    let direct = |id: &str| -> Vec<(&str, BTreeSet<String>)> {
        nodes[id]["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| (names[d["pkg"].as_str().unwrap_or("")], kinds(d)))
            .collect()
    };
    let mut problems = Vec::new();

    // The CLI's graph: everything reachable through normal and build edges.
    let cli = id_of("leash-cli").context("no leash-cli package")?;
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([(cli, vec!["leash-cli"])]);
    while let Some((id, path)) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        for d in nodes[id]["deps"].as_array().into_iter().flatten() {
            if kinds(d).iter().all(|k| k == "dev") {
                continue;
            }
            let dep_id = d["pkg"].as_str().unwrap_or("");
            let name = names[dep_id];
            let mut p = path.clone();
            p.push(name);
            if CLI_FORBIDDEN_ANYWHERE.contains(&name) {
                problems.push(format!("the CLI's dependency graph contains {name}: {}", p.join(" -> ")));
            }
            queue.push_back((dep_id, p));
        }
    }
    for (name, _) in direct(cli) {
        if CLI_FORBIDDEN_DIRECT.contains(&name) {
            problems.push(format!("leash-cli depends directly on {name}"));
        }
    }

    for member in &members {
        let id = id_of(member).expect("member has an id");
        for (dep, kinds) in direct(id) {
            let test_only = *member == "leash-testkit" || kinds.iter().all(|k| k == "dev");
            if let Some((_, owners)) = OWNERS.iter().find(|(tech, _)| *tech == dep)
                && !owners.contains(member)
                && !test_only
            {
                problems.push(format!("{member} depends on {dep}, which only {} may use", owners.join(", ")));
            }
            if PROCESS_CRATES.contains(&dep) {
                problems.push(format!("{member} depends on {dep}; processes talk over sockets, never by linking"));
            }
            if dep == "leash-testkit" && kinds.iter().any(|k| k != "dev") {
                problems.push(format!("{member} depends on leash-testkit outside [dev-dependencies]"));
            }
            if *member == "leash-core" && CORE_FORBIDDEN.contains(&dep) {
                problems.push(format!("leash-core depends on {dep}; the domain crate does no IO and no RPC"));
            }
            // leash-core has no dependencies of its own (the frames leashd
            // and leash-entry exchange); rustix has safe terminal calls nix lacks.
            if *member == "leash-entry" && !ENTRY_DEPENDENCIES.contains(&dep) && !kinds.iter().all(|k| k == "dev") {
                problems.push(format!(
                    "leash-entry depends on {dep}; it uses std, {} only, to stay small and static",
                    ENTRY_DEPENDENCIES.join(", ")
                ));
            }
        }
    }
    Ok(problems)
}

/// Every `.rs` file of the workspace starts with a `//!` comment, and no
/// file reaches outside the repository for inputs.
pub fn header_problems(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("xtask")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                if !text.starts_with("//!") {
                    problems.push(format!("{} does not start with a `//!` comment", path.display()));
                }
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_rules_hold() {
        let problems = dependency_problems(&metadata().unwrap()).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn every_rust_file_has_a_header() {
        let problems = header_problems(&util::root()).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// The rule can fail: a CLI graph that reaches cedar-policy is reported
    /// with the path that brings it in.
    #[test]
    fn a_forbidden_edge_is_reported() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "cli", "name": "leash-cli"},
                {"id": "d", "name": "leash-daemon"},
                {"id": "c", "name": "cedar-policy"},
                {"id": "r", "name": "rustls"},
                {"id": "t", "name": "leash-testkit"},
            ],
            "workspace_members": ["cli", "d", "t"],
            "resolve": {"nodes": [
                {"id": "cli", "deps": [
                    {"pkg": "d", "dep_kinds": [{"kind": null}]},
                    {"pkg": "r", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "d", "deps": [
                    {"pkg": "c", "dep_kinds": [{"kind": null}]},
                    {"pkg": "t", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "c", "deps": []},
                {"id": "r", "deps": []},
                {"id": "t", "deps": []},
            ]}
        });
        let problems = dependency_problems(&meta).unwrap();
        assert!(
            problems.contains(
                &"the CLI's dependency graph contains cedar-policy: leash-cli -> leash-daemon -> cedar-policy"
                    .to_owned()
            ),
            "{problems:#?}"
        );
        assert!(problems.contains(&"leash-cli depends directly on rustls".to_owned()), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("leash-daemon depends on cedar-policy")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("leash-daemon depends on leash-testkit outside")), "{problems:#?}");
    }
}
