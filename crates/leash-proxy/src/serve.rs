//! The data path: connections the redirect sends to a session's listener.
//! TLS is terminated with a leaf of the session's CA for the name the client
//! asked for (SNI); each request is decided, then forwarded over a marked
//! upstream connection from the container's namespace to the original
//! destination, whose certificate must be valid for that name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use leash_proto::v1 as pb;
use rustls::pki_types::ServerName;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::ca::SessionCa;
use crate::decide::{Decider, Decision};
use crate::mcp;
use crate::netns::{self, Netns};
use serde_json::Value;

mod stdio;

/// A TLS handshake, or the first bytes of plain HTTP, must arrive within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// An HTTP/1 request's headers must arrive within this (slow clients).
const HEADERS: Duration = Duration::from_secs(10);
/// Connecting upstream.
const CONNECT: Duration = Duration::from_secs(10);

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// One intercepted session.
pub struct Session {
    /// Its id.
    pub id: String,
    /// Its container's network namespace.
    pub netns: Netns,
    /// Its certificate authority.
    pub ca: Arc<SessionCa>,
    /// Its credentials.
    pub vault: Arc<crate::secrets::Vault>,
    /// Cancelled when it is closed.
    pub stop: CancellationToken,
    /// How long a denied request waits for the user's answer (`leash --ask`).
    pub ask: Option<Duration>,
}

/// Counters the status shows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests decided.
    pub requests: AtomicU64,
    /// Requests refused.
    pub denied: AtomicU64,
    /// Upstream failures (connect, TLS verification, protocol).
    pub upstream_errors: AtomicU64,
}

/// What every session's data path shares.
pub struct Shared {
    /// Decisions.
    pub decider: Arc<Decider>,
    /// rustls' crypto.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    /// Upstream TLS, offering HTTP/1.1 only, and h2 then HTTP/1.1.
    pub upstream_h1: Arc<rustls::ClientConfig>,
    /// See `upstream_h1`.
    pub upstream_h2: Arc<rustls::ClientConfig>,
    /// The event stream to leashd.
    pub events: Arc<leash_daemon::fanout::Fanout>,
    /// leash-sensor's socket, for the addresses names resolve to.
    pub sensor_socket: std::path::PathBuf,
    /// One channel to leash-sensor, made on first use (it redials by itself).
    pub sensor: tokio::sync::OnceCell<tonic::transport::Channel>,
    /// Counters.
    pub counters: Counters,
    /// The SSE transport's open streams, by server and message endpoint:
    /// where a refused call's answer goes.
    pub sse_streams: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<Bytes>>>,
    /// Denied requests waiting for the user's answer.
    pub asks: crate::ask::Waiting,
}

/// The upstream TLS configurations, trusting `roots`.
pub fn upstream_configs(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: rustls::RootCertStore,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>)> {
    let roots = Arc::new(roots);
    let make = |alpn: &[&[u8]]| -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    };
    Ok((make(&[b"http/1.1"])?, make(&[b"h2", b"http/1.1"])?))
}

/// Accepts the redirected connections of one listener until the session closes.
pub async fn accept(listener: tokio::net::TcpListener, session: Arc<Session>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = session.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(session_id = %session.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (session, shared) = (session.clone(), shared.clone());
        tokio::spawn(async move {
            let stop = session.stop.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                r = connection(stream, session.clone(), shared) => if let Err(e) = r {
                    tracing::debug!(session_id = %session.id, error = %format!("{e:#}"), "connection ended");
                }
            }
        });
    }
}

/// One client connection and what it needs to forward its requests.
#[derive(Clone)]
struct Conn {
    session: Arc<Session>,
    shared: Arc<Shared>,
    /// Where the client was going.
    dst: SocketAddr,
    /// The name it asked for in its TLS ClientHello.
    sni: Option<String>,
    tls: bool,
    /// HTTP/2 negotiated with the client.
    h2: bool,
    upstream: Arc<tokio::sync::Mutex<Option<Upstream>>>,
}

enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn connection(stream: TcpStream, session: Arc<Session>, shared: Arc<Shared>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let dst = netns::original_destination(&stream)?;
    if dst == stream.local_addr()? {
        // Straight to the listener, not redirected: nothing to forward to.
        anyhow::bail!("a connection to the listener itself");
    }
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HANDSHAKE, stream.peek(&mut first)).await??;
    if n == 0 {
        return Ok(());
    }
    let conn = |sni, tls, h2| Conn {
        session: session.clone(),
        shared: shared.clone(),
        dst,
        sni,
        tls,
        h2,
        upstream: Arc::new(tokio::sync::Mutex::new(None)),
    };
    if first[0] != 0x16 {
        return serve_http(TokioIo::new(stream), conn(None, false, false)).await;
    }
    let start =
        tokio::time::timeout(HANDSHAKE, tokio_rustls::LazyConfigAcceptor::new(Acceptor::default(), stream)).await??;
    let hello = start.client_hello();
    let sni = hello.server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let offered: Vec<Vec<u8>> = hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default();
    let name = sni.clone().unwrap_or_else(|| dst.ip().to_string());
    let leaf = session.ca.leaf(&name)?;
    let mut config = rustls::ServerConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaf(leaf)));
    config.alpn_protocols =
        [&b"h2"[..], b"http/1.1"].iter().filter(|p| offered.iter().any(|o| o == *p)).map(|p| p.to_vec()).collect();
    let tls = tokio::time::timeout(HANDSHAKE, start.into_stream(Arc::new(config))).await??;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(TokioIo::new(tls), conn(sni, true, h2)).await
}

/// Serves one client connection whose TLS, if any, is already terminated:
/// `sni` is the name its handshake asked for, `h2` whether it negotiated
/// HTTP/2 (what the listener's accept does after the handshake; for
/// driving the data path over any stream).
#[doc(hidden)]
pub async fn serve_connection<I>(
    io: I,
    session: Arc<Session>,
    shared: Arc<Shared>,
    dst: SocketAddr,
    sni: Option<String>,
    tls: bool,
    h2: bool,
) -> anyhow::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn { session, shared, dst, sni, tls, h2, upstream: Arc::new(tokio::sync::Mutex::new(None)) };
    serve_http(TokioIo::new(io), conn).await
}

async fn serve_http<I>(io: TokioIo<I>, conn: Conn) -> anyhow::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let c = conn.clone();
        async move {
            Ok::<_, Infallible>(match dot_segment_refused(&req, &c) {
                Some(refused) => refused,
                None => request(req, c).await,
            })
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADERS);
    builder.serve_connection(io, service).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// A request whose path has a dot-segment (`..`, `%2e%2e`, between encoded
