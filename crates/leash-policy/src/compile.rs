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
//! cannot carve makes the whole action evaluate. For `NetworkConnect`, the
//! context (an HTTP request's method, path, query and scheme, the name the
//! proxy saw) is never the kernel's: the address table is decided with the
//! empty context its connections have, and the name table marks what a
//! policy reading the context can match for evaluation per request. The
//! property tests in this module's tests check lookup against the
//! authorizer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cedar_policy::{Policy, PolicySet};
use std::net::IpAddr;

use leash_core::tables::{FileAction, HostTable, NetTable, PathTable, Tables, Verdict, in_range};
use serde_json::Value;

use crate::action::{Action, applies_to, entity_of};
use crate::engine::{Decision, Engine, combine};
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
    /// A wildcard's apex is decided as if it were inside it.
    ApexInWildcard,
    /// Conditions on the request (method, path, query, scheme, name) are
    /// ignored: the tables decide as if no request carried them.
    IgnoreRequestConditions,
}

/// A label no real host has, for wildcard representatives.
const HOST_REPRESENTATIVE: &str = "leash-region-representative";

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
    let policies: Vec<(Policy, Value)> =
        engine.policies().policies().map(|p| (p.clone(), p.to_json().unwrap_or(Value::Null))).collect();
    let sliced = Slices::new(&policies);
    let mut reasons: Vec<Vec<String>> = Vec::new();
    let mut reason_ids: HashMap<Vec<String>, u32> = HashMap::new();
    let mut verdict = |d: Decision| {
        let next = reasons.len() as u32;
        let id = *reason_ids.entry(d.reasons.clone()).or_insert_with(|| {
            reasons.push(d.reasons.clone());
            next
        });
        Verdict::new(d.allow, id)
    };
    let mut files = BTreeMap::new();
    for action in FileAction::ALL {
        // Only the policies that can decide this action carve its table: a
        // pattern that forbids writes (protect-host's) leaves the read and
        // exec tables exact, which the kernel's LSM tier can then decide.
        let mut carving = Carving::default();
        carving.dirs.insert("/".to_owned());
        for (_, json) in policies.iter().filter(|(_, j)| cedar_actions(action).iter().any(|a| applies_to(j, *a))) {
            carve(json, &mut carving);
        }
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
            match cedar_actions(action) {
                [a] => one(*a),
                [a, b] => combine(one(*a), one(*b)),
                _ => unreachable!("a file action is one or two Cedar actions"),
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
    let mut net = compile_net(engine, principal, &policies, &sliced, slice, &mut verdict);
    let mut hosts = compile_hosts(engine, principal, &policies, &sliced, slice, mutation, &mut verdict);
    if mutation != Mutation::IgnoreRequestConditions {
        mark_request_rules(&policies, &mut net, &mut hosts);
    }
    let rewrites = compile_rewrites(engine, principal, &policies, &mut verdict);
    Tables { generation, files, net, hosts, reasons, rewrites }
}

/// The `HttpRewrite` injections: each permit of the one data shape
/// (`resource == Host::"h"` with `context.header == "…" && context.value ==
/// "…"`) declares one, kept only if the whole policy set allows it — a
/// forbid vetoes it.
fn compile_rewrites(
    engine: &Engine,
    principal: &str,
    policies: &[(Policy, Value)],
    verdict: &mut impl FnMut(Decision) -> Verdict,
) -> Vec<leash_core::tables::Rewrite> {
    let mut out = Vec::new();
    for (policy, json) in policies {
        if policy.effect() != cedar_policy::Effect::Permit || !applies_to(json, Action::HttpRewrite) {
            continue;
        }
        let head = &json["resource"];
        let (Some("=="), Some(("Host", host))) = (head["op"].as_str(), entity_of(&head["entity"])) else { continue };
        let mut equal = BTreeMap::new();
        context_equalities(&json["conditions"], &mut equal);
        let (Some(header), Some(value)) = (equal.remove("header"), equal.remove("value")) else { continue };
        let context = BTreeMap::from([("header".to_owned(), header.clone()), ("value".to_owned(), value.clone())]);
        let Ok(resource) = crate::resource::Host::parse(host).map(Resource::Host) else { continue };
        let d = engine.authorize_one(principal, Action::HttpRewrite, &resource, &context);
        if d.allow {
            let reason = verdict(d).reason;
            out.push(leash_core::tables::Rewrite { host: host.to_owned(), header, value, reason });
        }
    }
    out
}

/// `context.<attr> == "<string>"` comparisons anywhere in a policy's conditions.
fn context_equalities(v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            if let Some(eq) = map.get("==") {
                let attr = eq["left"]["."]["attr"].as_str().filter(|_| eq["left"]["."]["left"]["Var"] == "context");
                if let (Some(attr), Some(value)) = (attr, eq["right"]["Value"].as_str()) {
                    out.insert(attr.to_owned(), value.to_owned());
                }
            }
            map.values().for_each(|c| context_equalities(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| context_equalities(c, out)),
        _ => {}
    }
}

/// The `NetworkConnect` table: exact addresses (with and without port),
/// CIDR ranges, and a default per family, each decided on a representative.
fn compile_net(
    engine: &Engine,
    principal: &str,
    policies: &[(Policy, Value)],
    sliced: &Slices,
    slice: bool,
    verdict: &mut impl FnMut(Decision) -> Verdict,
) -> NetTable {
    let mut literals: BTreeSet<(IpAddr, Option<u16>)> = BTreeSet::new();
    let mut ranges: BTreeSet<(IpAddr, u8)> = BTreeSet::new();
    let mut evaluate_all = false;
    for (_, json) in policies.iter().filter(|(_, j)| applies_to(j, Action::NetworkConnect)) {
        net_carve(json, &mut literals, &mut ranges, &mut evaluate_all);
    }
    let set = net_slice(engine, sliced, slice);
    let mut decide = |ip: IpAddr, port: u16| {
        let r = Resource::Host(crate::resource::Host::Ip(ip, Some(port)));
        verdict(engine.authorize_in(&set, principal, Action::NetworkConnect, &r, &BTreeMap::new()))
    };
    let ports: BTreeSet<u16> = literals.iter().filter_map(|(_, p)| *p).collect();
    let free_port = (1..=u16::MAX).rev().find(|p| !ports.contains(p)).unwrap_or(1);
    let mentioned = |ip: IpAddr| literals.iter().any(|(a, _)| *a == ip);
    // An address in `(addr, prefix)` that no narrower range and no literal claims.
    let free_in = |addr: IpAddr, prefix: u8| -> Option<IpAddr> {
        candidates(addr, prefix)
            .into_iter()
            .find(|c| !mentioned(*c) && !ranges.iter().any(|(a, p)| *p > prefix && in_range(*a, *p, *c)))
    };
    let mut table = NetTable { evaluate_all, ..Default::default() };
    for (ip, port) in &literals {
        match port {
            Some(p) => {
                table.exact_port.insert((*ip, *p), decide(*ip, *p));
            }
            None => {
                table.exact.insert(*ip, decide(*ip, free_port));
            }
        }
    }
    for (addr, prefix) in &ranges {
        // A range whose every address narrower entries claim never decides.
        if let Some(rep) = free_in(*addr, *prefix) {
            table.ranges.push((*addr, *prefix, decide(rep, free_port)));
        }
    }
    let outside = |family: IpAddr| -> Option<IpAddr> {
        default_candidates(family)
            .into_iter()
            .find(|c| !mentioned(*c) && !ranges.iter().any(|(a, p)| in_range(*a, *p, *c)))
    };
    table.default_v4 = outside(IpAddr::from([0, 0, 0, 0])).map(|ip| decide(ip, free_port));
    table.default_v6 = outside(IpAddr::from([0u16; 8])).map(|ip| decide(ip, free_port));
    table
}

/// The `NetworkConnect` table by name: every name the policy mentions (with
/// and without its port), every wildcard and DNS zone, and the default, each
/// decided on a representative (a name a label below a wildcard, a port no
/// policy mentions).
fn compile_hosts(
    engine: &Engine,
    principal: &str,
    policies: &[(Policy, Value)],
    sliced: &Slices,
    slice: bool,
    mutation: Mutation,
    verdict: &mut impl FnMut(Decision) -> Verdict,
) -> HostTable {
    let mut names: BTreeSet<(String, Option<u16>)> = BTreeSet::new();
    let mut suffixes: BTreeSet<String> = BTreeSet::new();
    let mut evaluate_all = false;
    for (_, json) in policies.iter().filter(|(_, j)| applies_to(j, Action::NetworkConnect)) {
        host_carve(json, &mut names, &mut suffixes, &mut evaluate_all);
    }
    let set = net_slice(engine, sliced, slice);
    let ports: BTreeSet<u16> = names.iter().filter_map(|(_, p)| *p).collect();
    let free_port = (1..=u16::MAX).rev().find(|p| !ports.contains(p)).unwrap_or(1);
    let mut decide = |name: &str, port: u16| {
        let r = Resource::Host(crate::resource::Host::Name(name.to_owned(), (port != 0).then_some(port)));
        verdict(engine.authorize_in(&set, principal, Action::NetworkConnect, &r, &BTreeMap::new()))
    };
    let mut table = HostTable { evaluate_all, ..Default::default() };
    for (name, port) in &names {
        match port {
            Some(p) => {
                table.exact_port.insert((name.clone(), *p), decide(name, *p));
            }
            None => {
                table.exact.insert(name.clone(), decide(name, free_port));
            }
        }
        // Without a port, the request is the bare name itself.
        let bare = decide(name, 0);
        table.exact_port.insert((name.clone(), 0), bare);
    }
    for suffix in &suffixes {
        let v = decide(&format!("{HOST_REPRESENTATIVE}.{suffix}"), free_port);
        table.wildcards.insert(suffix.clone(), v);
        if mutation == Mutation::ApexInWildcard {
            table.exact.entry(suffix.clone()).or_insert(v);
        }
    }
    table.default = Some(decide(HOST_REPRESENTATIVE, free_port));
    table
}

/// The `NetworkConnect` policies (all of them when not slicing).
fn net_slice(engine: &Engine, sliced: &Slices, slice: bool) -> PolicySet {
    if !slice {
        return engine.policies().clone();
    }
    PolicySet::from_policies(
        sliced.by_action.get(&Action::NetworkConnect).into_iter().flatten().map(|(p, _)| p.clone()),
    )
    .expect("a subset of a valid set")
}

/// Collects the host names, wildcards and zones a `NetworkConnect` policy names.
fn host_carve(
    v: &Value,
    names: &mut BTreeSet<(String, Option<u16>)>,
    suffixes: &mut BTreeSet<String>,
    evaluate_all: &mut bool,
) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id)), 2) = (map.get("type"), map.get("id"), map.len()) {
                match ty.as_str() {
                    "Host" if id == "*" => {}
                    "Host" => match id.strip_prefix("*.") {
                        Some(suffix) => {
                            suffixes.insert(suffix.to_ascii_lowercase());
                        }
                        None => {
                            if let Ok(crate::resource::Host::Name(n, p)) = crate::resource::Host::parse(id)
                                && !n.contains('*')
                            {
                                names.insert((n, p));
                            }
                        }
                    },
                    "Net::DnsZone" => {
                        suffixes.insert(id.trim_end_matches('.').to_ascii_lowercase());
                    }
                    _ => {}
                }
                return;
            }
            // The context is the request's: `mark_request_rules` marks
            // what a policy reading it can match.
            if resource_attr(Some(v)).is_some() {
                *evaluate_all = true;
                return;
            }
            map.values().for_each(|c| host_carve(c, names, suffixes, evaluate_all));
        }
        Value::Array(items) => items.iter().for_each(|c| host_carve(c, names, suffixes, evaluate_all)),
        _ => {}
    }
}

