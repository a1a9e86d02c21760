//! Events, sessions and status over HTTP, and the WebSocket `/api`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use leash_proto::v1 as pb;
use leash_proto::v1::manager_server::Manager;
use serde_json::{Value, json};

use super::{Ctx, as_admin, json_ok, status_error};

/// The newest history a WebSocket client gets first (the Go leash's bulk frame).
const HISTORY_EVENTS: usize = 2000;
/// …and at most this many bytes of it.
const HISTORY_BYTES: usize = 1_000_000;
/// Queued events written before one flush.
const SEND_BATCH: usize = 256;
/// Server pings this often.
const PING_EVERY: Duration = Duration::from_secs(30);

/// The Go leash's event name for one of ours.
fn go_event_name(e: &pb::Event) -> String {
    match e.action.as_str() {
        "FileOpen" => "file.open".into(),
        "FileOpenReadOnly" => "file.open:ro".into(),
        "FileOpenReadWrite" => "file.open:rw".into(),
        "ProcessExec" => "proc.exec".into(),
        "NetworkConnect" if leash_proto::event::kind_name(e.kind) == "http" => "http.request".into(),
        "NetworkConnect" => "net.send".into(),
        "McpCall" => "mcp.call".into(),
        a => a.to_owned(),
    }
}

/// One event as the API and the WebSocket carry it: ours (`action`,
/// `resource`, `decision`, `policies`, `details` — argv and MCP outcomes
/// included) with the Go leash's fields beside them (`event`, `exe`,
/// `path`, `addr`, `hostname`, `decision` as allowed/denied…).
pub fn event_json(e: &pb::Event, instance: &str) -> Value {
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(e.time_unix_nanos.max(0) as u64);
    let decision = leash_proto::event::decision_name(e.decision);
    let kind = leash_proto::event::kind_name(e.kind);
    let mut v = json!({
        "time": leash_core::time::rfc3339(time),
        "event": go_event_name(e),
        "seq": e.seq,
        "instance_id": instance,
        "session": e.session,
        "pid": e.pid,
        "exe": e.executable,
        "kind": kind,
        "action": e.action,
        "resource": e.resource,
        "mode": leash_proto::event::mode_name(e.mode),
        "decision": match decision { Some("allow") => "allowed", Some("deny") => "denied", _ => "" },
        "would_deny": e.would_deny,
        "policies": e.policy_ids,
        "details": e.details,
    });
    let m = v.as_object_mut().expect("an object");
    match kind {
        "file" | "exec" => {
            m.insert("path".into(), json!(e.resource));
        }
        "connect" | "http" => {
            m.insert("addr".into(), json!(e.resource));
        }
        _ => {}
    }
    for (from, to) in [("argv", "args"), ("host", "hostname"), ("name", "hostname"), ("method", "method")] {
        if let Some(x) = e.details.get(from) {
            m.entry(to).or_insert(json!(x));
        }
    }
    if kind == "mcp" {
        if let Some((tool, server)) = e.resource.split_once('@') {
            m.insert("tool".into(), json!(tool));
            m.insert("server".into(), json!(server));
        } else {
            m.insert("server".into(), json!(e.resource));
        }
    }
    v
}

/// `GET /api/events?session=&since=&action=&decision=&contains=&tail=`:
/// from the audit store, newest last.
pub(super) async fn list(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Response {
    let since = match q.get("since").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match leash_core::time::parse_rfc3339(s) {
            Some(t) => t,
            None => return super::error(StatusCode::BAD_REQUEST, format!("since: {s:?} is not an RFC 3339 time")),
        },
    };
    let tail = match q.get("tail").map(|t| t.parse::<u32>()) {
        None => 1000,
        Some(Ok(n)) => n,
        Some(Err(_)) => return super::error(StatusCode::BAD_REQUEST, "tail: not a number"),
    };
    let req = pb::EventsRequest {
        follow: false,
        tail,
        session: super::session_of(&q),
        since_unix_nanos: since,
        action: q.get("action").cloned().unwrap_or_default(),
        decision: q.get("decision").cloned().unwrap_or_default(),
        contains: q.get("contains").cloned().unwrap_or_default(),
    };
    match recorded(&ctx, req).await {
        Ok(events) => {
            json_ok(json!({ "events": events.iter().map(|e| event_json(e, &ctx.instance)).collect::<Vec<_>>() }))
        }
        Err(r) => r,
    }
}

/// The events a (non-following) query names, as `leashctl events` gets them.
pub(super) async fn recorded(ctx: &Ctx, req: pb::EventsRequest) -> Result<Vec<pb::Event>, Response> {
    let mut stream = ctx.manager.events(as_admin(req)).await.map_err(|s| status_error(&s))?.into_inner();
    let mut events = Vec::new();
    while let Some(Ok(e)) = tokio_stream::StreamExt::next(&mut stream).await {
        events.push(e);
    }
    Ok(events)
}

/// `GET /api/sessions`.
pub(super) async fn sessions(State(ctx): State<Ctx>) -> Response {
    match ctx.manager.list_sessions(as_admin(pb::ListSessionsRequest::default())).await {
        Ok(r) => json_ok(json!({ "sessions": r.into_inner().sessions.iter().map(session_json).collect::<Vec<_>>() })),
        Err(s) => status_error(&s),
    }
}

