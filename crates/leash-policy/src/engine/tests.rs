//! Policy semantics, case by case: Cedar's meaning, and where it differs
//! from the Go leash's.

use std::collections::BTreeMap;

use super::*;
use crate::resource::{Host, Resource};

fn load(text: &str) -> Engine {
    Engine::load(&[Source { name: "test.cedar".into(), text: text.into() }])
        .unwrap_or_else(|e| panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}

fn file(p: &str) -> Resource {
    Resource::File(p.into())
}

fn host(h: &str) -> Resource {
    Resource::Host(Host::parse(h).unwrap())
}

fn decide(e: &Engine, action: Action, r: &Resource) -> (bool, Vec<String>) {
    let d = e.authorize("claude", action, r, &BTreeMap::new());
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    (d.allow, d.reasons)
}

fn allowed(e: &Engine, action: Action, r: &Resource) -> bool {
    decide(e, action, r).0
}

#[test]
fn write_protect_a_subtree() {
    let e = load(
        r#"@id("all") permit (principal, action in [Action::"FileOpen", Action::"FileOpenReadOnly", Action::"FileOpenReadWrite"], resource) when { resource in [ Dir::"/" ] };
           @id("secrets") forbid (principal, action == Action::"FileOpenReadWrite", resource) when { resource in [ Dir::"/var/app/secrets/" ] };"#,
    );
    assert_eq!(decide(&e, Action::FileOpenReadWrite, &file("/var/app/secrets/k")), (false, vec!["secrets".into()]));
    assert_eq!(decide(&e, Action::FileOpenReadOnly, &file("/var/app/secrets/k")), (true, vec!["all".into()]));
    assert!(allowed(&e, Action::FileOpenReadWrite, &file("/var/app/other")));
}

#[test]
fn forbid_beats_a_longer_permit_unlike_the_go_leash() {
    // The Go leash's "longest prefix wins" allowed /tmp/ok/a here.
    let e = load(
        r#"@id("no-tmp") forbid (principal, action == Action::"FileOpen", resource) when { resource in [ Dir::"/tmp/" ] };
           @id("ok") permit (principal, action == Action::"FileOpen", resource) when { resource in [ Dir::"/tmp/ok/", Dir::"/" ] };"#,
    );
    assert_eq!(decide(&e, Action::FileOpenReadOnly, &file("/tmp/ok/a")), (false, vec!["no-tmp".into()]));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/tmp/b")));
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/etc/hosts")));
    // The directory itself is in its Dir.
    assert!(!allowed(&e, Action::FileOpen, &Resource::Dir("/tmp/".into())));
}

#[test]
fn exec_forbid_is_exact_not_a_prefix() {
    let e = load(
        r#"permit (principal, action == Action::"ProcessExec", resource) when { resource in [ Dir::"/" ] };
           @id("no-nmap") forbid (principal, action == Action::"ProcessExec", resource == File::"/usr/bin/nmap");"#,
    );
    assert_eq!(decide(&e, Action::ProcessExec, &file("/usr/bin/nmap")), (false, vec!["no-nmap".into()]));
    // The Go leash's prefix match also denied this one.
    assert!(allowed(&e, Action::ProcessExec, &file("/usr/bin/nmap-helper")));
}

#[test]
fn host_wildcards_respect_dot_boundaries() {
    let e = load(
        r#"@id("any") permit (principal, action == Action::"NetworkConnect", resource) when { resource in [ Host::"*" ] };
           @id("no-fb") forbid (principal, action == Action::"NetworkConnect", resource) when { resource in [ Host::"*.facebook.com" ] };"#,
    );
    assert_eq!(decide(&e, Action::NetworkConnect, &host("www.facebook.com:443")), (false, vec!["no-fb".into()]));
    assert!(allowed(&e, Action::NetworkConnect, &host("badfacebook.com:443")), "no dot boundary in the Go leash");
    assert!(allowed(&e, Action::NetworkConnect, &host("facebook.com:443")), "the apex is not in its wildcard");
}

#[test]
fn an_allow_list_and_deny_all() {
    let e = load(
        r#"permit (principal, action == Action::"NetworkConnect", resource) when { resource in [ Host::"api.internal", Host::"*.corp.example" ] };"#,
    );
    assert!(allowed(&e, Action::NetworkConnect, &host("foo.corp.example:443")));
    assert!(allowed(&e, Action::NetworkConnect, &host("api.internal:443")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("corp.example:443")));
    let e = load(
        r#"@id("deny-all") forbid (principal, action == Action::"NetworkConnect", resource == Host::"*");
           permit (principal, action == Action::"NetworkConnect", resource == Host::"api.example.com");"#,
    );
    // A connection always has a port, so `==` on a port-less host is read as
    // `in`, as the Go leash meant it: the forbid covers every destination.
    assert_eq!(decide(&e, Action::NetworkConnect, &host("api.example.com:443")), (false, vec!["deny-all".into()]));
    assert_eq!(e.lints().iter().filter(|l| l.code == "host_equality_normalized").count(), 2);
    let e = load(
        r#"@id("deny-all") forbid (principal, action == Action::"NetworkConnect", resource in Host::"*");
           permit (principal, action == Action::"NetworkConnect", resource in Host::"api.example.com");"#,
    );
    assert_eq!(decide(&e, Action::NetworkConnect, &host("api.example.com:443")), (false, vec!["deny-all".into()]));
}

#[test]
fn ports_zones_ipv6_and_ranges() {
    let e = load(
        r#"permit (principal, action == Action::"NetworkConnect", resource in Host::"db.internal:5432");
           permit (principal, action == Action::"NetworkConnect", resource in Net::DnsZone::"example.com");
           permit (principal, action == Action::"NetworkConnect", resource in Net::IpRange::"10.0.0.0/8");
           permit (principal, action == Action::"NetworkConnect", resource in Net::IpRange::"2001:db8::/32");
           forbid (principal, action == Action::"NetworkConnect", resource in Net::IpRange::"10.9.0.0/16");"#,
    );
    assert!(allowed(&e, Action::NetworkConnect, &host("db.internal:5432")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("db.internal:5433")));
    assert!(allowed(&e, Action::NetworkConnect, &host("svc.example.com:443")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("example.com:443")), "a zone excludes its apex");
    assert!(allowed(&e, Action::NetworkConnect, &host("10.1.2.3:443")));
    assert!(allowed(&e, Action::NetworkConnect, &host("[::ffff:10.1.2.3]:443")), "IPv4-mapped is IPv4");
    assert!(!allowed(&e, Action::NetworkConnect, &host("10.9.1.1:443")), "the narrower forbid wins");
    assert!(!allowed(&e, Action::NetworkConnect, &host("11.0.0.1:443")));
    assert!(allowed(&e, Action::NetworkConnect, &host("[2001:db8::1]:443")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("[2001:db9::1]:443")));
}

#[test]
fn unless_means_except() {
    let e =
        load(r#"permit (principal, action == Action::"FileOpen", resource) unless { resource in [ Dir::"/tmp/" ] };"#);
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/tmp/x")), "the Go leash allowed /tmp here");
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/etc/x")));
    assert!(e.lints().iter().any(|l| l.code == "unless_on_resource"), "{:?}", e.lints());
}

#[test]
fn go_spellings_are_normalized_with_a_lint() {
    let e = load(
        r#"permit (principal == User::"claude", action == Action::"fileopen", resource == Directory::"/tmp");
           permit (principal, action == Action::"NetworkConnect", resource == Hostname::"2001:db8::1");"#,
    );
    let codes: Vec<&str> = e.lints().iter().map(|l| l.code).collect();
    for c in ["action_case_normalized", "type_alias_normalized", "dir_missing_trailing_slash", "ip_host_normalized"] {
        assert!(codes.contains(&c), "{c} missing from {codes:?}");
    }
    assert!(allowed(&e, Action::FileOpen, &Resource::Dir("/tmp/".into())));
    // The principal is the session's agent.
    let d = e.authorize("codex", Action::FileOpen, &Resource::Dir("/tmp/".into()), &BTreeMap::new());
    assert!(!d.allow);
    assert!(allowed(&e, Action::NetworkConnect, &host("[2001:db8::1]")));
}

#[test]
fn reads_and_writes_are_authorized_twice() {
    let e = load(
        r#"@id("ro") permit (principal, action == Action::"FileOpenReadOnly", resource in Dir::"/etc/");
           @id("any") permit (principal, action == Action::"FileOpen", resource in Dir::"/srv/");
           @id("no-rw") forbid (principal, action == Action::"FileOpenReadWrite", resource in Dir::"/srv/locked/");"#,
    );
    assert_eq!(decide(&e, Action::FileOpenReadOnly, &file("/etc/hosts")), (true, vec!["ro".into()]));
    assert!(!allowed(&e, Action::FileOpenReadWrite, &file("/etc/hosts")), "read-only means read only");
    assert!(allowed(&e, Action::FileOpenReadWrite, &file("/srv/data")), "a permit on FileOpen allows a write");
    assert_eq!(decide(&e, Action::FileOpenReadWrite, &file("/srv/locked/x")), (false, vec!["no-rw".into()]));
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/srv/locked/x")));
}

#[test]
fn errors_name_file_line_and_column() {
    let err = Engine::load(&[Source {
        name: "p.cedar".into(),
        text: "permit (principal, action, resource);\nforbid (principal action, resource);\n".into(),
    }])
    .unwrap_err();
    assert_eq!((err[0].file.as_str(), err[0].line), ("p.cedar", 2), "{err:?}");
    assert!(err[0].column > 1, "{err:?}");
    assert!(err[0].to_string().contains("forbid (principal action"), "{}", err[0]);

    let err = Engine::load(&[Source {
        name: "p.cedar".into(),
        text: "\n\npermit (principal, action == Action::\"Teleport\", resource);".into(),
    }])
    .unwrap_err();
    assert!(err.iter().any(|e| e.line == 3 && e.message.contains("Teleport")), "{err:?}");
    let err = Engine::load(&[Source {
        name: "p.cedar".into(),
        text: "permit (principal, action, resource == Planet::\"x\");".into(),
    }])
    .unwrap_err();
    assert!(err.iter().any(|e| e.message.contains("Planet")), "{err:?}");
}

#[test]
fn http_rewrite_has_one_shape() {
    let err = Engine::load(&[Source {
        name: "r.cedar".into(),
        text: r#"permit (principal, action == Action::"HttpRewrite", resource == Host::"api.example.com");"#.into(),
    }])
    .unwrap_err();
    assert!(err.iter().any(|e| e.message.contains("http_rewrite_shape")), "{err:?}");
}

#[test]
fn bad_input_is_an_error_or_a_documented_limit() {
    let load = |text: String| Engine::load(&[Source { name: "bad.cedar".into(), text }]);
    let big = "// padding\n".repeat(1 << 20);
    let e = load(big).unwrap_err();
    assert!(e[0].message.contains("leash accepts at most 4 MiB"), "{:?}", e[0]);
    let many = "permit (principal, action, resource);\n".repeat(100_000);
    let e = load(many).unwrap_err();
    assert!(e[0].message.contains("at most 20000 statements"), "{:?}", e[0]);
    let garbage: String = (0..4096u32).map(|i| char::from_u32((i * 7919) % 0xD7FF).unwrap_or('?')).collect();
    assert!(load(garbage).is_err());
    let deep =
        format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(20_000), ")".repeat(20_000));
    let e = load(deep).unwrap_err();
    assert!(e[0].message.contains("nest deeper than 64"), "{:?}", e[0]);
    // The deepest accepted nest parses on a test thread's stack.
    let ok = format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(62), ")".repeat(62));
    let e = load(ok).unwrap();
    // ... and evaluates on an ordinary thread's stack too.
    assert!(allowed(&e, Action::FileOpen, &file("/x")));
    // The largest accepted set still loads.
    let many: String = (0..2000)
        .map(|i| format!("permit (principal, action == Action::\"FileOpen\", resource in Dir::\"/d{i}/\");\n"))
        .collect();
    assert_eq!(load(many).unwrap().policies().policies().count(), 2000);
}