/// What a policy that reads the context can match, as far as its head and
/// the `resource in …`/`resource == …` terms its `when` clauses require
/// say: a superset of the resources it can match.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reach {
    /// Any host.
    Any,
    /// A name on every port (`None`) or on one.
    Name(String, Option<u16>),
    /// Every name strictly below a suffix (a wildcard, a zone).
    Below(String),
    /// Some address (an IP literal, a range).
    Address,
    /// No host (an entity no host is in).
    Nothing,
}

/// What `resource in <ty::id>` (or with `equal`, `resource == …`) can match.
fn reach_of(ty: &str, id: &str, equal: bool) -> Reach {
    if equal && ty == "Host" {
        // Only that very entity: a bare name is the request without a port.
        return match crate::resource::Host::parse(id) {
            Ok(crate::resource::Host::Name(n, p)) => Reach::Name(n, Some(p.unwrap_or(0))),
            Ok(crate::resource::Host::Ip(..)) => Reach::Address,
            Err(_) => Reach::Any,
        };
    }
    match ty {
        "Host" if id == "*" => Reach::Any,
        "Host" => match id.strip_prefix("*.") {
            Some(suffix) => Reach::Below(suffix.trim_end_matches('.').to_ascii_lowercase()),
            None => match crate::resource::Host::parse(id) {
                Ok(crate::resource::Host::Name(n, p)) if !n.contains('*') => Reach::Name(n, p),
                Ok(crate::resource::Host::Ip(..)) => Reach::Address,
                _ => Reach::Any,
            },
        },
        "Net::DnsZone" => Reach::Below(id.trim_end_matches('.').to_ascii_lowercase()),
        "Net::IpRange" => Reach::Address,
        _ => Reach::Nothing,
    }
}