fn session_json(s: &pb::SessionInfo) -> Value {
    json!({
        "id": s.id,
        "owner_uid": s.owner_uid,
        "project": s.project,
        "command": s.command,
        "image": s.image,
        "container": s.container,
        "started": leash_core::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(s.started_unix_ms.max(0) as u64)),
        "state": s.state,
        "enforcement": s.enforcement,
        "host_address": s.host_address,
        "protect_host": !s.unprotected,
        "clients": s.clients,
        "ask_timeout_s": s.ask_timeout_s,
        "mcp_servers": s.mcp_servers,
    })
}

/// `GET /api/status`: the daemons, the event pipeline, and what this
/// kernel lets the sensor enforce (the tier panel).
pub(super) async fn status(State(ctx): State<Ctx>) -> Response {
    let s = match ctx.manager.status(as_admin(pb::StatusRequest {})).await {
        Ok(s) => s.into_inner(),
        Err(s) => return status_error(&s),
    };
    let capabilities = match ctx.manager.supervisor.channel(leash_core::Component::Sensor).await {
        Some(ch) => pb::sensor_client::SensorClient::new(ch).capabilities(pb::CapabilitiesRequest {}).await.ok(),
        None => None,
    }
    .map(|c| c.into_inner());
    let events = s.events.unwrap_or_default();
    json_ok(json!({
        "leashd": s.leashd.as_ref().map(|h| json!({ "version": h.version, "pid": h.pid, "rss_bytes": s.rss_bytes, "pss_bytes": s.pss_bytes })),
        "components": s.components.iter().map(|c| json!({
            "name": c.name,
            "state": leash_proto::state_name(c.state),
            "pid": c.pid,
            "restarts": c.restarts,
            "uptime_secs": c.uptime_secs,
            "detail": c.detail,
            "rss_bytes": c.rss_bytes,
            "pss_bytes": c.pss_bytes,
        })).collect::<Vec<_>>(),
        "sessions": s.sessions,
        "events": {
            "published": events.published,
            "dropped": events.dropped,
            "stored": events.stored,
            "store_failed": events.store_failed,
        },
        "sensor": capabilities.map(|c| json!({
            "tier": c.tier,
            "capabilities": c.capabilities.iter().map(|x| json!({
                "action": x.action, "mechanism": x.mechanism, "reason": x.reason,
            })).collect::<Vec<_>>(),
            "not_refused": c.gaps.iter().map(|g| json!({ "attempt": g.name, "why": g.value })).collect::<Vec<_>>(),
        })),
    }))
}

/// `/health/{component}`: 200 "ready" when it runs, else 503 "not ready"
/// (`/health/policy` is the Go leash's).
pub(super) async fn health(State(ctx): State<Ctx>, Path(component): Path<String>) -> Response {
    let views = ctx.manager.supervisor.snapshot().await;
    let want = format!("leash-{component}");
    let Some(v) = views.iter().find(|v| v.component.binary() == want) else {
        return (StatusCode::NOT_FOUND, format!("no component {component:?}\n")).into_response();
    };
    if v.state == crate::supervisor::State::Running {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// `GET /api` (WebSocket): first one text frame of NDJSON history (the
/// newest 2,000 events within 1 MB, oldest first; `?session=` narrows),
/// then one event per frame, live. A client too slow for its queue loses
/// events, counted in `leashctl status`.
pub(super) async fn websocket(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let session = super::session_of(&q);
    ws.max_message_size(1 << 20).on_upgrade(move |socket| stream(ctx, session, socket))
}

async fn stream(ctx: Ctx, session: String, mut socket: WebSocket) {
    // Subscribed before the history frame is sent: nothing falls between.
    let (history, live) = ctx.manager.hub.subscribe(0, true);
    let Some(mut live) = live else { return };
    let keep = |s: &std::sync::Arc<crate::hub::Stamped>| {
        session.is_empty() || s.event.session.as_deref().is_some_and(|id| id.starts_with(&session))
    };
    // Serialized once per event, whichever follower needs it first.
    let json = |s: &std::sync::Arc<crate::hub::Stamped>| {
        s.json.get_or_init(|| event_json(&s.to_proto(), &ctx.instance).to_string().into()).clone()
    };
    let mut lines: Vec<std::sync::Arc<str>> = Vec::new();
    let mut bytes = 0;
    for s in history.iter().rev() {
        if !keep(s) {
            continue;
        }
        let line = json(s);
        if lines.len() >= HISTORY_EVENTS || bytes + line.len() + 1 > HISTORY_BYTES {
            break;
        }
        bytes += line.len() + 1;
        lines.push(line);
    }
    lines.reverse();
    let mut frame = lines.iter().map(|l| &**l).collect::<Vec<&str>>().join("\n");
    if !frame.is_empty() {
        frame.push('\n');
    }
    if socket.send(Message::Text(frame.into())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            () = ctx.manager.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            m = socket.recv() => match m {
                // Client messages are read and ignored (the Go leash's).
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            e = live.recv() => match e {
                Some(first) => {
                    // What is queued already goes out with one flush
                    // (one event per frame, as before).
                    let mut batch = vec![first];
                    while batch.len() < SEND_BATCH {
                        match live.try_recv() {
                            Ok(s) => batch.push(s),
                            Err(_) => break,
                        }
                    }
                    for s in batch.iter().filter(|s| keep(s)) {
                        if socket.feed(Message::Text((&*json(s)).into())).await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}
