//! Decoy credentials end to end: a real stack and session (Docker, the
//! redirect, the proxy), `curl` in the container, and an HTTPS server on
//! the host side (its CA trusted through `LEASH_UPSTREAM_CA`) that records
//! what reaches it and echoes it back. The container holds only decoys;
//! the server gets the real value only where `SecretUse` allows it; the
//! real value is nowhere a reader can see.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use leash_testkit::{Stack, eventually, require_docker, require_image, upstream};

mod common;

const IMAGE: &str = "leash-test-debian:latest";
const NAMES: [&str; 2] = ["api.secret.test", "paste.secret.test"];

/// What one request brought: `<host> <method> <path?query> <header: value>... body=<body>`.
type Seen = Arc<Mutex<Vec<String>>>;

/// Records the request and echoes it whole (an upstream that hands a
/// request's credentials back).
async fn echo(req: Request<hyper::body::Incoming>, seen: Seen) -> Response<Full<Bytes>> {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("-").to_owned();
    let mut line = format!("{host} {} {}", req.method(), req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (k, v) in req.headers() {
        line.push_str(&format!(" {k}: {}", v.to_str().unwrap_or("?")));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    line.push_str(&format!(" body={}", String::from_utf8_lossy(&body)));
    seen.lock().unwrap().push(line.clone());
    let mut r = Response::new(Full::new(Bytes::from(format!("echo {line}\n"))));
    if let Some(k) = line.split(" x-api-key: ").nth(1).and_then(|r| r.split(' ').next()) {
        r.headers_mut().insert("x-echo", k.parse().unwrap());
    }
    r
}

fn serve(rt: &tokio::runtime::Runtime, tls: std::sync::Arc<rustls::ServerConfig>, seen: Seen) {
    let handler: upstream::Handler = Arc::new(move |r| Box::pin(echo(r, seen.clone())));
    upstream::serve(rt, 443, Some(tls), handler.clone());
    upstream::serve(rt, 80, None, handler);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn exec(container: &str, script: &str) -> String {
    let out = std::process::Command::new("docker").args(["exec", container, "sh", "-c", script]).output().unwrap();
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    bytes.iter().map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()])).collect()
}