/// The hosts a `when` body requires the resource to be among, if it says.
fn required(body: &Value) -> Option<Vec<Reach>> {
    let is_resource = |v: &Value| v.get("Var").and_then(Value::as_str) == Some("resource");
    let literal = |v: &Value, equal| entity_of(v.get("Value")?).map(|(t, id)| reach_of(t, id, equal));
    let map = body.as_object().filter(|m| m.len() == 1)?;
    let (op, args) = map.iter().next()?;
    match op.as_str() {
        "in" if is_resource(&args["left"]) => match args["right"].get("Set") {
            Some(Value::Array(items)) => items.iter().map(|i| literal(i, false)).collect(),
            _ => literal(&args["right"], false).map(|r| vec![r]),
        },
        "==" if is_resource(&args["left"]) => literal(&args["right"], true).map(|r| vec![r]),
        "==" if is_resource(&args["right"]) => literal(&args["left"], true).map(|r| vec![r]),
        // Both sides must hold: either one's limit is a limit.
        "&&" => required(&args["left"]).or_else(|| required(&args["right"])),
        // Either may hold: both must limit.
        "||" => {
            let (mut l, r) = (required(&args["left"])?, required(&args["right"])?);
            l.extend(r);
            Some(l)
        }
        _ => None,
    }
}