fn codes(e: &Engine) -> Vec<(&'static str, String)> {
    e.lints().iter().map(|l| (l.code, l.policy.clone())).collect()
}

#[test]
fn lints_say_what_will_not_do_what_the_author_thinks() {
    let e = load(
        r#"@id("tmp-ok") permit (principal, action == Action::"FileOpen", resource in Dir::"/tmp/ok/");
           @id("no-tmp") forbid (principal, action in [Action::"FileOpen", Action::"ProcessExec"], resource in Dir::"/tmp/");
           @id("other") permit (principal, action == Action::"FileOpen", resource in Dir::"/srv/");
           @id("api") permit (principal, action == Action::"NetworkConnect", resource in Host::"api.example.com");
           @id("zone") permit (principal, action == Action::"NetworkConnect", resource in Net::DnsZone::"example.org");
           @id("ctx") permit (principal, action == Action::"FileOpen", resource) when { context has pid };"#,
    );
    let found = codes(&e);
    assert!(found.contains(&("shadowed_permit", "tmp-ok".into())), "{found:?}");
    assert!(!found.iter().any(|(c, p)| *c == "shadowed_permit" && p == "other"), "{found:?}");
    assert!(found.contains(&("enforced_by_proxy", "api".into())), "{found:?}");
    assert!(found.contains(&("dnszone_apex_excluded", "zone".into())), "{found:?}");
    assert!(found.contains(&("enforced_in_user_space", "ctx".into())), "{found:?}");
    let bad = Engine::load(&[Source {
        name: "bad.cedar".into(),
        text: r#"permit (principal, action == Action::"NetworkConnect", resource in Host::"a*b.example.com");
                 permit (principal, action == Action::"NetworkConnect", resource in Host::"x.com:99999");"#
            .into(),
    }])
    .unwrap_err();
    let messages: Vec<String> = bad.iter().map(|e| e.message.clone()).collect();
    assert!(messages.iter().any(|m| m.contains("unsupported_wildcard")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("invalid_host") && m.contains("invalid port")), "{messages:?}");
}

