//! The Control UI and its HTTP API, served by leashd on 127.0.0.1:18080.
//!
//! The Go leash's paths and JSON shapes, with authentication it lacked:
//! - every request names this server in `Host` (no DNS rebinding) and, when
//!   a browser sends one, in `Origin` (no page of another origin reads or
//!   changes anything; there is no `Access-Control-Allow-Origin` at all);
//! - every `/api` call and `/suggest` needs the token (`Authorization:
//!   Bearer …`, file `<runtime dir>/api.token`, 0640 root:leash) or the
//!   cookie a browser gets for a single-use code (`leash --open`);
//! - the agent's container cannot reach it: it listens on loopback by
//!   default, and the kernel refuses sessions the host's addresses.

mod asks;
pub(crate) mod auth;
mod bodies;
mod events;
pub mod handle;
mod policies;
pub mod suggest;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use auth::Auth;
use handle::{ApiState, Handle};

use crate::grpc::ManagerService;

/// Request bodies larger than this are refused (the Go leash's 1 MiB).
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
struct Ctx {
    manager: ManagerService,
    auth: Arc<Auth>,
    /// `Host` values that name this server.
    hosts: Arc<Vec<String>>,
    /// This leashd run's id in events (the Go leash's `instance_id`).
    instance: Arc<String>,
}

/// Binds the API (a failed bind is reported, never retried on another
/// port) and serves it until `shutdown`.
pub async fn start(
    listen: Option<SocketAddr>,
    manager: ManagerService,
    runtime_dir: &std::path::Path,
    group: Option<u32>,
    shutdown: CancellationToken,
) -> Handle {
    let state = Arc::new(Mutex::new(ApiState { listen, ..ApiState::default() }));
    let _ = std::fs::remove_file(runtime_dir.join(leash_daemon::policy::API_ADDRESS_FILE));
    let Some(addr) = listen else {
        tracing::info!("the Control UI is disabled (listen is empty)");
        return Handle { state, auth: None };
    };
    let auth = match Auth::create(runtime_dir, group) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            let msg = format!("cannot write the API token: {e:#}");
            tracing::error!(error = %msg, "the Control UI is not served");
            state.lock().unwrap_or_else(|p| p.into_inner()).error = Some(msg);
            return Handle { state, auth: None };
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("cannot listen on {addr}: {e} (leashd never picks another port; change --listen)");
            tracing::error!(error = %msg, "the Control UI is not served");
            state.lock().unwrap_or_else(|p| p.into_inner()).error = Some(msg);
            return Handle { state, auth: Some(auth) };
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    // The sensor refuses sessions this address (a wildcard bind is every host address).
    let named = runtime_dir.join(leash_daemon::policy::API_ADDRESS_FILE);
    if let Err(e) = std::fs::write(&named, format!("{bound}\n")) {
        tracing::warn!(path = %named.display(), error = %e, "cannot record the Control UI's address for the sensor");
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).bound = Some(bound);
    let ctx = Ctx {
        manager,
        auth: auth.clone(),
        hosts: Arc::new(host_names(bound)),
        instance: Arc::new(format!("{:016x}", rand_u64())),
    };
    let app = router(ctx);
    tracing::info!(url = %leash_core::listen::url(&bound), "the Control UI is served");
    tokio::spawn(async move {
        let served =
            axum::serve(listener, app.into_make_service()).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the Control UI stopped");
        }
    });
    Handle { state, auth: Some(auth) }
}

/// The `Host` values a request to `bound` may carry.
fn host_names(bound: SocketAddr) -> Vec<String> {
    let port = bound.port();
    let mut v = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
    if !bound.ip().is_unspecified() {
        v.push(bound.to_string());
    }
    v
}

fn router(ctx: Ctx) -> Router {
    let api = Router::new()
        .route("/api", get(events::websocket))
        .route("/api/events", get(events::list))
        .route("/api/sessions", get(events::sessions))
        .route("/api/asks", get(asks::list))
        .route("/api/asks/{id}", post(asks::answer))
        .route("/api/status", get(events::status))
        .route("/api/policies", get(policies::get).post(policies::replace).patch(policies::patch))
        .route("/api/policies/validate", post(policies::validate))
        .route("/api/policies/complete", post(policies::complete))
        .route("/api/policies/lines", get(policies::lines))
        .route("/api/policies/add", post(policies::add))
        .route("/api/policies/add-from-action", post(policies::add_from_action))
        .route("/api/policies/delete", post(policies::delete).delete(policies::delete))
        .route("/api/policies/persist", post(policies::persist))
        .route("/api/policies/permit-all", post(policies::permit_all))
        .route("/api/policies/enforce-apply", post(policies::enforce_apply))
        .route("/api/policies/mode", post(policies::mode))
        .route("/api/policies/replay", post(policies::replay))
        .route("/suggest", get(policies::suggest))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_auth));
    Router::new()
        .merge(api)
        .route("/healthz", any(|| async { "ok" }))
        .route("/health/{component}", any(events::health))
        .route("/login", get(auth::login))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("../../ui/app.js")) }))
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", include_str!("../../ui/style.css")) }))
        .fallback(get(index))
        .layer(middleware::from_fn_with_state(ctx.clone(), check_host_and_origin))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("../../ui/index.html"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ),
        ],
        body,
    )
        .into_response()
}

/// Refuses requests that do not name this server (DNS rebinding) or that
/// come from a page of another origin.
async fn check_host_and_origin(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !ctx.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return error(StatusCode::FORBIDDEN, format!("Host {host:?} is not this server (DNS rebinding refused)"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| ctx.hosts.iter().any(|h| h.eq_ignore_ascii_case(o)) && o.eq_ignore_ascii_case(host));
        if !ok {
            return error(StatusCode::FORBIDDEN, format!("Origin {origin:?} may not use this server"));
        }
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return error(StatusCode::FORBIDDEN, "cross-site requests are refused");
    }
    next.run(req).await
}

/// Every `/api` call needs the token or a login cookie.
async fn require_auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if !ctx.auth.admits(req.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication required: `Authorization: Bearer <token>` (the token is in the runtime dir's api.token) \
             or open the UI with `leash --open`",
        );
    }
    next.run(req).await
}

/// A JSON error in the Go leash's shape, `{"error": "…"}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// A gRPC failure of a call leashd made for the API.
fn status_error(s: &tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, s.message().to_owned())
}

/// A request leashd makes on the API caller's behalf (authenticated: an
/// administrator).
fn as_admin<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(leash_daemon::access::Peer { uid: 0, gid: 0, pid: None });
    r
}

/// Reads the `session` query parameter.
fn session_of(q: &std::collections::HashMap<String, String>) -> String {
    q.get("session").cloned().unwrap_or_default()
}

fn json_ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// Random bits from the kernel.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    auth::random(&mut b);
    u64::from_le_bytes(b)
}

/// Headers, for handlers that need a look.
fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}
