//! Learned policies and the Control UI with real sessions: replay against
//! a recorded session finds the denials a later enforce run produces, and
//! a real headless Chromium watches, filters, edits and enforces.

use std::collections::BTreeSet;
use std::time::Duration;

use leash_testkit::http::{Browser, require_chromium};
use leash_testkit::{Stack, TEST_IMAGE, eventually, require_docker};
use serde_json::{Value, json};

fn stack() -> Stack {
    let mut s = Stack::new();
    s.start_leashd_for_sessions();
    s.wait_healthy(Duration::from_secs(10));
    s
}

/// The command both runs perform: reads, a write, an exec.
const WORK: &str =
    "cat /etc/hostname /etc/passwd >/dev/null; echo x > /tmp/out; ls /bin >/dev/null; cat /etc/group >/dev/null";

/// (action, resource) of the denied events of `session`.
fn denied(stack: &Stack, session: &str) -> BTreeSet<(String, String)> {
    stack
        .events()
        .iter()
        .filter(|e| e["session"] == session && e["decision"] == "deny")
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["resource"].as_str().unwrap().to_owned()))
        .collect()
}

fn session_of(stack: &Stack, out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The newest session.create names it.
    stack
        .events()
        .iter()
        .rev()
        .find(|e| e["action"] == "session.create")
        .and_then(|e| e["session"].as_str().map(str::to_owned))
        .expect("a session")
}

#[test]
fn replay_finds_exactly_the_denials_a_later_enforce_run_produces() {
    if !require_docker("replay_finds_exactly_the_denials_a_later_enforce_run_produces") {
        return;
    }
    let stack = stack();
    // Recorded under the default policy: everything allowed; `--open`
    // hands the browser ($BROWSER) the UI's single-use address first.
    let (browser, url_file) = stack.capturing_browser();
    let out = stack
        .leash(&["--open", "--image", TEST_IMAGE, "--", "sh", "-c", WORK])
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    let recorded = session_of(&stack, &out);
    let opened = std::fs::read_to_string(&url_file).unwrap();
    assert!(opened.starts_with("http://127.0.0.1:") && opened.contains("/login?code="), "{opened}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the Control UI is open in your browser"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("code="), "the code is never printed");
    let candidate = stack.root().join("candidate.cedar");
    std::fs::write(
        &candidate,
        r#"permit (principal, action, resource);
@id("no-passwd")
forbid (principal, action in [Action::"FileOpen", Action::"FileOpenReadOnly"], resource == File::"/etc/passwd");
@id("no-writes-in-tmp")
forbid (principal, action == Action::"FileOpenReadWrite", resource in Dir::"/tmp/");
@id("no-ls")
forbid (principal, action == Action::"ProcessExec", resource == File::"/bin/ls");
"#,
    )
    .unwrap();
    let replay =
        stack.leashctl(&["--json", "policy", "replay", candidate.to_str().unwrap(), "--session", &recorded[..8]]);
    assert_eq!(replay.status.code(), Some(1), "the candidate denies something: {replay:?}");
    let v: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(v["session"], recorded.as_str());
    let predicted: BTreeSet<(String, String)> = v["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (f["event"]["action"].as_str().unwrap().to_owned(), f["event"]["resource"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(predicted.iter().any(|(_, r)| r == "/etc/passwd"), "{v:#}");
    assert!(predicted.iter().any(|(_, r)| r == "/tmp/out"), "{v:#}");
    // Every finding names the policy that would decide it.
    assert!(
        v["denied"].as_array().unwrap().iter().all(|f| f["policies"].as_array().is_some_and(|p| !p.is_empty())),
        "{v:#}"
    );

    // The same work, enforced with the candidate.
    let out = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "--policy",
            candidate.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &format!("{WORK}; true"),
        ])
        .output()
        .unwrap();
    let enforced = session_of(&stack, &out);
    assert_ne!(enforced, recorded);
    let actual = eventually(Duration::from_secs(10), "the enforced run's denials", || {
        let d = denied(&stack, &enforced);
        (d.len() >= predicted.len()).then_some(d)
    });
    assert_eq!(actual, predicted, "replay predicted {predicted:?}; enforcing produced {actual:?}");

    // The same through the API, with the UI's body.
    let (addr, token) = stack.ui();
    let auth = format!("Bearer {token}");
    let body = json!({ "cedar": std::fs::read_to_string(&candidate).unwrap(), "session": recorded }).to_string();
    let r = leash_testkit::http::request(
        &addr,
        "POST",
        "/api/policies/replay",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["denied"].as_array().unwrap().len(), v["denied"].as_array().unwrap().len());
    // Suggestions from the recorded session propose what it did.
    let r = leash_testkit::http::request(
        &addr,
        "GET",
        &format!("/suggest?session={recorded}"),
        &[("Authorization", &auth)],
        b"",
    );
    let s = r.json();
    let cedar: Vec<&str> =
        s["suggestions"].as_array().unwrap().iter().map(|x| x["ProposedCedar"].as_str().unwrap()).collect();
    assert!(cedar.iter().any(|c| c.contains("File::\"/etc/passwd\"") || c.contains("Dir::\"/etc/\"")), "{s:#}");
    assert!(cedar.iter().any(|c| c.contains("ProcessExec")), "{s:#}");
}

