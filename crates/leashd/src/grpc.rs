//! The Manager service: what `leash` and `leashctl` call. Proto types stop here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leash_core::Event;
use leash_daemon::DaemonInfo;
use leash_daemon::access::require_privileged;
use leash_proto::v1 as pb;
use leash_proto::v1::manager_server::Manager;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::hub::Hub;
use crate::supervisor::{State, Supervisor, View};

/// How long a status call waits for each component's own report.
const COMPONENT_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `stop --all` waits for each component to exit before SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// The Manager service.
#[derive(Clone, Debug)]
pub struct ManagerService {
    /// leashd's identity.
    pub info: DaemonInfo,
    /// leashd's layout.
    pub layout: leash_core::Layout,
    /// The supervisor.
    pub supervisor: Supervisor,
    /// The event hub.
    pub hub: Hub,
    /// The audit store, when it could be opened.
    pub audit: Option<std::sync::Arc<crate::audit::Audit>>,
    /// leashd's root token.
    pub shutdown: CancellationToken,
    /// Sessions.
    pub sessions: crate::session::Sessions,
    /// The Control UI, once it is started.
    pub api: Arc<std::sync::OnceLock<crate::api::handle::Handle>>,
    /// The OTLP exporter's counters, when one runs.
    pub otlp: Option<Arc<crate::otlp::Counters>>,
}

