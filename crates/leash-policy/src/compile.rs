//! Compiling a policy set to decision tables that provably decide the same.
//!
//! The policy's entities carve the paths into regions: every directory it
//! names is a prefix, every file it names an exact entry. All paths in one
//! region are in the same named entities, so Cedar decides them alike, and
//! the compiler decides each region by asking the authorizer about one
//! representative (a file directly in the directory, with a name no policy
//! mentions) — against only the policies that can match it. Conditions on
//! the resource's `path` or `name` cut across regions: paths they may match
//! are marked for evaluation in user space, and anything else the tables
//! cannot carve makes the whole action evaluate. The property test in this
//! module's tests checks lookup against the authorizer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cedar_policy::{Policy, PolicySet};
use leash_core::tables::{FileAction, PathTable, Tables, Verdict};
use serde_json::Value;

use crate::engine::{Action, Decision, Engine, combine};
use crate::resource::{Resource, dir_ancestors};

/// A name no real file has, for region representatives.
const REPRESENTATIVE: &str = "\u{1}leash-region";

/// Deliberately broken compilers, to show the property test catches them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The real compiler.
    None,
    /// A matching permit wins over a matching forbid.
    PermitOverForbid,
    /// Each directory's region is decided at its parent.
    OffByOnePrefix,
}

/// What a policy's JSON says about the file tables.
#[derive(Debug, Default)]
struct Carving {
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    patterns: BTreeSet<String>,
    names: BTreeSet<String>,
    evaluate_all: bool,
}

/// Compiles the file tables for sessions of `principal`.
pub fn compile(engine: &Engine, principal: &str, generation: u64) -> Tables {
    compile_with(engine, principal, generation, Mutation::None, true)
}

/// [`compile`] with a mutation and slicing switch (for tests and benchmarks).
#[doc(hidden)]
pub fn compile_with(engine: &Engine, principal: &str, generation: u64, mutation: Mutation, slice: bool) -> Tables {
    let mut carving = Carving::default();
    carving.dirs.insert("/".to_owned());
    let policies: Vec<(Policy, Value)> =
        engine.policies().policies().map(|p| (p.clone(), p.to_json().unwrap_or(Value::Null))).collect();
    for (_, json) in &policies {
        carve(json, &mut carving);
    }
    let sliced = Slices::new(&policies);
    let mut reasons: Vec<Vec<String>> = Vec::new();
    let mut reason_ids: HashMap<Vec<String>, u32> = HashMap::new();
    let mut verdict = |d: Decision| {
        let next = reasons.len() as u32;
        let id = *reason_ids.entry(d.reasons.clone()).or_insert_with(|| {
            reasons.push(d.reasons.clone());
            next
        });
        Verdict { allow: d.allow, reason: id }
    };
    let mut files = BTreeMap::new();
    for action in FileAction::ALL {
        let decide = |path: &str| -> Decision {
            let resource = Resource::File(path.to_owned());
            let one = |a: Action| {
                let set = if slice { sliced.for_resource(a, path) } else { engine.policies().clone() };
                match mutation {
                    Mutation::PermitOverForbid => {
                        let permits = PolicySet::from_policies(
                            set.policies().filter(|p| p.effect() == cedar_policy::Effect::Permit).cloned(),
                        )
                        .expect("a subset of a valid set");
                        engine.authorize_in(&permits, principal, a, &resource, &BTreeMap::new())
                    }
                    _ => engine.authorize_in(&set, principal, a, &resource, &BTreeMap::new()),
                }
            };
            match action {
                FileAction::Open => one(Action::FileOpen),
                FileAction::Read => combine(one(Action::FileOpenReadOnly), one(Action::FileOpen)),
                FileAction::Write => combine(one(Action::FileOpenReadWrite), one(Action::FileOpen)),
                FileAction::Exec => one(Action::ProcessExec),
            }
        };
        let mut table = PathTable {
            path_patterns: carving.patterns.iter().cloned().collect(),
            names: carving.names.iter().cloned().collect(),
            evaluate_all: carving.evaluate_all,
            ..Default::default()
        };
        for d in &carving.dirs {
            let at = match mutation {
                Mutation::OffByOnePrefix => dir_ancestors(d).first().cloned().unwrap_or_else(|| d.clone()),
                _ => d.clone(),
            };
            table.prefixes.insert(d.clone(), verdict(decide(&format!("{at}{REPRESENTATIVE}"))));
        }
        for f in &carving.files {
            table.exact.insert(f.clone(), verdict(decide(f)));
        }
        table.default = table.prefixes.get("/").copied();
        files.insert(action, table);
    }
    Tables { generation, files, reasons }
}

/// Policies per action, with the head constraints that allow slicing by
/// resource ancestry.
struct Slices {
    by_action: HashMap<Action, Vec<(Policy, Option<Head>)>>,
}

