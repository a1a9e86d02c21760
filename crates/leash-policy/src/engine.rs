//! A loaded policy set: parsed, normalized, validated against the schema,
//! and the authorizer that decides requests with reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, PolicyId, PolicySet, Request, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use serde_json::Value;

pub use crate::action::Action;
use crate::action::applies_to;
use crate::resource::{self, IpRange, Resource};

/// The largest policy source accepted (documented limit).
pub const MAX_SOURCE_BYTES: usize = 4 << 20;
/// The most statements accepted across all sources (documented limit).
pub const MAX_STATEMENTS: usize = 20_000;
/// The deepest nesting of brackets accepted (documented limit): Cedar's
/// parser recurses per level, and a deep enough nest overflows a stack.
pub const MAX_NESTING: usize = 64;

/// The loader thread's stack.
const LOAD_STACK_BYTES: usize = 256 << 20;

/// The vocabulary's schema.
pub const SCHEMA: &str = include_str!("../../../policies/leash.cedarschema");

/// How serious a lint is: errors reject the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing.
    Warning,
    /// The policy is rejected.
    Error,
}

/// Something about a policy that parses but may not do what its author thinks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lint {
    /// Machine-readable code, e.g. `dir_missing_trailing_slash`.
    pub code: &'static str,
    /// Severity.
    pub severity: Severity,
    /// The policy's id.
    pub policy: String,
    /// Where: `file:line`.
    pub location: String,
    /// What, and what was done about it.
    pub message: String,
}

/// A policy that cannot be loaded, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The source's name (a file path, or `default`).
    pub file: String,
    /// 1-based line, when known.
    pub line: usize,
    /// 1-based column, when known.
    pub column: usize,
    /// The source line.
    pub snippet: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub suggestion: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        if !self.snippet.is_empty() {
            write!(
                f,
                "\n  {} | {}\n  {}   {}^",
                self.line,
                self.snippet,
                " ".repeat(self.line.to_string().len()),
                " ".repeat(self.column.saturating_sub(1))
            )?;
        }
        if !self.suggestion.is_empty() {
            write!(f, "\n  hint: {}", self.suggestion)?;
        }
        Ok(())
    }
}

/// One policy text and its name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// A file path, or a name such as `default`.
    pub name: String,
    /// The Cedar text.
    pub text: String,
}

/// A decision, with the policies that determined it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allow: bool,
    /// Ids of the determining policies (the forbids that denied, or the
    /// permits that allowed; empty when nothing permitted).
    pub reasons: Vec<String>,
    /// Evaluation errors (a policy that errors is skipped, as Cedar does).
    pub errors: Vec<String>,
}

/// A loaded, validated policy set.
#[derive(Debug)]
pub struct Engine {
    schema: Schema,
    set: PolicySet,
    ranges: Vec<(String, IpRange)>,
    lints: Vec<Lint>,
    /// Policy id → its source and line.
    origins: BTreeMap<String, String>,
    authorizer: Authorizer,
    /// Compiled tables per principal, built on first use: an engine never changes.
    tables: std::sync::Mutex<BTreeMap<String, std::sync::Arc<leash_core::tables::Tables>>>,
    /// Some policy names `context` (see [`Engine::reads_context`]).
    reads_context: bool,
}

/// The schema, parsed once.
pub fn schema() -> Schema {
    Schema::from_cedarschema_str(SCHEMA).map(|(s, _)| s).expect("the built-in schema parses")
}

impl Engine {
    /// Loads the sources in order (ids must be unique across them).
    /// Returns every error found, not just the first. Parsing runs on a
    /// thread of its own with a large stack: Cedar's parser recurses per
    /// nesting level.
    pub fn load(sources: &[Source]) -> Result<Engine, Vec<LoadError>> {
        let sources = sources.to_vec();
        let worker = std::thread::Builder::new()
            .name("policy-load".into())
            .stack_size(LOAD_STACK_BYTES)
            .spawn(move || Engine::load_here(&sources));
        match worker.map(|h| h.join()) {
            Ok(Ok(result)) => result,
            _ => Err(vec![LoadError {
                file: String::new(),
                line: 0,
                column: 0,
                snippet: String::new(),
                message: "the policy could not be loaded (the loader failed)".into(),
                suggestion: String::new(),
            }]),
        }
    }