/// slashes too): refused with 400 before any decision, in every mode — the
/// server would resolve it to another path than the one the policy saw
/// (`/repos/org/../other` is `/repos/other`) — with an event saying so.
fn dot_segment_refused<B>(req: &Request<B>, c: &Conn) -> Option<Response<Body>> {
    let path = req.uri().path();
    if !crate::request::has_dot_segment(path) {
        return None;
    }
    c.shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    c.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
    let host = request_host(req);
    let name = if c.tls { c.sni.clone().or(host) } else { host };
    let resource = format!("{}:{}", name.unwrap_or_else(|| c.dst.ip().to_string()), c.dst.port());
    let reason = crate::request::DOT_SEGMENT.to_owned();
    let d = Decision { allow: false, reasons: vec![reason], mode: leash_core::Mode::Enforce };
    let outcome = Outcome { decision: Some(d), status: 400, error: None, bytes: None };
    let method = req.method().to_string();
    c.shared.events.publish(event(c, &method, &redacted_path(req.uri()), &resource, Duration::ZERO, outcome));
    let why = format!(
        "leash: the path {path:?} has a dot-segment (`.` or `..`, also percent-encoded): refused, as the server would read another path than the one decided\n"
    );
    Some(text(StatusCode::BAD_REQUEST, why))
}

/// The host a request names (`:authority` or `Host`), lower case, no port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let h = req.headers().get(hyper::header::HOST)?.to_str().ok()?;
            match h.strip_prefix('[') {
                // [v6]:port
                Some(rest) => rest.split(']').next().unwrap_or_default().to_owned(),
                None if h.matches(':').count() == 1 => h.split(':').next().unwrap_or_default().to_owned(),
                None => h.to_owned(),
            }
        }
    };
    let host = raw.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// A path with the query's values left out (`/s?q=&page=`).