#[test]
fn the_container_holds_decoys_and_real_values_go_only_where_the_policy_says() {
    let name = "the_container_holds_decoys_and_real_values_go_only_where_the_policy_says";
    if !require_docker(name) || !require_image(name, IMAGE) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stack = Stack::new();
    let (tls, upstream_ca) = upstream::tls(stack.root(), &NAMES);
    let seen: Seen = Arc::default();
    serve(&rt, tls, seen.clone());
    let (otlp, otlp_addr) = common::otlp::serve(&rt);
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry)
            .env("LEASH_UPSTREAM_CA", &upstream_ca)
            .arg("--otlp-endpoint")
            .arg(format!("http://{otlp_addr}"));
    });
    stack.wait_healthy(Duration::from_secs(10));
    let gw = leash_testkit::host_address();

    // Four credentials, from each source: the environment (--secret NAME),
    // a value (--secret NAME=VALUE), a file (--secret NAME@FILE), and the
    // user's config.toml ([secrets], from a file and from the environment).
    let header_key = format!("sk-test-{}", random_token(48));
    let body_key = format!("bk_{}", random_token(40));
    let file_key = format!("fk-{}", random_token(40));
    let config_key = format!("ck-{}", random_token(40));
    let env_key = format!("ek-{}", random_token(40));
    let home = stack.root().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("file-key"), format!("{file_key}\n")).unwrap();
    std::fs::write(home.join("config-key"), format!("{config_key}\n")).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[secrets]\nCONFIG_KEY = \"file:{}\"\nENV_KEY = \"env:MY_ENV_TOKEN\"\n",
            home.join("config-key").display()
        ),
    )
    .unwrap();
    let reals = [&header_key, &body_key, &file_key, &config_key, &env_key];
    let policy = stack.root().join("policy.cedar");
    std::fs::write(
        &policy,
        format!(
            "@id(\"files\") permit (principal, action in [Action::\"FileOpen\", Action::\"FileOpenReadOnly\", Action::\"FileOpenReadWrite\", Action::\"ProcessExec\"], resource);\n\
             @id(\"host-side\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"{gw}/32\");\n\
             @id(\"names\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"*.secret.test\");\n\
             @id(\"header-key\") permit (principal, action == Action::\"SecretUse\", resource) when {{ resource in [Secret::\"HEADER_KEY\", Secret::\"FILE_KEY\", Secret::\"CONFIG_KEY\", Secret::\"ENV_KEY\"] && context.host == \"api.secret.test\" && context.location == \"header\" }};\n\
             @id(\"body-key\") permit (principal, action == Action::\"SecretUse\", resource == Secret::\"BODY_KEY\") when {{ context.host == \"api.secret.test\" && context has location && [\"body\", \"query\"].contains(context.location) }};\n"
        ),
    )
    .unwrap();
    let mut session = stack
        .leash(&[
            "--image",
            IMAGE,
            "--policy",
            policy.to_str().unwrap(),
            "--secret",
            "HEADER_KEY",
            "--secret",
            &format!("BODY_KEY={body_key}"),
            "--secret",
            &format!("FILE_KEY@{}", home.join("file-key").display()),
            "--",
            "sleep",
            "300",
        ])
        .env("HEADER_KEY", &header_key)
        .env("MY_ENV_TOKEN", &env_key)
        .env("LEASH_HOME", &home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (session_id, container) = stack.running_session(Duration::from_secs(30));

    // The container's values: decoys of the same shape, never the real ones.
    let env = exec(&container, "for k in HEADER_KEY BODY_KEY FILE_KEY CONFIG_KEY ENV_KEY; do printenv $k; done");
    let decoys: Vec<&str> = env.lines().collect();
    assert_eq!(decoys.len(), 5, "{env}");
    for (d, real) in decoys.iter().zip(reals) {
        assert_ne!(d, real);
        assert_eq!(d.len(), real.len(), "{d} for {real}");
        assert_eq!(&d[..3], &real[..3], "the prefix stays: {d}");
    }
    let (header_decoy, body_decoy) = (decoys[0], decoys[1]);
    let environ = leash_testkit::container_environ(&container);
    for real in reals {
        assert!(!environ.contains(real.as_str()), "a real value in the container's /proc");
    }
    let curl = |args: &str, url: &str| {
        let host = url.split("://").nth(1).unwrap().split(['/', ':', '?']).next().unwrap();
        let port = if url.starts_with("https") { 443 } else { 80 };
        exec(&container, &format!("curl -sS -i --max-time 10 --resolve {host}:{port}:{gw} {args} '{url}' 2>&1"))
    };
    let last = || seen.lock().unwrap().last().cloned().unwrap_or_default();

    // In a header, to the host the policy names: the real value goes, and
    // the echo comes back with the decoy (headers and body).
    let out = curl("-H \"x-api-key: $HEADER_KEY\"", "https://api.secret.test/v1/messages");
    assert!(last().contains(&format!("x-api-key: {header_key}")), "{}", last());
    assert!(
        out.contains(&format!("x-echo: {header_decoy}")) && out.contains(&format!("x-api-key: {header_decoy}")),
        "{out}"
    );
    assert!(!out.contains(header_key.as_str()), "{out}");
    // Every source's secret works alike.
    curl(
        "-H \"authorization: Bearer $FILE_KEY\" -H \"x-config: $CONFIG_KEY\" -H \"x-env: $ENV_KEY\"",
        "https://api.secret.test/all",
    );
    let all = last();
    assert!(
        all.contains(&format!("Bearer {file_key}")) && all.contains(&config_key) && all.contains(&env_key),
        "{all}"
    );
    // Elsewhere (another host, plain HTTP, the body for a header-only
    // secret), the decoy travels as it is.
    curl("-H \"x-api-key: $HEADER_KEY\"", "https://paste.secret.test/up");
    assert!(last().contains(&format!("x-api-key: {header_decoy}")), "{}", last());
    curl("-H \"x-api-key: $HEADER_KEY\"", "http://api.secret.test/plain");
    assert!(last().contains(&format!("x-api-key: {header_decoy}")), "{}", last());
    curl("--data \"{\\\"k\\\":\\\"$HEADER_KEY\\\"}\"", "https://api.secret.test/body");
    assert!(last().contains(&format!("body={{\"k\":\"{header_decoy}\"}}")), "{}", last());
    // Where the policy allows the body and the query, they are swapped too
    // (a 64 KiB body: swapped as it streams, its length unchanged).
    let big = format!("{{\"pad\":\"{}\",\"key\":\"{body_decoy}\"}}", "x".repeat(64 << 10));
    std::fs::write(stack.project().join("big.json"), &big).unwrap();
    curl(
        &format!("-H 'content-type: application/json' --data-binary @{}/big.json", stack.project().display()),
        "https://api.secret.test/big",
    );
    let got = last();
    assert!(
        got.contains(&format!("\"key\":\"{body_key}\"}}")) && !got.contains(body_decoy),
        "the body's decoy was not swapped: {}",
        &got[got.len().saturating_sub(300)..]
    );
    curl("", &format!("https://api.secret.test/q?key={body_decoy}&x=1"));
    assert!(last().contains(&format!("/q?key={body_key}&x=1")), "{}", last());
    curl("", &format!("https://paste.secret.test/q?key={body_decoy}"));
    assert!(last().contains(&format!("/q?key={body_decoy}")), "{}", last());

    // Record mode lets everything through, but a secret still goes only
    // where the policy says.
    let out = stack.leashctl(&["policy", "mode", "record", "--session", &session_id]);
    assert!(out.status.success(), "{out:?}");
    eventually(Duration::from_secs(10), "record mode at the proxy", || {
        curl("-H \"x-api-key: $HEADER_KEY\"", "https://paste.secret.test/in-record-mode");
        last().contains("/in-record-mode").then_some(())
    });
    assert!(last().contains(&format!("x-api-key: {header_decoy}")), "record mode released a secret: {}", last());
    curl("-H \"x-api-key: $HEADER_KEY\"", "https://api.secret.test/still");
    assert!(last().contains(&format!("x-api-key: {header_key}")), "{}", last());

    // A restarted proxy holds the session's secrets again (from its own
    // root-only file): the real value still goes where it may, and only there.
    let pid = Stack::component(&stack.status().unwrap(), "leash-proxy")["pid"].as_u64().unwrap();
    leash_testkit::kill(pid as u32, rustix::process::Signal::KILL);
    eventually(Duration::from_secs(20), "the restarted proxy swapping the decoy", || {
        curl("-H \"x-api-key: $HEADER_KEY\"", "https://api.secret.test/after-restart");
        let l = last();
        (l.contains("/after-restart") && l.contains(&format!("x-api-key: {header_key}"))).then_some(())
    });
    assert_ne!(Stack::component(&stack.status().unwrap(), "leash-proxy")["pid"].as_u64().unwrap(), pid);
    curl("-H \"x-api-key: $HEADER_KEY\"", "https://paste.secret.test/after-restart");
    assert!(last().contains(&format!("x-api-key: {header_decoy}")), "{}", last());

    // Events: where each secret went (never a value), and each decoy seen
    // where its secret may not go.
    let events = eventually(Duration::from_secs(10), "the decoys' events", || {
        let events = stack.events();
        let n = events.iter().filter(|e| e["action"] == "secret.decoy_seen").count();
        (n >= 4).then_some(events)
    });
    let used = events
        .iter()
        .find(|e| e["resource"] == "api.secret.test:443" && e["details"]["path"] == "/v1/messages")
        .expect("the request's event");
    assert_eq!(used["details"]["secrets"], "HEADER_KEY (header x-api-key)", "{used}");
    assert_eq!(used["details"]["secret_policies"], "header-key", "{used}");
    let seen_at = |resource: &str, location: &str| {
        events.iter().any(|e| {
            e["action"] == "secret.decoy_seen" && e["resource"] == resource && e["details"]["location"] == location
        })
    };
    assert!(seen_at("paste.secret.test:443", "header x-api-key"), "{events:?}");
    assert!(seen_at("api.secret.test:80", "header x-api-key"));
    assert!(seen_at("api.secret.test:443", "body"));
    assert!(seen_at("paste.secret.test:443", "query"));
    assert!(events.iter().any(|e| e["action"] == "secret.echoed"), "the echo is an event");

    // The canary: no real value in events, the audit store, OTLP, the API,
    // `leashctl sessions`, logs, `docker inspect` — nor on disk but in the
    // proxy's own root-only file, which goes with the session.
    let (api, token) = stack.ui();
    let auth = format!("Bearer {token}");
    let mut readable = vec![
        text(&stack.leashctl(&["events", "--json"]).stdout),
        text(&stack.leashctl(&["sessions", "--json"]).stdout),
        text(&stack.leashctl(&["policy", "show", "--session", &session_id]).stdout),
        text(&std::process::Command::new("docker").args(["inspect", &container]).output().unwrap().stdout),
    ];
    for path in ["/api/sessions", "/api/events?limit=1000", &format!("/api/policies?session={session_id}")] {
        readable.push(leash_testkit::http::request(&api, "GET", path, &[("Authorization", &auth)], b"").text());
    }
    let exported = eventually(Duration::from_secs(10), "the events at the OTLP collector", || {
        let records = otlp.records.lock().unwrap().clone();
        let all = format!("{records:?}");
        all.contains("secret.decoy_seen").then_some(all)
    });
    readable.push(exported);
    assert!(readable[3].contains(header_decoy), "docker inspect shows the decoy");
    // The proxy keeps the values for its restart, root's and 0600 (and the
    // test's own files hold them).
    let secrets_dir = stack.root().join("state/proxy/secrets");
    assert_eq!(std::fs::read_dir(&secrets_dir).map(|d| d.count()).unwrap_or(0), 1, "{}", secrets_dir.display());
    for real in reals {
        for (i, r) in readable.iter().enumerate() {
            assert!(!r.contains(real.as_str()), "a real value in view {i}");
        }
        assert_eq!(
            leash_testkit::files_containing(stack.root(), real, &[&secrets_dir, &home]),
            Vec::<String>::new(),
            "a real value on disk"
        );
    }

    let _ = session.kill();
    let _ = session.wait();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &container]).output();
    eventually(Duration::from_secs(20), "the proxy forgetting the session's secrets", || {
        let left: Vec<_> = std::fs::read_dir(&secrets_dir).into_iter().flatten().flatten().collect();
        left.is_empty().then_some(())
    });
}