    fn load_here(sources: &[Source]) -> Result<Engine, Vec<LoadError>> {
        let schema = schema();
        let mut errors = Vec::new();
        let mut lints = Vec::new();
        let mut policies = Vec::new();
        let mut origins = BTreeMap::new();
        let mut ranges = BTreeSet::new();
        let mut statements = 0;
        for src in sources {
            let limit = |message: String| LoadError {
                file: src.name.clone(),
                line: 1,
                column: 1,
                snippet: String::new(),
                message,
                suggestion: "split the policy, or express it with fewer, broader statements (`resource in Dir::...`)"
                    .into(),
            };
            if src.text.len() > MAX_SOURCE_BYTES {
                errors.push(limit(format!(
                    "the policy is {:.1} MiB; leash accepts at most {} MiB per file",
                    src.text.len() as f64 / (1 << 20) as f64,
                    MAX_SOURCE_BYTES >> 20
                )));
                continue;
            }
            let scanned = scan(&src.text, MAX_NESTING);
            if let Some(offset) = scanned.too_deep {
                let (line, column) = line_col(&src.text, offset);
                errors.push(LoadError {
                    line,
                    column,
                    snippet: src.text.lines().nth(line - 1).unwrap_or("").chars().take(200).collect(),
                    ..limit(format!(
                        "brackets nest deeper than {MAX_NESTING} levels; leash accepts at most {MAX_NESTING}"
                    ))
                });
                continue;
            }
            statements += scanned.starts.len();
            if statements > MAX_STATEMENTS {
                errors.push(limit(format!(
                    "more than {MAX_STATEMENTS} statements; leash accepts at most {MAX_STATEMENTS} statements"
                )));
                return Err(errors);
            }
            let parsed = match PolicySet::from_str(&src.text) {
                Ok(p) => p,
                Err(e) => {
                    errors.extend(parse_errors(src, &e));
                    continue;
                }
            };
            let starts = scanned.starts;
            // Cedar numbers policies policy0, policy1, … in source order.
            let mut parsed: Vec<_> = parsed.policies().cloned().collect();
            parsed.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(0));
            for (n, p) in parsed.into_iter().enumerate() {
                let line = starts.get(n).map(|o| line_col(&src.text, *o).0).unwrap_or(1);
                let location = format!("{}:{line}", src.name);
                let id =
                    p.annotation("id").map(str::to_owned).unwrap_or_else(|| format!("{}#{n}", short_name(&src.name)));
                if origins.insert(id.clone(), location.clone()).is_some() {
                    errors.push(LoadError {
                        file: src.name.clone(),
                        line,
                        column: 1,
                        snippet: src.text.lines().nth(line - 1).unwrap_or("").to_owned(),
                        message: format!("policy id {id:?} is used twice"),
                        suggestion: "give every @id annotation a unique value".into(),
                    });
                    continue;
                }
                let mut json = match p.to_json() {
                    Ok(j) => j,
                    Err(e) => {
                        errors.push(LoadError::at(src, line, e.to_string()));
                        continue;
                    }
                };
                let mut found = Vec::new();
                normalize(&mut json, &mut found);
                normalize_host_head(&mut json, &mut found);
                split_mixed_sets(&mut json, &mut found);
                guard_optional_context(&mut json, &mut found);
                for (code, message) in found {
                    lints.push(Lint {
                        code,
                        severity: Severity::Warning,
                        policy: id.clone(),
                        location: location.clone(),
                        message,
                    });
                }
                collect_ranges(&json, &mut ranges);
                lints.extend(shape_lints(&json, &id, &location));
                let statement = starts.get(n).map(|o| (*o, starts.get(n + 1).copied().unwrap_or(src.text.len())));
                lints.extend(secret_lints(&json, &id, src, statement));
                match cedar_policy::Policy::from_json(Some(PolicyId::new(&id)), json) {
                    Ok(p) => policies.push(p),
                    Err(e) => errors.push(LoadError::at(src, line, e.to_string())),
                }
            }
        }
        let set = match PolicySet::from_policies(policies) {
            Ok(s) => s,
            Err(e) => {
                errors.push(LoadError {
                    file: String::new(),
                    line: 0,
                    column: 0,
                    snippet: String::new(),
                    message: e.to_string(),
                    suggestion: String::new(),
                });
                return Err(errors);
            }
        };
        let validation = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        for e in validation.validation_errors() {
            let id = e.policy_id().to_string();
            let (file, line) = origins
                .get(&id)
                .and_then(|o| o.rsplit_once(':'))
                .map(|(f, l)| (f.to_owned(), l.parse().unwrap_or(1)))
                .unwrap_or_default();
            let text = sources.iter().find(|s| s.name == file).map(|s| s.text.as_str()).unwrap_or("");
            errors.push(LoadError {
                file,
                line,
                column: 1,
                snippet: text.lines().nth(line.saturating_sub(1)).unwrap_or("").to_owned(),
                message: format!("policy {id}: {e}"),
                suggestion: suggestion(&e.to_string()),
            });
        }
        if lints.iter().any(|l| l.severity == Severity::Error) {
            for l in lints.iter().filter(|l| l.severity == Severity::Error) {
                let (file, line, column) = split_location(&l.location);
                let text = sources.iter().find(|s| s.name == file).map(|s| s.text.as_str()).unwrap_or("");
                errors.push(LoadError {
                    file,
                    line,
                    column,
                    snippet: if column > 1 {
                        text.lines().nth(line.saturating_sub(1)).unwrap_or("").to_owned()
                    } else {
                        String::new()
                    },
                    message: format!("{} ({}): {}", l.policy, l.code, l.message),
                    suggestion: String::new(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        lints.extend(shadow_lints(&set, &origins));
        lints.sort();
        lints.dedup();
        let ranges = ranges.into_iter().filter_map(|r| IpRange::parse(&r).map(|p| (r, p))).collect();
        let reads_context = set.policies().any(|p| p.to_string().contains("context"));
        Ok(Engine {
            schema,
            set,
            ranges,
            lints,
            origins,
            authorizer: Authorizer::new(),
            tables: Default::default(),
            reads_context,
        })
    }

    /// Whether a decision may depend on the request's context: some policy
    /// names `context` (in a condition, or — counted all the same, to err
    /// on the safe side — in a string or a comment). When none does, every
    /// request of the same principal, action and resource gets the same
    /// decision, so a caller may keep it (the proxy does, for tool calls
    /// whose arguments are the context).
    pub fn reads_context(&self) -> bool {
        self.reads_context
    }

    /// The lints of the loaded set.
    pub fn lints(&self) -> &[Lint] {
        &self.lints
    }

    /// The policy set.
    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    /// Where each policy was defined (`file:line`).
    pub fn origin(&self, id: &str) -> Option<&str> {
        self.origins.get(id).map(String::as_str)
    }

    /// The IP ranges the policy names.
    pub fn ranges(&self) -> &[(String, IpRange)] {
        &self.ranges
    }

    /// The tables compiled for sessions of each principal (`compile::tables`).
    pub(crate) fn tables_cache(
        &self,
    ) -> &std::sync::Mutex<BTreeMap<String, std::sync::Arc<leash_core::tables::Tables>>> {
        &self.tables
    }

    /// Decides one Cedar action on a resource.
    pub fn authorize_one(
        &self,
        principal: &str,
        action: Action,
        resource: &Resource,
        context: &BTreeMap<String, String>,
    ) -> Decision {
        self.authorize_in(&self.set, principal, action, resource, context)
    }

    /// Decides against a given slice of this engine's policies.
    pub fn authorize_in(
        &self,
        set: &PolicySet,
        principal: &str,
        action: Action,
        resource: &Resource,
        context: &BTreeMap<String, String>,
    ) -> Decision {
        let (resource_uid, mut entities) = resource::entities(resource, &self.ranges);
        entities.push(cedar_policy::Entity::new_no_attrs(
            resource::uid(resource::types::USER, principal),
            Default::default(),
        ));
        let entities = match Entities::from_entities(entities, Some(&self.schema)) {
            Ok(e) => e,
            Err(e) => return Decision { allow: false, reasons: Vec::new(), errors: vec![format!("entities: {e}")] },
        };
        let pairs = context.iter().map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        let request = Context::from_pairs(pairs).map_err(|e| e.to_string()).and_then(|ctx| {
            Request::new(
                resource::uid(resource::types::USER, principal),
                resource::uid("Action", action.name()),
                resource_uid,
                ctx,
                Some(&self.schema),
            )
            .map_err(|e| e.to_string())
        });
        let request = match request {
            Ok(r) => r,
            Err(e) => return Decision { allow: false, reasons: Vec::new(), errors: vec![format!("request: {e}")] },
        };
        let r = self.authorizer.is_authorized(&request, set, &entities);
        let mut reasons: Vec<String> = r.diagnostics().reason().map(|id| id.to_string()).collect();
        reasons.sort();
        Decision {
            allow: r.decision() == CedarDecision::Allow,
            reasons,
            errors: r.diagnostics().errors().map(|e| e.to_string()).collect(),
        }
    }

    /// Decides a request as leash means it: an open for reading is
    /// `FileOpen` and `FileOpenReadOnly`, for writing `FileOpen` and
    /// `FileOpenReadWrite`; a forbid on either denies, a permit on either
    /// allows.
    pub fn authorize(
        &self,
        principal: &str,
        action: Action,
        resource: &Resource,
        context: &BTreeMap<String, String>,
    ) -> Decision {
        let pair = match action {
            Action::FileOpenReadOnly | Action::FileOpenReadWrite => Some(Action::FileOpen),
            _ => None,
        };
        let first = self.authorize_one(principal, action, resource, context);
        let Some(other) = pair else { return first };
        let second = self.authorize_one(principal, other, resource, context);
        combine(first, second)
    }
}

/// Combines the two halves of a file open: a forbid on either denies, else
/// a permit on either allows.
pub fn combine(a: Decision, b: Decision) -> Decision {
    let forbidden = |d: &Decision| !d.allow && !d.reasons.is_empty();
    let mut errors = a.errors.clone();
    errors.extend(b.errors.clone());
    let (allow, mut reasons) = if forbidden(&a) || forbidden(&b) {
        (false, [a, b].into_iter().filter(forbidden).flat_map(|d| d.reasons).collect::<Vec<_>>())
    } else if a.allow || b.allow {
        (true, [a, b].into_iter().filter(|d| d.allow).flat_map(|d| d.reasons).collect())
    } else {
        (false, Vec::new())
    };
    reasons.sort();
    reasons.dedup();
    Decision { allow, reasons, errors }
}

impl LoadError {
    fn at(src: &Source, line: usize, message: String) -> LoadError {
        LoadError {
            file: src.name.clone(),
            line,
            column: 1,
            snippet: src.text.lines().nth(line.saturating_sub(1)).unwrap_or("").to_owned(),
            message,
            suggestion: String::new(),
        }
    }
}

fn short_name(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.strip_suffix(".cedar").unwrap_or(base).to_owned()
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn parse_errors(src: &Source, e: &cedar_policy::ParseErrors) -> Vec<LoadError> {
    use miette::Diagnostic;
    let mut out = Vec::new();
    for err in e.iter() {
        let offset = err.labels().and_then(|mut l| l.next()).map(|l| l.offset()).unwrap_or(0);
        let (line, column) = line_col(&src.text, offset);
        let message = err.to_string();
        let help = err.help().map(|h| h.to_string()).unwrap_or_else(|| suggestion(&message));
        out.push(LoadError {
            file: src.name.clone(),
            line,
            column,
            snippet: src.text.lines().nth(line - 1).unwrap_or("").to_owned(),
            message,
            suggestion: help,
        });
    }
    out
}

fn suggestion(message: &str) -> String {
    let m = message.to_ascii_lowercase();
    if m.contains("unrecognized action") || m.contains("unknown action") {
        "actions are FileOpen, FileOpenReadOnly, FileOpenReadWrite, ProcessExec, NetworkConnect, HttpRewrite, McpCall, SecretUse"
            .into()
    } else if m.contains("entity type") {
        "entity types are File, Dir, Host, Net::IpRange, Net::DnsZone, MCP::Server, MCP::Tool and User".into()
    } else if m.contains("comma") {
        "add a comma between list elements".into()
    } else {
        "review the Cedar syntax near the highlighted column".into()
    }
}

/// The byte spans of a text's top-level statements (annotations included,
/// through the closing `;`), in Cedar's order.
pub fn statement_spans(text: &str) -> Vec<(usize, usize)> {
    let s = scan(text, usize::MAX);
    s.starts.into_iter().zip(s.ends.into_iter().chain(std::iter::repeat(text.len()))).collect()
}

/// What a scan of a policy's text finds, outside strings and comments.
struct Scan {
    /// Byte offsets where each top-level statement starts (annotations included).
    starts: Vec<usize>,
    /// Byte offsets just past each top-level statement's `;`.
    ends: Vec<usize>,
    /// The offset where brackets first nest deeper than the limit.
    too_deep: Option<usize>,
}

/// Scans a policy's text once: statement starts and nesting depth.
fn scan(text: &str, max_depth: usize) -> Scan {
    let b = text.as_bytes();
    let mut out = Scan { starts: Vec::new(), ends: Vec::new(), too_deep: None };
    let (mut i, mut depth, mut at_start) = (0, 0usize, true);
    let start_here = |i: usize, at_start: &mut bool, starts: &mut Vec<usize>| {
        if *at_start {
            starts.push(i);
            *at_start = false;
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                at_start = false;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b';' if depth == 0 => {
                if !at_start {
                    out.ends.push(i + 1);
                }
                at_start = true;
            }
            b'(' | b'[' | b'{' => {
                start_here(i, &mut at_start, &mut out.starts);
                depth += 1;
                if depth > max_depth && out.too_deep.is_none() {
                    out.too_deep = Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            c if c.is_ascii_whitespace() => {}
            _ => start_here(i, &mut at_start, &mut out.starts),
        }
        i += 1;
    }
    out
}

/// Rewrites Go-leash spellings real Cedar would never match: type aliases,
/// `Dir` ids without a trailing slash, action ids in another case, IPv6
/// hosts without brackets. Says what it did.
fn normalize(v: &mut Value, found: &mut Vec<(&'static str, String)>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id))) =
                (map.get("type").cloned(), map.get("id").cloned())
                && map.len() == 2
            {
                let canonical = canonical_type(&ty);
                if let Some(c) = canonical
                    && c != ty
                {
                    found.push(("type_alias_normalized", format!("{ty}::{id:?} is read as {c}::{id:?}")));
                    map.insert("type".into(), Value::String(c.to_owned()));
                }
                let ty = canonical.unwrap_or(&ty).to_owned();
                if ty == "Dir" && !id.ends_with('/') {
                    found.push(("dir_missing_trailing_slash", format!("Dir::{id:?} is read as Dir::\"{id}/\"")));
                    map.insert("id".into(), Value::String(format!("{id}/")));
                }
                if ty == "Action"
                    && let Some(a) = Action::from_name(&id)
                    && a.name() != id
                {
                    found.push(("action_case_normalized", format!("Action::{id:?} is read as Action::{:?}", a.name())));
                    map.insert("id".into(), Value::String(a.name().to_owned()));
                }
                if ty == "Host"
                    && let Ok(h) = resource::Host::parse(&id)
                    && matches!(h, resource::Host::Ip(std::net::IpAddr::V6(_), _) | resource::Host::Ip(_, _))
                    && h.id() != id
                {
                    found.push(("ip_host_normalized", format!("Host::{id:?} is read as Host::{:?}", h.id())));
                    map.insert("id".into(), Value::String(h.id()));
                }
                return;
            }
            for child in map.values_mut() {
                normalize(child, found);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| normalize(c, found)),
        _ => {}
    }
}

/// `x in [File::"/etc/passwd", Dir::"/tmp/"]`: the Go leash's lists mix
/// entity types, which Cedar's strict validation refuses (a set's elements
/// must share a type). `x in [a, b, c]` means `x in a || x in b || x in c`
/// in Cedar, so each such list is split into one list per type, joined
/// with `||`: the same meaning (the file exactly, or anything under the
/// directory), and each part validates. Says so with the rewritten form.
fn split_mixed_sets(v: &mut Value, found: &mut Vec<(&'static str, String)>) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                split_mixed_sets(child, found);
            }
            let Some(Value::Object(op)) = map.get("in") else { return };
            let (Some(left), Some(Value::Array(items))) = (op.get("left"), op.get("right").and_then(|r| r.get("Set")))
            else {
                return;
            };
            let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
            for item in items {
                let Some(ty) = item.get("Value").and_then(|e| e.get("__entity")).and_then(|e| e.get("type")) else {
                    return; // not a list of entity literals: Cedar's own checks apply
                };
                let ty = ty.as_str().unwrap_or_default().to_owned();
                match groups.iter_mut().find(|(t, _)| *t == ty) {
                    Some((_, g)) => g.push(item.clone()),
                    None => groups.push((ty, vec![item.clone()])),
                }
            }
            if groups.len() < 2 {
                return;
            }
            let left = left.clone();
            let show = |items: &[Value]| {
                let names: Vec<String> = items
                    .iter()
                    .filter_map(|i| {
                        let e = i.get("Value")?.get("__entity")?;
                        Some(format!("{}::{:?}", e.get("type")?.as_str()?, e.get("id")?.as_str()?))
                    })
                    .collect();
                format!("[{}]", names.join(", "))
            };
            let subject = left.get("Var").and_then(Value::as_str).unwrap_or("…").to_owned();
            let before = format!("{subject} in {}", show(items));
            let after: Vec<String> = groups.iter().map(|(_, g)| format!("{subject} in {}", show(g))).collect();
            let mut parts = groups
                .into_iter()
                .map(|(_, g)| serde_json::json!({ "in": { "left": left.clone(), "right": { "Set": g } } }));
            let first = parts.next().expect("two groups");
            let joined = parts.fold(first, |acc, p| serde_json::json!({ "||": { "left": acc, "right": p } }));
            found.push((
                "mixed_list_split",
                format!(
                    "`{before}` mixes entity types, which Cedar cannot validate; it is read as `{}` (the same meaning)",
                    after.join(" || ")
                ),
            ));
            *v = joined;
        }
        Value::Array(items) => items.iter_mut().for_each(|c| split_mixed_sets(c, found)),
        _ => {}
    }
}

/// The context attributes a request may lack: `hostname` (only connections
/// the proxy saw by name have one), the request's `scheme`, `method`,
/// `path` and `query` (only HTTP requests the proxy decides have them),
/// `arguments` (only MCP calls whose arguments the proxy read), and a
/// secret use's `port` and `location`.
const OPTIONAL_CONTEXT: [&str; 8] = ["hostname", "scheme", "method", "path", "query", "arguments", "port", "location"];

/// `when { context.hostname == "h" }`: the Go leash's spelling reads an
/// attribute a request may lack, which Cedar's strict validation refuses
/// unless a `has` guards it. Where the access is one of the `&&`-joined
/// terms of a `when` clause, `context has hostname && …` decides exactly as
/// Cedar would without the guard (a request without the attribute: an
/// error that skips the policy, or a false term that does not satisfy it;
/// neither permits nor forbids), so the term is guarded and a lint says so.
/// Only a comparison of the attribute with a literal is guarded (it errors
/// exactly when the attribute is missing); anywhere else (under `||`, `!`,
/// `unless`) a guard could change the decision, and validation's error
/// stands.
fn guard_optional_context(json: &mut Value, found: &mut Vec<(&'static str, String)>) {
    /// The attribute `term` compares with a literal (`context.a == "x"`,
    /// `"x" != context.a`, `context.a like "*x"`): a term that errors exactly
    /// when the attribute is missing.
    fn compared(term: &Value) -> Option<&str> {
        let map = term.as_object().filter(|m| m.len() == 1)?;
        let (op, args) = map.iter().next()?;
        let operands: Vec<&Value> = match op.as_str() {
            "==" | "!=" => vec![args.get("left")?, args.get("right")?],
            "like" => vec![args.get("left")?],
            _ => return None,
        };
        fn access(v: &Value) -> Option<&str> {
            let dot = v.get(".")?;
            (dot.get("left")?.get("Var")?.as_str()? == "context").then_some(())?;
            dot.get("attr")?.as_str().filter(|a| OPTIONAL_CONTEXT.contains(a))
        }
        let attr = operands.iter().find_map(|v| access(v))?;
        operands.iter().all(|v| access(v).is_some() || v.get("Value").is_some()).then_some(attr)
    }
    fn guard_terms(v: &mut Value, found: &mut Vec<(&'static str, String)>) {
        if let Some(and) = v.get_mut("&&") {
            for side in ["left", "right"] {
                if let Some(term) = and.get_mut(side) {
                    guard_terms(term, found);
                }
            }
            return;
        }
        let Some(attr) = compared(v).map(str::to_owned) else { return };
        found.push((
            "optional_context_guarded",
            format!(
                "`context.{attr}` is not in every request; the comparison is read as `context has {attr} && …` (the same decisions)"
            ),
        ));
        let term = v.take();
        *v = serde_json::json!({ "&&": {
            "left": { "has": { "left": { "Var": "context" }, "attr": attr } },
            "right": term,
        } });
    }
    let Some(Value::Array(conditions)) = json.get_mut("conditions") else { return };
    for c in conditions.iter_mut().filter(|c| c.get("kind").and_then(Value::as_str) == Some("when")) {
        if let Some(body) = c.get_mut("body") {
            guard_terms(body, found);
        }
    }
}

/// A lint's `file:line` or `file:line:column`, as (file, line, column).
fn split_location(location: &str) -> (String, usize, usize) {
    let mut parts = location.rsplitn(3, ':');
    let (last, middle, rest) = (parts.next(), parts.next(), parts.next());
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok());
    match (num(middle), num(last), rest) {
        (Some(line), Some(column), Some(file)) => (file.to_owned(), line, column),
        _ => match location.rsplit_once(':') {
            Some((f, n)) => (f.to_owned(), n.parse().unwrap_or(1), 1),
            None => (location.to_owned(), 1, 1),
        },
    }
}

/// A `SecretUse` permit that tests `context.scheme` against `"http"`
/// would send a secret in the clear (the proxy never does): an error, at
/// the literal's line and column. One that does not test
/// `context.location` lets the secret go in queries and bodies too: a
/// warning (a server that echoes a request would hand the value back).
fn secret_lints(json: &Value, id: &str, src: &Source, statement: Option<(usize, usize)>) -> Vec<Lint> {
    if json.get("effect").and_then(Value::as_str) != Some("permit") || !applies_to(json, Action::SecretUse) {
        return Vec::new();
    }
    /// Whether `v` compares `context.<attr>` with the string `lit`.
    fn compares(v: &Value, attr: &str, lit: &str) -> bool {
        match v {
            Value::Object(map) => {
                let hit = ["==", "like"].iter().any(|op| {
                    map.get(*op).is_some_and(|args| {
                        let sides = [args.get("left"), args.get("right")];
                        let access = sides
                            .iter()
                            .flatten()
                            .any(|s| s.get(".").is_some_and(|d| d["left"]["Var"] == "context" && d["attr"] == attr));
                        let pattern = args.get("pattern").map(|p| p.to_string().to_ascii_lowercase().contains(lit));
                        let literal = sides.iter().flatten().any(|s| s["Value"].as_str() == Some(lit));
                        access && (literal || pattern == Some(true))
                    })
                });
                hit || map.values().any(|c| compares(c, attr, lit))
            }
            Value::Array(items) => items.iter().any(|c| compares(c, attr, lit)),
            _ => false,
        }
    }
    let mentions = |v: &Value, attr: &str| v.to_string().contains(&format!("\"attr\":\"{attr}\""));
    let (start, end) = statement.unwrap_or((0, src.text.len()));
    let at = |needle: &str| {
        let offset = src.text.get(start..end).and_then(|t| t.find(needle)).map_or(start, |i| start + i);
        let (line, column) = line_col(&src.text, offset);
        format!("{}:{line}:{column}", src.name)
    };
    let conditions = json.get("conditions").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    if compares(&conditions, "scheme", "http") {
        out.push(Lint {
            code: "secret_over_plain_http",
            severity: Severity::Error,
            policy: id.to_owned(),
            location: at("\"http\""),
            message: "a SecretUse permit for plain HTTP would send the secret in the clear; secrets go only over \
                      HTTPS verified for the host (remove the scheme test or write \"https\")"
                .into(),
        });
    }
    if !mentions(&conditions, "location") {
        out.push(Lint {
            code: "secret_any_location",
            severity: Severity::Warning,
            policy: id.to_owned(),
            location: at("permit"),
            message: "this SecretUse permit does not test `context.location`, so the secret may replace its decoy in \
                      queries and bodies too, where a server that echoes requests would hand it back; add \
                      `context.location == \"header\"` unless the body or query needs it"
                .into(),
        });
    }
    out
}

/// `resource == Host::"name"` on `NetworkConnect` names the bare host
/// entity, which no connection is (it always has a port): the Go leash
/// meant every port, so it is read as `resource in Host::"name"` (and
/// `== Host::"*"` as every destination). Policies that may decide
/// `HttpRewrite` keep `==`: that is its data shape.
fn normalize_host_head(json: &mut Value, found: &mut Vec<(&'static str, String)>) {
    let connect_only = |a: &Value| {
        let named = |e: &Value| {
            let e = e.get("entity").or_else(|| e.get("__entity")).unwrap_or(e);
            e.get("id").and_then(Value::as_str).map(str::to_owned)
        };
        match a.get("op").and_then(Value::as_str) {
            Some("==") => named(a).as_deref() == Some(Action::NetworkConnect.name()),
            Some("in") => a.get("entities").and_then(Value::as_array).is_some_and(|l| {
                l.iter().all(|e| named(e).as_deref() != Some(Action::HttpRewrite.name()))
                    && l.iter().any(|e| named(e).as_deref() == Some(Action::NetworkConnect.name()))
            }),
            _ => false,
        }
    };
    if !json.get("action").is_some_and(connect_only) {
        return;
    }
    let Some(r) = json.get_mut("resource") else { return };
    if r.get("op").and_then(Value::as_str) != Some("==") {
        return;
    }
    let entity = r.get("entity").cloned().unwrap_or(Value::Null);
    let (Some(ty), Some(id)) = (entity.get("type").and_then(Value::as_str), entity.get("id").and_then(Value::as_str))
    else {
        return;
    };
    let portless = match resource::Host::parse(id) {
        Ok(resource::Host::Name(_, None) | resource::Host::Ip(_, None)) => true,
        _ => id == "*",
    };
    if ty == "Host" && portless {
        found.push((
            "host_equality_normalized",
            format!(
                "`resource == Host::{id:?}` is read as `resource in Host::{id:?}`: a connection always has a port, so == would never match one"
            ),
        ));
        r["op"] = Value::String("in".into());
    }
}

/// The vocabulary's name for a type the Go leash accepted.
fn canonical_type(ty: &str) -> Option<&'static str> {
    let last = ty.rsplit([':', '.']).next().unwrap_or(ty);
    Some(match last {
        "File" => "File",
        "Dir" | "Directory" => "Dir",
        "Host" | "Hostname" | "Endpoint" => "Host",
        "IpRange" => "Net::IpRange",
        "DnsZone" => "Net::DnsZone",
        "Server" => "MCP::Server",
        "Tool" => "MCP::Tool",
        "User" => "User",
        "Action" => "Action",
        _ => return None,
    })
}

fn collect_ranges(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("Net::IpRange")
                && let Some(id) = map.get("id").and_then(Value::as_str)
            {
                out.insert(id.to_owned());
            }
            map.values().for_each(|c| collect_ranges(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_ranges(c, out)),
        _ => {}
    }
}

/// Lints about a policy's shape: `unless` on a resource (the Go leash read
/// it as `when`), HttpRewrite permits not of the one data shape, bad ranges.
fn shape_lints(json: &Value, id: &str, location: &str) -> Vec<Lint> {
    let mut out = Vec::new();
    let lint = |code, severity, message: String| Lint {
        code,
        severity,
        policy: id.to_owned(),
        location: location.to_owned(),
        message,
    };
    let text = json.to_string();
    if let Some(conds) = json.get("conditions").and_then(Value::as_array) {
        for c in conds {
            if c.get("kind").and_then(Value::as_str) == Some("unless") && c.to_string().contains("\"resource\"") {
                out.push(lint(
                    "unless_on_resource",
                    Severity::Warning,
                    "`unless` on the resource excludes it (Cedar's meaning); the Go leash read it as `when`".into(),
                ));
            }
        }
    }
    let mut ranges = BTreeSet::new();
    collect_ranges(json, &mut ranges);
    for r in ranges {
        if IpRange::parse(&r).is_none() {
            out.push(lint(
                "invalid_ip_range",
                Severity::Error,
                format!("Net::IpRange::{r:?} is not a CIDR range such as \"10.0.0.0/8\""),
            ));
        }
    }
    let mut hosts = BTreeSet::new();
    collect_hosts(json, &mut hosts);
    let connect = applies_to(json, Action::NetworkConnect);
    for h in &hosts {
        let wildcard = h.strip_prefix("*.").unwrap_or(h);
        if h == "*" {
            continue;
        }
        match resource::Host::parse(wildcard) {
            Ok(_) if wildcard.contains('*') => out.push(lint(
                "unsupported_wildcard",
                Severity::Error,
                format!("Host::{h:?}: `*` may only stand alone or lead as `*.`"),
            )),
            Err(e) => out.push(lint("invalid_host", Severity::Error, format!("Host::{h:?} is not a host: {e}"))),
            Ok(resource::Host::Name(..)) if connect => out.push(lint(
                "enforced_by_proxy",
                Severity::Warning,
                format!(
                    "Host::{h:?} is a name: leash-proxy decides it for the HTTP and HTTPS it intercepts (by SNI and Host); the kernel sees only addresses, so other connections are decided by the address table (IP literals, Net::IpRange, the default)"
                ),
            )),
            Ok(_) => {}
        }
    }
    let mut read = BTreeSet::new();
    if connect && let Some(conds) = json.get("conditions") {
        context_reads(conds, &mut read);
    }
    read.retain(|a| REQUEST_CONTEXT.contains(&a.as_str()));
    if !read.is_empty() {
        let read: Vec<String> = read.iter().map(|a| format!("`context.{a}`")).collect();
        let (effect, never) = match json.get("effect").and_then(Value::as_str) {
            Some("forbid") => ("forbid", "forbids"),
            _ => ("permit", "permits"),
        };
        out.push(lint(
            "decided_per_request",
            Severity::Warning,
            format!(
                "reads the HTTP request ({}): leash-proxy decides the hosts this policy covers per request, in user space, for the HTTP and HTTPS it intercepts (TCP 80 and 443); connections the kernel decides (not HTTP: SSH, databases, other ports, and every port of an address a policy names) carry no method, path or query, so this {effect} never {never} one of them",
                read.join(", ")
            ),
        ));
    }
    if text.contains("\"Net::DnsZone\"") {
        out.push(lint(
            "dnszone_apex_excluded",
            Severity::Warning,
            "a Net::DnsZone covers the names below it, not the zone's own name: add Host::\"<zone>\" for the apex"
                .into(),
        ));
    }
    let file_action = [Action::FileOpen, Action::FileOpenReadOnly, Action::FileOpenReadWrite, Action::ProcessExec]
        .into_iter()
        .any(|a| applies_to(json, a));
    if file_action && let Some(conds) = json.get("conditions") {
        let c = conds.to_string();
        if c.contains("{\"Var\":\"context\"}") {
            out.push(lint(
                "enforced_in_user_space",
                Severity::Warning,
                "a condition on the context: the kernel tables cannot see it, so this action is decided in user space by leash-policy for every open or exec".into(),
            ));
        } else if c.contains("\"like\"") || c.contains("\"attr\":\"name\"") || c.contains("\"attr\":\"path\"") {
            out.push(lint(
                "enforced_in_user_space",
                Severity::Warning,
                "a condition on the path or name: the paths it may match are decided in user space by leash-policy; every other path by the kernel tables".into(),
            ));
        }
    }
    let rewrite = text.contains("\"HttpRewrite\"");
    if rewrite
        && json.get("effect").and_then(Value::as_str) == Some("permit")
        && !(text.contains("\"header\"") && text.contains("\"value\""))
    {
        out.push(lint(
            "http_rewrite_shape",
            Severity::Error,
            "an HttpRewrite permit must read `resource == Host::\"…\"` with `context.header == \"…\" && context.value == \"…\"`".into(),
        ));
    }
    out
}

/// The request's attributes in `NetworkConnect`'s context (the proxy's,
/// per HTTP request): no connection the kernel decides has them.
const REQUEST_CONTEXT: [&str; 4] = ["scheme", "method", "path", "query"];

/// The context attributes a policy's conditions read (`context.a`, `context has a`).
fn context_reads(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(access) = map.get(op)
                    && access.get("left").and_then(|l| l.get("Var")).and_then(Value::as_str) == Some("context")
                    && let Some(attr) = access.get("attr").and_then(Value::as_str)
                {
                    out.insert(attr.to_owned());
                }
            }
            map.values().for_each(|c| context_reads(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| context_reads(c, out)),
        _ => {}
    }
}

/// The `Host` ids a policy names.
fn collect_hosts(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id)), 2) = (map.get("type"), map.get("id"), map.len()) {
                if ty == "Host" {
                    out.insert(id.clone());
                }
                return;
            }
            map.values().for_each(|c| collect_hosts(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_hosts(c, out)),
        _ => {}
    }
}

/// A head's resource constraint: operator, entity type, entity id.
type ResourceHead = (String, String, String);

/// What a policy's head covers, for shadowing: the actions (None: all) and
/// the resource (None: all).
fn head_of(json: &Value) -> (Option<BTreeSet<String>>, Option<ResourceHead>) {
    let entity = |e: &Value| -> Option<(String, String)> {
        let e = e.get("entity").or_else(|| e.get("__entity")).unwrap_or(e);
        Some((e.get("type")?.as_str()?.to_owned(), e.get("id")?.as_str()?.to_owned()))
    };
    let actions = json.get("action").and_then(|a| match a.get("op").and_then(Value::as_str) {
        Some("==") => entity(a).map(|(_, id)| [id].into_iter().collect()),
        Some("in") => {
            a.get("entities").and_then(Value::as_array).map(|l| l.iter().filter_map(entity).map(|(_, id)| id).collect())
        }
        _ => None,
    });
    let resource = json.get("resource").and_then(|r| {
        let op = r.get("op")?.as_str()?;
        if op == "All" {
            return None;
        }
        // Anything but a plain entity (`is`, …) covers only what names its type.
        let (ty, id) = entity(r)
            .unwrap_or_else(|| (r.get("entity_type").and_then(Value::as_str).unwrap_or("?").to_owned(), String::new()));
        Some((op.to_owned(), ty, id))
    });
    (actions, resource)
}

/// `shadowed_permit`: a permit every request of which an unconditional
/// forbid also matches — in Cedar the forbid wins, so the permit never
/// allows anything.
fn shadow_lints(set: &PolicySet, origins: &BTreeMap<String, String>) -> Vec<Lint> {
    let heads: Vec<(String, bool, bool, Value)> = set
        .policies()
        .filter_map(|p| {
            let json = p.to_json().ok()?;
            let permit = p.effect() == cedar_policy::Effect::Permit;
            let conditional = json.get("conditions").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
            let any_principal = json.get("principal").and_then(|x| x.get("op")).and_then(Value::as_str) == Some("All");
            (permit || (!conditional && any_principal)).then(|| (p.id().to_string(), permit, conditional, json))
        })
        .collect();
    let covers = |f: &Value, p: &Value| -> bool {
        let ((fa, fr), (pa, pr)) = (head_of(f), head_of(p));
        let actions = match (fa, pa) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(f), Some(p)) => p.is_subset(&f),
        };
        let resource = match (fr, pr) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((fop, fty, fid)), Some((pop, pty, pid))) => match (fop.as_str(), fty.as_str(), pty.as_str()) {
                ("is", _, _) => fty == pty,
                ("in", "Dir", "Dir" | "File") if pop != "is" => pid.starts_with(&fid),
                ("in", "Host", "Host" | "Net::IpRange" | "Net::DnsZone") if fid == "*" => true,
                ("in" | "==", _, _) => pop != "is" && fty == pty && fid == pid && (fop == "in" || pop == "=="),
                _ => false,
            },
        };
        actions && resource
    };
    let mut out = Vec::new();
    for (pid, permit, _, pjson) in heads.iter().filter(|h| h.1) {
        debug_assert!(*permit);
        if let Some((fid, ..)) =
            heads.iter().find(|(_, permit, conditional, f)| !permit && !conditional && covers(f, pjson))
        {
            out.push(Lint {
                code: "shadowed_permit",
                severity: Severity::Warning,
                policy: pid.clone(),
                location: origins.get(pid).cloned().unwrap_or_default(),
                message: format!("every request this permit matches, forbid {fid} forbids too (a forbid wins in Cedar): it never allows anything"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