pub fn redacted_path(uri: &hyper::Uri) -> String {
    match uri.query() {
        None => uri.path().to_owned(),
        Some(q) => {
            let keys: Vec<&str> = q.split('&').map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k)).collect();
            format!("{}?{}=", uri.path(), keys.join("=&"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

struct Outcome {
    decision: Option<Decision>,
    status: u16,
    error: Option<String>,
    bytes: Option<u64>,
}

async fn request(req: Request<Incoming>, c: Conn) -> Response<Body> {
    let started = Instant::now();
    c.shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().to_string();
    let path = redacted_path(req.uri());
    let host = request_host(&req);
    let port = c.dst.port();
    // The name decided: the one the TLS handshake asked for, which the
    // request must repeat (else: domain fronting).
    // leash-entry's stdio MCP relay: answered here, never forwarded.
    if !c.tls && host.as_deref() == Some(leash_core::stdio_mcp::RELAY_HOST) {
        return stdio::answer(req, &c).await;
    }
    let name = if c.tls { c.sni.clone().or_else(|| host.clone()) } else { host.clone() };
    let resource = format!("{}:{port}", name.clone().unwrap_or_else(|| c.dst.ip().to_string()));
    let (mut rewrites, mut rewrite_errors): (Vec<(String, Vec<String>)>, Vec<String>) = (Vec::new(), Vec::new());
    // The credentials whose real value the request carries, where, and the permitting policies.
    let mut used: Vec<(String, String, Vec<String>)> = Vec::new();
    // How the user answered, when the request was asked about (`--ask`).
    let mut asked: Option<String> = None;
    let (response, outcome) = if c.tls && c.sni.is_some() && host.is_some() && c.sni != host {
        let why = format!(
            "leash: the request names {} but the TLS connection was for {}: refused (domain fronting)\n",
            host.as_deref().unwrap_or_default(),
            c.sni.as_deref().unwrap_or_default()
        );
        let d =
            Decision { allow: false, reasons: vec!["leash:sni-host-mismatch".into()], mode: leash_core::Mode::Enforce };
        (text(StatusCode::FORBIDDEN, why), Outcome { decision: Some(d), status: 403, error: None, bytes: None })
    } else {
        let facts = crate::request::RequestFacts::of(&req, c.tls);
        let mut d = c.shared.decider.request(&c.session.id, name.as_deref(), c.dst.ip(), port, &facts).await;
        if !c.tls && d.allow && name.is_some() {
            // Plain HTTP: the Host header is the client's word; the address
            // must be allowed too.
            let by_ip = c.shared.decider.request(&c.session.id, None, c.dst.ip(), port, &facts).await;
            if !by_ip.allow {
                d = by_ip;
            }
        }
        // Denied, with asking on: the request waits for the user's answer.
        if !d.passes() {
            let o = Outcome { decision: Some(d.clone()), status: 0, error: None, bytes: None };
            let mut question = event(&c, &method, &path, &resource, started.elapsed(), o);
            question.details.remove("status");
            asked = ask_user(&c, &mut d, question).await;
        }
        if d.passes() {
            // Injections only over TLS verified for the name (never plain
            // HTTP: its Host header is the client's word).
            let mut req = req.map(BodyExt::boxed_unsync);
            if c.tls
                && let Some(n) = &name
            {
                for (header, value, policies) in c.shared.decider.rewrites(&c.session.id, n, port) {
                    let set = value.and_then(|v| {
                        let name =
                            hyper::header::HeaderName::from_bytes(header.as_bytes()).map_err(|e| e.to_string())?;
                        let mut value =
                            hyper::header::HeaderValue::from_str(&v).map_err(|_| "not a header value".to_owned())?;
                        value.set_sensitive(true);
                        req.headers_mut().insert(name, value);
                        Ok(())
                    });
                    match set {
                        Ok(()) => rewrites.push((header, policies)),
                        Err(e) => rewrite_errors.push(format!("{header}: {e}")),
                    }
                }
            }
            let server = name.clone().unwrap_or_else(|| c.dst.ip().to_string());
            match mcp_gate(req, &c, &server).await {
                Err((r, status)) => (r, Outcome { decision: Some(d), status, error: None, bytes: None }),
                Ok((req, is_mcp)) => {
                    match forward(credentials_out(req, &c, name.as_deref(), &mut used).await, &c, name.as_deref()).await
                    {
                        Ok(r) => {
                            let bytes = r
                                .headers()
                                .get(hyper::header::CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok()?.parse().ok());
                            let status = r.status().as_u16();
                            let r = credentials_back(r, &c, &server);
                            let r = mcp_response(r, &c, &server, is_mcp).await;
                            (r, Outcome { decision: Some(d), status, error: None, bytes })
                        }
                        Err(e) => {
                            c.shared.counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
                            let body = format!("leash: upstream {resource}: {e}\n");
                            (
                                text(StatusCode::BAD_GATEWAY, body),
                                Outcome { decision: Some(d), status: 502, error: Some(e), bytes: None },
                            )
                        }
                    }
                }
            }
        } else {
            if !c.session.vault.is_empty() {
                // Nothing goes on; a decoy on its way to a refused
                // destination is still worth knowing of.
                let head = req.into_parts().0;
                let said = Said::of(&head);
                for (i, location) in decoys_in_head(&c.session.vault, &head) {
                    let why = Decision { allow: false, reasons: d.reasons.clone(), mode: leash_core::Mode::Enforce };
                    publish_decoy_seen(&c, name.as_deref(), i, &location, &why, &said);
                }
            }
            let ids = if d.reasons.is_empty() { "(no policy permits it)".to_owned() } else { d.reasons.join(", ") };
            let body = format!("leash: {resource} denied by policy {ids}\n");
            (text(StatusCode::FORBIDDEN, body), Outcome { decision: Some(d), status: 403, error: None, bytes: None })
        }
    };
    if outcome.status == 403 {
        c.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
    }
    let mut e = event(&c, &method, &path, &resource, started.elapsed(), outcome);
    if !rewrites.is_empty() {
        // Which headers were set and by which policies; never their values.
        let headers = rewrites.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ");
        let mut policies: Vec<String> = rewrites.into_iter().flat_map(|(_, p)| p).collect();
        policies.sort();
        policies.dedup();
        e.details.insert("rewrites".to_owned(), headers);
        e.details.insert("rewrite_policies".to_owned(), policies.join(", "));
    }
    if !rewrite_errors.is_empty() {
        e.details.insert("rewrite_errors".to_owned(), rewrite_errors.join("; "));
    }
    if let Some(how) = asked {
        e.details.insert("ask".to_owned(), how);
    }
    if !used.is_empty() {
        // Which credentials went in and where, by which policies; never a value.
        let said: Vec<String> = used.iter().map(|(n, at, _)| format!("{n} ({at})")).collect();
        let mut policies: Vec<String> = used.into_iter().flat_map(|(_, _, p)| p).collect();
        policies.sort();
        policies.dedup();
        e.details.insert("secrets".to_owned(), said.join(", "));
        e.details.insert("secret_policies".to_owned(), policies.join(", "));
    }
    c.shared.events.publish(e);
    response
}

fn event(c: &Conn, method: &str, path: &str, resource: &str, took: Duration, o: Outcome) -> pb::Event {
    let d = o.decision.unwrap_or(Decision { allow: false, reasons: Vec::new(), mode: leash_core::Mode::Enforce });
    let mut details = std::collections::BTreeMap::new();
    details.insert("method".to_owned(), method.to_owned());
    details.insert("path".to_owned(), path.to_owned());
    details.insert("protocol".to_owned(), if c.tls { "https" } else { "http" }.to_owned());
    details.insert("http_version".to_owned(), if c.h2 { "h2" } else { "http/1.1" }.to_owned());
    details.insert("status".to_owned(), o.status.to_string());
    details.insert("duration_ms".to_owned(), format!("{:.3}", took.as_secs_f64() * 1000.0));
    if let Some(sni) = &c.sni {
        details.insert("sni".to_owned(), sni.clone());
    }
    if let Some(b) = o.bytes {
        details.insert("bytes".to_owned(), b.to_string());
    }
    if let Some(e) = o.error {
        details.insert("error".to_owned(), e);
    }
    proxy_event(c, pb::EventKind::Http, "NetworkConnect", resource, Some(&d), details)
}

/// Asks the session's user about an operation the policy denied, when the
/// session asks (`leash --ask`) and the denial is the policy's:
/// `question` (the operation's event) is published as the question, the
/// operation waits for the answer, and `d` becomes what was answered. How
/// it was answered, when it was asked about.
async fn ask_user(c: &Conn, d: &mut Decision, mut question: pb::Event) -> Option<String> {
    let timeout = c.session.ask?;
    if d.passes() || !crate::ask::offerable(&d.reasons) {
        return None;
    }
    let publish = |id: u64| {
        question.decision = 0;
        question.details.insert("ask_id".to_owned(), id.to_string());
        question.details.insert("ask_via".to_owned(), leash_core::Component::Proxy.binary().to_owned());
        question.details.insert("ask_timeout_ms".to_owned(), timeout.as_millis().to_string());
        c.shared.events.publish(question);
    };
    let (allow, how) = c.shared.asks.ask(&c.session.id, timeout, publish).await;
    d.allow = allow;
    Some(how)
}

/// Sends the request upstream over the connection's upstream (made on first use).
async fn forward(req: Request<Body>, c: &Conn, name: Option<&str>) -> Result<Response<Body>, String> {
    let mut slot = c.upstream.lock().await;
    let reusable = match slot.as_mut() {
        Some(Upstream::H1(s)) => s.ready().await.is_ok(),
        Some(Upstream::H2(s)) => !s.is_closed(),
        None => false,
    };
    if !reusable {
        *slot = Some(connect_upstream(c, name).await?);
    }
    let authority = name.map(str::to_owned).unwrap_or_else(|| c.dst.ip().to_string());
    match slot.as_mut() {
        Some(Upstream::H1(s)) => {
            let (mut parts, body) = req.into_parts();
            upstream_head(&mut parts, &authority, c.dst.port(), c.tls, false)?;
            let r = s.send_request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
            Ok(r.map(BodyExt::boxed_unsync))
        }
        Some(Upstream::H2(s)) => {
            let mut s = s.clone();
            drop(slot);
            let (mut parts, body) = req.into_parts();
            upstream_head(&mut parts, &authority, c.dst.port(), c.tls, true)?;
            let r = s.send_request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
            Ok(r.map(BodyExt::boxed_unsync))
        }
        None => Err("no upstream".to_owned()),
    }
}

/// The decoys in a request's head: `(secret, where)`, `where` being
/// `header NAME`, `query` or `path`.
fn decoys_in_head(vault: &crate::secrets::Vault, head: &hyper::http::request::Parts) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (h, v) in &head.headers {
        for i in vault.decoys_in(v.as_bytes()) {
            out.push((i, format!("header {h}")));
        }
    }
    for i in vault.decoys_in(head.uri.query().unwrap_or_default().as_bytes()) {
        out.push((i, "query".to_owned()));
    }
    for i in vault.decoys_in(head.uri.path().as_bytes()) {
        out.push((i, "path".to_owned()));
    }
    out.dedup();
    out
}

/// The `SecretUse` location of a place [`decoys_in_head`] names.
fn location_kind(place: &str) -> &str {
    place.split(' ').next().unwrap_or(place)
}

/// What an event says of a request: its method and its path without the
/// query's values.
#[derive(Clone)]
struct Said {
    method: String,
    path: String,
}

impl Said {
    fn of(head: &hyper::http::request::Parts) -> Said {
        Said { method: head.method.to_string(), path: redacted_path(&head.uri) }
    }
}

/// `secret.decoy_seen`: a decoy on its way where its secret may not go
/// (it travels as it is, worthless), naming the destination.
fn publish_decoy_seen(c: &Conn, name: Option<&str>, secret: usize, place: &str, why: &Decision, said: &Said) {
    let Some(s) = c.session.vault.secrets().get(secret) else { return };
    let destination = format!("{}:{}", name.map(str::to_owned).unwrap_or_else(|| c.dst.ip().to_string()), c.dst.port());
    let mut details = std::collections::BTreeMap::new();
    details.insert("secret".to_owned(), s.name.clone());
    details.insert("location".to_owned(), place.to_owned());
    details.insert("method".to_owned(), said.method.clone());
    details.insert("path".to_owned(), said.path.clone());
    details.insert("protocol".to_owned(), if c.tls { "https" } else { "http" }.to_owned());
    tracing::warn!(session_id = %c.session.id, secret = %s.name, %destination, %place, "a decoy on its way where its secret may not go");
    c.shared.events.publish(proxy_event(c, pb::EventKind::Http, "secret.decoy_seen", &destination, Some(why), details));
}

/// The request on its way upstream with each decoy in its headers and
/// query replaced by the real value where `SecretUse` allows (over TLS
/// verified for the name only), and its body swapped the same way as it
/// streams; `used` gets what went in. Elsewhere the decoy stays, and
/// `secret.decoy_seen` says where it was going.
async fn credentials_out(
    req: Request<Body>,
    c: &Conn,
    name: Option<&str>,
    used: &mut Vec<(String, String, Vec<String>)>,
) -> Request<Body> {
    let vault = c.session.vault.clone();
    if vault.is_empty() {
        return req;
    }
    let (mut head, body) = req.into_parts();
    let host = name.filter(|_| c.tls && c.sni.is_some());
    let method = head.method.to_string();
    let path = head.uri.path().to_owned();
    let said = Said::of(&head);
    // Each (secret, location) is decided once per request.
    let mut allowed: Vec<(usize, String)> = Vec::new();
    for (i, place) in decoys_in_head(&vault, &head) {
        let kind = location_kind(&place).to_owned();
        let d = match host {
            Some(h) if kind != "path" => {
                let u = crate::decide::SecretUse {
                    host: h,
                    port: c.dst.port(),
                    scheme: "https",
                    method: &method,
                    path: &path,
                    location: &kind,
                };
                c.shared.decider.secret_use(&c.session.id, &vault.secrets()[i].name, &u).await
            }
            Some(_) => {
                Decision { allow: false, reasons: vec!["leash:secret-in-path".into()], mode: leash_core::Mode::Enforce }
            }
            None => Decision {
                allow: false,
                reasons: vec!["leash:not-verified-https".into()],
                mode: leash_core::Mode::Enforce,
            },
        };
        if d.allow {
            used.push((vault.secrets()[i].name.clone(), place.clone(), d.reasons.clone()));
            allowed.push((i, kind));
        } else {
            publish_decoy_seen(c, name, i, &place, &d, &said);
        }
    }
    let pairs = |kind: &str| -> Vec<(&[u8], &[u8])> {
        allowed
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(i, _)| (vault.secrets()[*i].decoy.as_bytes(), vault.secrets()[*i].value.as_bytes()))
            .collect()
    };
    let in_headers = pairs("header");
    if !in_headers.is_empty() {
        for v in head.headers.values_mut() {
            if vault.decoys_in(v.as_bytes()).is_empty() {
                continue;
            }
            let mut bytes = v.as_bytes().to_vec();
            crate::secrets::replace_all(&mut bytes, &in_headers);
            if let Ok(mut swapped) = hyper::header::HeaderValue::from_bytes(&bytes) {
                swapped.set_sensitive(true);
                *v = swapped;
            }
        }
    }
    let in_query = pairs("query");
    if !in_query.is_empty()
        && let Some(pq) = head.uri.path_and_query()
    {
        let mut bytes = pq.as_str().as_bytes().to_vec();
        let at = pq.path().len();
        crate::secrets::replace_all(&mut bytes[at..], &in_query);
        let mut parts = head.uri.clone().into_parts();
        if let Ok(pq) = hyper::http::uri::PathAndQuery::from_maybe_shared(Bytes::from(bytes)) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = hyper::Uri::from_parts(parts) {
                head.uri = uri;
            }
        }
    }
    // An empty body stays as it is (wrapped, it would lose its size and
    // go upstream chunked).
    if hyper::body::Body::is_end_stream(&body) {
        return Request::from_parts(head, body);
    }
    let body = credentials_in_body(body, c.clone(), host.map(str::to_owned), method, path, said);
    Request::from_parts(head, body)
}

