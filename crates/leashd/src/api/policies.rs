//! `/api/policies…` and `/suggest`: the Go leash's endpoints over
//! leash-policy's Cedar. `?session=ID` names a session's policy; without it
//! a change applies to the default policy for new sessions.

#![allow(clippy::result_large_err, reason = "handlers answer with their errors: a Response either way")]

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use leash_proto::v1 as pb;
use leash_proto::v1::manager_server::Manager;
use serde_json::{Value, json};

use super::{Ctx, as_admin, bodies, error, json_ok, session_of, status_error, suggest};

type Q = Query<HashMap<String, String>>;

/// The policy leashd starts new sessions with when nothing else is given.
const BASELINE: &str = include_str!("../../../../policies/default.cedar");

/// The Go leash's `extractCedar`: `{"cedar": "…"}` or the raw body. Text
/// holding a redacted secret (as the snapshot shows it) is refused: saving it
/// would replace the secret with the marker.
fn cedar_of(headers: &HeaderMap, body: &Bytes) -> Result<String, Response> {
    let text = bodies::cedar(super::header_str(headers, "content-type"), body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    not_redacted(text)
}

/// [`cedar_of`] for a body that may be left empty (`None`).
fn optional_cedar_of(headers: &HeaderMap, body: &Bytes) -> Result<Option<String>, Response> {
    match bodies::optional_cedar(super::header_str(headers, "content-type"), body) {
        Ok(Some(text)) => not_redacted(text).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, e)),
    }
}

fn not_redacted(text: String) -> Result<String, Response> {
    if text.contains(crate::hub::REDACTED) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "the policy holds {} where a secret was: write the value as leash-secret:env:NAME or leash-secret:file:/path",
                crate::hub::REDACTED
            ),
        ));
    }
    Ok(text)
}

fn error_json(e: &pb::PolicyError) -> Value {
    json!({
        "file": e.file, "line": e.line, "column": e.column, "snippet": e.snippet,
        "message": e.message, "suggestion": e.suggestion,
    })
}

fn lint_json(l: &pb::PolicyLint) -> Value {
    json!({ "policyId": l.policy, "severity": l.severity, "code": l.code, "message": l.message, "location": l.location })
}

/// A refused change: 409 for a conflict, 404 for a statement that is not
/// there, else 400 — with every error's place.
fn refused(errors: &[pb::PolicyError], conflict: bool) -> Response {
    let first = errors.first().map(|e| e.message.clone()).unwrap_or_else(|| "the policy was refused".into());
    let status = if conflict {
        StatusCode::CONFLICT
    } else if first.contains("not found") {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, axum::Json(json!({ "error": first, "errors": errors.iter().map(error_json).collect::<Vec<_>>() })))
        .into_response()
}

/// The Go leash's policy snapshot, with ours beside it: the mode, each
/// layer's Cedar, the compiled rules (`active`) and the policy lines.
async fn snapshot(ctx: &Ctx, session: &str) -> Result<Value, Response> {
    let show = ctx.manager.policy_show(as_admin(pb::ShowRequest { session: session.to_owned() })).await;
    let show = show.map_err(|s| status_error(&s))?.into_inner();
    let tables = ctx
        .manager
        .policy_tables(as_admin(pb::TablesRequest { session: session.to_owned(), principal: String::new() }))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let admin: Vec<String> =
        crate::session::admin_policies(&ctx.manager.sessions.system_config()).into_iter().map(|s| s.name).collect();
    let join = |keep: &dyn Fn(&pb::PolicySource) -> bool| {
        show.sources.iter().filter(|s| keep(s)).map(|s| s.text.trim_end()).collect::<Vec<_>>().join("\n\n")
    };
    // A literal value a policy injects is one of the session's secrets.
    let hub = &ctx.manager.hub;
    let session = &full_id(ctx, session);
    let runtime = hub.redact_text(session, &join(&|s| s.name == "runtime"));
    let layered = |s: &pb::PolicySource| {
        s.name == "runtime" || s.name == leash_core::PROTECT_HOST_LAYER || admin.contains(&s.name)
    };
    let file = hub.redact_text(session, &join(&|s| !layered(s)));
    let admin_text = hub.redact_text(session, &join(&|s| admin.contains(&s.name)));
    let protect_text = join(&|s| s.name == leash_core::PROTECT_HOST_LAYER);
    Ok(json!({
        "session": session,
        "mode": show.mode,
        "enforcementMode": if show.mode == "record" { "permit-all" } else { "enforce" },
        "cedarRuntime": runtime,
        "cedarFile": file,
        "cedarAdmin": admin_text,
        // The protect-host layer: on unless the session's user turned it off.
        "cedarProtectHost": protect_text,
        "cedarBaseline": BASELINE,
        "generation": tables.generation,
        "active": { "lsm": rule_views(&tables), "http": tables.rewrites.iter().map(|r| json!({
            "host": r.host, "header": r.header, "value": "(redacted)",
            "rule": format!("allow http.rewrite {} header:{}:(redacted)", r.host, r.header),
        })).collect::<Vec<_>>() },
        "lines": redacted_lines(ctx, session, &show.policies),
        "lints": show.lints.iter().map(lint_json).collect::<Vec<_>>(),
    }))
}