#[tonic::async_trait]
impl Manager for ManagerService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let views = self.supervisor.snapshot().await;
        let (components, engine) =
            tokio::join!(futures_join_all(views.into_iter().map(component_status)), crate::engine::describe());
        let stats = self.hub.stats();
        Ok(Response::new(pb::StatusResponse {
            leashd: Some(self.info.hello()),
            socket: self.layout.manager_socket().display().to_string(),
            runtime_dir: self.layout.runtime_dir.display().to_string(),
            state_dir: self.layout.state_dir.display().to_string(),
            components,
            sessions: self.sessions.count() as u32,
            events: Some(pb::HubStatus {
                published: stats.published,
                dropped: stats.dropped,
                subscribers: stats.subscribers,
                queue_capacity: stats.queue_capacity,
                stored: self.audit.as_ref().map_or(0, |a| a.written.load(std::sync::atomic::Ordering::Relaxed)),
                store_failed: self.audit.as_ref().map_or(0, |a| a.dropped.load(std::sync::atomic::Ordering::Relaxed)),
            }),
            facts: std::iter::once(pb::Fact { name: "engine".to_owned(), value: engine })
                .chain(self.otlp.as_ref().map(|c| pb::Fact {
                    name: "otlp".to_owned(),
                    value: format!(
                        "{} exported, {} failed",
                        c.exported.load(std::sync::atomic::Ordering::Relaxed),
                        c.failed.load(std::sync::atomic::Ordering::Relaxed)
                    ),
                }))
                .collect(),
            api: Some(self.api_status()),
            rss_bytes: crate::proc::rss_bytes(std::process::id()),
            pss_bytes: crate::proc::pss_bytes(std::process::id()),
        }))
    }

    type EventsStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let req = req.into_inner();
        let query = crate::audit::Query {
            session: (!req.session.is_empty()).then(|| req.session.clone()),
            since_ns: (req.since_unix_nanos > 0).then_some(req.since_unix_nanos),
            action: (!req.action.is_empty()).then(|| req.action.clone()),
            decision: (!req.decision.is_empty()).then(|| req.decision.clone()),
            contains: (!req.contains.is_empty()).then(|| req.contains.clone()),
            tail: req.tail,
        };
        // Live events are queued from before the stored ones are read;
        // those already stored are skipped by time.
        let (memory, live) = self.hub.subscribe(req.tail as usize, req.follow);
        let backlog: Vec<pb::Event> = match &self.audit {
            Some(a) => self.stored(a, query.clone()).await?,
            None => memory.iter().map(|s| s.to_proto()).filter(|e| matches(&query, e)).collect(),
        };
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut newest = 0;
            for e in backlog {
                newest = newest.max(e.time_unix_nanos);
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    e = live.recv() => match e {
                        Some(e) => {
                            let e = e.to_proto();
                            if e.time_unix_nanos <= newest || !matches(&query, &e) {
                                continue;
                            }
                            if tx.send(Ok(e)).await.is_err() { return }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stop_all(&self, req: Request<pb::StopAllRequest>) -> Result<Response<pb::StopAllResponse>, Status> {
        let caller = require_privileged(&req, "stopping leash")?;
        tracing::info!(uid = caller.uid, pid = ?caller.pid, "stop --all requested");
        let views = self.supervisor.stop_all().await;
        let stopped = futures_join_all(views.into_iter().filter(|v| v.pid.is_some()).map(stop_component)).await;
        self.hub.publish(Event::daemon("daemon.stop", self.info.name, self.info.pid).with("reason", "stop --all"));
        // Replying still works: the server drains in-flight calls.
        self.shutdown.cancel();
        Ok(Response::new(pb::StopAllResponse { stopped }))
    }

    type SessionStream = ReceiverStream<Result<pb::SessionOutput, Status>>;

    async fn session(
        &self,
        req: Request<tonic::Streaming<pb::SessionInput>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let sessions = self.sessions.clone();
        match input.message().await? {
            Some(pb::SessionInput { input: Some(pb::session_input::Input::Start(s)) }) => {
                tokio::spawn(sessions.run(caller, s, input, tx));
            }
            Some(pb::SessionInput { input: Some(pb::session_input::Input::Attach(a)) }) => {
                tokio::spawn(sessions.attach(caller, a, input, tx));
            }
            Some(pb::SessionInput { input: Some(pb::session_input::Input::Exec(e)) }) => {
                tokio::spawn(sessions.exec(caller, e, input, tx));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "a session starts with a SessionStart, SessionAttach or SessionExec message",
                ));
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let req = req.into_inner();
        let only = (!req.id.is_empty()).then(|| self.sessions.resolve(&caller, &req.id)).transpose()?;
        let sessions = self
            .sessions
            .list(&caller)
            .iter()
            .filter(|i| only.as_ref().is_none_or(|id| *id == i.id))
            .map(|i| {
                let mut info = crate::session::info_to_proto(i);
                if req.mcp_views {
                    info.mcp_views = self.sessions.mcp_views(&i.id);
                }
                info
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn policy_validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        self.policy().await?.validate(req.into_inner()).await
    }

    async fn policy_check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        if !req.session.is_empty() {
            req.session = self.sessions.resolve(&caller, &req.session)?;
        }
        self.policy().await?.check(req).await
    }

    async fn policy_set(&self, req: Request<pb::SetLayerRequest>) -> Result<Response<pb::EditResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        req.session = self.policy_key(&caller, &req.session)?;
        if req.sources.is_empty() {
            return Err(Status::invalid_argument("no policy given"));
        }
        // A watched file must stay the caller's.
        req.owner = caller.uid;
        let r = self.policy().await?.set_layer(req.clone()).await?;
        self.publish_policy("policy.set", &req.session, r.get_ref());
        Ok(r)
    }

    async fn policy_edit(&self, req: Request<pb::EditRequest>) -> Result<Response<pb::EditResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        req.session = self.policy_key(&caller, &req.session)?;
        let r = self.policy().await?.edit(req.clone()).await?;
        self.publish_policy("policy.edit", &req.session, r.get_ref());
        Ok(r)
    }

    async fn policy_persist(&self, req: Request<pb::PersistRequest>) -> Result<Response<pb::PersistResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        req.session = self.policy_key(&caller, &req.session)?;
        let r = self.policy().await?.persist(req.clone()).await?;
        if let Some(result) = &r.get_ref().result {
            self.publish_policy("policy.persist", &req.session, result);
        }
        Ok(r)
    }

    async fn doctor(&self, req: Request<pb::DoctorRequest>) -> Result<Response<pb::DoctorResponse>, Status> {
        require_privileged(&req, "the doctor's self-test")?;
        let without = req.into_inner().without;
        let channel = self
            .supervisor
            .channel(leash_core::Component::Sensor)
            .await
            .ok_or_else(|| Status::unavailable("leash-sensor is not running (see `leashctl status`)"))?;
        let mut sensor = pb::sensor_client::SensorClient::new(channel);
        let capabilities = sensor.capabilities(pb::CapabilitiesRequest {}).await?.into_inner();
        let self_test = sensor.self_test(pb::SelfTestRequest { without }).await?.into_inner();
        Ok(Response::new(pb::DoctorResponse { capabilities: Some(capabilities), self_test: Some(self_test) }))
    }

    async fn policy_tables(&self, req: Request<pb::TablesRequest>) -> Result<Response<pb::DecisionTables>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        if !req.session.is_empty() {
            req.session = self.sessions.resolve(&caller, &req.session)?;
        }
        let mut tables = self.policy().await?.tables(req).await?.into_inner();
        // Injected values are secrets: leashd never hands them out.
        for r in &mut tables.rewrites {
            r.value = "(redacted)".into();
        }
        Ok(Response::new(tables))
    }

    async fn policy_show(&self, req: Request<pb::ShowRequest>) -> Result<Response<pb::ShowResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        if !req.session.is_empty() {
            req.session = self.sessions.resolve(&caller, &req.session)?;
        }
        self.policy().await?.show(req).await
    }

    async fn policy_set_mode(&self, req: Request<pb::SetModeRequest>) -> Result<Response<pb::SetModeResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let mut req = req.into_inner();
        // Only the session's owner (or root) may change it.
        req.session = self.sessions.resolve(&caller, &req.session)?;
        let r = self.policy().await?.set_mode(req.clone()).await?;
        let mut e = leash_core::Event::daemon("policy.mode", "leash-policy", 0)
            .with("mode", req.mode)
            .with("previous", r.get_ref().previous.clone());
        e.kind = leash_core::EventKind::Policy;
        e.session = Some(req.session);
        self.hub.publish(e);
        Ok(r)
    }

    async fn ui_login(&self, req: Request<pb::UiLoginRequest>) -> Result<Response<pb::UiLoginResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let handle = self.api.get().cloned().unwrap_or_default();
        let Some(url) = handle.login_url() else {
            let state = handle.state();
            return Err(Status::unavailable(match (state.listen, state.error) {
                (None, _) => "the Control UI is disabled (leashd's listen address is empty)".to_owned(),
                (_, Some(e)) => format!("the Control UI is not served: {e}"),
                (Some(a), None) => format!("the Control UI on {a} is not served yet"),
            }));
        };
        tracing::info!(uid = caller.uid, pid = ?caller.pid, "a Control UI login code was issued");
        Ok(Response::new(pb::UiLoginResponse { url }))
    }

    async fn policy_replay(
        &self,
        req: Request<pb::PolicyReplayRequest>,
    ) -> Result<Response<pb::PolicyReplayResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let req = req.into_inner();
        let q = crate::audit::Query { session: Some(req.session.clone()), ..Default::default() };
        let stored = async {
            match &self.audit {
                Some(a) => self.stored(a, q).await.map(Some),
                None => Ok(None),
            }
        };
        crate::replay::run(caller, req, stored, self.policy()).await.map(Response::new)
    }

    async fn stop_session(
        &self,
        req: Request<pb::StopSessionRequest>,
    ) -> Result<Response<pb::StopSessionResponse>, Status> {
        let caller = leash_daemon::access::require_peer(&req)?;
        let id = self.sessions.stop(&caller, &req.get_ref().id).await?;
        Ok(Response::new(pb::StopSessionResponse { id }))
    }
}