/// What a body's stream needs to decide and report its decoys.
struct BodyCtx {
    c: Conn,
    /// The name the secret would go to (None: not verified HTTPS).
    host: Option<String>,
    method: String,
    path: String,
    said: Said,
}

/// A request body whose decoys are swapped (where `SecretUse` allows the
/// body) or reported, as it streams: same length, held back only by a
/// decoy's length.
fn credentials_in_body(body: Body, c: Conn, host: Option<String>, method: String, path: String, said: Said) -> Body {
    use futures_util::StreamExt;
    let ctx = Arc::new(BodyCtx { c, host, method, path, said });
    let vault = ctx.c.session.vault.clone();
    let swapper = crate::secrets::Swapper::new(vault.longest());
    // Per secret: None undecided, Some(allowed).
    let decided: Vec<Option<bool>> = vec![None; vault.secrets().len()];
    let state = (http_body_util::BodyStream::new(body), swapper, decided, ctx, false);
    let stream = futures_util::stream::unfold(state, |(mut upstream, mut sw, mut decided, ctx, done)| async move {
        if done {
            return None;
        }
        let data = match upstream.next().await {
            None => return Some((Ok(hyper::body::Frame::data(sw.finish())), (upstream, sw, decided, ctx, true))),
            Some(Err(e)) => return Some((Err(e), (upstream, sw, decided, ctx, true))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(other) => return Some((Ok(other), (upstream, sw, decided, ctx, false))),
            },
        };
        // Decide the secrets whose decoys the held-back bytes and this
        // chunk show, then swap those allowed.
        sw.feed(&data);
        let vault = &ctx.c.session.vault;
        for i in vault.decoys_in(sw.buffer()) {
            if decided[i].is_some() {
                continue;
            }
            let d = match &ctx.host {
                Some(h) => {
                    let u = crate::decide::SecretUse {
                        host: h,
                        port: ctx.c.dst.port(),
                        scheme: "https",
                        method: &ctx.method,
                        path: &ctx.path,
                        location: "body",
                    };
                    ctx.c.shared.decider.secret_use(&ctx.c.session.id, &vault.secrets()[i].name, &u).await
                }
                None => Decision {
                    allow: false,
                    reasons: vec!["leash:not-verified-https".into()],
                    mode: leash_core::Mode::Enforce,
                },
            };
            if !d.allow {
                publish_decoy_seen(&ctx.c, ctx.host.as_deref(), i, "body", &d, &ctx.said);
            }
            decided[i] = Some(d.allow);
        }
        let pairs: Vec<(&[u8], &[u8])> = (0..decided.len())
            .filter(|i| decided[*i] == Some(true))
            .map(|i| (vault.secrets()[i].decoy.as_bytes(), vault.secrets()[i].value.as_bytes()))
            .collect();
        if !pairs.is_empty() {
            crate::secrets::replace_all(sw.buffer(), &pairs);
        }
        let out = sw.take();
        Some((Ok(hyper::body::Frame::data(out)), (upstream, sw, decided, ctx, false)))
    });
    UnsyncBoxBody::new(http_body_util::StreamBody::new(stream))
}

