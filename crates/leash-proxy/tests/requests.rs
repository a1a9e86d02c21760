//! HTTP request rules end to end: a session in enforce mode whose policy
//! allows `GET` to `api.allowed.test/repos/org/*` and forbids `POST`
//! anywhere, real `curl` in its container, and an HTTPS server (its own CA,
//! trusted through `LEASH_UPSTREAM_CA`) on the host side that records what
//! reaches it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use leash_testkit::{Stack, eventually, require_docker, upstream};

const IMAGE: &str = "leash-test-debian:latest";
const NAMES: [&str; 2] = ["allowed.test", "api.allowed.test"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The host-side HTTPS server on port 443: records `<method> <path>?<query>`
/// of every request that reaches it.
fn server(rt: &tokio::runtime::Runtime, tls: Arc<rustls::ServerConfig>, seen: Arc<Mutex<Vec<String>>>) {
    let handler: upstream::Handler = Arc::new(move |r: Request<hyper::body::Incoming>| {
        let target = r.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        seen.lock().unwrap().push(format!("{} {target}", r.method()));
        Box::pin(async move { Response::new(Full::new(Bytes::from(format!("upstream {target}\n")))) })
    });
    upstream::serve(rt, 443, Some(tls), handler);
}

/// `curl` in the container to `url` at the host's address; the body, then
/// the status on a line of its own.
fn curl(container: &str, gw: &str, args: &str, url: &str) -> String {
    let host = url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    let script =
        format!("curl -sS --max-time 10 --resolve {host}:443:{gw} -w '\\n%{{http_code}}\\n' {args} '{url}' 2>&1");
    let out = std::process::Command::new("docker").args(["exec", container, "sh", "-c", &script]).output().unwrap();
    text(&out.stdout)
}

/// Held by each test for as long as it serves the host's port 443 (the
/// tests of this file run at once, in one process).
static PORT_443: Mutex<()> = Mutex::new(());

/// A stack whose proxy trusts the host-side HTTPS server's CA, the server
/// and what reached it, and the host's address as sessions see it; the
/// host's port 443 is the test's until this is dropped (fields drop in
/// order: the server's runtime, then the port).
struct Fixture {
    stack: Stack,
    seen: Arc<Mutex<Vec<String>>>,
    gw: String,
    _rt: tokio::runtime::Runtime,
    _port: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    fn new() -> Fixture {
        let port = PORT_443.lock().unwrap_or_else(|p| p.into_inner());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut stack = Stack::new();
        let (tls, upstream_ca) = upstream::tls(stack.root(), &NAMES);
        let seen = Arc::new(Mutex::new(Vec::new()));
        server(&rt, tls, seen.clone());
        let entry = leash_testkit::static_entry();
        stack.start_leashd_with(|c| {
            c.env("LEASH_ENTRY_BIN", &entry).env("LEASH_UPSTREAM_CA", &upstream_ca);
        });
        stack.wait_healthy(Duration::from_secs(10));
        Fixture { stack, seen, gw: leash_testkit::host_address(), _rt: rt, _port: port }
    }

    /// The policy both tests start from: files and programs, the host's
    /// address, and `allowed.test`; `more` after it.
    fn policy(&self, more: &str) -> std::path::PathBuf {
        let path = self.stack.root().join("policy.cedar");
        let text = format!(
            "@id(\"files\") permit (principal, action in [Action::\"FileOpen\", Action::\"FileOpenReadOnly\", Action::\"FileOpenReadWrite\", Action::\"ProcessExec\"], resource);\n\
             @id(\"host-side\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"{}/32\");\n\
             @id(\"site\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"allowed.test\");\n{more}",
            self.gw
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

#[test]
fn http_requests_are_decided_by_method_path_and_query() {
    if !require_docker("http_requests_are_decided_by_method_path_and_query")
        || !leash_testkit::require_image("http_requests_are_decided_by_method_path_and_query", IMAGE)
    {
        return;
    }
    let f = Fixture::new();
    let (stack, seen, gw) = (&f.stack, &f.seen, &f.gw);
    let policy = f.policy(
        "@id(\"org-read\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"api.allowed.test\")\n\
           when { context.method == \"GET\" && context.path like \"/repos/org/*\" };\n\
         @id(\"no-post\") forbid (principal, action == Action::\"NetworkConnect\", resource) when { context.method == \"POST\" };\n\
         @id(\"no-token\") forbid (principal, action == Action::\"NetworkConnect\", resource in Host::\"api.allowed.test\")\n\
           when { context.query like \"*access_token=*\" };\n",
    );
    let out = stack.leashctl(&["policy", "validate", policy.to_str().unwrap()]);
    let said = text(&out.stdout);
    assert!(out.status.success() && said.contains("[decided_per_request]"), "{said}{}", text(&out.stderr));
    let mut session = stack
        .leash(&["--image", IMAGE, "--policy", policy.to_str().unwrap(), "--", "sleep", "300"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (session_id, container) = stack.running_session(Duration::from_secs(20));
    let reached = |what: &str| seen.lock().unwrap().iter().any(|s| s == what);
    let api = "https://api.allowed.test";

    // GET under /repos/org/: allowed, and the server answers.
    let out = curl(&container, gw, "", &format!("{api}/repos/org/x"));
    assert!(out.contains("upstream /repos/org/x") && out.ends_with("\n200\n"), "{out}");
    assert!(reached("GET /repos/org/x"));
    // POST to the same path: refused by the forbid, never forwarded.
    let out = curl(&container, gw, "-X POST -d x=1", &format!("{api}/repos/org/x"));
    assert!(out.contains("api.allowed.test:443 denied by policy no-post") && out.ends_with("\n403\n"), "{out}");
    // Elsewhere on the same host: nothing permits it.
    let out = curl(&container, gw, "", &format!("{api}/repos/other/x"));
    assert!(out.contains("denied by policy (no policy permits it)") && out.ends_with("\n403\n"), "{out}");
    // The query: a forbidden parameter.
    let out = curl(&container, gw, "", &format!("{api}/repos/org/x?page=2&access_token=abc"));
    assert!(out.contains("denied by policy no-token") && out.ends_with("\n403\n"), "{out}");
    // Dot-segments: what the server would resolve to another path is refused.
    for (args, path) in [
        ("--path-as-is", "/repos/org/../other/x"),
        ("", "/repos/org/%2e%2e/other/x"),
        ("", "/repos/org%2f..%2fother/x"),
        ("--path-as-is", "/repos/org/./x"),
    ] {
        let out = curl(&container, gw, args, &format!("{api}{path}"));
        assert!(out.contains("has a dot-segment") && out.ends_with("\n400\n"), "{path}: {out}");
    }
    // The rule on one host leaves another to its own policy (POST excepted).
    let out = curl(&container, gw, "", "https://allowed.test/anything");
    assert!(out.contains("upstream /anything") && out.ends_with("\n200\n"), "{out}");
    let out = curl(&container, gw, "-X POST -d x=1", "https://allowed.test/anything");
    assert!(out.contains("denied by policy no-post") && out.ends_with("\n403\n"), "{out}");
    let reached_all = seen.lock().unwrap().clone();
    assert_eq!(reached_all, ["GET /repos/org/x", "GET /anything"], "only the allowed requests reach the server");

    // leashctl explains a request as the proxy decides it.
    let out = stack.leashctl(&[
        "policy",
        "check",
        "--session",
        &session_id,
        "--context",
        "method=POST",
        "--context",
        "path=/repos/org/x",
        "NetworkConnect",
        "api.allowed.test:443",
    ]);
    let said = text(&out.stdout);
    assert!(said.starts_with("deny NetworkConnect Host::\"api.allowed.test:443\" by no-post"), "{said}");
    assert!(said.contains("decided per request"), "{said}");
    let out = stack.leashctl(&[
        "policy",
        "check",
        "--session",
        &session_id,
        "--context",
        "method=GET",
        "--context",
        "path=/repos/org/x",
        "NetworkConnect",
        "api.allowed.test:443",
    ]);
    assert!(text(&out.stdout).starts_with("allow NetworkConnect Host::\"api.allowed.test:443\" by org-read"));

    // The events carry each request's decision and policies.
    let find = |path: &str, method: &str| {
        eventually(Duration::from_secs(10), &format!("the event of {method} {path}"), || {
            stack.events().into_iter().find(|e| {
                e["kind"] == "http"
                    && e["resource"] == "api.allowed.test:443"
                    && e["details"]["path"] == path
                    && e["details"]["method"] == method
            })
        })
    };
    let e = find("/repos/org/x", "GET");
    assert_eq!((&e["decision"], &e["policy_ids"]), (&"allow".into(), &serde_json::json!(["org-read"])), "{e}");
    let e = find("/repos/org/x", "POST");
    assert_eq!((&e["decision"], &e["policy_ids"]), (&"deny".into(), &serde_json::json!(["no-post"])), "{e}");
    assert_eq!(e["details"]["status"], "403", "{e}");
    let e = find("/repos/other/x", "GET");
    assert!(e["decision"] == "deny" && e["policy_ids"].as_array().is_none_or(Vec::is_empty), "{e}");
    let e = find("/repos/org/x?page=&access_token=", "GET");
    assert_eq!((&e["decision"], &e["policy_ids"]), (&"deny".into(), &serde_json::json!(["no-token"])), "{e}");
    let e = find("/repos/org/%2e%2e/other/x", "GET");
    assert_eq!((&e["decision"], &e["policy_ids"]), (&"deny".into(), &serde_json::json!(["leash:dot-segment"])), "{e}");
    assert_eq!(e["details"]["status"], "400", "{e}");

    let _ = session.kill();
    let _ = session.wait();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &container]).output();
}

#[test]
fn a_denied_request_waits_for_the_users_answer_and_goes_on_only_if_allowed() {
    if !require_docker("a_denied_request_waits_for_the_users_answer")
        || !leash_testkit::require_image("a_denied_request_waits_for_the_users_answer", IMAGE)
    {
        return;
    }
    let f = Fixture::new();
    let (stack, seen, gw) = (&f.stack, &f.seen, &f.gw);
    // allowed.test is permitted; api.allowed.test is not: asked about.
    let policy = f.policy("");
    let (mut session, id, container) = stack.asking_session(IMAGE, &policy, 5);
    let reached = |what: &str| seen.lock().unwrap().iter().any(|s| s == what);
    // A request in the background; the question it raises, answered through
    // the (authenticated) API; what the request then got.
    let asked_and_answered = |path: &str, choice: &str| -> String {
        let (container, gw, url) = (container.clone(), gw.clone(), format!("https://api.allowed.test{path}"));
        let request = std::thread::spawn(move || curl(&container, &gw, "", &url));
        let ask = eventually(Duration::from_secs(15), "the question", || {
            stack.open_asks().into_iter().find(|a| a["resource"] == "api.allowed.test:443")
        });
        assert_eq!(ask["action"], "NetworkConnect", "{ask}");
        assert_eq!(ask["session"], id.as_str(), "{ask}");
        assert!(!reached(&format!("GET {path}")), "the request waits for the answer");
        assert_eq!(stack.answer_ask(&id, ask["id"].as_str().unwrap(), choice), 200);
        request.join().unwrap()
    };

    // "once": it goes on, and the next is asked again; "deny": refused,
    // never forwarded.
    let out = asked_and_answered("/one", "once");
    assert!(out.contains("upstream /one") && out.ends_with("\n200\n"), "{out}");
    let out = asked_and_answered("/two", "deny");
    assert!(out.ends_with("\n403\n") && !reached("GET /two"), "{out}");
    // "session": it goes on, and the host is allowed from then on.
    let out = asked_and_answered("/three", "session");
    assert!(out.contains("upstream /three") && out.ends_with("\n200\n"), "{out}");
    let out = curl(&container, gw, "", "https://api.allowed.test/four");
    assert!(out.contains("upstream /four") && out.ends_with("\n200\n"), "not asked again: {out}");
    // No answer: refused when the time is up.
    let out = curl(&container, gw, "", "https://other.allowed.test/five");
    assert!(out.ends_with("\n403\n") && !reached("GET /five"), "{out}");

    let events = stack.events();
    for (path, answer) in [("/one", "once"), ("/two", "deny"), ("/three", "session")] {
        assert!(
            events.iter().any(|e| e["action"] == "NetworkConnect"
                && e["details"]["path"] == path
                && e["details"]["ask"] == answer
                && e["decision"] == if answer == "deny" { "deny" } else { "allow" }),
            "{path}: {answer}"
        );
    }
    assert!(events.iter().any(|e| e["action"] == "ask.answer" && e["details"]["answer"] == "timeout"));
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}