#[test]
fn the_control_ui_in_chromium_watches_filters_edits_and_enforces() {
    if !require_docker("the_control_ui_in_chromium") || !require_chromium("the_control_ui_in_chromium") {
        return;
    }
    let stack = stack();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut session = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "--",
            "sh",
            "-c",
            "while true; do cat /etc/hostname >/dev/null; cat /etc/passwd >/dev/null 2>&1; sleep 0.5; done",
        ])
        .spawn()
        .unwrap();
    let (id, _) = stack.running_session(Duration::from_secs(15));

    // `leash --open` hands the browser a single-use address.
    let url = stack.login_url();

    let b = Browser::start();
    b.goto(&url);
    // The code became a cookie the page cannot read, and left the address bar.
    let here = b.js("return location.pathname + location.search", json!([]));
    assert_eq!(here, "/");
    assert_eq!(b.js("return document.cookie", json!([])), "", "the cookie is HttpOnly");
    b.wait_for(
        Duration::from_secs(10),
        "the WebSocket connected",
        "return document.querySelector('#status').textContent === 'Connected'",
    );
    b.wait_for(
        Duration::from_secs(10),
        "the running session selected",
        &format!("return document.querySelector('#session-select').value === '{id}'"),
    );
    // Live events of the running session appear, with decisions and policy ids.
    b.wait_for(
        Duration::from_secs(15),
        "live events",
        "return document.querySelector('#events tr[data-resource=\"/etc/hostname\"][data-decision=\"allowed\"]')",
    );
    let policies = b.js(
        "return document.querySelector('#events tr[data-resource=\"/etc/hostname\"] td.policies').textContent",
        json!([]),
    );
    assert!(policies.as_str().unwrap().contains("default-files"), "{policies}");
    b.wait_for(
        Duration::from_secs(10),
        "the tier panel",
        "return document.querySelector('#tier').textContent.includes('tier: ')",
    );
    // The tier panel says each way of enforcing, and its reason, once.
    let reasons = b.js(
        "const t = [...document.querySelectorAll('#capabilities li:not(.gap) .muted')].map(x => x.textContent); \
         return [t.length, new Set(t).size]",
        json!([]),
    );
    assert!(reasons[0].as_u64() > Some(0) && reasons[0] == reasons[1], "a reason said twice: {reasons}");
    // Decisions first: a process's fork and exit fold into one row for the
    // process, which opens to the decisions it made.
    b.wait_for(
        Duration::from_secs(15),
        "a process row with decisions",
        "return document.querySelector('#events tr.process:not([data-decisions=\"0\"])')",
    );
    let lifecycle_rows = b.js(
        "return [...document.querySelectorAll('#events tbody tr')].filter(t => t.dataset.action.startsWith('process.')).length",
        json!([]),
    );
    assert_eq!(lifecycle_rows, 0, "a fork or exit shown as a row of its own");
    b.click("#events tr.process:not([data-decisions=\"0\"]) td.resource");
    let opened = b.wait_for(
        Duration::from_secs(10),
        "the process's decisions",
        "const c = document.querySelector('#events tr.child'); return c && c.dataset.action + ' ' + c.dataset.resource",
    );
    let opened = opened.as_str().unwrap_or_default();
    assert!(opened.contains("/etc/") || opened.starts_with("ProcessExec"), "{opened}");
    b.screenshot(&shots.join("1-live-events.png"));

    // Filtering narrows the table.
    b.type_into("#filter-text", "passwd");
    b.wait_for(
        Duration::from_secs(5),
        "only passwd rows",
        "const r = [...document.querySelectorAll('#events tbody tr')]; return r.length > 0 && r.every(t => t.dataset.resource.includes('passwd'))",
    );
    b.screenshot(&shots.join("2-filtered.png"));
    b.js(
        "const f = document.querySelector('#filter-text'); f.value = ''; f.dispatchEvent(new Event('input'))",
        json!([]),
    );

    // Record mode first, so the next change can be seen taking effect.
    b.click("#mode-record");
    b.wait_for(
        Duration::from_secs(5),
        "record mode",
        "return document.querySelector('#mode-current').textContent === 'record'",
    );

    // An edit with a deliberate error gets a marker at its line.
    let broken = "permit (principal, action, resource);\nforbid (principal, action == Action::\"FileOpenReadOnly\", resource == File::\"/etc/passwd\")\n";
    b.js(
        "const e = document.querySelector('#editor'); e.focus(); e.value = arguments[0]; e.dispatchEvent(new Event('input'))",
        json!([broken]),
    );
    let marker = b.wait_for(
        Duration::from_secs(10),
        "an error marker",
        "const m = document.querySelector('#markers li.error'); return m && m.textContent",
    );
    assert!(marker.as_str().unwrap().starts_with("2:") || marker.as_str().unwrap().starts_with("3:"), "{marker}");
    assert!(b.js("return document.querySelectorAll('#highlight .err-line').length", json!([])).as_u64() > Some(0));
    b.screenshot(&shots.join("3-error-marker.png"));
    // Fix it (typed, through real key events) and save.
    b.type_into("#editor", ";");
    let fixed = b.js("return document.querySelector('#editor').value", json!([]));
    assert!(fixed.as_str().unwrap().contains("/etc/passwd\")\n;") || fixed.as_str().unwrap().ends_with(";"), "{fixed}");
    b.wait_for(
        Duration::from_secs(10),
        "markers cleared",
        "return document.querySelectorAll('#markers li.error').length === 0 && 'ok'",
    );
    b.click("#save");
    b.wait_for(
        Duration::from_secs(10),
        "saved",
        "return document.querySelector('#notice').textContent.startsWith('Saved')",
    );
    b.wait_for(
        Duration::from_secs(10),
        "the new line listed",
        "return [...document.querySelectorAll('#lines li.forbid')].some(l => l.textContent.includes('/etc/passwd'))",
    );

    // Enforce: the next forbidden read arrives as denied.
    b.click("#mode-enforce");
    b.wait_for(
        Duration::from_secs(5),
        "enforce mode",
        "return document.querySelector('#mode-current').textContent === 'enforce'",
    );
    b.wait_for(
        Duration::from_secs(15),
        "a denied read",
        "return document.querySelector('#events tr[data-resource=\"/etc/passwd\"][data-decision=\"denied\"]')",
    );
    // A refusal stands out: its row has a background the allowed rows lack.
    let shades = b.js(
        "const bg = (s) => getComputedStyle(document.querySelector(s)).backgroundColor; \
         return [bg('#events tr.denied td'), bg('#events tr.allowed td')]",
        json!([]),
    );
    assert_ne!(shades[0], shades[1], "{shades}");
    b.js(
        "const f = document.querySelector('#filter-decision'); f.value = 'denied'; f.dispatchEvent(new Event('input'))",
        json!([]),
    );
    b.wait_for(
        Duration::from_secs(5),
        "only denied rows",
        "const r = [...document.querySelectorAll('#events tbody tr')]; return r.length > 0 && r.every(t => t.dataset.decision === 'denied')",
    );
    b.screenshot(&shots.join("4-enforced-denied.png"));
    #[allow(clippy::print_stderr, reason = "where the artifacts are, in the test's output")]
    {
        eprintln!("screenshots in {}", shots.display());
    }

    // "Allow this" on the denied read: a permit of the same scope as the
    // forbid would be dead in Cedar (a forbid wins), so it is refused, said.
    b.click("#events tr[data-resource=\"/etc/passwd\"] button.allow");
    let said = b.wait_for(
        Duration::from_secs(5),
        "the refusal",
        "const n = document.querySelector('#notice'); return n.textContent.includes('conflicts with') && n.textContent",
    );
    assert!(said.as_str().unwrap().contains("/etc/passwd"), "{said}");
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}