#[test]
fn bad_secret_references_refuse_the_session_naming_them() {
    let name = "bad_secret_references_refuse_the_session_naming_them";
    if !require_docker(name) || !require_image(name, IMAGE) {
        return;
    }
    let mut stack = Stack::new();
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry);
    });
    stack.wait_healthy(Duration::from_secs(10));
    let home = stack.root().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str], config: &str| {
        std::fs::write(home.join("config.toml"), config).unwrap();
        let mut all = vec!["--image", IMAGE];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let out = stack.leash(&all).env("LEASH_HOME", &home).env_remove("NOT_SET_TOKEN").output().unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = run(&["--secret", "NOT_SET_TOKEN"], "");
    assert!(code == Some(125) && err.contains("--secret NOT_SET_TOKEN") && err.contains("not set"), "{err}");
    let (code, err) = run(&["--secret", "SHORT=abc123"], "");
    assert!(code == Some(125) && err.contains("secret SHORT") && err.contains("too short"), "{err}");
    let (code, err) = run(&[], "[secrets]\nGONE = \"file:/nonexistent/key\"\n");
    assert!(code == Some(125) && err.contains("[secrets] GONE") && err.contains("/nonexistent/key"), "{err}");
    let (code, err) = run(&[], "[secrets]\nX = \"literal-value\"\n");
    assert!(code == Some(125) && err.contains("secrets.X") && err.contains(":2"), "{err}");
    let (code, err) = run(&[], "[secrets]\nMISSING = \"env:NOT_SET_TOKEN\"\n");
    assert!(code == Some(125) && err.contains("NOT_SET_TOKEN is not set"), "{err}");
    assert!(stack.containers().is_empty(), "no container for a refused session");
}