#[test]
fn go_mixed_lists_load_with_the_go_meaning() {
    let text = r#"@id("some") permit (principal, action in [Action::"FileOpen", Action::"FileOpenReadOnly"], resource) when { resource in [ File::"/etc/passwd", Dir::"/tmp" ] };"#;
    let e = load(text);
    let lint = e.lints().iter().find(|l| l.code == "mixed_list_split").expect("a lint shows the rewrite");
    assert_eq!(lint.severity, Severity::Warning);
    assert!(
        lint.message.contains(r#"resource in [File::"/etc/passwd"] || resource in [Dir::"/tmp/"]"#),
        "{}",
        lint.message
    );
    // The file exactly, or anything under the directory.
    assert_eq!(decide(&e, Action::FileOpenReadOnly, &file("/etc/passwd")), (true, vec!["some".into()]));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/etc/passwd.bak")));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/etc/shadow")));
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/tmp/a/b")));
    assert!(allowed(&e, Action::FileOpen, &Resource::Dir("/tmp/".into())));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/tmpx")));
}

#[test]
fn go_mixed_lists_forbid_and_unless_keep_cedars_meaning() {
    let e = load(
        r#"@id("all") permit (principal, action, resource);
           @id("no") forbid (principal, action == Action::"FileOpen", resource) when { resource in [ Dir::"/secret/", File::"/etc/shadow", Directory::"/keys" ] };
           @id("exec") forbid (principal, action == Action::"ProcessExec", resource) unless { resource in [ Dir::"/usr/bin/", File::"/bin/sh" ] };"#,
    );
    assert_eq!(decide(&e, Action::FileOpenReadOnly, &file("/etc/shadow")), (false, vec!["no".into()]));
    assert!(!allowed(&e, Action::FileOpenReadWrite, &file("/keys/id")));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/secret/x")));
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/etc/passwd")));
    assert!(allowed(&e, Action::ProcessExec, &file("/usr/bin/git")));
    assert!(allowed(&e, Action::ProcessExec, &file("/bin/sh")));
    assert_eq!(decide(&e, Action::ProcessExec, &file("/tmp/tool")), (false, vec!["exec".into()]));
}