#[test]
fn an_agent_cannot_reach_the_control_ui_even_where_its_policy_allows_the_host() {
    if !require_docker("an_agent_cannot_reach_the_control_ui") {
        return;
    }
    let gateway = leash_testkit::host_address();
    let mut stack = Stack::new();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", leash_testkit::static_entry()).env("LEASH_LISTEN", "0.0.0.0:0").arg("--listen-public");
    });
    let status = stack.wait_healthy(Duration::from_secs(10));
    let port = status["ui"]["listen"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    // Another service on the host's address, which the policy allows: the
    // negative control.
    let other = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in other.incoming().flatten() {
            use std::io::Write;
            let _ = (&c).write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nother");
        }
    });
    let policy = stack.root().join("allow-host.cedar");
    std::fs::write(
        &policy,
        format!(
            "permit (principal, action, resource);\npermit (principal, action == Action::\"NetworkConnect\", resource) when {{ resource in Net::IpRange::\"{gateway}/32\" }};\n"
        ),
    )
    .unwrap();
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {gateway} {other_port}; echo; if printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n' | nc -w 5 {gateway} {port}; then echo REACHED; else echo REFUSED; fi"
    );
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("other"),
        "the host's other service is reachable: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("REFUSED") && !text.contains("REACHED"), "{text}");
    let refused = stack.events().into_iter().find(|e| {
        e["action"] == "NetworkConnect" && e["resource"] == format!("{gateway}:{port}") && e["decision"] == "deny"
    });
    let refused = refused.expect("the refusal is an event");
    assert_eq!(refused["policy_ids"][0], "leash:control-api", "{refused}");
}