/// An upstream's answer on its way back with every real value of the
/// session's credentials (an upstream that echoes a request) turned back
/// into its decoy, in headers and body: the container never reads one.
fn credentials_back(r: Response<Body>, c: &Conn, server: &str) -> Response<Body> {
    use futures_util::StreamExt;
    let vault = c.session.vault.clone();
    if vault.is_empty() {
        return r;
    }
    let (mut head, body) = r.into_parts();
    // Each real value, and the decoy it turns back into.
    let pairs: Arc<Vec<(Vec<u8>, Vec<u8>)>> =
        Arc::new(vault.secrets().iter().map(|s| (s.value.as_bytes().to_vec(), s.decoy.as_bytes().to_vec())).collect());
    for (h, v) in head.headers.iter_mut() {
        if vault.values_in(v.as_bytes()).is_empty() {
            continue;
        }
        let mut bytes = v.as_bytes().to_vec();
        let as_refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
        let found = crate::secrets::replace_all(&mut bytes, &as_refs);
        if let Ok(back) = hyper::header::HeaderValue::from_bytes(&bytes) {
            *v = back;
        }
        for (i, _) in found.iter().enumerate().filter(|(_, f)| **f) {
            publish_echoed(c, server, &vault.secrets()[i].name, &format!("header {h}"));
        }
    }
    if hyper::body::Body::is_end_stream(&body) {
        return Response::from_parts(head, body);
    }
    let swapper = crate::secrets::Swapper::new(vault.longest());
    let ctx = Arc::new((c.clone(), server.to_owned(), pairs));
    let state = (http_body_util::BodyStream::new(body), swapper, vec![false; vault.secrets().len()], ctx, false);
    let stream = futures_util::stream::unfold(state, |(mut upstream, mut sw, mut said, ctx, done)| async move {
        if done {
            return None;
        }
        let data = match upstream.next().await {
            None => return Some((Ok(hyper::body::Frame::data(sw.finish())), (upstream, sw, said, ctx, true))),
            Some(Err(e)) => return Some((Err(e), (upstream, sw, said, ctx, true))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(other) => return Some((Ok(other), (upstream, sw, said, ctx, false))),
            },
        };
        let (c, server, pairs) = &*ctx;
        sw.feed(&data);
        let as_refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
        let found = crate::secrets::replace_all(sw.buffer(), &as_refs);
        for (i, f) in found.into_iter().enumerate() {
            if f && !said[i] {
                said[i] = true;
                publish_echoed(c, server, &c.session.vault.secrets()[i].name, "body");
            }
        }
        let out = sw.take();
        Some((Ok(hyper::body::Frame::data(out)), (upstream, sw, said, ctx, false)))
    });
    Response::from_parts(head, UnsyncBoxBody::new(http_body_util::StreamBody::new(stream)))
}

/// `secret.echoed`: an upstream answered with a credential's real value
/// (turned back into the decoy before the container reads it).
fn publish_echoed(c: &Conn, server: &str, secret: &str, place: &str) {
    let mut details = std::collections::BTreeMap::new();
    details.insert("secret".to_owned(), secret.to_owned());
    details.insert("location".to_owned(), place.to_owned());
    let why = Decision { allow: false, reasons: vec!["leash:secret-echoed".into()], mode: leash_core::Mode::Enforce };
    tracing::warn!(session_id = %c.session.id, %secret, %server, %place, "an upstream answered with a secret's value; the container gets the decoy");
    c.shared.events.publish(proxy_event(c, pb::EventKind::Http, "secret.echoed", server, Some(&why), details));
}