#[test]
fn go_mixed_lists_across_files_and_hosts() {
    let e = load(
        r#"@id("both") permit (principal, action in [Action::"FileOpen", Action::"NetworkConnect"], resource) when { resource in [ Dir::"/work/", Host::"api.example.com", Net::DnsZone::"corp.example" ] };"#,
    );
    assert!(allowed(&e, Action::FileOpenReadOnly, &file("/work/a")));
    assert!(!allowed(&e, Action::FileOpenReadOnly, &file("/etc/a")));
    assert!(allowed(&e, Action::NetworkConnect, &host("api.example.com:443")));
    assert!(allowed(&e, Action::NetworkConnect, &host("git.corp.example:22")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("corp.example:443")));
    assert!(!allowed(&e, Action::NetworkConnect, &host("example.com:443")));
}

#[test]
fn go_hostname_conditions_load_and_decide_by_the_name_the_proxy_saw() {
    let e = load(
        r#"@id("all") permit (principal, action, resource);
           @id("evil") forbid (principal, action == Action::"NetworkConnect", resource) when { context.hostname like "*.evil.example" };
           @id("api") permit (principal, action == Action::"NetworkConnect", resource) when { resource in [ Host::"*" ] && context.hostname == "api.example.com" };"#,
    );
    assert!(
        e.lints().iter().any(|l| l.code == "optional_context_guarded" && l.message.contains("context has hostname"))
    );
    let with = |name: &str| BTreeMap::from([("hostname".to_owned(), name.to_owned())]);
    let d = |ctx: &BTreeMap<String, String>| {
        let d = e.authorize("claude", Action::NetworkConnect, &host("203.0.113.7:443"), ctx);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        (d.allow, d.reasons)
    };
    assert_eq!(d(&with("www.evil.example")), (false, vec!["evil".into()]));
    assert_eq!(d(&with("api.example.com")), (true, vec!["all".into(), "api".into()]));
    // Without a name (a connection the kernel decides), neither condition holds.
    assert_eq!(d(&BTreeMap::new()), (true, vec!["all".into()]));
}

