//! Questions about denials (`leash --ask`) in the Control UI: listed, and
//! answered by an authenticated request (the agent's container cannot
//! reach the API: see the module above).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, error, json_ok};
use crate::session::ask::Answerer;

/// `GET /api/asks`: the questions open for every session.
pub(super) async fn list(State(ctx): State<Ctx>) -> Response {
    json_ok(json!({ "asks": ctx.manager.sessions.open_asks() }))
}

/// `POST /api/asks/{id}` with `{"session": ID, "choice": "once"|"session"|"always"|"deny"}`.
pub(super) async fn answer(State(ctx): State<Ctx>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (session, choice) = (field("session"), field("choice"));
    if session.is_empty() || choice.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the body needs \"session\" and \"choice\"".to_owned());
    }
    match ctx.manager.sessions.answer_ask(&session, &id, &choice, Answerer::Ui).await {
        Ok(()) => json_ok(json!({ "answered": id, "choice": choice })),
        Err(why) => error(StatusCode::CONFLICT, why),
    }
}