/// A request's head as it goes upstream to `authority` (the name decided,
/// else the destination's address) on `port`: origin-form with a `Host`
/// naming it over HTTP/1.1, the authority in the URI and no `Host` over
/// h2, with a `Via` either way. The client's own `Host` never goes on: an
/// absolute-form target, a second `Host` or an `:authority` beside a
/// different `Host` would have the upstream serve a name other than the
/// one decided (domain fronting). A name the upstream would read back as
/// another (`a@b`, stray colons or brackets) is refused.
pub fn upstream_head(
    parts: &mut hyper::http::request::Parts,
    authority: &str,
    port: u16,
    tls: bool,
    h2: bool,
) -> Result<(), String> {
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let host = match authority.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{authority}]"),
        Err(_) => authority.to_owned(),
    };
    let named = match (port, tls) {
        _ if h2 => host.clone(),
        (443, true) | (80, false) => host.clone(),
        (p, _) => format!("{host}:{p}"),
    };
    let read_back = named.parse::<hyper::http::uri::Authority>();
    if !read_back.is_ok_and(|a| a.as_str() == named && a.host() == host) {
        return Err(format!("{authority:?} is not a host name"));
    }
    if h2 {
        let uri: hyper::Uri = format!("https://{named}{pq}").parse().map_err(|e| format!("{e}"))?;
        // An asterisk-form target (`OPTIONS *`) would run into the authority.
        if uri.authority().map(|a| a.as_str()) != Some(named.as_str()) {
            return Err(format!("the target {pq:?} cannot go to {named} over h2"));
        }
        parts.uri = uri;
        parts.headers.remove(hyper::header::HOST);
        parts.version = hyper::Version::HTTP_2;
        parts.headers.append(hyper::header::VIA, hyper::header::HeaderValue::from_static("2 leash-proxy"));
    } else {
        parts.uri = pq.parse().map_err(|e| format!("{e}"))?;
        // `insert` replaces every `Host` the client sent.
        parts.headers.insert(hyper::header::HOST, named.parse().map_err(|e| format!("{e}"))?);
        parts.version = hyper::Version::HTTP_11;
        parts.headers.append(hyper::header::VIA, hyper::header::HeaderValue::from_static("1.1 leash-proxy"));
    }
    Ok(())
}

async fn connect_upstream(c: &Conn, name: Option<&str>) -> Result<Upstream, String> {
    let v4 = c.dst.is_ipv4();
    let fd = c.session.netns.run(move || netns::upstream_socket(v4)).await.map_err(|e| e.to_string())?;
    let fd = fd.map_err(|e| format!("upstream socket: {e}"))?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let tcp = tokio::time::timeout(CONNECT, socket.connect(c.dst))
        .await
        .map_err(|_| format!("connecting to {} timed out", c.dst))?
        .map_err(|e| format!("connecting to {}: {e}", c.dst))?;
    let _ = tcp.set_nodelay(true);
    if !c.tls {
        return handshake(TokioIo::new(tcp), false).await;
    }
    let server_name = match name {
        Some(n) => ServerName::try_from(n.to_owned()).map_err(|e| format!("server name {n:?}: {e}"))?,
        None => ServerName::IpAddress(c.dst.ip().into()),
    };
    let config = if c.h2 { c.shared.upstream_h2.clone() } else { c.shared.upstream_h1.clone() };
    let tls = tokio::time::timeout(HANDSHAKE, tokio_rustls::TlsConnector::from(config).connect(server_name, tcp))
        .await
        .map_err(|_| "upstream TLS handshake timed out".to_owned())?
        .map_err(|e| format!("upstream TLS for {}: {e}", name.unwrap_or("the address")))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    handshake(TokioIo::new(tls), h2).await
}

async fn handshake<I>(io: TokioIo<I>, h2: bool) -> Result<Upstream, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("upstream h2: {e}"))?;
        tokio::spawn(conn);
        Ok(Upstream::H2(sender))
    } else {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("upstream HTTP/1.1: {e}"))?;
        tokio::spawn(conn);
        Ok(Upstream::H1(sender))
    }
}

/// Decides a `tools/call` message `m` of `tool` on `server` (asking the
/// user when the session asks), with its details added to `details`: the
/// decision and the resource (`tool@server`).
async fn decide_call(
    c: &Conn,
    server: &str,
    tool: &str,
    m: &Value,
    details: &mut std::collections::BTreeMap<String, String>,
) -> (Decision, String) {
    details.insert("tool".to_owned(), tool.to_owned());
    details.insert("arguments".to_owned(), mcp::argument_names(m).join(", "));
    let arguments = m["params"].get("arguments").map(Value::to_string);
    let mut d = c.shared.decider.mcp_call(&c.session.id, server, tool, arguments.as_deref()).await;
    let resource = format!("{tool}@{server}");
    if !d.passes() {
        let question = mcp_event(c, "McpCall", &resource, Some(&d), details.clone());
        if let Some(how) = ask_user(c, &mut d, question).await {
            details.insert("ask".to_owned(), how);
        }
    }
    (d, resource)
}

/// What a refused call is answered: the tool, the server and the policies.
fn refusal(tool: &str, server: &str, d: &Decision) -> String {
    let ids = if d.reasons.is_empty() { "(no policy permits it)".to_owned() } else { d.reasons.join(", ") };
    format!("leash: tool {tool} on MCP server {server} denied by policy {ids}")
}