#[test]
fn optional_context_outside_a_when_conjunction_stays_an_error() {
    // A guard under `unless` or `||` could change the decision, so Cedar's
    // strict validation still speaks.
    for text in [
        r#"permit (principal, action == Action::"NetworkConnect", resource) unless { context.hostname == "x" };"#,
        r#"permit (principal, action == Action::"NetworkConnect", resource) when { resource in Host::"a" || context.hostname == "x" };"#,
    ] {
        let e = Engine::load(&[Source { name: "t.cedar".into(), text: text.into() }]).unwrap_err();
        assert!(e[0].message.contains("optional attribute `hostname`"), "{}", e[0]);
    }
}

fn secret_use(e: &Engine, secret: &str, pairs: &[(&str, &str)]) -> (bool, Vec<String>) {
    let context: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let d = e.authorize("claude", Action::SecretUse, &Resource::Secret(secret.into()), &context);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    (d.allow, d.reasons)
}

#[test]
fn the_default_sends_each_agents_key_to_its_vendor_in_a_header_only() {
    let e = Engine::load(&crate::default_sources()).unwrap();
    let at = |host: &'static str, location: &'static str| {
        [
            ("host", host),
            ("port", "443"),
            ("scheme", "https"),
            ("method", "POST"),
            ("path", "/v1/messages"),
            ("location", location),
        ]
    };
    assert_eq!(
        secret_use(&e, "ANTHROPIC_API_KEY", &at("api.anthropic.com", "header")),
        (true, vec!["default-secret-anthropic".into()])
    );
    assert!(!secret_use(&e, "ANTHROPIC_API_KEY", &at("api.anthropic.com", "body")).0, "not in the body");
    assert!(!secret_use(&e, "ANTHROPIC_API_KEY", &at("paste.example.com", "header")).0, "not elsewhere");
    assert!(!secret_use(&e, "ANTHROPIC_API_KEY", &at("api.openai.com", "header")).0, "not to another vendor");
    assert!(secret_use(&e, "OPENAI_API_KEY", &at("api.openai.com", "header")).0);
    assert!(secret_use(&e, "DASHSCOPE_API_KEY", &at("dashscope-intl.aliyuncs.com", "header")).0);
    assert!(!secret_use(&e, "GITHUB_TOKEN", &at("api.github.com", "header")).0, "no policy: nowhere");
    // `policy check` with only the host: the location is optional, the guard holds.
    assert!(!secret_use(&e, "ANTHROPIC_API_KEY", &[("host", "api.anthropic.com")]).0);
    assert!(secret_use(&e, "ANTHROPIC_API_KEY", &[("host", "api.anthropic.com"), ("location", "header")]).0);
}

