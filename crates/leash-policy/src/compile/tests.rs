//! Table lookup equals the authorizer: a property test over random policies
//! and paths drawn from their own entities, and deliberately broken
//! compilers that it must catch.

use std::collections::BTreeMap;
use std::net::IpAddr;

use leash_core::tables::{FileAction, Lookup};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::*;
use crate::engine::Source;

const DIRS: [&str; 8] = ["/", "/a/", "/a/b/", "/a/b/c/", "/tmp/", "/tmp/ok/", "/w/p/", "/w/p/.git/"];
const FILES: [&str; 5] = ["/a/x", "/a/b/y", "/tmp/ok/z", "/w/p/.envrc", "/usr/bin/nmap"];
const ACTIONS: [&str; 4] = ["FileOpen", "FileOpenReadOnly", "FileOpenReadWrite", "ProcessExec"];

fn statement() -> impl Strategy<Value = String> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let actions = prop::sample::subsequence(ACTIONS.to_vec(), 1..=2);
    let scope = prop_oneof![
        Just(String::new()),
        prop::sample::select(DIRS.to_vec()).prop_map(|d| format!("in Dir::\"{d}\"")),
        prop::sample::select(FILES.to_vec()).prop_map(|f| format!("== File::\"{f}\"")),
    ];
    let condition = prop_oneof![
        4 => Just(String::new()),
        1 => prop::sample::select(DIRS.to_vec()).prop_map(|d| format!(" unless {{ resource in Dir::\"{d}\" }}")),
        1 => prop::sample::select(DIRS.to_vec()).prop_map(|d| format!(" when {{ resource in [Dir::\"{d}\", Dir::\"/a/b/\"] }}")),
        // The Go leash's mixed lists, split by type at load.
        1 => (prop::sample::select(FILES.to_vec()), prop::sample::select(DIRS.to_vec()))
            .prop_map(|(f, d)| format!(" when {{ resource in [File::\"{f}\", Dir::\"{d}\", File::\"/a/x\"] }}")),
        1 => (prop::sample::select(DIRS.to_vec()), prop::sample::select(FILES.to_vec()))
            .prop_map(|(d, f)| format!(" unless {{ resource in [Dir::\"{d}\", File::\"{f}\"] }}")),
        1 => Just(" when { resource.path like \"*/.git/*\" }".to_owned()),
        1 => Just(" when { resource is File && resource.name == \".envrc\" }".to_owned()),
    ];
    (effect, actions, scope, condition).prop_map(|(e, a, s, c)| {
        let actions = a.iter().map(|a| format!("Action::\"{a}\"")).collect::<Vec<_>>().join(", ");
        let resource = if s.is_empty() { "resource".to_owned() } else { format!("resource {s}") };
        format!("{e} (principal, action in [{actions}], {resource}){c};")
    })
}

/// Paths from the policy's own entities, one segment either side, and the edges.
fn path() -> impl Strategy<Value = String> {
    let base = prop::sample::select(DIRS.iter().chain(FILES.iter()).copied().collect::<Vec<_>>());
    let edit = prop_oneof![
        Just(0u8), // as is
        Just(1),   // one segment below
        Just(2),   // the parent
        Just(3),   // trailing slash toggled
        Just(4),   // a sibling sharing the prefix
        Just(5),   // into .git
    ];
    let seg = prop::sample::select(vec!["q", "x", ".envrc", "hooks", "nmap", "z"]);
    (base, edit, seg).prop_map(|(b, e, s)| {
        let b = b.to_owned();
        let p = match e {
            0 => b,
            1 => format!("{}/{s}", b.trim_end_matches('/')),
            2 => dir_ancestors(&b).first().cloned().unwrap_or(b),
            3 => {
                if b.ends_with('/') && b.len() > 1 {
                    b.trim_end_matches('/').to_owned()
                } else {
                    format!("{b}/")
                }
            }
            4 => format!("{}x", b.trim_end_matches('/')),
            _ => format!("{}/.git/{s}", b.trim_end_matches('/')),
        };
        if p.is_empty() { "/".to_owned() } else { p }
    })
}

fn engine_for(statements: &[String]) -> Engine {
    Engine::load(&[Source { name: "random".into(), text: statements.join("\n") }]).expect("generated policies load")
}

