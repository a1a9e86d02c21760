//! The proxy's data path on what an agent sends it: any bytes, as the client
//! side of one intercepted connection (HTTP/1.1, or HTTP/2 after its
//! preface), are served by the real hyper connection code and request
//! handling, decided on a fixed policy (only `allowed.test` by name; one
//! address refused), with the upstream unreachable. The first byte picks
//! the connection: plain or TLS-terminated, with or without SNI, the
//! destination's port and address, enforce or shadow mode.
//!
//! Checked: every request decided is decided on the name the request (or,
//! over TLS, the handshake) names, as `request_host` extracts it, and at
//! most once; over TLS with SNI always on the SNI; nothing but the allowed
//! name (or, with no name, the address) is allowed, and never at the
//! refused address however it is spelled; and the head that would go
//! upstream names exactly the name decided (one `Host`, or the h2
//! authority), whatever the client's target and `Host` headers say, or is
//! refused (a plain-HTTP `Host` that is no host name).
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use leash_core::Mode;
use leash_core::tables::{Rewrite, Tables, Verdict};
use leash_proto::v1 as pb;
use leash_proxy::ca::SessionCa;
use leash_proxy::decide::{Decider, Held};
use leash_proxy::netns::Netns;
use leash_proxy::serve::{self, Counters, Session, Shared};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SESSION: &str = "fuzz";
const ALLOWED: &str = "allowed.test";
const PORTS: [u16; 4] = [80, 443, 8443, 8080];
/// The destination's address: two allowed, the refused one in two spellings.
const ADDRESSES: [&str; 4] = ["192.0.2.1", "2001:db8::1", "192.0.2.66", "::ffff:192.0.2.66"];
const REFUSED: &str = "192.0.2.66";

struct Fixed {
    runtime: tokio::runtime::Runtime,
    provider: Arc<rustls::crypto::CryptoProvider>,
    upstream: (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>),
    session: Arc<Session>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        // A paused clock moves on whenever every task waits: a connection
        // left idle ends at once, in virtual time.
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("a runtime");
        #[allow(deprecated, reason = "the provider leash-proxy runs with")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let upstream =
            serve::upstream_configs(provider.clone(), rustls::RootCertStore::empty()).expect("upstream configs");
        let ca = Arc::new(SessionCa::mint(SESSION, provider.clone()).expect("a session CA"));
        let session =
            Arc::new(Session { id: SESSION.into(), netns: Netns::detached(0), ca, stop: CancellationToken::new() });
        Fixed { runtime, provider, upstream, session }
    })
}

/// The policy: `allowed.test` by name (any port), nothing else by name;
/// every address but `192.0.2.66`; a header set on `allowed.test`.
fn tables() -> Tables {
    let v = Verdict::new;
    let mut t = Tables::default();
    t.reasons = vec![
        vec!["allow-host".into()],
        vec!["no-host".into()],
        vec!["refuse-address".into()],
        vec!["allow-address".into()],
    ];
    t.hosts.exact.insert(ALLOWED.into(), v(true, 0));
    t.hosts.default = Some(v(false, 1));
    t.net.exact.insert(REFUSED.parse().expect("an address"), v(false, 2));
    t.net.default_v4 = Some(v(true, 3));
    t.net.default_v6 = Some(v(true, 3));
    t.rewrites =
        vec![Rewrite { host: ALLOWED.into(), header: "x-leash-fuzz".into(), value: "injected".into(), reason: 0 }];
    t
}

fn shared(f: &Fixed, mode: Mode) -> Arc<Shared> {
    let decider = Arc::new(Decider::new("/nonexistent/leash-fuzz/policy.sock".into()));
    decider.hold(SESSION, Held { tables: tables(), mode: Some(mode) });
    Arc::new(Shared {
        decider,
        provider: f.provider.clone(),
        upstream_h1: f.upstream.0.clone(),
        upstream_h2: f.upstream.1.clone(),
        events: Arc::new(leash_daemon::fanout::Fanout::default()),
        sensor_socket: "/nonexistent/leash-fuzz/sensor.sock".into(),
        sensor: tokio::sync::OnceCell::new(),
        counters: Counters::default(),
        sse_streams: Default::default(),
    })
}

/// The connection the first byte describes.
#[derive(Clone, Debug)]
struct Setup {
    tls: bool,
    sni: Option<String>,
    h2: bool,
    dst: SocketAddr,
    mode: Mode,
}

impl Setup {
    fn from(b: u8) -> Setup {
        let tls = b & 1 != 0;
        let sni = (tls && b & 2 != 0).then(|| ALLOWED.to_owned());
        let h2 = tls && b & 4 != 0;
        let port = PORTS[usize::from(b >> 3) & 3];
        let ip: IpAddr = ADDRESSES[usize::from(b >> 6) & 3].parse().expect("an address");
        let mode = if b & 0x20 != 0 { Mode::Shadow } else { Mode::Enforce };
        Setup { tls, sni, h2, dst: SocketAddr::new(ip, port), mode }
    }

    /// The name a request is decided on: over TLS the handshake's, else
    /// the request's.
    fn name(&self, host: Option<String>) -> Option<String> {
        if self.tls { self.sni.clone().or(host) } else { host }
    }

    fn refused_address(&self) -> bool {
        leash_core::tables::normalize_ip(self.dst.ip()) == REFUSED.parse::<IpAddr>().expect("an address")
    }
}

