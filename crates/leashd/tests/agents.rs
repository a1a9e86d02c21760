//! The five agents' real command-line tools (the agents image: claude,
//! codex, gemini, qwen, opencode from npm, pinned) in real sessions, each
//! given a real-looking API key in the client's environment. Their vendors'
//! API hosts are answered by a local HTTPS stand-in on the host side of the
//! session network (`--add-host NAME:IP`; its CA reaches the proxy through
//! `LEASH_UPSTREAM_CA`), which records every request and answers the least
//! each API needs for the tool to print an answer and exit 0.
//!
//! For each agent: it exits 0 printing the stand-in's answer; the container
//! holds only a decoy of the key (same prefix, same length); the stand-in
//! receives the real key in the vendor's header, from the default policy's
//! `SecretUse` permits, and only the decoy anywhere else; the real key is
//! in neither `docker inspect` of the session's container, its processes'
//! environments, nor `leashctl events --json`; and every host the agent
//! contacted is one the stand-in serves.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use leash_testkit::{Stack, eventually, require_docker, require_image, upstream};
use serde_json::{Value, json};

const IMAGE: &str = "leash-agents:latest";

/// Every name the stand-in answers for.
const NAMES: [&str; 6] = [
    "api.anthropic.com",
    "api.openai.com",
    "chatgpt.com",
    "generativelanguage.googleapis.com",
    "dashscope.aliyuncs.com",
    "registry.npmjs.org",
];

/// An API key as the vendor issues it: a prefix, then random characters.
struct Key {
    var: &'static str,
    prefix: &'static str,
    len: usize,
    alphabet: &'static str,
}

const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const ANTHROPIC: Key = Key { var: "ANTHROPIC_API_KEY", prefix: "sk-ant-api03-", len: 95, alphabet: URLSAFE };
const OPENAI: Key = Key { var: "OPENAI_API_KEY", prefix: "sk-proj-", len: 156, alphabet: URLSAFE };
const GEMINI: Key = Key { var: "GEMINI_API_KEY", prefix: "AIza", len: 35, alphabet: URLSAFE };
const DASHSCOPE: Key = Key { var: "DASHSCOPE_API_KEY", prefix: "sk-", len: 32, alphabet: "0123456789abcdef" };

/// One agent's run.
struct Agent {
    /// The command's name (leash recognises the agent by it).
    name: &'static str,
    /// The keys leash takes from the client's environment for it.
    keys: &'static [&'static Key],
    /// Where the key it uses must arrive: its variable, the host, the header.
    uses: (&'static str, &'static str, &'static str),
    /// `-e` settings: no telemetry, no onboarding.
    env: &'static [&'static str],
    /// Shell run in the container before the agent (as its user would).
    setup: &'static str,
    /// The agent's arguments: one prompt, no terminal.
    args: &'static [&'static str],
    /// Every host it may contact (given to `--add-host`).
    hosts: &'static [&'static str],
}

const AGENTS: [Agent; 5] = [
    Agent {
        name: "claude",
        keys: &[&ANTHROPIC],
        uses: ("ANTHROPIC_API_KEY", "api.anthropic.com", "x-api-key"),
        env: &["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"],
        setup: "",
        args: &["-p", "hello"],
        hosts: &["api.anthropic.com"],
    },
    Agent {
        name: "codex",
        keys: &[&OPENAI],
        uses: ("OPENAI_API_KEY", "api.openai.com", "authorization"),
        env: &[],
        // codex reads no key from its environment: its API-key login.
        setup: "printenv OPENAI_API_KEY | /usr/local/bin/codex login --with-api-key >/dev/null 2>&1",
        // Model discovery stays on: it sends the key to chatgpt.com, where
        // only the decoy may go. codex asks for the Responses API over a
        // WebSocket first (the stand-in accepts, as api.openai.com does);
        // leash-proxy does not carry upgraded connections, so after six
        // failed attempts (about 6 s) codex falls back to HTTPS.
        args: &[
            "exec",
            "--skip-git-repo-check",
            "-c",
            "analytics.enabled=false",
            "-c",
            "features.plugins=false",
            "-c",
            "features.apps=false",
            "hello",
        ],
        hosts: &["api.openai.com", "chatgpt.com"],
    },
    Agent {
        name: "gemini",
        keys: &[&GEMINI],
        uses: ("GEMINI_API_KEY", "generativelanguage.googleapis.com", "x-goog-api-key"),
        env: &["GEMINI_CLI_TRUST_WORKSPACE=true", "GEMINI_CLI_SYSTEM_SETTINGS_PATH=PROJECT/gemini-settings.json"],
        setup: "",
        // A model named: no routing request before the answer.
        args: &["-m", "gemini-2.5-flash", "-p", "hello"],
        hosts: &["generativelanguage.googleapis.com"],
    },
    Agent {
        name: "qwen",
        keys: &[&DASHSCOPE],
        uses: ("DASHSCOPE_API_KEY", "dashscope.aliyuncs.com", "authorization"),
        env: &["QWEN_CODE_SYSTEM_SETTINGS_PATH=PROJECT/qwen-settings.json"],
        setup: "",
        args: &["-p", "hello"],
        hosts: &["dashscope.aliyuncs.com"],
    },
    Agent {
        name: "opencode",
        keys: &[&ANTHROPIC, &OPENAI, &GEMINI, &DASHSCOPE],
        uses: ("ANTHROPIC_API_KEY", "api.anthropic.com", "x-api-key"),
        // opencode writes opencode.jsonc and .gitignore into its config dir
        // at every start, and protect-host forbids writing anything under
        // `*/.config/opencode/`: its config dir moves out of that path.
        env: &["OPENCODE_DISABLE_MODELS_FETCH=1", "OPENCODE_DISABLE_AUTOUPDATE=1", "XDG_CONFIG_HOME=/tmp/config"],
        setup: "",
        args: &["run", "-m", "anthropic/claude-sonnet-4-5", "hello"],
        // It looks up its plugin package on npm (no key goes there).
        hosts: &["api.anthropic.com", "registry.npmjs.org"],
    },
];