/// The compiled tables as the Go leash's rule views.
fn rule_views(t: &pb::DecisionTables) -> Vec<Value> {
    let reasons = |v: &Option<pb::Verdict>| {
        v.as_ref().and_then(|v| t.reasons.get(v.reason as usize)).map(|r| r.ids.clone()).unwrap_or_default()
    };
    let allow = |v: &Option<pb::Verdict>| if v.as_ref().is_some_and(|v| v.allow) { "allow" } else { "deny" };
    let mut out = Vec::new();
    for f in &t.files {
        let op = match f.action.as_str() {
            "open" => "file.open",
            "read" => "file.open:ro",
            "write" => "file.open:rw",
            _ => "proc.exec",
        };
        for e in f.exact.iter().chain(&f.prefixes) {
            out.push(json!({
                "action": allow(&e.verdict), "operation": op, "target": e.path, "path": e.path,
                "rule": format!("{} {op} {}", allow(&e.verdict), e.path), "policies": reasons(&e.verdict),
            }));
        }
    }
    if let Some(n) = &t.net {
        for e in n.exact.iter().chain(&n.ranges) {
            let mut target = e.addr.clone();
            if n.ranges.iter().any(|r| std::ptr::eq(r, e)) {
                target.push_str(&format!("/{}", e.prefix));
            }
            if e.port != 0 {
                target.push_str(&format!(":{}", e.port));
            }
            out.push(json!({
                "action": allow(&e.verdict), "operation": "net.connect", "target": target, "ip": e.addr,
                "port": e.port, "rule": format!("{} net.send {target}", allow(&e.verdict)), "policies": reasons(&e.verdict),
            }));
        }
    }
    if let Some(h) = &t.hosts {
        for e in h.exact.iter().chain(&h.wildcards) {
            out.push(json!({
                "action": allow(&e.verdict), "operation": "net.connect", "target": e.path, "hostname": e.path,
                "isWildcard": e.path.starts_with("*."),
                "rule": format!("{} net.send {}", allow(&e.verdict), e.path), "policies": reasons(&e.verdict),
            }));
        }
    }
    out
}

/// A session's whole id (secrets are kept by it), or what was given.
fn full_id(ctx: &Ctx, session: &str) -> String {
    let root = leash_daemon::access::Peer { uid: 0, gid: 0, pid: None };
    if session.is_empty() {
        String::new()
    } else {
        ctx.manager.sessions.resolve(&root, session).unwrap_or_else(|_| session.to_owned())
    }
}

/// The policy lines with the secrets of `session` (a whole id) redacted from their Cedar.
fn redacted_lines(ctx: &Ctx, session: &str, lines: &[pb::PolicyLine]) -> Vec<Value> {
    line_views(lines)
        .into_iter()
        .map(|mut l| {
            if let Some(c) = l["cedar"].as_str() {
                l["cedar"] = Value::from(ctx.manager.hub.redact_text(session, c));
            }
            l
        })
        .collect()
}

fn line_views(lines: &[pb::PolicyLine]) -> Vec<Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({ "id": l.id, "effect": l.effect, "humanized": l.humanized, "cedar": l.cedar,
                    "sequence": i, "origin": l.origin })
        })
        .collect()
}

/// Applies an edit, then answers with the snapshot.
async fn edit(ctx: &Ctx, session: &str, add: Vec<String>, remove: Vec<String>) -> Response {
    let req = pb::EditRequest { session: session.to_owned(), add, remove };
    let r = match ctx.manager.policy_edit(as_admin(req)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    if !r.valid {
        return refused(&r.errors, r.conflict);
    }
    respond_snapshot(ctx, session).await
}

async fn respond_snapshot(ctx: &Ctx, session: &str) -> Response {
    match snapshot(ctx, session).await {
        Ok(v) => json_ok(v),
        Err(r) => r,
    }
}

async fn set_mode(ctx: &Ctx, session: &str, mode: &str) -> Result<(), Response> {
    if session.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "a mode belongs to a session: add ?session=ID"));
    }
    let req = pb::SetModeRequest { session: session.to_owned(), mode: mode.to_owned() };
    ctx.manager.policy_set_mode(as_admin(req)).await.map(|_| ()).map_err(|s| status_error(&s))
}

