//! The Control UI's HTTP API through a real leashd: its endpoints with the
//! Go leash's cases, and who may use it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use leash_testkit::http::{Reply, request};
use leash_testkit::{Stack, eventually, require_root};
use serde_json::{Value, json};

/// A running leashd's API address and token.
struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn of(stack: &Stack) -> Api {
        stack.wait_healthy(Duration::from_secs(10));
        let (addr, token) = stack.ui();
        Api { addr, token }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {}", self.token);
        request(
            &self.addr,
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    fn json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self.call(method, path, &body.to_string());
        (r.status, r.json())
    }
}

#[test]
fn the_api_refuses_strangers_and_admits_the_token_and_the_login_cookie() {
    if !require_root("the_api_refuses_strangers_and_admits_the_token_and_the_login_cookie") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    let api = Api::of(&stack);
    let mode = std::fs::metadata(stack.runtime_dir.join("api.token")).unwrap().permissions().mode() & 0o777;
    assert!(mode == 0o600 || mode == 0o640, "api.token mode {mode:o}");

    assert_eq!(request(&api.addr, "GET", "/healthz", &[], b"").text(), "ok");
    assert_eq!(request(&api.addr, "GET", "/health/policy", &[], b"").text(), "ready");
    // No credentials: nothing is read or changed.
    assert_eq!(request(&api.addr, "GET", "/api/policies", &[], b"").status, 401);
    assert_eq!(request(&api.addr, "GET", "/api/events", &[], b"").status, 401);
    assert_eq!(request(&api.addr, "GET", "/suggest", &[], b"").status, 401);
    let add = br#"permit (principal, action == Action::"FileOpen", resource == File::"/x");"#;
    assert_eq!(request(&api.addr, "POST", "/api/policies/add", &[], add).status, 401);
    let wrong = [("Authorization", "Bearer 0000")];
    assert_eq!(request(&api.addr, "POST", "/api/policies/add", &wrong, add).status, 401);
    // DNS rebinding: a name that is not this server.
    let auth = format!("Bearer {}", api.token);
    let evil_host = format!("evil.example:{}", api.addr.rsplit(':').next().unwrap());
    let r = request(&api.addr, "GET", "/api/policies", &[("Host", &evil_host), ("Authorization", &auth)], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    // A page of another origin, even with the token.
    for origin in ["http://evil.example", "null", "https://127.0.0.1"] {
        let r = request(&api.addr, "GET", "/api/policies", &[("Origin", origin), ("Authorization", &auth)], b"");
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
        let r = request(&api.addr, "POST", "/api/policies/add", &[("Origin", origin), ("Authorization", &auth)], add);
        assert_eq!(r.status, 403, "{origin}");
    }
    let r = request(&api.addr, "OPTIONS", "/api/policies", &[("Origin", "http://evil.example")], b"");
    assert!(r.header("access-control-allow-origin").is_none(), "{:?}", r.headers);
    let same = format!("http://{}", api.addr);
    let r = request(&api.addr, "GET", "/api/policies", &[("Origin", &same), ("Authorization", &auth)], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());

    // leash --open: a single-use code becomes an HttpOnly SameSite=Strict cookie.
    let url = stack.login_url();
    assert!(url.starts_with(&format!("http://{}/login?code=", api.addr)), "{url}");
    let path = url.trim_start_matches(&format!("http://{}", api.addr));
    let r = request(&api.addr, "GET", path, &[], b"");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.header("set-cookie").expect("a cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert_eq!(request(&api.addr, "GET", path, &[], b"").status, 401, "a code is good once");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = request(&api.addr, "GET", "/api/policies", &[("Cookie", &pair)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(request(&api.addr, "GET", "/api/policies", &[("Cookie", "leash_ui=forged")], b"").status, 401);
    // The page itself is served without credentials; it holds nothing.
    let page = request(&api.addr, "GET", "/", &[], b"");
    assert!(page.text().contains("<title>Leash</title>") && page.header("x-frame-options") == Some("DENY"));
}

#[test]
fn the_policy_endpoints_keep_the_go_leash_cases() {
    if !require_root("the_policy_endpoints_keep_the_go_leash_cases") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    let api = Api::of(&stack);

    let (code, snap) = api.json("GET", "/api/policies", Value::Null);
    assert_eq!(code, 200);
    assert_eq!(snap["enforcementMode"], "enforce");
    assert!(snap["cedarFile"].as_str().unwrap().contains("default-files"), "{snap}");
    assert!(snap["cedarBaseline"].as_str().unwrap().contains("default-network"));
    assert!(snap["active"]["lsm"].as_array().unwrap().iter().any(|r| r["operation"] == "net.connect"), "{snap}");

    // validate: positions for the editor's markers.
    let (code, v) = api.json(
        "POST",
        "/api/policies/validate",
        json!({ "cedar": "permit (principal, action, resource);\nforbid (principal, actoin, resource);" }),
    );
    assert_eq!(code, 200);
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 2, "{v}");
    assert!(v["errors"][0]["column"].as_u64().unwrap() > 0);
    let (_, v) = api.json(
        "POST",
        "/api/policies/validate",
        json!({ "cedar": "permit (principal, action, resource in Dir::\"/tmp\");" }),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["issues"].as_array().unwrap().iter().any(|i| i["code"] == "dir_missing_trailing_slash"), "{v}");

    // add, then a conflicting statement: 409; a broken one: 400 with its place.
    let allow = r#"permit (principal, action == Action::"NetworkConnect", resource == Host::"api.openai.com");"#;
    let r = api.call("POST", "/api/policies/add", allow);
    assert_eq!(r.status, 200, "{}", r.text());
    let deny = r#"forbid (principal, action == Action::"NetworkConnect", resource == Host::"api.openai.com");"#;
    let r = api.call("POST", "/api/policies/add", deny);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("conflicts with"), "{}", r.text());
    let r = api.call("POST", "/api/policies", &format!("{allow}\n{deny}"));
    assert_eq!(r.status, 409, "a runtime layer that contradicts itself: {}", r.text());
    let r = api.call("POST", "/api/policies/add", "permit (principal, action == Action::\"Nope\", resource);");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["errors"][0]["line"].as_u64().is_some(), "{}", r.text());
    assert_eq!(api.call("POST", "/api/policies/add", "").status, 400);
    assert_eq!(api.call("POST", "/api/policies/add", "{\"cedar\": \"\"}").json()["error"], "missing cedar field");

    // add-from-action: the Go mappings.
    let (code, snap) = api.json(
        "POST",
        "/api/policies/add-from-action",
        json!({ "effect": "forbid", "action": { "type": "file/write", "name": "/etc/shadow" } }),
    );
    assert_eq!(code, 200, "{snap}");
    assert!(
        snap["cedarRuntime"]
            .as_str()
            .unwrap()
            .contains(r#"forbid (principal, action == Action::"FileOpenReadWrite", resource == File::"/etc/shadow");"#)
    );
    let (code, e) = api.json(
        "POST",
        "/api/policies/add-from-action",
        json!({ "effect": "maybe", "action": { "type": "file/open", "name": "/x" } }),
    );
    assert_eq!((code, e["error"].as_str()), (400, Some("effect must be permit or forbid")));
    let (code, e) = api.json(
        "POST",
        "/api/policies/add-from-action",
        json!({ "effect": "permit", "action": { "type": "", "name": "/x" } }),
    );
    assert_eq!((code, e["error"].as_str()), (400, Some("action.type is required")));

    // lines: ids, effects, humanized text, statements.
    let (_, lines) = api.json("GET", "/api/policies/lines", Value::Null);
    let lines = lines["lines"].as_array().unwrap().clone();
    let shadow = lines.iter().find(|l| l["cedar"].as_str().unwrap().contains("/etc/shadow")).expect("the new line");
    assert_eq!(shadow["effect"], "forbid");
    assert_eq!(shadow["origin"], "runtime");
    assert!(shadow["humanized"].as_str().unwrap().starts_with("Deny write files"), "{shadow}");

    // PATCH: the Go cases, then an add by action and a remove by id.
    assert_eq!(api.call("PATCH", "/api/policies", "not json").status, 400);
    assert_eq!(api.json("PATCH", "/api/policies", json!({})).1["error"], "no changes provided");
    let (code, e) = api.json("PATCH", "/api/policies", json!({ "add": [{ "cedar": allow }], "applyMode": "shadow" }));
    assert_eq!((code, e["error"].as_str()), (400, Some("applyMode must be \"enforce\" or omitted")));
    let (code, e) = api.json("PATCH", "/api/policies", json!({ "add": [{}] }));
    assert_eq!((code, e["error"].as_str()), (400, Some("add entries require cedar or action")));
    let (code, e) = api.json("PATCH", "/api/policies", json!({ "remove": [{ "id": "no-such-policy" }] }));
    assert_eq!(code, 404, "{e}");
    let (code, snap) = api.json(
        "PATCH",
        "/api/policies",
        json!({ "add": [{ "effect": "permit", "action": { "type": "net/connect", "name": "https://pypi.org/simple" } }],
                "remove": [{ "id": shadow["id"] }] }),
    );
    assert_eq!(code, 200, "{snap}");
    let runtime = snap["cedarRuntime"].as_str().unwrap();
    assert!(runtime.contains("Host::\"pypi.org\"") && !runtime.contains("/etc/shadow"), "{runtime}");

    // delete: by statement, unknown → 404, neither → 400.
    let (code, _) = api.json("POST", "/api/policies/delete", json!({ "cedar": allow }));
    assert_eq!(code, 200);
    assert_eq!(api.json("DELETE", "/api/policies/delete", json!({ "id": "gone" })).0, 404);
    assert_eq!(api.json("POST", "/api/policies/delete", json!({})).1["error"], "id or cedar must be provided");

    // complete: what the cursor is in.
    let (code, c) = api.json(
        "POST",
        "/api/policies/complete",
        json!({ "cedar": "permit (principal, action == Act", "cursor": { "line": 1, "column": 33 } }),
    );
    assert_eq!(code, 200);
    let labels: Vec<&str> = c["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert!(labels.contains(&"Action::\"NetworkConnect\""), "{labels:?}");
    assert_eq!(c["items"][0]["range"]["start"]["column"], 30);
    let (code, c) =
        api.json("POST", "/api/policies/complete", json!({ "cedar": "// x", "cursor": { "line": 1, "column": 5 } }));
    assert_eq!((code, c["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (code, e) =
        api.json("POST", "/api/policies/complete", json!({ "cedar": "", "cursor": { "line": 0, "column": 1 } }));
    assert_eq!((code, e["error"]["message"].as_str()), (400, Some("cursor line and column must be positive")));
    assert_eq!(
        api.json(
            "POST",
            "/api/policies/complete",
            json!({ "cedar": "", "cursor": { "line": 1, "column": 1 }, "x": 1 })
        )
        .0,
        400
    );

    // persist with a body: it becomes the policy; the runtime layer is folded away.
    let whole = "permit (principal, action, resource);\n";
    let (code, snap) = api.json("POST", "/api/policies/persist", json!({ "cedar": whole }));
    assert_eq!(code, 200, "{snap}");
    assert_eq!(snap["cedarFile"], whole.trim_end());
    assert_eq!(snap["cedarRuntime"], "");
    // An invalid save keeps the policy in force.
    let (code, _) = api.json("POST", "/api/policies/persist", json!({ "cedar": "permit (" }));
    assert_eq!(code, 400);
    assert_eq!(api.json("GET", "/api/policies", Value::Null).1["cedarFile"], whole.trim_end());
    // A mode belongs to a session.
    assert_eq!(api.json("POST", "/api/policies/permit-all", Value::Null).0, 400);
    assert_eq!(api.json("POST", "/api/policies/mode", json!({ "mode": "record" })).0, 400);

    // Every change is in the event stream (policy.edit / policy.persist).
    let (_, events) = api.json("GET", "/api/events?action=policy.persist", Value::Null);
    assert!(!events["events"].as_array().unwrap().is_empty(), "{events}");
}

#[test]
fn the_websocket_sends_history_then_live_events_and_checks_origin() {
    if !require_root("the_websocket_sends_history_then_live_events_and_checks_origin") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    let api = Api::of(&stack);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/api", api.addr);
        // Another origin: refused before the upgrade.
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {}", api.token).parse().unwrap());
        req.headers_mut().insert("Origin", "http://evil.example".parse().unwrap());
        let err = tokio_tungstenite::connect_async(req).await.expect_err("a foreign origin is refused");
        assert!(err.to_string().contains("403"), "{err}");
        // No credentials: refused.
        let req = url.as_str().into_client_request().unwrap();
        let err = tokio_tungstenite::connect_async(req).await.expect_err("no credentials");
        assert!(err.to_string().contains("401"), "{err}");

        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {}", api.token).parse().unwrap());
        req.headers_mut().insert("Origin", format!("http://{}", api.addr).parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("the upgrade");
        let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
        let history: Vec<Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(history[0]["action"], "daemon.start", "{first}");
        assert_eq!(history[0]["event"], "daemon.start");
        assert!(history.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "oldest first");
        let instance = history[0]["instance_id"].clone();
        // A change made now arrives live, one event per frame.
        let r = api.call(
            "POST",
            "/api/policies/add",
            r#"permit (principal, action == Action::"FileOpen", resource == File::"/live");"#,
        );
        assert_eq!(r.status, 200);
        let live = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = ws.next().await.unwrap().unwrap();
                if let Ok(t) = m.into_text() {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["action"] == "policy.edit" {
                        return v;
                    }
                }
            }
        })
        .await
        .expect("the live event");
        assert_eq!(live["kind"], "policy");
        assert_eq!(live["instance_id"], instance);
        assert!(live["seq"].as_u64() > history.last().unwrap()["seq"].as_u64());
    });
    // The stream's followers are counted.
    eventually(Duration::from_secs(5), "the follower gone", || {
        (stack.status()?["events"]["subscribers"] == 0).then_some(())
    });
}