impl ManagerService {
    /// The policy a change names: a session the caller owns (or any, for
    /// root), or the default for new sessions, which only root may change.
    fn policy_key(&self, caller: &leash_daemon::access::Peer, session: &str) -> Result<String, Status> {
        if session.is_empty() {
            if caller.uid != 0 {
                return Err(Status::permission_denied(
                    "only root may change the default policy for new sessions; name a session with --session",
                ));
            }
            return Ok(String::new());
        }
        self.sessions.resolve(caller, session)
    }

    /// Publishes an applied policy change as an event.
    fn publish_policy(&self, name: &str, session: &str, r: &pb::EditResponse) {
        if !r.valid {
            return;
        }
        let mut e = leash_core::Event::daemon(name, "leash-policy", 0)
            .with("policies", r.policies.to_string())
            .with("generation", r.generation.to_string());
        e.kind = leash_core::EventKind::Policy;
        e.session = (!session.is_empty()).then(|| session.to_owned());
        self.hub.publish(e);
    }

    /// The stored events matching `q`, once the store has everything
    /// published before the call.
    pub async fn stored(
        &self,
        audit: &Arc<crate::audit::Audit>,
        q: crate::audit::Query,
    ) -> Result<Vec<pb::Event>, Status> {
        let published = self.hub.seq();
        let a = audit.clone();
        tokio::task::spawn_blocking(move || {
            a.wait_for(published, std::time::Duration::from_secs(2));
            a.query(&q)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("the audit store: {e:#}")))
    }