/// gemini's system settings: no usage statistics (play.googleapis.com).
const GEMINI_SETTINGS: &str = r#"{"privacy": {"usageStatisticsEnabled": false}}"#;

/// qwen's system settings: DashScope's OpenAI-compatible API with the key
/// from DASHSCOPE_API_KEY, and no usage statistics (an aliyuncs.com RUM host).
const QWEN_SETTINGS: &str = r#"{
  "security": {"auth": {"selectedType": "openai"}},
  "model": {"name": "qwen3.6-plus"},
  "modelProviders": {"openai": [{"id": "qwen3.6-plus", "name": "qwen3.6-plus",
    "baseUrl": "https://dashscope.aliyuncs.com/compatible-mode/v1", "envKey": "DASHSCOPE_API_KEY"}]},
  "privacy": {"usageStatisticsEnabled": false}
}"#;

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
struct Seen {
    host: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The stand-in's answer.
    status: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn mentions(&self, needle: &str) -> bool {
        self.path.contains(needle) || self.headers.iter().any(|(_, v)| v.contains(needle))
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// What the stand-in says, so the test can find it in an agent's output.
fn answer_text(host: &str) -> String {
    format!("answer-from-{host}")
}

fn sse(events: &[(&str, Value)]) -> String {
    events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect()
}

/// Anthropic's Messages API: one text block, as a stream or whole.
fn anthropic(req: &Value, text: &str) -> (u16, &'static str, String) {
    let model = req["model"].as_str().unwrap_or("claude");
    let message = |content: Value, stop: Value| {
        json!({"id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}})
    };
    if req["stream"] != json!(true) {
        return (
            200,
            "application/json",
            message(json!([{"type": "text", "text": text}]), json!("end_turn")).to_string(),
        );
    }
    let body = sse(&[
        ("message_start", json!({"type": "message_start", "message": message(json!([]), Value::Null)})),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": 1}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    (200, "text/event-stream", body)
}

/// OpenAI's Responses API, streamed: one output message.
fn openai_responses(req: &Value, text: &str) -> (u16, &'static str, String) {
    let item = json!({"type": "message", "id": "msg_standin", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let response = json!({"id": "resp_standin", "object": "response", "created_at": 1, "status": "completed",
        "model": req["model"].as_str().unwrap_or("gpt"), "output": [item],
        "usage": {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 1,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 2}});
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    let body = sse(&[
        ("response.created", json!({"type": "response.created", "sequence_number": 0, "response": created})),
        (
            "response.output_item.done",
            json!({"type": "response.output_item.done", "sequence_number": 1, "output_index": 0, "item": item}),
        ),
        ("response.completed", json!({"type": "response.completed", "sequence_number": 2, "response": response})),
    ]);
    (200, "text/event-stream", body)
}

/// Gemini's generateContent (whole) and streamGenerateContent (SSE).
fn gemini(path: &str, text: &str) -> (u16, &'static str, String) {
    let candidate = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}});
    if path.contains(":streamGenerateContent") {
        (200, "text/event-stream", format!("data: {candidate}\r\n\r\n"))
    } else {
        (200, "application/json", candidate.to_string())
    }
}

/// OpenAI-compatible chat completions (DashScope's compatible mode).
fn chat_completions(req: &Value, text: &str) -> (u16, &'static str, String) {
    let model = req["model"].as_str().unwrap_or("qwen");
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    if req["stream"] != json!(true) {
        let whole = json!({"id": "chatcmpl-standin", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        return (200, "application/json", whole.to_string());
    }
    let usage = json!({"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    let chunks =
        [chunk(json!({"role": "assistant", "content": text}), Value::Null), chunk(json!({}), json!("stop")), usage];
    let body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    (200, "text/event-stream", format!("{body}data: [DONE]\n\n"))
}

/// The least each API needs; 404 for anything else.
fn respond(seen: &Seen, body: &[u8]) -> (u16, &'static str, String) {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = answer_text(&seen.host);
    let path = seen.path.as_str();
    match (seen.host.as_str(), seen.method.as_str()) {
        ("api.anthropic.com", "POST") if path.starts_with("/v1/messages") => anthropic(&req, &text),
        ("api.openai.com", "POST") if path.starts_with("/v1/responses") => openai_responses(&req, &text),
        ("generativelanguage.googleapis.com", "POST") => gemini(path, &text),
        (h, "POST") if h.ends_with(".aliyuncs.com") && path.ends_with("/chat/completions") => {
            chat_completions(&req, &text)
        }
        _ => (404, "application/json", r#"{"error":{"message":"not served by the stand-in"}}"#.to_owned()),
    }
}

/// The Responses API over a WebSocket, as api.openai.com serves it: each
/// `response.create` message is answered with the stream's events, one
/// message each.
async fn responses_websocket(upgrade: hyper::upgrade::OnUpgrade, text: String) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Ok(io) = upgrade.await else { return };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let req: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        let (_, _, body) = openai_responses(&req, &text);
        for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if ws.send(Message::text(data.to_owned())).await.is_err() {
                return;
            }
        }
    }
}

/// The stand-in: records the request and answers it.
async fn handle(mut req: Request<hyper::body::Incoming>, log: Log) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default().to_owned();
    let seen = Seen {
        host,
        method: req.method().to_string(),
        path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        status: 0,
    };
    let websocket = seen.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if websocket && seen.host == "api.openai.com" && seen.path.starts_with("/v1/responses") {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
            seen.header("sec-websocket-key").unwrap_or_default().as_bytes(),
        );
        tokio::spawn(responses_websocket(hyper::upgrade::on(&mut req), answer_text(&seen.host)));
        log.lock().unwrap().push(Seen { status: 101, ..seen });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut().insert("connection", "Upgrade".parse().unwrap());
        r.headers_mut().insert("sec-websocket-accept", accept.parse().unwrap());
        return r;
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (status, content_type, out) = respond(&seen, &body);
    log.lock().unwrap().push(Seen { status, ..seen });
    let mut r = Response::new(Full::new(Bytes::from(out)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", content_type.parse().unwrap());
    r
}

fn random(len: usize, alphabet: &str) -> String {
    let alphabet = alphabet.as_bytes();
    // Rejection sampling: every character equally likely.
    let limit = 256 - 256 % alphabet.len();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    let mut out = String::with_capacity(len);
    let mut byte = [0u8; 1];
    while out.len() < len {
        std::io::Read::read_exact(&mut urandom, &mut byte).unwrap();
        if usize::from(byte[0]) < limit {
            out.push(char::from(alphabet[usize::from(byte[0]) % alphabet.len()]));
        }
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one agent in a session and checks it; panics saying what failed.
fn run(stack: &Stack, gw: &str, log: &Log, agent: &Agent) {
    let project = stack.project();
    let (seen_file, go_file) =
        (project.join(format!("seen-{}", agent.name)), project.join(format!("go-{}", agent.name)));
    // A wrapper named as the agent (leash knows the agent by the command's
    // file name): it writes what the container holds, waits until the test
    // has looked at the container, then runs the agent.
    let wrapper = project.join("bin").join(agent.name);
    std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    let vars: Vec<&str> = agent.keys.iter().map(|k| k.var).collect();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor k in {vars}; do printf '%s=%s\\n' \"$k\" \"$(printenv \"$k\")\"; done > {seen}.tmp\n\
             mv {seen}.tmp {seen}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n{setup}\nexec /usr/local/bin/{name} \"$@\"\n",
            vars = vars.join(" "),
            seen = seen_file.display(),
            go = go_file.display(),
            setup = agent.setup,
            name = agent.name,
        ),
    )
    .unwrap();
    leash_testkit::set_mode(&wrapper, 0o755);

    let reals: Vec<(&Key, String)> =
        agent.keys.iter().map(|k| (*k, format!("{}{}", k.prefix, random(k.len, k.alphabet)))).collect();
    let mut args: Vec<String> = vec!["--image".into(), IMAGE.into()];
    for host in agent.hosts {
        args.extend(["--add-host".into(), format!("{host}:{gw}")]);
    }
    for e in agent.env {
        args.extend(["-e".into(), e.replace("PROJECT", &project.display().to_string())]);
    }
    args.push("--".into());
    args.push(wrapper.display().to_string());
    args.extend(agent.args.iter().map(|a| (*a).to_owned()));
    let mut leash = stack.leash(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for k in [&ANTHROPIC, &OPENAI, &GEMINI, &DASHSCOPE] {
        leash.env_remove(k.var);
    }
    for (k, real) in &reals {
        leash.env(k.var, real);
    }
    let child = leash.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });

    // What the container holds: decoys of the keys' shape.
    let seen = eventually(Duration::from_secs(60), &format!("{}'s session to start", agent.name), || {
        std::fs::read_to_string(&seen_file).ok()
    });
    let container = text(
        &Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=leash.instance={}", stack.instance),
                "--filter",
                "status=running",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert!(!container.is_empty() && !container.contains('\n'), "one running session container: {container:?}");
    let inspect = text(&Command::new("docker").args(["inspect", &container]).output().unwrap().stdout);
    let environ = leash_testkit::container_environ(&container);
    let inspected: Value = serde_json::from_str(&inspect).unwrap();
    let session = inspected[0]["Config"]["Labels"]["leash.session"].as_str().unwrap_or_default().to_owned();
    std::fs::write(&go_file, "").unwrap();
    let mut decoys = Vec::new();
    for (k, real) in &reals {
        let decoy = seen
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{}=", k.var)))
            .unwrap_or_else(|| panic!("{}: the container's {} is unknown: {seen}", agent.name, k.var))
            .to_owned();
        assert!(
            decoy != *real && decoy.len() == real.len() && decoy.starts_with(k.prefix),
            "{}: the container's {} is not a decoy of the key's shape: {decoy:?} for a key of {} characters starting {:?}",
            agent.name,
            k.var,
            real.len(),
            k.prefix
        );
        assert!(!inspect.contains(real.as_str()), "{}: the real {} is in `docker inspect`", agent.name, k.var);
        assert!(inspect.contains(&decoy), "{}: `docker inspect` shows the decoy of {}", agent.name, k.var);
        assert!(!environ.contains(real.as_str()), "{}: the real {} is in the container's processes", agent.name, k.var);
        decoys.push((k.var, real.clone(), decoy));
    }

    // The agent answers and exits 0.
    let out = rx
        .recv_timeout(leash_testkit::patience(Duration::from_secs(180)))
        .unwrap_or_else(|_| panic!("{} did not finish within 180 s", agent.name))
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let (var, host, header) = agent.uses;
    assert!(
        out.status.code() == Some(0) && stdout.contains(&answer_text(host)),
        "{} exited {:?} without the stand-in's answer\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        agent.name,
        out.status.code()
    );

    // The stand-in got the real key in the vendor's header, and the decoy
    // wherever else a key travelled.
    let requests: Vec<Seen> = std::mem::take(&mut *log.lock().unwrap());
    let summary: Vec<String> =
        requests.iter().map(|r| format!("{} {} {} {}", r.method, r.host, r.path, r.status)).collect();
    let (_, real, decoy) = decoys.iter().find(|(v, _, _)| *v == var).unwrap();
    let carried: Vec<&Seen> = requests.iter().filter(|r| r.host == host && r.header(header).is_some()).collect();
    assert!(!carried.is_empty(), "{}: no request to {host} carried {header}: {summary:?}", agent.name);
    for r in &carried {
        let value = r.header(header).unwrap();
        assert!(
            value == real.as_str() || value == format!("Bearer {real}"),
            "{}: {} {}{} carried {header}: {value:?}, not the real {var}",
            agent.name,
            r.method,
            r.host,
            r.path
        );
    }
    for (v, real, decoy) in &decoys {
        // Only the key the agent uses may arrive real, and only at its host.
        let allowed = (*v == var).then_some(host);
        for r in &requests {
            let at = Some(r.host.as_str());
            assert!(!r.mentions(real) || at == allowed, "{}: the real {v} reached {} {}", agent.name, r.host, r.path);
            assert!(
                !r.mentions(decoy) || at != allowed,
                "{}: the decoy of {v} reached {} {}",
                agent.name,
                r.host,
                r.path
            );
        }
    }
    let elsewhere: BTreeSet<&str> = requests.iter().filter(|r| r.mentions(decoy)).map(|r| r.host.as_str()).collect();

    // Events: every host is one the stand-in serves, the key's use is
    // named (never its value), and no real key is anywhere.
    let events_text = text(&stack.leashctl(&["events", "--json"]).stdout);
    for (v, real, _) in &decoys {
        assert!(!events_text.contains(real.as_str()), "{}: the real {v} is in `leashctl events --json`", agent.name);
    }
    let events: Vec<Value> = events_text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let http: Vec<&Value> = events.iter().filter(|e| e["kind"] == "http" && e["session"] == session.as_str()).collect();
    let contacted: BTreeSet<String> = http
        .iter()
        .filter(|e| e["action"] == "NetworkConnect")
        .filter_map(|e| e["resource"].as_str())
        .map(|r| r.rsplit_once(':').map_or(r, |(h, _)| h).to_owned())
        .collect();
    assert!(
        contacted.iter().all(|h| agent.hosts.contains(&h.as_str())),
        "{} contacted hosts the stand-in does not serve: {contacted:?}",
        agent.name
    );
    let used = http
        .iter()
        .find(|e| {
            e["resource"] == format!("{host}:443") && e["details"]["secrets"].as_str().is_some_and(|s| s.contains(var))
        })
        .unwrap_or_else(|| panic!("{}: no event says {var} was used at {host}: {http:?}", agent.name));
    #[allow(clippy::print_stderr, reason = "what each agent did, for the test's log")]
    {
        eprintln!(
            "{}: exit 0; contacted {contacted:?}; used {} by {}; the decoy went to {elsewhere:?}; requests {summary:?}",
            agent.name,
            used["details"]["secrets"].as_str().unwrap_or_default(),
            used["details"]["secret_policies"].as_str().unwrap_or_default()
        );
    }
}

#[test]
fn the_agents_reach_their_apis_through_the_proxy_with_decoys() {
    let name = "the_agents_reach_their_apis_through_the_proxy_with_decoys";
    if !require_docker(name) || !require_image(name, IMAGE) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stack = Stack::new();
    // The vendors' stand-in: HTTPS on the host's port 443, for every name.
    let (tls, upstream_ca) = upstream::tls(stack.root(), &NAMES);
    let log: Log = Arc::default();
    let handler_log = log.clone();
    upstream::serve(&rt, 443, Some(tls), Arc::new(move |r| Box::pin(handle(r, handler_log.clone()))));
    let gw = leash_testkit::host_address();
    // The default policy, plus the administrator's permit for the host's
    // address, where the stand-in listens (the host's own addresses are
    // refused unless a policy names them).
    let policy_d = stack.root().join("etc-leash").join("policy.d");
    std::fs::create_dir_all(&policy_d).unwrap();
    std::fs::write(
        policy_d.join("10-stand-in.cedar"),
        format!(
            "@id(\"stand-in\")\npermit (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"{gw}/32\");\n"
        ),
    )
    .unwrap();
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).env("LEASH_UPSTREAM_CA", &upstream_ca);
    });
    stack.wait_healthy(Duration::from_secs(10));
    std::fs::write(stack.project().join("gemini-settings.json"), GEMINI_SETTINGS).unwrap();
    std::fs::write(stack.project().join("qwen-settings.json"), QWEN_SETTINGS).unwrap();

    // Every agent runs; the failures are reported together.
    let mut failures = Vec::new();
    // `LEASH_TEST_AGENTS=codex,qwen` runs only those.
    let only = std::env::var("LEASH_TEST_AGENTS").unwrap_or_default();
    for agent in AGENTS.iter().filter(|a| only.is_empty() || only.split(',').any(|o| o == a.name)) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&stack, &gw, &log, agent))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{}: {why}", agent.name));
            // A session left waiting must not meet the next agent's.
            let left = stack.containers();
            if !left.is_empty() {
                let _ = Command::new("docker").args(["rm", "-f"]).args(&left).output();
            }
        }
        log.lock().unwrap().clear();
    }
    assert!(failures.is_empty(), "{}\n--- leashd's log\n{}", failures.join("\n\n"), stack.leashd_log(0));
}