#[test]
fn secrets_never_reach_api_payloads() {
    if !require_docker("secrets_never_reach_api_payloads") {
        return;
    }
    let stack = stack();
    const CANARY: &str = "leash-canary-7f3a9c21";
    let policy = stack.root().join("inject.cedar");
    std::fs::write(
        &policy,
        format!(
            "permit (principal, action, resource);\n@id(\"inject\")\npermit (principal, action == Action::\"HttpRewrite\", resource == Host::\"example.com\") when {{ context.header == \"X-Api-Key\" && context.value == \"{CANARY}\" }};\n"
        ),
    )
    .unwrap();
    let mut session = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "--policy",
            policy.to_str().unwrap(),
            "-e",
            &format!("API_TOKEN={CANARY}"),
            "--",
            "sh",
            "-c",
            "echo $API_TOKEN > /dev/null; cat /etc/hostname; sleep 30",
        ])
        .spawn()
        .unwrap();
    let (id, _) = stack.running_session(Duration::from_secs(15));
    let (addr, token) = stack.ui();
    let auth = format!("Bearer {token}");
    let get = |path: &str| leash_testkit::http::request(&addr, "GET", path, &[("Authorization", &auth)], b"");
    let snap = get(&format!("/api/policies?session={id}"));
    assert_eq!(snap.status, 200);
    assert!(!snap.text().contains(CANARY), "{}", snap.text());
    assert!(snap.json()["cedarFile"].as_str().unwrap().contains("[REDACTED]"), "{}", snap.text());
    for path in [
        format!("/api/events?session={id}"),
        format!("/api/policies/lines?session={id}"),
        format!("/suggest?session={id}"),
    ] {
        let r = get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.text().contains(CANARY), "{path}: {}", r.text());
    }
    // Saving the redacted text back would lose the secret: refused, and the
    // policy in force keeps its value.
    let body = json!({ "cedar": snap.json()["cedarFile"] }).to_string();
    let r = leash_testkit::http::request(
        &addr,
        "POST",
        &format!("/api/policies/persist?session={id}"),
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("leash-secret:env:NAME"), "{}", r.text());
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}