    /// The Control UI's state for `leashctl status`.
    fn api_status(&self) -> pb::ApiStatus {
        let state = self.api.get().map(crate::api::handle::Handle::state).unwrap_or_default();
        pb::ApiStatus {
            url: state.bound.map(|b| leash_core::listen::url(&b)).unwrap_or_default(),
            error: state.error.unwrap_or_default(),
            // The address served once bound (port 0 asks for any), else the configured one.
            listen: state.bound.or(state.listen).map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    /// A client of the running policy service.
    pub async fn policy(&self) -> Result<pb::policy_client::PolicyClient<tonic::transport::Channel>, Status> {
        let channel = self
            .supervisor
            .channel(leash_core::Component::Policy)
            .await
            .ok_or_else(|| Status::unavailable("leash-policy is not running (see `leashctl status`)"))?;
        Ok(pb::policy_client::PolicyClient::new(channel)
            .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES))
    }
}

/// Asks a component to stop, then waits for it; SIGKILL when it lingers.
async fn stop_component(v: View) -> String {
    let name = v.component.binary().to_owned();
    let Some(pid) = v.pid else { return name };
    let wait = crate::proc::wait_exit(pid);
    tokio::pin!(wait);
    let asked = match v.channel {
        Some(ch) => {
            let req = pb::ShutdownRequest { reason: "leashctl stop --all".to_owned() };
            let call = async {
                match v.component {
                    leash_core::Component::Policy => {
                        pb::policy_client::PolicyClient::new(ch).shutdown(req).await.map(drop)
                    }
                    leash_core::Component::Sensor => {
                        pb::sensor_client::SensorClient::new(ch).shutdown(req).await.map(drop)
                    }
                    leash_core::Component::Proxy => {
                        pb::proxy_client::ProxyClient::new(ch).shutdown(req).await.map(drop)
                    }
                }
            };
            matches!(tokio::time::timeout(Duration::from_secs(1), call).await, Ok(Ok(())))
        }
        None => false,
    };
    if !asked {
        signal(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_PATIENCE, &mut wait).await.is_err() {
        tracing::warn!(component = %name, pid, "did not stop in time; killing it");
        signal(pid, rustix::process::Signal::KILL);
        let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
    }
    name
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// A component's status: the supervisor's view plus its own report.
async fn component_status(v: View) -> pb::ComponentStatus {
    let mut facts = Vec::new();
    if let (Some(ch), State::Running | State::Unhealthy) = (v.channel.clone(), v.state) {
        let call = async {
            match v.component {
                leash_core::Component::Policy => {
                    pb::policy_client::PolicyClient::new(ch).status(pb::PolicyStatusRequest {}).await
                }
                leash_core::Component::Sensor => {
                    pb::sensor_client::SensorClient::new(ch).status(pb::SensorStatusRequest {}).await
                }
                leash_core::Component::Proxy => {
                    pb::proxy_client::ProxyClient::new(ch).status(pb::ProxyStatusRequest {}).await
                }
            }
        };
        if let Ok(Ok(r)) = tokio::time::timeout(COMPONENT_STATUS_TIMEOUT, call).await {
            facts = r.into_inner().facts;
        }
    }
    let uptime = v.started.and_then(|s| SystemTime::now().duration_since(s).ok()).map(|d| d.as_secs()).unwrap_or(0);
    pb::ComponentStatus {
        name: v.component.binary().to_owned(),
        state: state_to_proto(v.state) as i32,
        pid: v.pid.unwrap_or(0),
        version: v.version,
        uptime_secs: if v.pid.is_some() { uptime } else { 0 },
        restarts: v.restarts,
        socket: v.socket.display().to_string(),
        spawned: v.spawned,
        detail: v.detail,
        facts,
        rss_bytes: v.pid.map_or(0, crate::proc::rss_bytes),
        pss_bytes: v.pid.map_or(0, crate::proc::pss_bytes),
    }
}

fn state_to_proto(s: State) -> pb::ComponentState {
    match s {
        State::Starting => pb::ComponentState::Starting,
        State::Running => pb::ComponentState::Running,
        State::Restarting => pb::ComponentState::Restarting,
        State::Down => pb::ComponentState::Down,
        State::Unhealthy => pb::ComponentState::Unhealthy,
    }
}

/// Whether an event matches a query (the store applies the same in SQL).
fn matches(q: &crate::audit::Query, e: &pb::Event) -> bool {
    q.session.as_ref().is_none_or(|s| e.session.starts_with(s.as_str()))
        && q.since_ns.is_none_or(|t| e.time_unix_nanos >= t)
        && q.action.as_ref().is_none_or(|a| e.action == *a)
        && q.decision.as_ref().is_none_or(|d| {
            let want = if d == "allow" { pb::Decision::Allow } else { pb::Decision::Deny };
            e.decision == want as i32
        })
        && q.contains.as_ref().is_none_or(|c| e.resource.contains(c.as_str()))
}
