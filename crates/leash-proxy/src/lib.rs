//! The L7 layer: transparent HTTPS interception of each session's TCP 80
//! and 443, decided on the names the agent asks for.
//!
//! For each session, leashd asks the proxy to mint a certificate authority
//! (`Prepare`, before the container exists), then to intercept
//! (`Intercept`, an admission step): a listener inside the container's
//! network namespace and redirect rules there. A restarted proxy takes its
//! running sessions back from `<state>/proxy/`.

pub mod ask;
pub mod ca;
pub mod decide;
pub mod dns;
pub mod egress;
pub mod mcp;
pub mod netns;
pub mod relay;
pub mod request;
pub mod secrets;
pub mod serve;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use leash_core::Component;
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
use leash_proto::v1 as pb;
use leash_proto::v1::proxy_server::{Proxy, ProxyServer};
use leash_proto::v1::{ComponentReport, ProxyStatusRequest, ShutdownRequest, ShutdownResponse};
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

/// Extra upstream roots (a PEM file), beside the system's, from leashd's
/// environment: for private CAs.
pub const UPSTREAM_CA_ENV: &str = "LEASH_UPSTREAM_CA";
/// The system's roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

struct Entry {
    ca: Arc<ca::SessionCa>,
    vault: Arc<secrets::Vault>,
    intercepted: Option<Arc<serve::Session>>,
}

/// What survives a restart, in `<state>/proxy/sessions/<id>.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    pid: u32,
    /// The container init's start time (clock ticks), so a reused pid is not
    /// mistaken for it.
    start: u64,
    /// The container's resolvers, read before its command ran (never again
    /// from the container, which the agent can write).
    #[serde(default)]
    resolvers: Vec<std::net::IpAddr>,
    /// How the DNS relay answers a refused name (`InterceptRequest.dns_refusal`).
    #[serde(default)]
    dns_refusal: String,
    /// How long a denied request waits for the user's answer (0: not asked).
    #[serde(default)]
    ask_ms: u32,
}

struct Service {
    core: ComponentCore,
    shared: Arc<serve::Shared>,
    sessions: Mutex<HashMap<String, Entry>>,
    state: PathBuf,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn valid_session_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Status::invalid_argument(format!("invalid session id {id:?}")));
    }
    Ok(())
}

impl Service {
    fn ca_dir(&self) -> PathBuf {
        self.state.join("ca")
    }

    fn secrets_dir(&self) -> PathBuf {
        self.state.join("secrets")
    }

    fn saved_path(&self, session: &str) -> PathBuf {
        self.state.join("sessions").join(format!("{session}.json"))
    }

    /// Opens the listeners and rules in the container of `pid` and serves them.
    async fn start_intercepting(
        &self,
        session: &str,
        pid: u32,
        ca: Arc<ca::SessionCa>,
        vault: Arc<secrets::Vault>,
        relay: relay::Config,
        ask_ms: u32,
    ) -> anyhow::Result<(Arc<serve::Session>, Vec<String>)> {
        let netns = netns::Netns::enter(pid)?;
        let listeners = netns.run(netns::open_listeners).await??;
        let rules = netns::install_rules(pid, listeners.v6.is_some())?;
        self.shared.decider.refresh(session).await.map_err(|e| anyhow::anyhow!(e))?;
        let s = Arc::new(serve::Session {
            id: session.to_owned(),
            netns,
            ca,
            vault,
            stop: self.core.shutdown.child_token(),
            ask: (ask_ms > 0).then(|| std::time::Duration::from_millis(ask_ms.into())),
        });
        for l in std::iter::once(listeners.v4).chain(listeners.v6) {
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(serve::accept(l, s.clone(), self.shared.clone()));
        }
        let relay = Arc::new(relay);
        for u in listeners.dns_udp {
            tokio::spawn(relay::udp(u, s.clone(), self.shared.clone(), relay.clone()));
        }
        for t in listeners.dns_tcp {
            tokio::spawn(relay::tcp(t, s.clone(), self.shared.clone(), relay.clone()));
        }
        Ok((s, rules))
    }