#[test]
fn a_denied_exec_is_answered_in_the_control_ui_by_its_signed_in_user_only() {
    if !require_docker("a_denied_exec_is_answered_in_the_control_ui")
        || !require_chromium("a_denied_exec_is_answered_in_the_control_ui")
    {
        return;
    }
    let stack = stack();
    let project = stack.project();
    let probe = project.join("probe.sh");
    std::fs::write(&probe, "#!/bin/sh\necho probe-ran\n").unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let policy = stack.root().join("ask.cedar");
    let rules = include_str!("../../../policies/examples/e17-system-programs-only.cedar");
    std::fs::write(&policy, rules).unwrap();
    // No terminal here: the question is said on stderr and answered in the UI.
    let session = stack
        .leash(&["--image", TEST_IMAGE, "--ask", "--policy", policy.to_str().unwrap(), "--", "sh", "-c", "./probe.sh"])
        .current_dir(&project)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (id, _) = stack.running_session(Duration::from_secs(15));

    // Without the token nothing is listed or answered.
    let (addr, _) = stack.ui();
    let r = leash_testkit::http::request(&addr, "GET", "/api/asks", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    let b = Browser::start();
    b.goto(&stack.login_url());
    let question = b.wait_for(
        Duration::from_secs(15),
        "the question shown",
        "const a = document.querySelector('#asks .ask'); return a && !a.closest('[hidden]') && a.textContent",
    );
    let question = question.as_str().unwrap();
    assert!(question.contains("ProcessExec") && question.contains("probe.sh"), "{question}");
    b.wait_for(
        Duration::from_secs(10),
        "the waiting exec in the event list",
        "return document.querySelector('#events tr[data-decision=\"asking\"][data-action=\"ProcessExec\"]')",
    );
    let r = leash_testkit::http::request(
        &addr,
        "POST",
        "/api/asks/ask-1",
        &[("Content-Type", "application/json")],
        json!({ "session": id, "choice": "once" }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 401, "an unauthenticated answer: {}", r.text());
    b.screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-ask.png"));
    b.click("#asks button[data-choice=\"once\"]");
    b.wait_for(
        Duration::from_secs(10),
        "answered",
        "return document.querySelector('#notice').textContent === 'Answered: once'",
    );
    let out = session.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "probe-ran\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied ProcessExec") && err.contains("answer it in the Control UI"), "{err}");
    let answered = stack.events().into_iter().find(|e| e["action"] == "ask.answer" && e["session"] == id.as_str());
    let answered = answered.expect("an ask.answer event");
    assert_eq!(
        (answered["details"]["answer"].as_str(), answered["details"]["by"].as_str()),
        (Some("once"), Some("control-ui"))
    );
    b.wait_for(Duration::from_secs(10), "the question gone", "return document.querySelector('#asks').hidden && 'gone'");
}
