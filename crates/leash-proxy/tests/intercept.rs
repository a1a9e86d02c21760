//! Interception end to end: real Docker, a session container with real
//! `curl`, Python and Node, the real redirect rules in its namespace, and
//! an HTTPS server (HTTP/1.1 and h2, its own CA) on the host side.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use leash_testkit::{Stack, eventually, require_docker, upstream};

const IMAGE: &str = "leash-test-debian:latest";
const NAMES: [&str; 4] = ["allowed.test", "api.allowed.test", "badallowed.test", "forbidden.test"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Answers `<version> <host> <path> auth=<Authorization>`; counts requests.
async fn answer(req: Request<hyper::body::Incoming>, hits: Arc<AtomicU64>) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let header = |name: &str| req.headers().get(name).and_then(|h| h.to_str().ok()).unwrap_or("-").to_owned();
    let (auth, via) = (header("authorization"), header("via"));
    let body = format!("upstream {:?} {host} {} auth={auth} via={via}\n", req.version(), req.uri().path());
    Response::new(Full::new(Bytes::from(body)))
}

/// The host-side servers: HTTPS on 443, plain HTTP on 80.
fn servers(rt: &tokio::runtime::Runtime, tls: Arc<rustls::ServerConfig>, hits: Arc<AtomicU64>) {
    let handler: upstream::Handler = Arc::new(move |r| Box::pin(answer(r, hits.clone())));
    upstream::serve(rt, 443, Some(tls), handler.clone());
    upstream::serve(rt, 80, None, handler);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos().into()
}

/// Bad clients, in Python inside the session container.
const BAD_INPUT: &str = r#"
import socket, ssl, sys, time
def talk(port, data, wait=3, end=False):
    s = socket.create_connection(("GW", port), timeout=wait)
    s.sendall(data)
    if end:
        s.shutdown(socket.SHUT_WR)
    try:
        got = s.recv(4096)
    except socket.timeout:
        got = b"(silence)"
    s.close()
    return got
def status(got):
    return got.split(b"\r\n")[0].decode(errors="replace") if got else "closed"