/// MCP in a request body: events for its messages, and `tools/call`s
/// authorized as `McpCall`. A refused call is answered here, in the
/// transport's framing, and nothing is forwarded; otherwise the request
/// goes on (with whether it carried MCP).
async fn mcp_gate(req: Request<Body>, c: &Conn, server: &str) -> Result<(Request<Body>, bool), (Response<Body>, u16)> {
    if req.method() != hyper::Method::POST {
        return Ok((req, false));
    }
    let (parts, body) = req.into_parts();
    let (messages, bytes) = match mcp::read(body).await {
        Ok(mcp::Read::Other(b)) => return Ok((Request::from_parts(parts, b), false)),
        Ok(mcp::Read::Messages(m, bytes)) => (m, bytes),
        Ok(mcp::Read::TooLarge) => {
            let why =
                format!("leash: an MCP message over {} bytes is refused, not passed on unchecked\n", mcp::BODY_LIMIT);
            return Err((text(StatusCode::PAYLOAD_TOO_LARGE, why), 413));
        }
        Ok(mcp::Read::Invalid(e)) => {
            let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("leash: {e}")}});
            return Err((json(StatusCode::BAD_REQUEST, &body), 400));
        }
        Err(e) => return Err((text(StatusCode::BAD_REQUEST, format!("leash: reading the request: {e}\n")), 400)),
    };
    let endpoint = format!("{server}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let sse = c.shared.sse_streams.lock().unwrap_or_else(|p| p.into_inner()).get(&endpoint).cloned();
    let transport = if sse.is_some() { "sse" } else { "streamable-http" };
    let mcp_session = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(8).collect::<String>());
    let mut refused: Vec<(Value, String)> = Vec::new();
    for m in &messages {
        let mut details = std::collections::BTreeMap::new();
        details.insert("transport".to_owned(), transport.to_owned());
        if let Some(s) = &mcp_session {
            details.insert("mcp_session".to_owned(), s.clone());
        }
        if let Some(id) = m.get("id") {
            details.insert("id".to_owned(), id.to_string());
        }
        let method = mcp::method(m).unwrap_or("response");
        details.insert("method".to_owned(), method.to_owned());
        let (action, resource, decision) = match mcp::tool(m) {
            Some(tool) => {
                let (d, resource) = decide_call(c, server, tool, m, &mut details).await;
                if !d.passes()
                    && let Some(id) = m.get("id")
                {
                    refused.push((id.clone(), refusal(tool, server, &d)));
                }
                ("McpCall".to_owned(), resource, Some(d))
            }
            None => (format!("mcp.{method}"), server.to_owned(), None),
        };
        c.shared.events.publish(mcp_event(c, &action, &resource, decision.as_ref(), details));
    }
    if refused.is_empty() {
        let body = UnsyncBoxBody::new(Full::new(bytes).map_err(|n| match n {}));
        return Ok((Request::from_parts(parts, body), true));
    }
    // Every request of the message gets an answer: the refused calls
    // theirs, the others that they were not forwarded.
    let answers: Vec<Value> = messages
        .iter()
        .filter_map(|m| Some((m.get("id")?.clone(), mcp::method(m)?)))
        .map(|(id, _)| match refused.iter().find(|(r, _)| *r == id) {
            Some((_, why)) => mcp::error(&id, why),
            None => mcp::error(&id, "leash: not forwarded: a call in the same message was refused"),
        })
        .collect();
    c.shared.counters.denied.fetch_add(refused.len() as u64, Ordering::Relaxed);
    if let Some(stream) = sse {
        // The SSE transport answers on its event stream; the POST is accepted.
        for a in &answers {
            let _ = stream.send(mcp::sse_event(a));
        }
        let mut r = text(StatusCode::ACCEPTED, "Accepted".into());
        r.headers_mut().remove(hyper::header::CONTENT_TYPE);
        return Err((r, 202));
    }
    let accept = parts.headers.get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let single = messages.len() == 1;
    let payload = if single { answers.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(answers) };
    if accept.contains("text/event-stream") && !accept.contains("application/json") {
        let events: Vec<Value> = match payload {
            Value::Array(a) => a,
            one => vec![one],
        };
        let body: Vec<u8> = events.iter().flat_map(|e| mcp::sse_event(e).to_vec()).collect();
        let mut r = Response::new(UnsyncBoxBody::new(Full::new(Bytes::from(body)).map_err(|n| match n {})));
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/event-stream"));
        return Err((r, 200));
    }
    Err((json(StatusCode::OK, &payload), 200))
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(UnsyncBoxBody::new(Full::new(Bytes::from(v.to_string())).map_err(|n| match n {})));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn mcp_event(
    c: &Conn,
    action: &str,
    resource: &str,
    d: Option<&Decision>,
    details: std::collections::BTreeMap<String, String>,
) -> pb::Event {
    proxy_event(c, pb::EventKind::Mcp, action, resource, d, details)
}

/// An event of this connection's session; without a decision, an
/// observation (the session's mode, no decision).
fn proxy_event(
    c: &Conn,
    kind: pb::EventKind,
    action: &str,
    resource: &str,
    d: Option<&Decision>,
    mut details: std::collections::BTreeMap<String, String>,
) -> pb::Event {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    details.insert("mechanism".to_owned(), "leash-proxy".to_owned());
    details.insert("destination".to_owned(), c.dst.to_string());
    let mode = d.map(|d| d.mode).or_else(|| c.shared.decider.mode(&c.session.id));
    pb::Event {
        seq: 0,
        time_unix_nanos: now.as_nanos() as i64,
        session: c.session.id.clone(),
        pid: 0,
        executable: String::new(),
        kind: kind as i32,
        action: action.to_owned(),
        resource: resource.to_owned(),
        mode: leash_proto::event::mode(mode) as i32,
        decision: match d {
            Some(d) if !d.passes() => pb::Decision::Deny,
            Some(_) => pb::Decision::Allow,
            None => pb::Decision::Unspecified,
        } as i32,
        would_deny: d.is_some_and(Decision::would_deny),
        policy_ids: d.map(|d| d.reasons.clone()).unwrap_or_default(),
        details,
    }
}

/// The tools of `names` that the policy refuses (hidden from listings).
async fn refused_tools(c: &Conn, server: &str, names: &[String]) -> Vec<String> {
    let mut hidden = Vec::new();
    for n in names {
        if !c.shared.decider.mcp_call(&c.session.id, server, n, None).await.passes() {
            hidden.push(n.clone());
        }
    }
    hidden
}

/// A `tools/list` result with the refused tools taken out (and an event
/// saying which), or the message as it was.
async fn filter_listing(c: &Conn, server: &str, mut m: Value) -> Value {
    if let Some(names) = mcp::listed_tools(&m) {
        let hidden = refused_tools(c, server, &names).await;
        if !hidden.is_empty() {
            mcp::hide_tools(&mut m, &hidden);
            let mut details = std::collections::BTreeMap::new();
            details.insert("method".to_owned(), "tools/list".to_owned());
            details.insert("hidden".to_owned(), hidden.join(", "));
            if let Some(id) = m.get("id") {
                details.insert("id".to_owned(), id.to_string());
            }
            c.shared.events.publish(mcp_event(c, "mcp.tools/list", server, None, details));
        }
    }
    m
}

/// An upstream response on its way back: `tools/list` results filtered in
/// JSON (MCP requests) and in every event stream, whose message endpoint
/// (the SSE transport's) is remembered for answering refused calls.
async fn mcp_response(r: Response<Body>, c: &Conn, server: &str, is_mcp: bool) -> Response<Body> {
    let content_type = r
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        let (mut parts, body) = r.into_parts();
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        return Response::from_parts(parts, sse_stream(body, c.clone(), server.to_owned()));
    }
    if !is_mcp || !content_type.starts_with("application/json") {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, mcp::BODY_LIMIT).collect().await else {
        return json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32603, "message": "leash: the MCP server's answer was unreadable or over the limit"}}),
        );
    };
    let bytes = collected.to_bytes();
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for m in items {
                out.push(filter_listing(c, server, m).await);
            }
            Bytes::from(Value::Array(out).to_string())
        }
        Ok(m) if mcp::listed_tools(&m).is_some() => Bytes::from(filter_listing(c, server, m).await.to_string()),
        _ => bytes,
    };
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, UnsyncBoxBody::new(Full::new(out).map_err(|n| match n {})))
}