    /// Takes back the sessions a previous proxy intercepted.
    async fn restore(&self) {
        let dir = self.state.join("sessions");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(session) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
            let saved: Option<Saved> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let alive = saved.as_ref().filter(|s| start_time(s.pid) == Some(s.start));
            let Some(saved) = alive else {
                let _ = std::fs::remove_file(&path);
                ca::forget(&self.ca_dir(), &session);
                secrets::Vault::forget(&self.secrets_dir(), &session);
                continue;
            };
            let restored = async {
                let ca = Arc::new(ca::SessionCa::load(&self.ca_dir(), &session, self.shared.provider.clone())?);
                let vault = Arc::new(secrets::Vault::load(&self.secrets_dir(), &session)?);
                // A setting this proxy cannot read refuses as by default.
                let refusal = relay::Refusal::parse(&saved.dns_refusal).unwrap_or_default();
                let config = relay::Config { resolvers: saved.resolvers.clone(), refusal };
                let (s, _) = self
                    .start_intercepting(&session, saved.pid, ca.clone(), vault.clone(), config, saved.ask_ms)
                    .await?;
                anyhow::Ok((ca, vault, s))
            };
            match restored.await {
                Ok((ca, vault, s)) => {
                    tracing::info!(session_id = %session, pid = saved.pid, "intercepting the session again");
                    self.sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(session, Entry { ca, vault, intercepted: Some(s) });
                }
                Err(e) => {
                    tracing::error!(session_id = %session, error = %format!("{e:#}"), "cannot intercept the session again; its HTTP(S) is refused");
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Proxy for Service {
    type EventsStream = leash_daemon::fanout::EventStream;

    async fn status(&self, _: Request<ProxyStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        let c = &self.shared.counters;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let intercepted = sessions.values().filter(|e| e.intercepted.is_some()).count();
        Ok(self.core.report(vec![
            ("sessions", intercepted.to_string()),
            ("connections", c.connections.load(Ordering::Relaxed).to_string()),
            ("requests", c.requests.load(Ordering::Relaxed).to_string()),
            ("denied", c.denied.load(Ordering::Relaxed).to_string()),
            ("upstream_errors", c.upstream_errors.load(Ordering::Relaxed).to_string()),
            ("dropped_events", self.shared.events.dropped().to_string()),
            ("folded_events", self.shared.events.folded().to_string()),
        ]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }

    async fn prepare(
        &self,
        req: Request<pb::ProxyPrepareRequest>,
    ) -> Result<Response<pb::ProxyPrepareResponse>, Status> {
        leash_daemon::access::require_privileged(&req, "preparing a session")?;
        let req = req.into_inner();
        let session = req.session;
        valid_session_id(&session)?;
        let vault = secrets::Vault::new(req.secrets).map_err(Status::invalid_argument)?;
        let ca = ca::SessionCa::mint(&session, self.shared.provider.clone())
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        ca.save(&self.ca_dir(), &session).map_err(|e| Status::internal(format!("{e:#}")))?;
        vault.save(&self.secrets_dir(), &session).map_err(|e| Status::internal(format!("{e:#}")))?;
        let pem = ca.cert_pem.clone();
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, Entry { ca: Arc::new(ca), vault: Arc::new(vault), intercepted: None });
        if let Some(s) = old.and_then(|e| e.intercepted) {
            s.stop.cancel();
        }
        Ok(Response::new(pb::ProxyPrepareResponse { ca_certificate_pem: pem }))
    }

    async fn intercept(&self, req: Request<pb::InterceptRequest>) -> Result<Response<pb::InterceptResponse>, Status> {
        leash_daemon::access::require_privileged(&req, "intercepting a session")?;
        let req = req.into_inner();
        valid_session_id(&req.session)?;
        let refusal = relay::Refusal::parse(&req.dns_refusal).map_err(Status::invalid_argument)?;
        let (ca, vault) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.session)
            .map(|e| (e.ca.clone(), e.vault.clone()))
            .ok_or_else(|| Status::failed_precondition(format!("session {} was not prepared", req.session)))?;
        // Read before the session's command runs: nothing of the agent's yet.
        let resolvers = leash_daemon::net::resolvers_of(req.pid);
        let config = relay::Config { resolvers: resolvers.clone(), refusal };
        let (s, rules) = self
            .start_intercepting(&req.session, req.pid, ca, vault, config, req.ask_timeout_ms)
            .await
            .map_err(|e| Status::failed_precondition(format!("cannot intercept the session: {e:#}")))?;
        let saved = Saved {
            pid: req.pid,
            start: start_time(req.pid).unwrap_or(0),
            resolvers,
            dns_refusal: refusal.as_str().to_owned(),
            ask_ms: req.ask_timeout_ms,
        };
        let path = self.saved_path(&req.session);
        let written = std::fs::create_dir_all(path.parent().unwrap_or(&self.state))
            .and_then(|()| std::fs::write(&path, serde_json::to_vec(&saved).unwrap_or_default()));
        if let Err(e) = written {
            tracing::warn!(session_id = %req.session, error = %e, "cannot save the session; a restarted proxy will not take it back");
        }
        if let Some(e) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&req.session)
            && let Some(old) = e.intercepted.replace(s)
        {
            old.stop.cancel();
        }
        tracing::info!(session_id = %req.session, pid = req.pid, "intercepting the session's HTTP(S)");
        Ok(Response::new(pb::InterceptResponse { port: u32::from(netns::LISTEN_PORT), rules }))
    }

    async fn close(&self, req: Request<pb::ProxyCloseRequest>) -> Result<Response<pb::ProxyCloseResponse>, Status> {
        leash_daemon::access::require_privileged(&req, "closing a session")?;
        let session = req.into_inner().session;
        valid_session_id(&session)?;
        if let Some(e) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&session)
            && let Some(s) = e.intercepted
        {
            s.stop.cancel();
        }
        ca::forget(&self.ca_dir(), &session);
        secrets::Vault::forget(&self.secrets_dir(), &session);
        let _ = std::fs::remove_file(self.saved_path(&session));
        self.shared.decider.forget(&session);
        Ok(Response::new(pb::ProxyCloseResponse {}))
    }

    async fn answer(&self, req: Request<pb::AnswerRequest>) -> Result<Response<pb::AnswerResponse>, Status> {
        leash_daemon::access::require_privileged(&req, "answering a question")?;
        let req = req.into_inner();
        if !self.shared.asks.answer(&req) {
            tracing::info!(session_id = %req.session, ask_id = req.ask_id, "an answer for no waiting request (answered, or too late)");
        }
        Ok(Response::new(pb::AnswerResponse {}))
    }

    async fn events(&self, _: Request<pb::ProxyEventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        Ok(Response::new(self.shared.events.follow(self.core.shutdown.clone())))
    }
}

/// The system's roots and the configured extra ones.
fn upstream_roots() -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let system = std::fs::read(SYSTEM_ROOTS).unwrap_or_default();
    let (added, _) = roots.add_parsable_certificates(ca::pem_certificates(&system));
    if let Ok(extra) = std::env::var(UPSTREAM_CA_ENV) {
        let text = std::fs::read(&extra).with_context(|| format!("{UPSTREAM_CA_ENV}={extra}"))?;
        let certs = ca::pem_certificates(&text);
        if certs.is_empty() {
            anyhow::bail!("{UPSTREAM_CA_ENV}={extra}: no PEM certificate in it");
        }
        roots.add_parsable_certificates(certs);
    }
    tracing::debug!(system = added, total = roots.len(), "upstream roots");
    Ok(roots)
}

/// Runs the proxy until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    // Two descriptors per proxied connection: the soft limit's usual 1,024
    // would cap a session at a few hundred.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let state = ctx.layout.state_dir.join("proxy");
    ca::private_dir(&state)?;
    ca::private_dir(&state.join("ca"))?;
    let (upstream_h1, upstream_h2) = serve::upstream_configs(provider.clone(), upstream_roots()?)?;
    let decider = Arc::new(decide::Decider::new(ctx.layout.component_socket(Component::Policy)));
    let shared = Arc::new(serve::Shared {
        decider: decider.clone(),
        provider,
        upstream_h1,
        upstream_h2,
        events: Arc::new(leash_daemon::fanout::Fanout::default()),
        sensor_socket: ctx.layout.component_socket(Component::Sensor),
        sensor: tokio::sync::OnceCell::new(),
        counters: serve::Counters::default(),
        sse_streams: Default::default(),
        asks: Default::default(),
    });
    let bound = ctx.bind_component(Component::Proxy)?;
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let service = Arc::new(Service { core, shared, sessions: Mutex::new(HashMap::new()), state });
    service.restore().await;
    tokio::spawn(decide::follow(decider, ctx.shutdown.clone()));
    let mut routes = RoutesBuilder::default();
    routes.add_service(ProxyServer::from_arc(service));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    Ok(())
}