#[test]
fn leash_listen_must_name_leashds_address() {
    if !require_root("leash_listen_must_name_leashds_address") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    let api = Api::of(&stack);
    let out = stack.leash(&["--listen", "127.0.0.1:1", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen 127.0.0.1:1") && err.contains(&api.addr), "{err}");
    let out = stack.leash(&["--listen", "nonsense:x", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid listen port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // leashd never takes another port: a taken address is reported, not bumped.
    let mut other = Stack::new();
    let listen = api.addr.clone();
    other.start_leashd_with(|c| {
        c.env("LEASH_LISTEN", &listen);
    });
    let status = other.wait_healthy(Duration::from_secs(10));
    assert_eq!(status["ui"]["url"], "", "{status}");
    assert!(status["ui"]["error"].as_str().unwrap().contains(&format!("cannot listen on {listen}")), "{status}");
    let human = String::from_utf8_lossy(&other.leashctl(&["status"]).stdout).into_owned();
    assert!(human.contains("ui       failed: cannot listen on"), "{human}");
    // A non-loopback address needs its option.
    let mut third = Stack::new();
    third.start_leashd_with(|c| {
        c.env("LEASH_LISTEN", "0.0.0.0:0");
    });
    assert_eq!(third.wait_leashd(Duration::from_secs(10)), Some(64));
    assert!(third.leashd_log(0).contains("--listen-public"), "{}", third.leashd_log(0));
}