/// `GET /api/policies`.
pub(super) async fn get(State(ctx): State<Ctx>, Query(q): Q) -> Response {
    respond_snapshot(&ctx, &session_of(&q)).await
}

/// `POST /api/policies` (Cedar): replaces the runtime layer.
pub(super) async fn replace(State(ctx): State<Ctx>, Query(q): Q, headers: HeaderMap, body: Bytes) -> Response {
    let text = match cedar_of(&headers, &body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let session = session_of(&q);
    let req = pb::SetLayerRequest {
        session: session.clone(),
        layer: pb::Layer::Runtime as i32,
        sources: vec![pb::PolicySource { name: "runtime".into(), text }],
        watch_path: String::new(),
        owner: 0,
    };
    match ctx.manager.policy_set(as_admin(req)).await {
        Ok(r) if r.get_ref().valid => respond_snapshot(&ctx, &session).await,
        Ok(r) => refused(&r.get_ref().errors, r.get_ref().conflict),
        Err(s) => status_error(&s),
    }
}

/// `PATCH /api/policies`: `{"add": [{"cedar"} | {"effect", "action"}],
/// "remove": [{"id"} | {"cedar"}], "applyMode": "enforce"?}`.
pub(super) async fn patch(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    let changes = match bodies::patch(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let session = session_of(&q);
    let response = edit(&ctx, &session, changes.add, changes.remove).await;
    if response.status() == StatusCode::OK && changes.enforce && !session.is_empty() {
        if let Err(r) = set_mode(&ctx, &session, "enforce").await {
            return r;
        }
        return respond_snapshot(&ctx, &session).await;
    }
    response
}

/// `POST /api/policies/validate` (Cedar; empty validates nothing): errors
/// with line and column, and lints.
pub(super) async fn validate(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let text = match optional_cedar_of(&headers, &body) {
        Ok(Some(t)) => t,
        Ok(None) => return json_ok(json!({ "valid": true, "policies": 0, "issues": [], "errors": [] })),
        Err(r) => return r,
    };
    let req = pb::ValidateRequest { sources: vec![pb::PolicySource { name: "policy".into(), text }] };
    match ctx.manager.policy_validate(as_admin(req)).await {
        Ok(r) => {
            let r = r.into_inner();
            json_ok(json!({
                "valid": r.valid,
                "policies": r.policies,
                "issues": r.lints.iter().map(lint_json).collect::<Vec<_>>(),
                "errors": r.errors.iter().map(error_json).collect::<Vec<_>>(),
            }))
        }
        Err(s) => status_error(&s),
    }
}

/// `POST /api/policies/complete`: completions at the cursor, with hints
/// from what the agents did (recent events) and the policy in force.
pub(super) async fn complete(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    let req = match bodies::complete(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": { "message": e } }))).into_response(),
    };
    let session = session_of(&q);
    let (history, _) = ctx.manager.hub.subscribe(256, false);
    let mut hints = suggest::Hints::default();
    for s in
        history.iter().filter(|s| session.is_empty() || s.event.session.as_deref().unwrap_or("").starts_with(&session))
    {
        hints.observe(&s.event.action, &s.event.resource);
    }
    let extra = req.id_hints.unwrap_or_default();
    hints.tools.extend(extra.tools);
    hints.servers.extend(extra.servers);
    let items = suggest::complete(
        &req.cedar,
        req.cursor.line as usize,
        req.cursor.column as usize,
        req.max_items.unwrap_or(75),
        &hints,
    );
    json_ok(json!({ "items": items }))
}

/// `GET /api/policies/lines`.
pub(super) async fn lines(State(ctx): State<Ctx>, Query(q): Q) -> Response {
    let session = session_of(&q);
    match ctx.manager.policy_show(as_admin(pb::ShowRequest { session: session.clone() })).await {
        Ok(r) => json_ok(json!({ "lines": redacted_lines(&ctx, &full_id(&ctx, &session), &r.into_inner().policies) })),
        Err(s) => status_error(&s),
    }
}

/// `POST /api/policies/add` (one Cedar statement).
pub(super) async fn add(State(ctx): State<Ctx>, Query(q): Q, headers: HeaderMap, body: Bytes) -> Response {
    match cedar_of(&headers, &body) {
        Ok(c) => edit(&ctx, &session_of(&q), vec![c], Vec::new()).await,
        Err(r) => r,
    }
}

/// `POST /api/policies/add-from-action` `{"effect", "action": {"type", "name", "server"?, "tool"?}}`.
pub(super) async fn add_from_action(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    match bodies::from_action(&body) {
        Ok(c) => edit(&ctx, &session_of(&q), vec![c], Vec::new()).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST|DELETE /api/policies/delete` `{"id"} | {"cedar"}`.
pub(super) async fn delete(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    let what = match bodies::delete(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    edit(&ctx, &session_of(&q), Vec::new(), vec![what]).await
}

/// `POST /api/policies/persist` (Cedar, or empty): the body becomes the
/// policy's file layer and the runtime layer is folded away; without a
/// body the runtime layer is folded into the file layer. A copy is kept in
/// the state dir.
pub(super) async fn persist(State(ctx): State<Ctx>, Query(q): Q, headers: HeaderMap, body: Bytes) -> Response {
    let text = match optional_cedar_of(&headers, &body) {
        Ok(t) => t.unwrap_or_default(),
        Err(r) => return r,
    };
    let session = session_of(&q);
    let req = pb::PersistRequest { session: session.clone(), text };
    match ctx.manager.policy_persist(as_admin(req)).await {
        Ok(r) => match r.into_inner().result {
            Some(e) if !e.valid => refused(&e.errors, e.conflict),
            _ => respond_snapshot(&ctx, &session).await,
        },
        Err(s) => status_error(&s),
    }
}

/// `POST /api/policies/permit-all`: the session records without denying.
pub(super) async fn permit_all(State(ctx): State<Ctx>, Query(q): Q) -> Response {
    let session = session_of(&q);
    match set_mode(&ctx, &session, "record").await {
        Ok(()) => respond_snapshot(&ctx, &session).await,
        Err(r) => r,
    }
}

/// `POST /api/policies/enforce-apply`: the session's policy is enforced.
pub(super) async fn enforce_apply(State(ctx): State<Ctx>, Query(q): Q) -> Response {
    let session = session_of(&q);
    match set_mode(&ctx, &session, "enforce").await {
        Ok(()) => respond_snapshot(&ctx, &session).await,
        Err(r) => r,
    }
}

/// `POST /api/policies/mode` `{"mode": "record" | "shadow" | "enforce"}`.
pub(super) async fn mode(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    let mode = match bodies::mode(&body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let session = session_of(&q);
    match set_mode(&ctx, &session, &mode).await {
        Ok(()) => respond_snapshot(&ctx, &session).await,
        Err(r) => r,
    }
}

/// `POST /api/policies/replay` `{"cedar", "session"?}`: what the candidate
/// would have decided differently for the session's recorded requests.
pub(super) async fn replay(State(ctx): State<Ctx>, Query(q): Q, body: Bytes) -> Response {
    let req = match bodies::replay(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let session = req.session.unwrap_or_else(|| session_of(&q));
    let r = pb::PolicyReplayRequest {
        sources: vec![pb::PolicySource { name: "candidate".into(), text: req.cedar }],
        session,
        limit: req.limit,
    };
    let r = match ctx.manager.policy_replay(as_admin(r)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    if !r.valid {
        return refused(&r.errors, false);
    }
    let finding = |f: &pb::ReplayFinding| {
        json!({
            "event": f.event.as_ref().map(|e| super::events::event_json(e, &ctx.instance)),
            "decision": f.decision, "policies": f.policies, "inexact": f.inexact,
        })
    };
    json_ok(json!({
        "session": r.session,
        "replayed": r.replayed,
        "denied": r.denied.iter().map(finding).collect::<Vec<_>>(),
        "allowed": r.allowed.iter().map(finding).collect::<Vec<_>>(),
        "inexact": r.inexact.iter().map(finding).collect::<Vec<_>>(),
    }))
}

/// `GET /suggest?session=&tail=&window=`: Cedar that would allow what the
/// agents did, grouped (directories, domains, binaries), with counts and examples.
pub(super) async fn suggest(State(ctx): State<Ctx>, Query(q): Q) -> Response {
    let tail = q.get("tail").and_then(|t| t.parse().ok()).unwrap_or(10_000);
    let req = pb::EventsRequest { follow: false, tail, session: session_of(&q), ..Default::default() };
    let events = match super::events::recorded(&ctx, req).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let suggestions = suggest::suggest(&events);
    json_ok(json!({
        "generated_at": leash_core::time::rfc3339(std::time::SystemTime::now()),
        "event_count": events.len(),
        "suggestions": suggestions,
    }))
}