fn cedar(engine: &Engine, action: FileAction, path: &str) -> Decision {
    let r = Resource::File(path.to_owned());
    let ctx = BTreeMap::new();
    match action {
        FileAction::Open => engine.authorize_one("claude", Action::FileOpen, &r, &ctx),
        FileAction::Read => engine.authorize("claude", Action::FileOpenReadOnly, &r, &ctx),
        FileAction::Write => engine.authorize("claude", Action::FileOpenReadWrite, &r, &ctx),
        FileAction::Exec => engine.authorize_one("claude", Action::ProcessExec, &r, &ctx),
    }
}

/// Runs the property; `Err` carries the first counterexample.
fn check(mutation: Mutation, cases: u32) -> Result<(), String> {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(statement(), 1..7), prop::collection::vec(path(), 1..12));
    runner
        .run(&strategy, |(statements, paths)| {
            let engine = engine_for(&statements);
            let tables = compile_with(&engine, "claude", 1, mutation, true);
            for p in &paths {
                for action in FileAction::ALL {
                    let expected = cedar(&engine, action, p);
                    match tables.lookup(action, p) {
                        Lookup::Final(v) => {
                            if v.allow != expected.allow || tables.reasons(v) != expected.reasons.as_slice() {
                                return Err(TestCaseError::fail(format!(
                                    "{action:?} {p}: tables say {} {:?}, Cedar says {} {:?}\n{}",
                                    v.allow,
                                    tables.reasons(v),
                                    expected.allow,
                                    expected.reasons,
                                    statements.join("\n")
                                )));
                            }
                        }
                        Lookup::Evaluate => {}
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
}

#[test]
fn table_lookup_equals_the_authorizer() {
    check(Mutation::None, 400).unwrap();
}

#[test]
fn broken_compilers_are_caught() {
    for m in [Mutation::PermitOverForbid, Mutation::OffByOnePrefix] {
        assert!(check(m, 400).is_err(), "{m:?} was not caught");
    }
}

/// A Go-leash statement over a mixed list, and the same statement written
/// without any list: one statement per element for `when` (a match on any
/// element), one `unless` per element for `unless` (no element matches).
fn mixed_list_statement() -> impl Strategy<Value = (String, Vec<String>)> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let actions = prop::sample::subsequence(ACTIONS.to_vec(), 1..=2);
    let element = prop_oneof![
        prop::sample::select(DIRS.to_vec()).prop_map(|d| format!("Dir::\"{d}\"")),
        // The Go leash's directories without their trailing slash.
        prop::sample::select(DIRS.to_vec()).prop_map(|d| format!("Dir::\"{}\"", d.trim_end_matches('/'))),
        prop::sample::select(FILES.to_vec()).prop_map(|f| format!("File::\"{f}\"")),
    ];
    let elements = prop::collection::vec(element, 2..5);
    (effect, actions, any::<bool>(), elements).prop_map(|(e, a, when, elements)| {
        let actions = a.iter().map(|a| format!("Action::\"{a}\"")).collect::<Vec<_>>().join(", ");
        let head = format!("{e} (principal, action in [{actions}], resource)");
        let kind = if when { "when" } else { "unless" };
        let mixed = format!("{head} {kind} {{ resource in [{}] }};", elements.join(", "));
        let plain = if when {
            elements.iter().map(|el| format!("{head} when {{ resource in {el} }};")).collect()
        } else {
            vec![format!(
                "{head} {};",
                elements.iter().map(|el| format!("unless {{ resource in {el} }}")).collect::<Vec<_>>().join(" ")
            )]
        };
        (mixed, plain)
    })
}

#[test]
fn mixed_lists_mean_what_their_elements_mean() {
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    let strategy =
        (prop::collection::vec(mixed_list_statement(), 1..4), any::<bool>(), prop::collection::vec(path(), 1..12));
    runner
        .run(&strategy, |(statements, base, paths)| {
            // A permit for everything makes the forbids count.
            let base = if base { vec!["permit (principal, action, resource);".to_owned()] } else { vec![] };
            let mixed: Vec<String> = base.iter().cloned().chain(statements.iter().map(|(m, _)| m.clone())).collect();
            let plain: Vec<String> =
                base.iter().cloned().chain(statements.iter().flat_map(|(_, p)| p.clone())).collect();
            let (m, p) = (engine_for(&mixed), engine_for(&plain));
            let tables = compile(&m, "claude", 1);
            for path in &paths {
                for action in FileAction::ALL {
                    let (want, got) = (cedar(&p, action, path).allow, cedar(&m, action, path).allow);
                    prop_assert_eq!(
                        got,
                        want,
                        "{:?} {}\n{}\nwritten without lists:\n{}",
                        action,
                        path,
                        mixed.join("\n"),
                        plain.join("\n")
                    );
                    if let Lookup::Final(v) = tables.lookup(action, path) {
                        prop_assert_eq!(v.allow, want, "tables: {:?} {}\n{}", action, path, mixed.join("\n"));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn patterns_evaluate_and_everything_else_is_final() {
    let engine = Engine::load(&crate::default_sources()).unwrap();
    let tables = compile(&engine, "claude", 7);
    assert_eq!(tables.generation, 7);
    assert_eq!(tables.lookup(FileAction::Write, "/w/p/.git/hooks/pre-commit"), Lookup::Evaluate);
    assert_eq!(tables.lookup(FileAction::Write, "/w/p/.envrc"), Lookup::Evaluate);
    let Lookup::Final(v) = tables.lookup(FileAction::Write, "/w/p/src/main.rs") else { panic!("not final") };
    assert!(v.allow);
    assert_eq!(tables.reasons(v), ["default-files"]);
    // protect-host's patterns forbid writes only: the other tables carry
    // none of them (and are exact, for the kernel's LSM tier to decide).
    assert_eq!(tables.lookup(FileAction::Read, "/w/p/.git/hooks/pre-commit"), Lookup::Final(v));
    for action in [FileAction::Open, FileAction::Read, FileAction::Exec] {
        let t = &tables.files[&action];
        assert!(t.path_patterns.is_empty() && t.names.is_empty() && !t.evaluate_all, "{action:?}: {t:?}");
    }
    assert!(!tables.files[&FileAction::Write].path_patterns.is_empty());
}

#[test]
fn slicing_changes_nothing() {
    let statements: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "{} (principal, action == Action::\"FileOpen\", resource in Dir::\"/d{i}/\");",
                if i % 3 == 0 { "forbid" } else { "permit" }
            )
        })
        .collect();
    let engine = engine_for(&statements);
    assert_eq!(
        compile_with(&engine, "claude", 1, Mutation::None, true),
        compile_with(&engine, "claude", 1, Mutation::None, false)
    );
}

const RANGES: [&str; 6] = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "2001:db8::/32", "2001:db8:1::/48"];
const LITERALS: [&str; 5] = ["10.1.2.3", "10.1.2.3:443", "[2001:db8::1]:443", "192.168.1.1", "[2001:db8:1::5]"];

fn net_statement() -> impl Strategy<Value = String> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let scope = prop_oneof![
        prop::sample::select(RANGES.to_vec()).prop_map(|r| format!("resource in Net::IpRange::\"{r}\"")),
        prop::sample::select(LITERALS.to_vec()).prop_map(|l| format!("resource in Host::\"{l}\"")),
        prop::sample::select(LITERALS.to_vec()).prop_map(|l| format!("resource == Host::\"{l}\"")),
        Just("resource in Host::\"*\"".to_owned()),
        Just("resource in Host::\"*.example.com\"".to_owned()),
    ];
    (effect, scope).prop_map(|(e, s)| format!("{e} (principal, action == Action::\"NetworkConnect\", {s});"))
}

fn destination() -> impl Strategy<Value = (IpAddr, u16)> {
    let ips: Vec<IpAddr> = [
        "10.1.2.3",
        "10.1.2.4",
        "10.1.3.3",
        "10.2.0.1",
        "11.0.0.1",
        "192.168.1.1",
        "192.168.1.2",
        "8.8.8.8",
        "0.0.0.1",
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:1::5",
        "2001:db8:1::6",
        "2001:db9::1",
        "::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    (prop::sample::select(ips), prop::sample::select(vec![443u16, 80, 22]))
}

/// A final lookup must say what Cedar says, reasons included.
fn agree(
    tables: &Tables,
    lookup: Lookup,
    expected: &Decision,
    what: &str,
    statements: &[String],
) -> Result<(), TestCaseError> {
    match lookup {
        Lookup::Final(v) if v.allow != expected.allow || tables.reasons(v) != expected.reasons.as_slice() => {
            Err(TestCaseError::fail(format!(
                "{what}: tables say {} {:?}, Cedar says {} {:?}\n{}",
                v.allow,
                tables.reasons(v),
                expected.allow,
                expected.reasons,
                statements.join("\n")
            )))
        }
        _ => Ok(()),
    }
}

fn check_net(cases: u32) -> Result<(), String> {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(net_statement(), 1..7), prop::collection::vec(destination(), 1..12));
    runner
        .run(&strategy, |(statements, dests)| {
            let engine = engine_for(&statements);
            let tables = compile(&engine, "claude", 1);
            for (ip, port) in &dests {
                let r = Resource::Host(crate::resource::Host::Ip(*ip, Some(*port)));
                let expected = engine.authorize_one("claude", Action::NetworkConnect, &r, &BTreeMap::new());
                agree(&tables, tables.net.lookup(*ip, *port), &expected, &format!("{ip}:{port}"), &statements)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
}

#[test]
fn net_table_lookup_equals_the_authorizer() {
    check_net(400).unwrap();
}

#[test]
fn net_table_basics() {
    let engine = engine_for(&[
        "@id(\"lan\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"10.0.0.0/8\");".into(),
        "@id(\"db\") forbid (principal, action == Action::\"NetworkConnect\", resource in Host::\"10.1.2.3:5432\");".into(),
    ]);
    let t = compile(&engine, "claude", 1);
    let verdict = |ip: &str, port| match t.net.lookup(ip.parse().unwrap(), port) {
        Lookup::Final(v) => (v.allow, t.reasons(v).to_vec()),
        Lookup::Evaluate => panic!("not final"),
    };
    assert_eq!(verdict("10.9.9.9", 443), (true, vec!["lan".to_owned()]));
    assert_eq!(verdict("10.1.2.3", 5432), (false, vec!["db".to_owned()]));
    assert_eq!(verdict("10.1.2.3", 22), (true, vec!["lan".to_owned()]));
    assert_eq!(verdict("11.0.0.1", 443), (false, vec![]));
    assert_eq!(verdict("2001:db8::1", 443), (false, vec![]));
}

const HOSTS: [&str; 9] = [
    "Host::\"example.com\"",
    "Host::\"*.example.com\"",
    "Host::\"api.example.com\"",
    "Host::\"api.example.com:443\"",
    "Net::DnsZone::\"example.com\"",
    "Host::\"*.com\"",
    "Host::\"badexample.com\"",
    "Host::\"*.api.example.com\"",
    "Host::\"*\"",
];

fn host_statement() -> impl Strategy<Value = String> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let one = prop::sample::select(HOSTS.to_vec());
    let scope = prop_oneof![
        one.clone().prop_map(|h| format!("resource in {h}")),
        one.clone().prop_filter("== needs a Host", |h| h.starts_with("Host")).prop_map(|h| format!("resource == {h}")),
        Just("resource".to_owned()),
    ];
    let hosts_only = one.clone().prop_filter("a set holds one type", |h| h.starts_with("Host"));
    let condition = prop_oneof![
        3 => Just(String::new()),
        1 => one.clone().prop_map(|h| format!(" unless {{ resource in {h} }}")),
        1 => (hosts_only.clone(), hosts_only).prop_map(|(a, b)| format!(" when {{ resource in [{a}, {b}] }}")),
        1 => one.prop_filter("== needs a Host", |h| h.starts_with("Host")).prop_map(|h| format!(" when {{ resource == {h} }}")),
    ];
    (effect, scope, condition)
        .prop_map(|(e, s, c)| format!("{e} (principal, action == Action::\"NetworkConnect\", {s}){c};"))
}

/// Names from the policy's own entities, a label either side, and the apex.
fn host_name() -> impl Strategy<Value = (String, Option<u16>)> {
    let base = prop::sample::select(vec![
        "example.com",
        "api.example.com",
        "badexample.com",
        "x.api.example.com",
        "com",
        "localhost",
    ]);
    let edit = prop_oneof![Just(0u8), Just(1), Just(2)];
    let port = prop::sample::select(vec![None, Some(443u16), Some(80)]);
    (base, edit, port).prop_map(|(b, e, p)| {
        let name = match e {
            0 => b.to_owned(),
            1 => format!("q.{b}"),
            _ => b.split_once('.').map(|(_, rest)| rest.to_owned()).unwrap_or_else(|| b.to_owned()),
        };
        (name, p)
    })
}

fn check_hosts(mutation: Mutation, cases: u32) -> Result<(), String> {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(host_statement(), 1..7), prop::collection::vec(host_name(), 1..12));
    runner
        .run(&strategy, |(statements, names)| {
            let engine = engine_for(&statements);
            let tables = compile_with(&engine, "claude", 1, mutation, true);
            for (name, port) in &names {
                let r = Resource::Host(crate::resource::Host::Name(name.clone(), *port));
                let expected = engine.authorize_one("claude", Action::NetworkConnect, &r, &BTreeMap::new());
                let lookup = tables.hosts.lookup(name, *port);
                agree(&tables, lookup, &expected, &format!("{name}:{port:?}"), &statements)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
}

#[test]
fn host_table_lookup_equals_the_authorizer() {
    check_hosts(Mutation::None, 600).unwrap();
}

#[test]
fn apex_inside_its_wildcard_is_caught() {
    assert!(check_hosts(Mutation::ApexInWildcard, 600).is_err(), "the apex inside its wildcard was not caught");
}

#[test]
fn host_table_basics() {
    let engine = engine_for(&[
        "@id(\"wild\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"*.facebook.com\");"
            .into(),
        "@id(\"apex\") forbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"facebook.com\");"
            .into(),
    ]);
    let t = compile(&engine, "claude", 1);
    let verdict = |name: &str| match t.hosts.lookup(name, Some(443)) {
        Lookup::Final(v) => (v.allow, t.reasons(v).to_vec()),
        Lookup::Evaluate => panic!("not final"),
    };
    assert_eq!(verdict("www.facebook.com"), (true, vec!["wild".to_owned()]));
    assert_eq!(verdict("facebook.com"), (false, vec!["apex".to_owned()]));
    assert_eq!(verdict("badfacebook.com"), (false, vec![]));
}

#[test]
fn rewrites_are_declared_by_permits_and_vetoed_by_forbids() {
    let inject = r#"@id("inject") permit (principal, action == Action::"HttpRewrite", resource == Host::"api.example.test")
        when { context.header == "Authorization" && context.value == "leash-secret:env:API_TOKEN" };
        @id("net") permit (principal, action == Action::"NetworkConnect", resource);"#;
    let load = |text: &str| Engine::load(&[Source { name: "t".into(), text: text.into() }]).unwrap();
    let t = compile(&load(inject), "agent", 1);
    assert_eq!(t.rewrites.len(), 1);
    let r = &t.rewrites[0];
    assert_eq!(
        (r.host.as_str(), r.header.as_str(), r.value.as_str()),
        ("api.example.test", "Authorization", "leash-secret:env:API_TOKEN")
    );
    assert_eq!(t.reasons[r.reason as usize], vec!["inject".to_owned()]);
    assert!(r.applies("API.example.test", 443) && !r.applies("other.test", 443));
    assert!(!format!("{r:?}").contains("API_TOKEN"), "never in a debug print");
    let vetoed = format!(
        "{inject}\n@id(\"no-inject\") forbid (principal, action == Action::\"HttpRewrite\", resource in Host::\"*.example.test\");"
    );
    assert!(compile(&load(&vetoed), "agent", 1).rewrites.is_empty());
}

/// Conditions on the request: the method, path, query and scheme the proxy
/// reads from an HTTP request, and the name it saw.
const REQUEST_CONDITIONS: [&str; 7] = [
    "context.method == \"GET\"",
    "context.method == \"POST\"",
    "context.path like \"/repos/org/*\"",
    "context.query like \"*token=*\"",
    "context.scheme == \"http\"",
    "context.hostname like \"*.example.com\"",
    "context has method && (context.method == \"GET\" || context.method == \"HEAD\")",
];

/// A statement that reads the request, and the same statement with the
/// request taken out (a permit of whatever it could match under some
/// request): where the tables must evaluate.
fn request_statement() -> impl Strategy<Value = (String, String)> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let named = prop::sample::select(HOSTS.to_vec());
    let hosts_only = named.clone().prop_filter("a set holds one type", |h| h.starts_with("Host"));
    // The head limits the hosts, or the `when` does (not both).
    let head = prop_oneof![
        2 => Just(String::new()),
        1 => Just("resource in Host::\"*\"".to_owned()),
        2 => named.clone().prop_map(|h| format!("resource in {h}")),
        1 => named.clone().prop_filter("== needs a Host", |h| h.starts_with("Host")).prop_map(|h| format!("resource == {h}")),
        1 => prop::sample::select(vec!["Net::IpRange::\"10.0.0.0/8\"", "Host::\"10.1.2.3\"", "Host::\"[2001:db8::1]:443\""])
            .prop_map(|h| format!("resource in {h}")),
    ];
    let limit = prop_oneof![
        2 => Just(String::new()),
        1 => (hosts_only.clone(), hosts_only.clone()).prop_map(|(a, b)| format!("resource in [{a}, {b}]")),
        1 => hosts_only.clone().prop_map(|h| format!("resource == {h}")),
        1 => (named.clone(), named).prop_map(|(a, b)| format!("(resource in {a} || resource in {b})")),
        1 => Just("resource in [Host::\"10.1.2.3\", Host::\"api.example.com\"]".to_owned()),
    ];
    let condition = prop::sample::select(REQUEST_CONDITIONS.to_vec());
    (effect, head, limit, condition, any::<bool>(), any::<bool>()).prop_map(|(e, head, limit, c, unless, first)| {
        let limit = if head.is_empty() || head.ends_with("Host::\"*\"") { limit } else { String::new() };
        let scope = if head.is_empty() { "resource".to_owned() } else { head };
        let start = format!("(principal, action == Action::\"NetworkConnect\", {scope})");
        let narrow = if limit.is_empty() { String::new() } else { format!(" when {{ {limit} }}") };
        let statement = match (unless, limit.is_empty()) {
            // `unless` needs its guard written out.
            (true, _) => format!("{e} {start}{narrow} unless {{ context has method && context.method == \"GET\" }};"),
            (false, true) => format!("{e} {start} when {{ {c} }};"),
            (false, false) if first => format!("{e} {start} when {{ {c} && {limit} }};"),
            (false, false) => format!("{e} {start} when {{ {limit} && {c} }};"),
        };
        (statement, format!("permit {start}{narrow};"))
    })
}

/// Requests as the proxy and the kernel have them: none (a connection),
/// the name alone, and HTTP requests.
fn request_contexts(name: Option<&str>) -> Vec<BTreeMap<String, String>> {
    let request = |scheme: &str, method: &str, path: &str, query: &str| {
        let mut c: BTreeMap<String, String> =
            [("scheme", scheme), ("method", method), ("path", path), ("query", query)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        if let Some(n) = name {
            c.insert("hostname".to_owned(), n.to_owned());
        }
        c
    };
    let mut out = vec![BTreeMap::new()];
    if let Some(n) = name {
        out.push(BTreeMap::from([("hostname".to_owned(), n.to_owned())]));
    }
    out.push(request("https", "GET", "/repos/org/x", ""));
    out.push(request("https", "POST", "/repos/org/x", ""));
    out.push(request("http", "GET", "/repos/other/x", "token=1"));
    out.push(request("https", "HEAD", "/", "a=b"));
    out
}

fn check_requests(mutation: Mutation, cases: u32) -> Result<(), String> {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let other = prop_oneof![host_statement(), net_statement()];
    let strategy = (
        prop::collection::vec(other, 0..5),
        prop::collection::vec(request_statement(), 1..4),
        prop::collection::vec(host_name(), 1..10),
        prop::collection::vec(destination(), 1..8),
    );
    runner
        .run(&strategy, |(others, requests, names, dests)| {
            let statements: Vec<String> =
                others.iter().cloned().chain(requests.iter().map(|(s, _)| s.clone())).collect();
            let engine = engine_for(&statements);
            let tables = compile_with(&engine, "claude", 1, mutation, true);
            let reach: Vec<Engine> = requests.iter().map(|(_, r)| engine_for(std::slice::from_ref(r))).collect();
            let reaches = |r: &Resource| {
                reach.iter().any(|e| e.authorize_one("claude", Action::NetworkConnect, r, &BTreeMap::new()).allow)
            };
            let fail = |what: String| Err(TestCaseError::fail(format!("{what}\n{}", statements.join("\n"))));
            for (name, port) in &names {
                let r = Resource::Host(crate::resource::Host::Name(name.clone(), *port));
                let what = format!("{name}:{port:?}");
                let lookup = tables.hosts.lookup(name, *port);
                // Evaluate exactly where a policy that reads the request can match.
                if (lookup == Lookup::Evaluate) != reaches(&r) {
                    return fail(format!("{what}: the name table says {lookup:?}"));
                }
                for ctx in request_contexts(Some(name)) {
                    let expected = engine.authorize_one("claude", Action::NetworkConnect, &r, &ctx);
                    agree(&tables, lookup, &expected, &format!("{what} {ctx:?}"), &statements)?;
                }
                // Without a request, the entry says what Cedar says.
                if let Some(v) = tables.hosts.entry(name, *port).or(tables.hosts.default) {
                    let expected = engine.authorize_one("claude", Action::NetworkConnect, &r, &BTreeMap::new());
                    agree(&tables, Lookup::Final(v), &expected, &format!("{what} entry"), &statements)?;
                }
            }
            let mut addresses_reached = false;
            for (ip, port) in &dests {
                let r = Resource::Host(crate::resource::Host::Ip(*ip, Some(*port)));
                addresses_reached |= reaches(&r);
                let what = format!("{ip}:{port}");
                // The kernel's connections carry no request: the address
                // table decides them with the empty context, never evaluating.
                let kernel = engine.authorize_one("claude", Action::NetworkConnect, &r, &BTreeMap::new());
                let Lookup::Final(v) = tables.net.lookup(*ip, *port) else {
                    return fail(format!("{what}: the address table evaluates"));
                };
                agree(&tables, Lookup::Final(v), &kernel, &what, &statements)?;
                // A request decided by address: final only where no request changes it.
                let lookup = tables.net.lookup_request(*ip, *port);
                for ctx in request_contexts(None).into_iter().chain(request_contexts(Some("api.example.com"))) {
                    let expected = engine.authorize_one("claude", Action::NetworkConnect, &r, &ctx);
                    agree(&tables, lookup, &expected, &format!("{what} {ctx:?}"), &statements)?;
                }
            }
            if addresses_reached && !tables.net.evaluate_requests {
                return fail(
                    "a policy that reads the request matches an address; requests by address are final".into(),
                );
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
}

#[test]
fn request_rules_evaluate_exactly_where_a_request_can_change_the_answer() {
    check_requests(Mutation::None, 300).unwrap();
}

#[test]
fn ignoring_request_conditions_is_caught() {
    assert!(
        check_requests(Mutation::IgnoreRequestConditions, 500).is_err(),
        "a compiler that ignores the request was not caught"
    );
}

#[test]
fn a_request_rule_on_one_host_leaves_the_rest_final() {
    let engine = engine_for(&[
        "@id(\"any\") permit (principal, action == Action::\"NetworkConnect\", resource);".into(),
        "@id(\"org-read\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"api.github.com\") when { context.method == \"GET\" && context.path like \"/repos/org/*\" };".into(),
        "@id(\"no-post\") forbid (principal, action == Action::\"NetworkConnect\", resource in Host::\"api.github.com\") when { context.method == \"POST\" };".into(),
        "@id(\"no-ssh-lan\") forbid (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"10.0.0.0/8\");".into(),
    ]);
    let t = compile(&engine, "claude", 1);
    assert!(!t.hosts.evaluate_all && !t.net.evaluate_all && !t.net.evaluate_requests, "{t:?}");
    assert_eq!(t.hosts.lookup("api.github.com", Some(443)), Lookup::Evaluate);
    assert!(matches!(t.hosts.lookup("github.com", Some(443)), Lookup::Final(v) if v.allow));
    assert!(matches!(t.hosts.lookup("uploads.api.github.com", Some(443)), Lookup::Final(v) if v.allow));
    // The kernel decides addresses with no request, as the table says.
    assert!(matches!(t.net.lookup("10.1.2.3".parse().unwrap(), 22), Lookup::Final(v) if !v.allow));
    assert!(matches!(t.net.lookup("192.0.2.1".parse().unwrap(), 22), Lookup::Final(v) if v.allow));
    // The name's entry is what a connection without a request gets.
    let v = t.hosts.entry("api.github.com", Some(22)).unwrap();
    assert_eq!((v.allow, t.reasons(v)), (true, ["any".to_owned()].as_slice()));
    // On any host, the whole name table evaluates, and requests by address.
    let any = engine_for(&[
        "@id(\"no-post\") forbid (principal, action == Action::\"NetworkConnect\", resource) when { context.method == \"POST\" };".into(),
    ]);
    let t = compile(&any, "claude", 1);
    assert!(t.hosts.evaluate_all && t.net.evaluate_requests && !t.net.evaluate_all, "{t:?}");
}