/// Where a `NetworkConnect` policy that reads the context can match: its
/// head's resource, or the hosts a `when` clause requires (the first that
/// does not say "any host"); `None` when it does not read the context.
fn request_reach(json: &Value) -> Option<Vec<Reach>> {
    let conditions = json.get("conditions")?;
    if !conditions.to_string().contains("{\"Var\":\"context\"}") {
        return None;
    }
    let r = &json["resource"];
    let head = match r.get("op").and_then(Value::as_str) {
        Some(op @ ("==" | "in")) => entity_of(r).map(|(t, id)| vec![reach_of(t, id, op == "==")]),
        Some("is") if r.get("entity_type").and_then(Value::as_str) != Some("Host") => Some(vec![Reach::Nothing]),
        Some("is") => r.get("in").and_then(entity_of).map(|(t, id)| vec![reach_of(t, id, false)]),
        _ => None,
    };
    let whens = conditions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c.get("kind").and_then(Value::as_str) == Some("when"))
        .filter_map(|c| required(c.get("body")?));
    let limits = head.into_iter().chain(whens).find(|l| !l.contains(&Reach::Any));
    Some(limits.unwrap_or_else(|| vec![Reach::Any]))
}

/// Marks what the policies that read the context (the request's method,
/// path, query and scheme, the name the proxy saw) can match: the names,
/// ports and wildcards they limit themselves to evaluate in the name table
/// (any host: all of it), and an address they may match makes the address
/// table evaluate HTTP requests. Entries stay decided with the empty
/// context: what a connection without a request gets — every connection
/// the kernel decides.
fn mark_request_rules(policies: &[(Policy, Value)], net: &mut NetTable, hosts: &mut HostTable) {
    for (_, json) in policies.iter().filter(|(_, j)| applies_to(j, Action::NetworkConnect)) {
        for reach in request_reach(json).into_iter().flatten() {
            match reach {
                Reach::Any => {
                    hosts.evaluate_all = true;
                    net.evaluate_requests = true;
                }
                Reach::Name(n, p) => {
                    hosts.evaluate.insert((n, p));
                }
                Reach::Below(s) => {
                    hosts.evaluate_below.insert(s);
                }
                Reach::Address => net.evaluate_requests = true,
                Reach::Nothing => {}
            }
        }
    }
}