#[test]
fn a_secret_over_plain_http_is_refused_at_its_line_and_column() {
    let text = "@id(\"ok\") permit (principal, action == Action::\"SecretUse\", resource == Secret::\"T\")\n  when { context.host == \"h.test\" && context.location == \"header\" };\n@id(\"clear\") permit (principal, action == Action::\"SecretUse\", resource == Secret::\"T\")\n  when { context.host == \"h.test\" && context.scheme == \"http\" };\n";
    let errors = Engine::load(&[Source { name: "p.cedar".into(), text: text.into() }]).unwrap_err();
    let e = errors.iter().find(|e| e.message.contains("secret_over_plain_http")).expect("the lint's error");
    assert_eq!((e.file.as_str(), e.line, e.column), ("p.cedar", 4, 56), "{e}");
    assert!(e.message.starts_with("clear "), "{e}");
    // Without the scheme test it loads, with a warning about where it may go.
    let e = load(
        "@id(\"anywhere\") permit (principal, action == Action::\"SecretUse\", resource == Secret::\"T\") when { context.host == \"h.test\" };",
    );
    assert!(codes(&e).iter().any(|(c, p)| *c == "secret_any_location" && p == "anywhere"), "{:?}", codes(&e));
}

/// An HTTP request's context as the proxy gives it.
fn http(method: &str, path: &str, query: &str) -> BTreeMap<String, String> {
    [("scheme", "https"), ("method", method), ("path", path), ("query", query), ("hostname", "api.github.com")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn http_requests_are_decided_by_method_path_and_query() {
    let e = load(
        r#"@id("org-read") permit (principal, action == Action::"NetworkConnect", resource in Host::"api.github.com")
             when { context.method == "GET" && context.path like "/repos/org/*" };
           @id("no-post") forbid (principal, action == Action::"NetworkConnect", resource)
             when { context.method == "POST" };
           @id("no-token") forbid (principal, action == Action::"NetworkConnect", resource in Host::"api.github.com")
             when { context has query && context.query like "*access_token=*" };"#,
    );
    let api = host("api.github.com:443");
    let d = |ctx: &BTreeMap<String, String>| {
        let d = e.authorize("claude", Action::NetworkConnect, &api, ctx);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        (d.allow, d.reasons)
    };
    assert_eq!(d(&http("GET", "/repos/org/x", "")), (true, vec!["org-read".into()]));
    assert_eq!(d(&http("POST", "/repos/org/x", "")), (false, vec!["no-post".into()]));
    assert_eq!(d(&http("GET", "/repos/other/x", "")), (false, vec![]));
    assert_eq!(d(&http("GET", "/repos/org/x", "page=2&access_token=abc")), (false, vec!["no-token".into()]));
    // A connection without a request (the kernel's): no permit reads as met.
    assert_eq!(d(&BTreeMap::new()), (false, vec![]));
    // Each policy that reads the request says where it is decided.
    let lints: Vec<&Lint> = e.lints().iter().filter(|l| l.code == "decided_per_request").collect();
    let ids: Vec<&str> = lints.iter().map(|l| l.policy.as_str()).collect();
    assert_eq!(ids, ["no-post", "no-token", "org-read"], "{lints:?}");
    let permit = lints.iter().find(|l| l.policy == "org-read").unwrap();
    assert_eq!(permit.severity, Severity::Warning);
    assert!(
        permit.message.contains("`context.method`, `context.path`")
            && permit.message.contains("leash-proxy decides")
            && permit.message.contains("this permit never permits one"),
        "{}",
        permit.message
    );
    let forbid = lints.iter().find(|l| l.policy == "no-post").unwrap();
    assert!(forbid.message.contains("this forbid never forbids one"), "{}", forbid.message);
    // The name alone is not the request.
    let named = load(
        r#"@id("n") permit (principal, action == Action::"NetworkConnect", resource) when { context.hostname == "x.example" };"#,
    );
    assert!(!named.lints().iter().any(|l| l.code == "decided_per_request"));
}