struct SseState {
    upstream: http_body_util::BodyStream<Body>,
    buf: bytes::BytesMut,
    c: Conn,
    server: String,
    injected: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
    endpoint: Option<String>,
    done: bool,
}

impl Drop for SseState {
    fn drop(&mut self) {
        if let Some(e) = &self.endpoint {
            self.c.shared.sse_streams.lock().unwrap_or_else(|p| p.into_inner()).remove(e);
        }
    }
}

/// An event stream passed on event by event: JSON-RPC listings filtered,
/// the message endpoint registered, refused calls' answers merged in.
fn sse_stream(body: Body, c: Conn, server: String) -> Body {
    let state = SseState {
        upstream: http_body_util::BodyStream::new(body),
        buf: bytes::BytesMut::new(),
        c,
        server,
        injected: None,
        endpoint: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        use futures_util::StreamExt;
        loop {
            if st.done {
                return None;
            }
            let next = match st.injected.as_mut() {
                Some(rx) => tokio::select! {
                    f = st.upstream.next() => Ok(f),
                    Some(b) = rx.recv() => Err(b),
                },
                None => Ok(st.upstream.next().await),
            };
            let frame = match next {
                Err(injected) => return Some((Ok(hyper::body::Frame::data(injected)), st)),
                Ok(None) => {
                    st.done = true;
                    let rest = st.buf.split().freeze();
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(hyper::body::Frame::data(rest)), st));
                }
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Ok(Some(Ok(f))) => f,
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(other) => return Some((Ok(other), st)),
            };
            st.buf.extend_from_slice(&data);
            let mut out = Vec::new();
            for raw in mcp::take_events(&mut st.buf) {
                let (kind, payload) = mcp::parse_event(&raw);
                if kind == "endpoint" && st.endpoint.is_none() {
                    let key = format!("{}{}", st.server, payload.trim());
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    st.c.shared.sse_streams.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), tx);
                    st.endpoint = Some(key);
                    st.injected = Some(rx);
                }
                let listing = payload.contains("\"jsonrpc\"") && payload.contains("\"tools\"");
                match serde_json::from_str::<Value>(&payload).ok().filter(|_| listing) {
                    Some(m) if mcp::listed_tools(&m).is_some() => {
                        let m = filter_listing(&st.c, &st.server, m).await;
                        out.extend_from_slice(format!("event: {kind}\ndata: {m}\n\n").as_bytes());
                    }
                    _ => out.extend_from_slice(&raw),
                }
            }
            if !out.is_empty() {
                return Some((Ok(hyper::body::Frame::data(Bytes::from(out))), st));
            }
        }
    });
    UnsyncBoxBody::new(http_body_util::StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_never_reach_events() {
        let uri: hyper::Uri = "/search?q=secret&page=2&flag".parse().unwrap();
        assert_eq!(redacted_path(&uri), "/search?q=&page=&flag=");
        assert_eq!(redacted_path(&"/a/b".parse().unwrap()), "/a/b");
    }

    #[test]
    fn the_request_host_is_lower_case_without_port() {
        let r = Request::builder().uri("/").header("host", "API.Example.test:8443").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("api.example.test"));
        let r = Request::builder().uri("https://h.test/x").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("h.test"));
        let r = Request::builder().uri("/").header("host", "[2001:db8::1]:80").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("2001:db8::1"));
        let r = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }

    fn head(uri: &str, hosts: &[&str]) -> hyper::http::request::Parts {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn upstream(mut parts: hyper::http::request::Parts, authority: &str, port: u16, h2: bool) -> Request<()> {
        upstream_head(&mut parts, authority, port, true, h2).unwrap();
        Request::from_parts(parts, ())
    }

    #[test]
    fn upstream_sees_the_name_decided_not_the_clients_host() {
        // An absolute-form target decides on its authority; a different
        // Host beside it must not reach the upstream.
        let r = upstream(head("https://allowed.test/x?y=1", &["evil.test"]), "allowed.test", 443, false);
        assert_eq!(r.uri(), "/x?y=1");
        let hosts: Vec<_> = r.headers().get_all("host").iter().collect();
        assert_eq!(hosts, ["allowed.test"]);
        // A second Host (which one an upstream reads varies) is dropped.
        let r = upstream(head("/", &["allowed.test", "evil.test"]), "allowed.test", 8443, false);
        let hosts: Vec<_> = r.headers().get_all("host").iter().collect();
        assert_eq!(hosts, ["allowed.test:8443"]);
        // h2: the authority in the URI, no Host at all.
        let r = upstream(head("https://allowed.test/x", &["evil.test"]), "allowed.test", 443, true);
        assert_eq!(r.uri(), "https://allowed.test/x");
        assert!(r.headers().get("host").is_none());
        assert_eq!(request_host(&r).as_deref(), Some("allowed.test"));
    }

    #[test]
    fn upstream_ipv6_addresses_are_bracketed() {
        let r = upstream(head("/", &[]), "2001:db8::1", 8443, false);
        assert_eq!(r.headers()["host"], "[2001:db8::1]:8443");
        assert_eq!(request_host(&r).as_deref(), Some("2001:db8::1"));
        let r = upstream(head("/a", &[]), "2001:db8::1", 443, true);
        assert_eq!(r.uri(), "https://[2001:db8::1]/a");
        let r = upstream(head("/", &[]), "::ffff:192.0.2.1", 443, false);
        assert_eq!(r.headers()["host"], "[::ffff:192.0.2.1]");
    }

    #[test]
    fn upstream_h2_keeps_an_asterisk_target_out_of_the_authority() {
        let r = upstream(head("*", &[]), "192.0.2.1", 443, false);
        assert_eq!(r.uri(), "*");
        assert_eq!(r.headers()["host"], "192.0.2.1");
        let mut parts = head("*", &[]);
        assert!(upstream_head(&mut parts, "192.0.2.1", 443, true, true).is_err());
    }

    #[test]
    fn upstream_refuses_a_name_it_would_read_back_as_another() {
        // Names from a plain-HTTP Host are the client's word.
        for name in ["x@evil.test", "thost1:db8::1]:8080", "a:b", "evil.test/x", "a b"] {
            for h2 in [false, true] {
                let mut parts = head("/", &[]);
                assert!(upstream_head(&mut parts, name, 80, false, h2).is_err(), "{name:?} (h2 {h2})");
            }
        }
    }
}