/// Addresses to try inside a range: its ends, its middle and quarters, and
/// a spread of others.
fn candidates(addr: IpAddr, prefix: u8) -> Vec<IpAddr> {
    let (bits, base) = match addr {
        IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (128u32, u128::from(a)),
    };
    let host_bits = bits - u32::from(prefix);
    let size: u128 = if host_bits >= 128 { u128::MAX } else { 1u128 << host_bits };
    let mask = if host_bits >= 128 { 0 } else { !(size - 1) };
    let base = base & mask;
    let last = base | (size - 1);
    let mut out = vec![
        base,
        last,
        base.wrapping_add(size / 2),
        base.wrapping_add(1),
        base.wrapping_add(size / 4),
        base.wrapping_add(size / 4 * 3),
    ];
    let mut x: u128 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.push(base | (x % size.max(1)));
    }
    out.into_iter()
        .map(|v| match addr {
            IpAddr::V4(_) => IpAddr::from((v as u32).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(v.to_be_bytes()),
        })
        .collect()
}

/// Addresses outside most private and documentation ranges, per family.
fn default_candidates(family: IpAddr) -> Vec<IpAddr> {
    let list: &[&str] = if family.is_ipv4() {
        &[
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "100.64.0.1",
            "1.2.3.4",
            "8.8.4.4",
            "172.31.255.254",
            "127.0.0.2",
            "255.255.255.254",
        ]
    } else {
        &["2001:db8:ffff::1", "3fff::1", "2606:4700::1", "fd00::1", "::2", "ffff::1"]
    };
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// Collects the IP literals and ranges a `NetworkConnect` policy names.
fn net_carve(
    v: &Value,
    literals: &mut BTreeSet<(IpAddr, Option<u16>)>,
    ranges: &mut BTreeSet<(IpAddr, u8)>,
    evaluate_all: &mut bool,
) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id)), 2) = (map.get("type"), map.get("id"), map.len()) {
                match ty.as_str() {
                    "Host" => {
                        if let Ok(crate::resource::Host::Ip(ip, port)) = crate::resource::Host::parse(id) {
                            literals.insert((ip, port));
                        }
                    }
                    "Net::IpRange" => {
                        if let Some(r) = crate::resource::IpRange::parse(id) {
                            ranges.insert((r.addr, r.prefix));
                        }
                    }
                    _ => {}
                }
                return;
            }
            // The context is not here: the kernel's connections carry none
            // (no name, no request), and the table decides them with the
            // empty context they have.
            if resource_attr(Some(v)).is_some() {
                *evaluate_all = true;
                return;
            }
            map.values().for_each(|c| net_carve(c, literals, ranges, evaluate_all));
        }
        Value::Array(items) => items.iter().for_each(|c| net_carve(c, literals, ranges, evaluate_all)),
        _ => {}
    }
}

/// Policies per action, with the head constraints that allow slicing by
/// resource ancestry.
struct Slices {
    by_action: HashMap<Action, Vec<(Policy, Option<Head>)>>,
}

/// A head constraint that limits which resources a policy can match.
#[derive(Clone)]
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
                    by_action.entry(a).or_default().push((p.clone(), head.clone()));
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

fn head_constraint(json: &Value) -> Option<Head> {
    let r = json.get("resource")?;
    match (r.get("op")?.as_str()?, entity_of(r)) {
        ("in", Some(("Dir", d))) => Some(Head::InDir(d.to_owned())),
        ("==", Some(("File", f))) => Some(Head::IsFile(f.to_owned())),
        _ => None,
    }
}

/// The tables for sessions of `principal`, compiled once per engine.
pub fn tables(engine: &Engine, principal: &str) -> std::sync::Arc<leash_core::tables::Tables> {
    let mut cache = engine.tables_cache().lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(principal.to_owned()).or_insert_with(|| std::sync::Arc::new(compile(engine, principal, 0))).clone()
}

/// The Cedar actions a file action is decided by (both must allow).
fn cedar_actions(action: FileAction) -> &'static [Action] {
    match action {
        FileAction::Open => &[Action::FileOpen],
        FileAction::Read => &[Action::FileOpenReadOnly, Action::FileOpen],
        FileAction::Write => &[Action::FileOpenReadWrite, Action::FileOpen],
        FileAction::Exec => &[Action::ProcessExec],
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