/// How long a connection may sit idle (virtual time) before it is ended.
const IDLE: Duration = Duration::from_secs(60);

/// Writes `input` as the client and reads whatever comes back, keeping its
/// side open (a client that shuts its side down at once has hyper drop
/// the request it just sent): the connection ends when the server closes
/// it or it sits idle.
async fn client(io: tokio::io::DuplexStream, input: &[u8]) {
    let (mut r, mut w) = tokio::io::split(io);
    let write = async {
        let _ = w.write_all(input).await;
        std::future::pending::<()>().await;
    };
    let mut out = Vec::new();
    tokio::select! {
        () = write => {}
        _ = r.read_to_end(&mut out) => {}
    }
}

/// The real data path: the HTTP events it published.
async fn real(f: &Fixed, s: &Setup, input: &[u8]) -> Vec<pb::Event> {
    let shared = shared(f, s.mode);
    let stop = CancellationToken::new();
    let mut events = shared.events.follow(stop.clone());
    let (near, far) = tokio::io::duplex(1 << 16);
    let served = serve::serve_connection(far, f.session.clone(), shared.clone(), s.dst, s.sni.clone(), s.tls, s.h2);
    let _ = tokio::time::timeout(IDLE, async { tokio::join!(served, client(near, input)) }).await;
    // The streams of an h2 connection may finish after it, and the events
    // reach the follower through a task of its own.
    let requests = || shared.counters.requests.load(std::sync::atomic::Ordering::Relaxed);
    let mut http = Vec::new();
    for _ in 0..64 {
        while let Some(Some(Ok(batch))) = events.next().now_or_never() {
            http.extend(batch.events.into_iter().filter(|e| e.kind == pb::EventKind::Http as i32));
        }
        if http.len() as u64 >= requests() {
            break;
        }
        tokio::task::yield_now().await;
    }
    stop.cancel();
    assert!(http.len() as u64 <= requests(), "{} events for {} requests", http.len(), requests());
    http
}

fn copy(parts: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = parts.method.clone();
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
}

/// The same bytes through hyper alone: for each request, the resource it
/// must be decided on; and the upstream head checked against that name.
async fn expected(s: &Setup, input: &[u8]) -> Vec<String> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (near, far) = tokio::io::duplex(1 << 16);
    let (setup, record) = (s.clone(), seen.clone());
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (s, seen) = (setup.clone(), record.clone());
        async move {
            let host = serve::request_host(&req);
            let name = s.name(host.clone());
            let port = s.dst.port();
            let authority = name.clone().unwrap_or_else(|| s.dst.ip().to_string());
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{authority}:{port}"));
            let fronting = s.tls && s.sni.is_some() && host.is_some() && s.sni != host;
            let (parts, body) = req.into_parts();
            if !fronting {
                for h2 in [false, true] {
                    let mut up = copy(&parts);
                    match serve::upstream_head(&mut up, &authority, port, s.tls, h2) {
                        Ok(()) => {
                            let up = Request::from_parts(up, ());
                            assert_eq!(
                                serve::request_host(&up).as_deref(),
                                Some(authority.as_str()),
                                "upstream (h2 {h2}) of {parts:?}: {up:?}"
                            );
                            if h2 {
                                assert!(up.headers().get(hyper::header::HOST).is_none(), "{up:?}");
                            } else {
                                assert!(up.uri().authority().is_none(), "{up:?}");
                                assert_eq!(up.headers().get_all(hyper::header::HOST).iter().count(), 1, "{up:?}");
                            }
                        }
                        // Only a name that is the client's own word (a plain
                        // Host) may be no host name at all.
                        Err(e) => assert!(
                            h2 || (s.sni.is_none() && host.is_some()),
                            "no HTTP/1.1 head for {authority:?} from {parts:?}: {e}"
                        ),
                    }
                }
            }
            let _ = body.collect().await;
            // What the proxy answers with the upstream unreachable (a 502):
            // after a CONNECT, a 2xx would end HTTP on the connection here
            // while the proxy goes on reading requests.
            let mut r = Response::new(Empty::<Bytes>::new());
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(TokioIo::new(far), service);
    // The connection ends idle: every request has been seen by then.
    let _ = tokio::time::timeout(IDLE, async { tokio::join!(served, client(near, input)) }).await;
    std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else { return };
    let s = Setup::from(first);
    let f = fixed();
    f.runtime.block_on(async {
        let events = real(f, &s, input).await;
        let mut expected = expected(&s, input).await;
        let port = s.dst.port();
        for e in &events {
            let name = e.resource.strip_suffix(&format!(":{port}")).unwrap_or_else(|| panic!("{e:?} {s:?}"));
            assert!(!name.is_empty() && !name.ends_with('.') && !name.bytes().any(|b| b.is_ascii_uppercase()), "{e:?}");
            if let Some(sni) = &s.sni {
                assert_eq!(name, sni, "over TLS the SNI is decided: {e:?}");
            }
            let allowed = e.decision == pb::Decision::Allow as i32 && !e.would_deny;
            if allowed {
                assert!(name == ALLOWED || name == s.dst.ip().to_string(), "{name} allowed: {e:?} {s:?}");
                assert!(!s.refused_address(), "the refused address allowed: {e:?} {s:?}");
            }
            let i = expected
                .iter()
                .position(|r| *r == e.resource)
                .unwrap_or_else(|| panic!("decided {:?}; the requests name {expected:?} ({s:?})", e.resource));
            expected.swap_remove(i);
        }
    });
});