if sys.argv[1] == "quick":
    print("malformed=" + status(talk(80, b"NOT HTTP AT ALL\r\n\r\n")))
    print("truncated=" + status(talk(443, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", end=True)))
    body = b'{"jsonrpc":"2.0","id":1,"method":'
    req = b"POST /mcp HTTP/1.1\r\nHost: allowed.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    got = talk(80, req)
    print("invalid=" + status(got) + " " + got.decode(errors="replace").split("\r\n\r\n")[-1])
    big = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":"' + b"a" * (5 << 20) + b'"}}'
    s = socket.create_connection(("GW", 80), timeout=10)
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: allowed.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big))
    try:
        s.sendall(big)
    except OSError:
        pass
    print("oversized=" + status(s.recv(4096)))
else:
    s = socket.create_connection(("GW", 80), timeout=30)
    s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n")
    start = time.time()
    try:
        got = s.recv(4096)
    except OSError:
        got = b""
    print("slowloris=%s after %.0f s" % ("closed" if not got or got.startswith(b"HTTP/1.1 408") else status(got), time.time() - start))
"#;

fn exec(container: &str, script: &str) -> Output {
    std::process::Command::new("docker").args(["exec", container, "sh", "-c", script]).output().unwrap()
}

/// `curl` to `name` at the host's address; prints `<status> <http version>` then the body.
fn curl(container: &str, gw: &str, args: &str, url: &str) -> String {
    let host = url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    let port = if url.starts_with("https") { 443 } else { 80 };
    let script = format!(
        "curl -sS --max-time 10 --resolve {host}:{port}:{gw} -w '\\n%{{http_code}} %{{http_version}}\\n' {args} {url} 2>&1"
    );
    text(&exec(container, &script).stdout)
}

#[test]
fn https_is_intercepted_and_decided_by_name() {
    if !require_docker("https_is_intercepted_and_decided_by_name")
        || !leash_testkit::require_image("https_is_intercepted_and_decided_by_name", IMAGE)
    {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stack = Stack::new();
    let (tls, upstream_ca) = upstream::tls(stack.root(), &NAMES);
    let hits = Arc::new(AtomicU64::new(0));
    servers(&rt, tls, hits.clone());
    let entry = leash_testkit::static_entry();
    // A canary secret, injected from leashd's environment by reference.
    let canary = format!("Bearer canary-{}-{}", std::process::id(), rand_suffix());
    // A secret in the session's environment, which the agent puts in a URL.
    let api_token = format!("tok-{}", rand_suffix());
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).env("LEASH_UPSTREAM_CA", &upstream_ca).env("LEASH_TEST_CANARY", &canary);
    });
    stack.wait_healthy(Duration::from_secs(10));
    let gw = leash_testkit::host_address();
    let policy = stack.root().join("policy.cedar");
    std::fs::write(
        &policy,
        format!(
            "@id(\"files\") permit (principal, action in [Action::\"FileOpen\", Action::\"FileOpenReadOnly\", Action::\"FileOpenReadWrite\", Action::\"ProcessExec\"], resource);\n\
             @id(\"host-side\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"{gw}/32\");\n\
             @id(\"allowed\") permit (principal, action == Action::\"NetworkConnect\", resource) when {{ resource in [Host::\"allowed.test\", Host::\"*.allowed.test\", Host::\"unverified.test\"] }};\n\
             @id(\"no-forbidden\") forbid (principal, action == Action::\"NetworkConnect\", resource in Host::\"forbidden.test\");\n\
             @id(\"any-address\") permit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"0.0.0.0/0\");\n\
             @id(\"debian\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"deb.debian.org\");\n\
             @id(\"no-debian\") forbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"deb.debian.org:22\");\n\
             @id(\"inject\") permit (principal, action == Action::\"HttpRewrite\", resource == Host::\"api.allowed.test\") when {{ context.header == \"Authorization\" && context.value == \"leash-secret:env:LEASH_TEST_CANARY\" }};\n"
        ),
    )
    .unwrap();
    let mut session = stack
        .leash(&[
            "--image",
            IMAGE,
            "--policy",
            policy.to_str().unwrap(),
            "-e",
            &format!("API_TOKEN={api_token}"),
            "--",
            "sleep",
            "300",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (session_id, container) = stack.running_session(Duration::from_secs(20));

    // Allowed names pass, through the session's CA, on HTTP/1.1 and h2.
    let out = curl(&container, &gw, "--http1.1", "https://allowed.test/x");
    assert!(
        out.contains("upstream HTTP/1.1 allowed.test /x auth=- via=1.1 leash-proxy") && out.contains("200 1.1"),
        "{out}"
    );
    let out = curl(&container, &gw, "--http2", "https://api.allowed.test/h2");
    assert!(out.contains("upstream HTTP/2.0 api.allowed.test /h2") && out.contains("200 2"), "{out}");
    // A dot-boundary wildcard: *.allowed.test is not badallowed.test.
    let out = curl(&container, &gw, "", "https://badallowed.test/");
    assert!(out.contains("403 2") && out.contains("badallowed.test:443 denied"), "{out}");
    let out = curl(&container, &gw, "", "https://forbidden.test/");
    assert!(out.contains("403") && out.contains("no-forbidden"), "{out}");
    // Domain fronting: the TLS name allowed, the request for another.
    let before = hits.load(Ordering::SeqCst);
    let out = curl(&container, &gw, "-H 'Host: forbidden.test'", "https://allowed.test/");
    assert!(out.contains("403") && out.contains("domain fronting"), "{out}");
    // An upstream whose certificate is not valid for the name: 502, never
    // forwarded (the host-side server has no certificate for unverified.test).
    let before_bad = hits.load(Ordering::SeqCst);
    let out = curl(&container, &gw, "", "https://unverified.test/");
    assert!(out.contains("502") && out.contains("upstream TLS for unverified.test"), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), before_bad);
    // Plain HTTP: decided on the Host name (and the address).
    let out = curl(&container, &gw, "", "http://allowed.test/plain");
    assert!(out.contains("upstream HTTP/1.1 allowed.test /plain") && out.contains("200 1.1"), "{out}");
    let out = curl(&container, &gw, "-H 'Host: forbidden.test'", "http://allowed.test/plain");
    assert!(out.contains("403"), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), before + 1, "denied requests never reach the server");
    // The secret is injected over verified TLS, never over plain HTTP.
    let out = curl(&container, &gw, "--http1.1", "https://api.allowed.test/inject");
    assert!(out.contains(&format!("auth={canary} via=")), "{out}");
    let out = curl(&container, &gw, "", "http://api.allowed.test/inject-plain");
    assert!(out.contains("auth=- via="), "{out}");
    let out = text(
        &exec(
            &container,
            "curl -s --max-time 10 --resolve allowed.test:443:GW https://allowed.test/leak/$API_TOKEN"
                .replace("GW", &gw)
                .as_str(),
        )
        .stdout,
    );
    assert!(out.contains("/leak/tok-"), "{out}");
    // A name forbidden on a port: once the session resolves it (through the
    // DNS relay), its address is refused by the kernel on that port. (A name
    // forbidden on every port is not resolved at all: tests/dns.rs.)
    let dns = "getent hosts deb.debian.org | cut -d' ' -f1 | head -n 1 > resolved; \
               python3 -c \"import socket\nip = open('resolved').read().strip()\ntry:\n  socket.create_connection((ip, 22), timeout=3)\n  print('ssh=connected', ip)\nexcept OSError as e:\n  print('ssh=refused', e.errno, ip)\"";
    let out = text(&exec(&container, &format!("cd {} && {dns}", stack.project().display())).stdout);
    let resolved = std::fs::read_to_string(stack.project().join("resolved")).unwrap().trim().to_owned();
    assert!(
        !resolved.is_empty(),
        "the session resolved no address for deb.debian.org: this test needs the container's resolvers to answer \
         for the Debian mirror (the one name these machines resolve); {out}"
    );
    assert!(out.contains("ssh=refused 1 "), "{out}");
    // Node, with its own trust store (NODE_EXTRA_CA_CERTS).
    let node = format!(
        "node -e \"require('https').get({{host: '{gw}', servername: 'allowed.test', headers: {{host: 'allowed.test'}}, path: '/node'}}, r => {{ r.on('data', d => process.stdout.write(d)); }}).on('error', e => {{ console.log('error', e.message); }})\""
    );
    let out = text(&exec(&container, &node).stdout);
    assert!(out.contains("upstream HTTP/1.1 allowed.test /node"), "{out}");
    // QUIC is refused, so clients fall back to TCP.
    let quic = format!(
        "python3 -c \"import socket,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('{gw}', 443))\ntry:\n  s.send(b'x'); time.sleep(0.3); s.send(b'x'); print('sent')\nexcept OSError as e: print('refused', e.errno)\""
    );
    let out = exec(&container, &quic);
    // The rule rejects the datagram: EPERM on the send (netfilter refused
    // it), or ECONNREFUSED on the next (its ICMP answer).
    let said = text(&out.stdout);
    assert!(said.contains("refused 1\n") || said.contains("refused 111"), "{said}{}", text(&out.stderr));

    // Events: the requests, decided, with their policies; no query values.
    let events = stack.events();
    let http: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "http").collect();
    let find = |resource: &str, decision: &str| {
        http.iter().find(|e| e["resource"] == resource && e["decision"] == decision).copied().cloned()
    };
    let ok = find("allowed.test:443", "allow").expect("the allowed request's event");
    assert_eq!(ok["policy_ids"], serde_json::json!(["allowed"]), "{ok}");
    assert_eq!(
        (ok["details"]["status"].as_str(), ok["details"]["method"].as_str()),
        (Some("200"), Some("GET")),
        "{ok}"
    );
    let denied = find("forbidden.test:443", "deny").expect("the forbidden request's event");
    assert_eq!(denied["policy_ids"], serde_json::json!(["no-forbidden"]), "{denied}");
    assert!(http.iter().any(|e| e["policy_ids"] == serde_json::json!(["leash:sni-host-mismatch"])), "{http:?}");
    let bad = find("unverified.test:443", "allow").expect("the unverified upstream's event");
    assert!(
        bad["details"]["status"] == "502"
            && bad["details"]["error"].as_str().is_some_and(|e| e.contains("certificate")),
        "{bad}"
    );

    let answer = events
        .iter()
        .find(|e| e["action"] == "dns.answer" && e["resource"] == "deb.debian.org")
        .expect("the DNS answer's event");
    assert!(
        answer["details"]["kernel_entries"].as_str().is_some_and(|k| k.contains(&format!("{resolved}:22 deny"))),
        "{answer}"
    );
    let refused = events
        .iter()
        .find(|e| {
            e["action"] == "NetworkConnect" && e["resource"] == format!("{resolved}:22") && e["decision"] == "deny"
        })
        .expect("the kernel's refusal");
    assert_eq!(refused["details"]["name"], "deb.debian.org", "{refused}");
    assert_eq!(refused["policy_ids"], serde_json::json!(["no-debian", "(via the name deb.debian.org)"]), "{refused}");
    let injected = http
        .iter()
        .find(|e| e["resource"] == "api.allowed.test:443" && e["details"]["path"] == "/inject")
        .expect("the injected request's event");
    assert_eq!(
        (injected["details"]["rewrites"].as_str(), injected["details"]["rewrite_policies"].as_str()),
        (Some("Authorization"), Some("inject")),
        "{injected}"
    );
    // The canary appears in no event, log, saved state or table listing.
    let token = canary.trim_start_matches("Bearer ");
    let all_events = text(&stack.leashctl(&["events", "--json"]).stdout);
    assert!(!all_events.contains(token), "the secret is in an event");
    assert!(
        !all_events.contains(&api_token) && all_events.contains("/leak/[REDACTED]"),
        "the session's secrets are redacted"
    );
    let listed = text(&stack.leashctl(&["policy", "tables", "--json", "--session", &session_id]).stdout);
    assert!(listed.contains("Authorization") && !listed.contains(token), "{listed}");
    assert_eq!(
        leash_testkit::files_containing(stack.root(), token, &[]),
        Vec::<String>::new(),
        "the secret is on disk"
    );

    // Bad input: the proxy answers or drops it, and keeps serving others.
    let bad = stack.project().join("bad-input.py");
    std::fs::write(&bad, BAD_INPUT.replace("GW", &gw)).unwrap();
    let slow = std::process::Command::new("docker")
        .args(["exec", &container, "python3", bad.to_str().unwrap(), "slowloris"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let quick = exec(&container, &format!("python3 {} quick 2>&1", bad.display()));
    let out = text(&quick.stdout);
    assert!(out.contains("malformed=HTTP/1.1 400"), "{out}");
    assert!(out.contains("truncated=closed"), "{out}");
    assert!(out.contains("invalid=HTTP/1.1 400") && out.contains("-32700"), "{out}");
    assert!(out.contains("oversized=HTTP/1.1 413"), "{out}");
    // While a slow client holds a connection open, others are served.
    let others = curl(&container, &gw, "--http1.1", "https://allowed.test/meanwhile");
    assert!(others.contains("200 1.1"), "{others}");
    let slow = text(&slow.wait_with_output().unwrap().stdout);
    assert!(slow.contains("slowloris=closed"), "{slow}");

    // The proxy killed: nothing gets through unproxied meanwhile (plain
    // HTTP would, straight to the server: it would arrive without `Via`),
    // and once it is back, new connections work without restarting the
    // session.
    let pid = Stack::component(&stack.status().unwrap(), "leash-proxy")["pid"].as_u64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let loop_script = format!(
        "for i in $(seq 1 40); do curl -s --max-time 2 --resolve allowed.test:80:{gw} http://allowed.test/during; done"
    );
    let during = text(&exec(&container, &loop_script).stdout);
    assert!(!during.contains("via=-"), "a request reached the server unproxied: {during}");
    let after = eventually(Duration::from_secs(10), "the proxy intercepting again", || {
        let out = curl(&container, &gw, "--http1.1", "https://allowed.test/after");
        out.contains("200").then_some(out)
    });
    assert!(after.contains("upstream HTTP/1.1 allowed.test /after auth=- via=1.1 leash-proxy"), "{after}");
    let restarted = Stack::component(&stack.status().unwrap(), "leash-proxy")["pid"].as_u64().unwrap();
    assert_ne!(restarted, pid);

    let _ = session.kill();
    let _ = session.wait();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &container]).output();
}