/// A head constraint that limits which resources a policy can match.
enum Head {
    /// `resource in Dir::"d"`: only resources under d.
    InDir(String),
    /// `resource == File::"f"`: only f.
    IsFile(String),
}

impl Slices {
    fn new(policies: &[(Policy, Value)]) -> Slices {
        let mut by_action: HashMap<Action, Vec<(Policy, Option<Head>)>> = HashMap::new();
        for (p, json) in policies {
            let head = head_constraint(json);
            for a in Action::ALL {
                if applies_to(json, a) {
                    let head = head.as_ref().map(|h| match h {
                        Head::InDir(d) => Head::InDir(d.clone()),
                        Head::IsFile(f) => Head::IsFile(f.clone()),
                    });
                    by_action.entry(a).or_default().push((p.clone(), head));
                }
            }
        }
        Slices { by_action }
    }

    /// The policies of `action` that can match the file at `path`.
    fn for_resource(&self, action: Action, path: &str) -> PolicySet {
        let ancestors = dir_ancestors(path);
        let policies = self.by_action.get(&action).into_iter().flatten().filter(|(_, head)| match head {
            None => true,
            Some(Head::InDir(d)) => ancestors.iter().any(|a| a == d),
            Some(Head::IsFile(f)) => f == path,
        });
        PolicySet::from_policies(policies.map(|(p, _)| p.clone())).expect("a subset of a valid set")
    }
}

fn entity_of(v: &Value) -> Option<(&str, &str)> {
    let e = v.get("entity").or_else(|| v.get("__entity")).unwrap_or(v);
    Some((e.get("type")?.as_str()?, e.get("id")?.as_str()?))
}

fn head_constraint(json: &Value) -> Option<Head> {
    let r = json.get("resource")?;
    match (r.get("op")?.as_str()?, entity_of(r)) {
        ("in", Some(("Dir", d))) => Some(Head::InDir(d.to_owned())),
        ("==", Some(("File", f))) => Some(Head::IsFile(f.to_owned())),
        _ => None,
    }
}

fn applies_to(json: &Value, action: Action) -> bool {
    let Some(a) = json.get("action") else { return true };
    let named = |e: &Value| entity_of(e).is_some_and(|(t, id)| t == "Action" && id == action.name());
    match a.get("op").and_then(Value::as_str) {
        Some("All") | None => true,
        Some("==") => named(a),
        Some("in") => match a.get("entities").and_then(Value::as_array) {
            Some(list) => list.iter().any(named),
            None => named(a),
        },
        _ => true,
    }
}

/// Collects the entities and conditions that carve the file tables.
fn carve(v: &Value, c: &mut Carving) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id)), 2) = (map.get("type"), map.get("id"), map.len()) {
                match ty.as_str() {
                    "Dir" => {
                        c.dirs.insert(id.clone());
                    }
                    "File" => {
                        c.files.insert(id.clone());
                    }
                    _ => {}
                }
                return;
            }
            if let Some(like) = map.get("like")
                && let Some(attr) = resource_attr(like.get("left"))
                && let Some(pattern) = like.get("pattern").and_then(glob_of)
            {
                if attr == "path" {
                    c.patterns.insert(pattern);
                } else {
                    // A name pattern: any path whose last segment could match.
                    c.patterns.insert(format!("*/{pattern}"));
                }
                return;
            }
            if let Some(eq) = map.get("==")
                && let (Some(attr), Some(Value::String(s))) = (
                    resource_attr(eq.get("left")).or_else(|| resource_attr(eq.get("right"))),
                    eq.get("right")
                        .and_then(|r| r.get("Value"))
                        .or_else(|| eq.get("left").and_then(|l| l.get("Value"))),
                )
            {
                if attr == "name" {
                    c.names.insert(s.clone());
                } else {
                    c.patterns.insert(s.replace('*', "\\*"));
                }
                return;
            }
            if resource_attr(Some(v)).is_some() || map.get("Var").and_then(Value::as_str) == Some("context") {
                c.evaluate_all = true;
                return;
            }
            map.values().for_each(|child| carve(child, c));
        }
        Value::Array(items) => items.iter().for_each(|child| carve(child, c)),
        _ => {}
    }
}

/// `resource.path` or `resource.name`, if `v` is that access.
fn resource_attr(v: Option<&Value>) -> Option<&str> {
    let dot = v?.get(".")?;
    (dot.get("left")?.get("Var")?.as_str()? == "resource").then_some(())?;
    dot.get("attr")?.as_str()
}

/// An EST `like` pattern as a glob with `*` (literal stars escaped).
fn glob_of(pattern: &Value) -> Option<String> {
    let mut out = String::new();
    for el in pattern.as_array()? {
        match el {
            Value::String(s) if s == "Wildcard" => out.push('*'),
            Value::Object(o) => out.push_str(&o.get("Literal")?.as_str()?.replace('*', "\\*")),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
