//! Sessions: a command in a container, through leashd.
//!
//! A session is created from a `SessionStart` on the Session stream, runs
//! with the caller's identity (from the socket), and is torn down when its
//! command exits. Architecture invariant: no instruction of the command runs
//! before leashd releases leash-entry, and leashd releases it only after every
//! admission step has passed.

pub mod admission;
pub mod ask;
pub mod config;
pub mod control;
pub mod engine;
mod exec;
pub mod mcp;
pub mod mounts;
pub mod names;
pub mod plan;
pub mod secrets;
pub mod terminal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use leash_core::{Event, EventKind, Layout};
use leash_daemon::access::Peer;
use leash_proto::v1 as pb;
use leash_proto::v1::session_input::Input;
use leash_proto::v1::session_output::Output;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::hub::Hub;
use engine::{Engine, LogOutput};

/// How long an admission step waits for its component (just started by
/// `leash`, or restarting).
const COMPONENT_PATIENCE: Duration = Duration::from_secs(5);
/// How long leash-entry may take to reach the release channel.
const RELEASE_PATIENCE: Duration = Duration::from_secs(15);
/// Between SIGTERM and SIGKILL when a session is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a session's time went, published with its `session.remove` event
/// (`cargo xtask bench session-start` reports them).
#[derive(Debug)]
struct Timings {
    mark: tokio::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timings {
    fn new() -> Timings {
        Timings { mark: tokio::time::Instant::now(), phases: Vec::new() }
    }

    /// Ends the current phase, named `name`.
    fn lap(&mut self, name: &'static str) {
        let now = tokio::time::Instant::now();
        self.phases.push((name, now - self.mark));
        self.mark = now;
    }

    fn details(&self) -> Vec<(&str, String)> {
        self.phases.iter().map(|(k, d)| (*k, format!("{:.1}", d.as_secs_f64() * 1e3))).collect()
    }
}

/// leashd stopped while session `0` ran (it runs on).
struct Stopping(String);

/// The client that started a session, as its loop talks to it.
struct Link<'a> {
    input: &'a mut Streaming<pb::SessionInput>,
    out: &'a mpsc::Sender<Result<pb::SessionOutput, Status>>,
    /// Who it is, for its answers to questions.
    by: ask::Answerer,
    /// It leaves once the session has started (`leash --detach`).
    detach: bool,
}

/// What every session needs from leashd.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Sockets and state.
    pub layout: Layout,
    /// Events.
    pub hub: Hub,
    /// The static leash-entry binary.
    pub entry_bin: PathBuf,
    /// The system-wide configuration file (`/etc/leash/config.toml`).
    pub system_config: PathBuf,
    /// leashd's root token: when leashd stops, sessions keep running.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The components, for admission steps.
    pub supervisor: crate::supervisor::Supervisor,
}

/// The principal a session's requests are authorized for: the command's name.
pub fn principal_of(command: &[String]) -> String {
    command
        .first()
        .and_then(|c| std::path::Path::new(c).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("agent")
        .to_owned()
}

/// A session as listed.
#[derive(Clone, Debug)]
pub struct Info {
    /// Id.
    pub id: String,
    /// Owner uid.
    pub owner: u32,
    /// Project dir.
    pub project: String,
    /// Command.
    pub command: Vec<String>,
    /// Image.
    pub image: String,
    /// Container name.
    pub container: String,
    /// Container id.
    pub container_id: String,
    /// Start.
    pub started: SystemTime,
    /// created | running | exited.
    pub state: &'static str,
    /// How the sensor governs it, per action (`file-read=fanotify …`).
    pub enforcement: String,
    /// The host as the container sees it (its default route's gateway:
    /// what a policy names to let the session reach a service on the
    /// host); empty when its network does not reach the host.
    pub host_address: String,
    /// Runs without the protect-host layer (its user asked explicitly).
    pub unprotected: bool,
    /// Seconds a denial waits for the user's answer; 0: not asked.
    pub ask_timeout_s: u32,
    /// The stdio MCP servers leash's relay governs (`<file>: <name>`).
    pub mcp_servers: Vec<String>,
    /// Clients attached to its terminal (filled in when listed).
    pub clients: u32,
}

/// The registry of sessions.
#[derive(Clone, Debug)]
pub struct Sessions {
    ctx: Ctx,
    inner: Arc<Mutex<BTreeMap<String, Info>>>,
    /// The terminals of the sessions this leashd runs, for `leash attach`.
    terminals: Arc<Mutex<BTreeMap<String, terminal::Shared>>>,
    /// The control connections of running sessions, for `leash exec`.
    controls: Arc<Mutex<BTreeMap<String, Arc<control::Conn>>>>,
    /// Questions open for sessions' users (`leash --ask`), by id.
    asks: Arc<Mutex<BTreeMap<String, ask::Pending>>>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(ctx: Ctx) -> Sessions {
        Sessions {
            ctx,
            inner: Arc::default(),
            terminals: Arc::default(),
            controls: Arc::default(),
            asks: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Info>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The system configuration file (its directory holds `policy.d/`).
    pub fn system_config(&self) -> PathBuf {
        self.ctx.system_config.clone()
    }

    /// How many sessions exist.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The sessions `caller` may see.
    pub fn list(&self, caller: &Peer) -> Vec<Info> {
        let mut v: Vec<Info> =
            self.lock().values().filter(|i| caller.uid == 0 || i.owner == caller.uid).cloned().collect();
        let terminals = self.terminals.lock().unwrap_or_else(|p| p.into_inner());
        for i in &mut v {
            i.clients = terminals.get(&i.id).map_or(0, |t| t.lock().unwrap_or_else(|p| p.into_inner()).clients());
        }
        v.sort_by_key(|i| i.started);
        v
    }

    /// The full id of a session the caller owns (root: any); `id` may be a
    /// unique prefix.
    /// The MCP configuration files as session `id`'s container sees them
    /// (claude's global configuration as the session has left it so far).
    pub fn mcp_views(&self, id: &str) -> Vec<pb::McpView> {
        let dir = self.session_dir(id);
        let index: Vec<[String; 3]> =
            read_bounded(&dir.join(MCP_VIEWS)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        index
            .into_iter()
            .map(|[config, path, copy]| {
                let text = match read_bounded(&dir.join(&copy)) {
                    Ok(t) => t,
                    Err(e) => format!("(cannot read the copy: {e})\n"),
                };
                pb::McpView { config, path, text }
            })
            .collect()
    }

    pub fn resolve(&self, caller: &Peer, id: &str) -> Result<String, Status> {
        self.find(caller, id).map(|i| i.id)
    }

    fn find(&self, caller: &Peer, id: &str) -> Result<Info, Status> {
        let found: Vec<Info> =
            self.list(caller).into_iter().filter(|i| !id.is_empty() && i.id.starts_with(id)).collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Status::not_found(format!("no session {id:?} of yours"))),
            _ => Err(Status::invalid_argument(format!("{id:?} matches several sessions; give more of the id"))),
        }
    }

    /// `leash attach`: joins the terminal of a running session the caller
    /// owns (root: any) until the session ends or the client detaches.
    pub async fn attach(
        self,
        caller: Peer,
        req: pb::SessionAttach,
        mut input: Streaming<pb::SessionInput>,
        out: mpsc::Sender<Result<pb::SessionOutput, Status>>,
    ) {
        let fail = |error: String| pb::SessionExit { code: 125, error, denied: 0 };
        let info = match self.find(&caller, &req.id) {
            Ok(i) => i,
            Err(e) => {
                let _ = emit(&out, Output::Exit(fail(e.message().to_owned()))).await;
                return;
            }
        };
        let term = self.terminals.lock().unwrap_or_else(|p| p.into_inner()).get(&info.id).cloned();
        let Some(term) = term else {
            let why = format!("session {} has no terminal here (state {})", info.id, info.state);
            {
                let _ = emit(&out, Output::Exit(fail(why))).await;
                return;
            };
        };
        let mut joined = term.lock().unwrap_or_else(|p| p.into_inner()).join(&info.id, req.from);
        self.publish(
            "session.attach",
            &info,
            &[("uid", caller.uid.to_string()), ("pid", caller.pid.unwrap_or_default().to_string())],
        );
        let leave = |term: &terminal::Shared, viewer| {
            term.lock().unwrap_or_else(|p| p.into_inner()).leave(viewer);
        };
        for o in std::mem::take(&mut joined.replay) {
            if out.send(Ok(o)).await.is_err() {
                return leave(&term, joined.id);
            }
        }
        loop {
            tokio::select! {
                live = joined.live.recv() => match live {
                    Some(o) => {
                        let last = matches!(o, Ok(pb::SessionOutput { output: Some(Output::Exit(_)) }));
                        if out.send(o).await.is_err() || last {
                            return leave(&term, joined.id);
                        }
                    }
                    None => {
                        let why = format!(
                            "this client fell behind the session's output; `leash attach {}` to see it again",
                            info.id
                        );
                        {
                let _ = emit(&out, Output::Exit(fail(why))).await;
                return;
            };
                    }
                },
                msg = input.message() => match msg {
                    Ok(Some(pb::SessionInput { input: Some(Input::Detach(_)) })) => {
                        leave(&term, joined.id);
                        self.publish("session.detach", &info, &[("client", "attach".to_owned())]);
                        {
                let _ = emit(&out, Output::Detached(true)).await;
                return;
            };
                    }
                    Ok(Some(pb::SessionInput { input: Some(Input::Answer(a)) })) => {
                        let by = ask::Answerer::terminal(&caller);
                        self.answer_from_client(&info.id, a, by, &out);
                    }
                    Ok(Some(pb::SessionInput { input: Some(i) })) => {
                        let _ = joined.inputs.send((joined.id, i)).await;
                    }
                    Ok(Some(_)) => {}
                    // Gone without detaching: it leaves; the session runs on.
                    Ok(None) | Err(_) => return leave(&term, joined.id),
                },
            }
        }
    }

    /// Answers a question from a client's PromptAnswer, off the session's
    /// loop; a refused answer is told to the client.
    fn answer_from_client(
        &self,
        session: &str,
        a: pb::PromptAnswer,
        by: ask::Answerer,
        out: &mpsc::Sender<Result<pb::SessionOutput, Status>>,
    ) {
        let (me, session, out) = (self.clone(), session.to_owned(), out.clone());
        tokio::spawn(async move {
            if let Err(why) = me.answer_ask(&session, &a.id, &a.choice, by).await {
                let _ = emit(&out, Output::Notice(why)).await;
            }
        });
    }

    /// Stops a session the caller owns (root: any). `id` may be a unique prefix.
    pub async fn stop(&self, caller: &Peer, id: &str) -> Result<String, Status> {
        let info = self.find(caller, id)?;
        let engine = Engine::connect().await.map_err(|e| Status::unavailable(e.to_string()))?;
        engine.signal(&info.container_id, "SIGTERM").await.map_err(|e| Status::internal(e.to_string()))?;
        let cid = info.container_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            if matches!(engine.inspect(&cid).await, Ok((_, _, true))) {
                let _ = engine.signal(&cid, "SIGKILL").await;
            }
        });
        Ok(info.id)
    }

    fn publish(&self, action: &str, info: &Info, details: &[(&str, String)]) {
        let mut e = Event::daemon(action, &info.container, 0);
        e.kind = EventKind::Session;
        e.session = Some(info.id.clone());
        e.resource = info.project.clone();
        // What replaying the session later needs: whose it was and the
        // principal its requests were authorized for.
        e.details.insert("owner".to_owned(), info.owner.to_string());
        e.details.insert("principal".to_owned(), principal_of(&info.command));
        for (k, v) in details {
            e.details.insert((*k).to_owned(), v.clone());
        }
        self.ctx.hub.publish(e);
    }

    /// Finds the session containers of this instance left by an earlier
    /// leashd, lists them again and tears each down when it exits.
    pub async fn recover(&self) {
        let Ok(engine) = Engine::connect().await else { return };
        let Ok(found) = engine.list_labelled(engine::LABEL_INSTANCE, &self.ctx.layout.instance).await else { return };
        for c in found {
            let (cid, labels, running) = (c.id, c.labels, c.running);
            let Some(id) = labels.get(engine::LABEL_SESSION).cloned() else { continue };
            let info = Info {
                id: id.clone(),
                owner: labels.get(engine::LABEL_OWNER).and_then(|u| u.parse().ok()).unwrap_or(0),
                project: labels.get(engine::LABEL_PROJECT).cloned().unwrap_or_default(),
                command: labels
                    .get(engine::LABEL_COMMAND)
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or_default(),
                image: c.image,
                container: labels.get("leash.name").cloned().unwrap_or_else(|| cid.chars().take(12).collect()),
                container_id: cid.clone(),
                started: std::time::UNIX_EPOCH + Duration::from_secs(c.created.max(0) as u64),
                state: if running { "running" } else { "exited" },
                enforcement: String::new(),
                host_address: String::new(),
                unprotected: labels.get(engine::LABEL_UNPROTECTED).is_some_and(|v| v == "true"),
                ask_timeout_s: labels.get(engine::LABEL_ASK).and_then(|a| a.parse().ok()).unwrap_or(0),
                mcp_servers: labels
                    .get(engine::LABEL_MCP)
                    .and_then(|m| serde_json::from_str(m).ok())
                    .unwrap_or_default(),
                clients: 0,
            };
            tracing::info!(session_id = %id, container_id = %cid, running, "recovered session");
            self.ctx.hub.count_denials(&id);
            self.lock().insert(id.clone(), info.clone());
            if running && let Ok((pid, _, _)) = engine.inspect(&cid).await {
                self.note_host_side(&id, pid);
                self.take_control(&id, pid).await;
            }
            self.publish("session.recover", &info, &[]);
            let this = self.clone();
            let engine = engine.clone();
            tokio::spawn(async move {
                // Its terminal again, with everything it printed (the
                // engine's log holds what it printed while no leashd ran),
                // so that clients attach and the one that started it
                // reattaches where it left off.
                let mut timings = Timings::new();
                let attached = if running { Some(engine.attach(&cid).await) } else { None };
                let served = match attached {
                    Some(Ok(attach)) => {
                        let tty = engine.has_tty(&cid).await;
                        this.serve(&engine, &info, tty, attach.output, attach.input, None, &mut timings).await
                    }
                    Some(Err(e)) => {
                        tracing::warn!(session_id = %info.id, error = %e, "cannot attach to the recovered session");
                        Some(engine.wait(&cid).await.map_err(|e| e.to_string()))
                    }
                    None => Some(engine.wait(&cid).await.map_err(|e| e.to_string())),
                };
                // leashd is stopping again: the next one recovers it.
                let Some(code) = served else { return };
                let code = code.unwrap_or(125);
                this.publish("session.exit", &info, &[("code", code.to_string())]);
                this.teardown(&engine, &info, &mut timings).await;
            });
        }
    }

    async fn teardown(&self, engine: &Engine, info: &Info, timings: &mut Timings) {
        if let Err(e) = engine.remove(&info.container_id).await {
            tracing::warn!(session_id = %info.id, error = %e, "cannot remove the container");
        }
        let dir = self.session_dir(&info.id);
        self.keep_claude_global(&dir, info.owner);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(session_id = %info.id, dir = %dir.display(), error = %e, "cannot remove the session dir");
        }
        let (_, below_root) = engine.cgroup_parent(&self.ctx.layout, &info.id);
        if !remove_cgroup_dirs(&below_root) {
            // Podman keeps the monitor of each `exec` into the container for
            // five minutes after it ends, in the session's cgroup v1
            // directories: they are removed once it has gone.
            tokio::spawn(async move {
                for _ in 0..12 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    if remove_cgroup_dirs(&below_root) {
                        break;
                    }
                }
            });
        }
        self.unregister_sensor(&info.id).await;
        self.close_proxy(&info.id).await;
        self.close_policy(&info.id).await;
        self.ctx.hub.forget_session(&info.id);
        self.controls.lock().unwrap_or_else(|p| p.into_inner()).remove(&info.id);
        self.lock().remove(&info.id);
        timings.lap("remove_ms");
        self.publish("session.remove", info, &timings.details());
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.ctx.layout.state_dir.join("sessions").join(id)
    }

    /// Where the state a user's sessions leave in claude's global
    /// configuration is kept (root's, 0600; read only into containers).
    fn claude_global_kept(&self, uid: u32) -> PathBuf {
        self.ctx.layout.state_dir.join("agents").join(uid.to_string()).join(plan::CLAUDE_GLOBAL_COPY)
    }

    fn saved_claude_global(&self, uid: u32) -> Option<String> {
        read_bounded(&self.claude_global_kept(uid)).ok()
    }

    /// Keeps what a session left in its copy of claude's global
    /// configuration, when it is still a JSON object, for the owner's next
    /// session (see `mcp::claude_global`).
    fn keep_claude_global(&self, session_dir: &Path, owner: u32) {
        let Ok(text) = read_bounded(&session_dir.join(plan::CLAUDE_GLOBAL_COPY)) else { return };
        if !serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()) {
            return;
        }
        let kept = self.claude_global_kept(owner);
        let written = kept.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = kept.with_extension("json.new");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, &kept)
        });
        if let Err(e) = written {
            tracing::warn!(file = %kept.display(), error = %e, "cannot keep claude's global configuration");
        }
    }

    /// Runs one session to its end, talking to the client over `input` and
    /// `out`. Always ends with an Exit message.
    pub async fn run(
        self,
        caller: Peer,
        start: pb::SessionStart,
        input: Streaming<pb::SessionInput>,
        out: mpsc::Sender<Result<pb::SessionOutput, Status>>,
    ) {
        let exit = match self.run_inner(&caller, start, input, &out).await {
            Ok(Ok((code, denied))) => pb::SessionExit { code, error: String::new(), denied },
            // leashd is stopping: the container runs on, the next leashd
            // recovers it, and the client reattaches to it there.
            Ok(Err(Stopping(id))) => {
                emit(&out, Output::Notice(format!("leashd is stopping; session {id} keeps running"))).await;
                return;
            }
            Err(error) => pb::SessionExit { code: 125, error, denied: 0 },
        };
        emit(&out, Output::Exit(exit)).await;
    }

    async fn run_inner(
        &self,
        caller: &Peer,
        start: pb::SessionStart,
        mut input: Streaming<pb::SessionInput>,
        out: &mpsc::Sender<Result<pb::SessionOutput, Status>>,
    ) -> Result<Result<(i32, u32), Stopping>, String> {
        let mut timings = Timings::new();
        let mut plan = plan::plan(&self.ctx, caller, &start)?;
        self.ask_about_agent_mount(caller, &mut plan, &mut input, out).await?;
        for w in &plan.warnings {
            emit(out, Output::Notice(w.clone())).await;
        }
        let engine = Engine::connect().await.map_err(|e| e.to_string())?;
        // Refused before anything is created when the sensor could not govern
        // the container (`--degraded` runs it without the sensor instead).
        if !plan.degraded
            && let Some(why) = engine.ungovernable(&self.ctx.layout)
        {
            return Err(format!("refused: {why}"));
        }
        engine.require_image(&plan.image).await.map_err(|e| e.to_string())?;
        timings.lap("prepare_ms");
        let id = names::new_id().map_err(|e| format!("cannot make a session id: {e}"))?;
        // Secret values this session's events never carry (the container
        // holds decoys; the real values are redacted wherever they appear).
        self.ctx.hub.redact_for(
            &id,
            plan::secret_values(&plan.env).into_iter().chain(plan.secrets.iter().map(|s| s.value.clone())),
        );
        self.ctx.hub.count_denials(&id);
        let base = names::sanitize_project(&plan.cwd);

        // The session dir holds the release socket; the container sees it read-only.
        let dir = self.session_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let release_path = dir.join("release.sock");
        let release = tokio::net::UnixListener::bind(&release_path)
            .map_err(|e| format!("cannot bind {}: {e}", release_path.display()))?;

        // The session's certificate authority, for the proxy's interception:
        // its certificate reaches the container, never its key.
        let intercepted = match self.prepare_proxy(&id, &dir, &plan.secrets).await {
            Ok(()) => true,
            Err(e) if plan.degraded => {
                emit(out, Output::Notice(format!("degraded: running without leash-proxy ({e})"))).await;
                false
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("admission failed at leash-proxy (mint the session's CA): {e}"));
            }
        };
        if intercepted {
            plan.trust_session_ca();
        }
        plan.pin_protected();
        let saved = self.saved_claude_global(caller.uid);
        for why in plan.share_claude_global(&dir, saved.as_deref()) {
            emit(out, Output::Notice(why)).await;
        }
        for why in plan.relay_mcp(&dir) {
            emit(out, Output::Notice(why)).await;
        }
        let mcp_servers = plan.mcp_servers.clone();
        write_mcp_views(&dir, &plan.mcp_views);
        let (cgroup_parent, _) = engine.cgroup_parent(&self.ctx.layout, &id);
        let mut spec = plan.spec(&self.ctx, &id, &base, &dir, cgroup_parent);
        // The first free name of base, base1, base2, …; a name taken between
        // the look and the create (a concurrent session) moves on to the next.
        let mut n = 0;
        let cid = loop {
            spec.name = if n == 0 { base.clone() } else { format!("{base}{n}") };
            n += 1;
            let taken = engine.name_taken(&spec.name).await;
            if taken.as_ref().is_ok_and(|t| *t) && n < 1000 {
                continue;
            }
            spec.labels.insert("leash.name".into(), spec.name.clone());
            let created = match taken {
                Ok(_) => engine.create(&spec).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(cid) => break cid,
                Err(e) if e.is_conflict() && n < 1000 => {}
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.to_string());
                }
            }
        };
        let info = Info {
            id: id.clone(),
            owner: caller.uid,
            project: plan.cwd.clone(),
            command: plan.command.clone(),
            image: plan.image.clone(),
            container: spec.name.clone(),
            container_id: cid,
            started: SystemTime::now(),
            state: "created",
            enforcement: String::new(),
            host_address: String::new(),
            unprotected: !plan.protect_host,
            ask_timeout_s: plan.ask_timeout_s,
            mcp_servers,
            clients: 0,
        };
        self.lock().insert(id.clone(), info.clone());
        self.publish(
            "session.create",
            &info,
            &[
                ("image", plan.image.clone()),
                ("container", info.container.clone()),
                ("protect_host", plan.protect_host.to_string()),
            ],
        );
        timings.lap("create_ms");
        let by = ask::Answerer::terminal(caller);
        let link = Link { input: &mut input, out, detach: start.detach, by };
        let result = self.drive(&engine, &info, &plan, intercepted, release, &release_path, link, &mut timings).await;
        let result = match result {
            Ok(Some(code)) => Ok(code),
            Ok(None) => return Ok(Err(Stopping(info.id.clone()))),
            Err(e) => Err(e),
        };
        let code = match &result {
            Ok(code) => *code,
            Err(_) => 125,
        };
        self.publish("session.exit", &info, &[("code", code.to_string())]);
        let denied = self.denials(&info.id);
        self.teardown(&engine, &info, &mut timings).await;
        result.map(|code| Ok((code, denied)))
    }

    /// The refusals of a session this leashd has counted (since it started
    /// the session, or recovered it).
    fn denials(&self, id: &str) -> u32 {
        u32::try_from(self.ctx.hub.denials(id)).unwrap_or(u32::MAX)
    }

    /// Attach, start, release, relay, wait. `Ok(None)` when leashd stops
    /// while the command runs.
    #[allow(clippy::too_many_arguments, reason = "the session's parts, passed once")]
    async fn drive(
        &self,
        engine: &Engine,
        info: &Info,
        plan: &plan::Plan,
        intercepted: bool,
        release: tokio::net::UnixListener,
        release_path: &std::path::Path,
        link: Link<'_>,
        timings: &mut Timings,
    ) -> Result<Option<i32>, String> {
        let Link { input, out, detach, by } = link;
        let cid = info.container_id.as_str();
        let attach = engine.attach(cid).await.map_err(|e| e.to_string())?;
        let mut output = attach.output;
        let stdin = attach.input;
        engine.start(cid).await.map_err(|e| e.to_string())?;
        timings.lap("start_ms");
        if let Some(size) = plan.size {
            let _ = engine.resize(cid, size.0, size.1).await;
        }

        // Admission: every step passes, or the command never runs.
        let (pid, _, _) = engine.inspect(cid).await.map_err(|e| e.to_string())?;
        self.note_host_side(&info.id, pid);
        let mounts = plan.mounts(&self.ctx, &self.session_dir(&info.id));
        let (_, below_root) = engine.cgroup_parent(&self.ctx.layout, &info.id);
        // Set by the proxy's step, read by the sensor's (they run in order).
        let proxied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let steps = vec![
            admission::Step {
                component: "leashd",
                what: "mounts",
                timeout: Duration::from_secs(5),
                run: Box::pin(async move { admission::verify_mounts(pid.unwrap_or(0), &mounts) }),
            },
            admission::Step {
                component: "leashd",
                what: "seal memfds",
                timeout: Duration::from_secs(5),
                run: Box::pin(async move {
                    if let Some(note) = admission::seal_memfds(pid.unwrap_or(0)).await? {
                        tracing::warn!("{note}");
                    }
                    Ok(())
                }),
            },
            admission::Step {
                component: "leash-policy",
                what: "open the session's policy",
                timeout: Duration::from_secs(10),
                run: Box::pin(self.open_policy(info, plan)),
            },
            admission::Step {
                component: "leash-proxy",
                what: "intercept the session's HTTP(S)",
                timeout: Duration::from_secs(10),
                run: Box::pin(self.intercept(
                    info,
                    pid.unwrap_or(0),
                    intercepted,
                    plan.dns_refusal.clone(),
                    proxied.clone(),
                )),
            },
            admission::Step {
                component: "leash-sensor",
                what: "govern the session's cgroup and files",
                timeout: Duration::from_secs(10),
                run: Box::pin(self.register_sensor(info, pid.unwrap_or(0), below_root, proxied.clone())),
            },
        ];
        let passed: Vec<String> = steps.iter().map(|s| format!("{}: {}", s.component, s.what)).collect();
        let skipped = admission::admit(steps, plan.degraded).await?;
        let passed: Vec<String> = passed
            .into_iter()
            .filter(|p| !skipped.iter().any(|s| p.starts_with(s.split(' ').next().unwrap_or(""))))
            .collect();
        for layer in &skipped {
            emit(out, Output::Notice(format!("degraded: running without {layer}"))).await;
        }
        let conn = tokio::time::timeout(RELEASE_PATIENCE, release.accept()).await;
        let _ = std::fs::remove_file(release_path);
        drop(release);
        let mut conn = match conn {
            Ok(Ok((conn, _))) => conn,
            Ok(Err(e)) => return Err(format!("release channel: {e}")),
            Err(_) => {
                // Show what leash-entry said before giving up.
                while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_millis(200), output.next()).await {
                    relay(out, chunk).await;
                }
                return Err(format!("leash-entry did not reach the release channel within {RELEASE_PATIENCE:?}"));
            }
        };
        conn.write_all(b"go\n").await.map_err(|e| format!("release channel: {e}"))?;
        drop(conn);
        timings.lap("release_ms");
        self.take_control(&info.id, pid).await;
        let mut release_details = vec![("admission", passed.join(", "))];
        if !skipped.is_empty() {
            release_details.push(("degraded", skipped.join(", ")));
        }
        self.publish("session.release", info, &release_details);
        // Running means released: admission passed and the command started.
        self.set_state(&info.id, "running");
        emit(
            out,
            Output::Started(pb::SessionStarted {
                id: info.id.clone(),
                container: info.container.clone(),
                image: info.image.clone(),
            }),
        )
        .await;

        let served =
            self.serve(engine, info, plan.tty, output, stdin, Some(Link { input, out, detach, by }), timings).await;
        served.map(|code| code.map(|c| Some(c as i32))).unwrap_or(Ok(None))
    }

    /// Serves a running session's terminal until its command ends: what it
    /// prints goes to the ring, the attached clients and (while it stays)
    /// the starting client over `link` (none for a session recovered after
    /// a restart); their input, resizes and signals go to it. Its exit code;
    /// None when leashd is stopping (the session runs on).
    #[allow(clippy::too_many_arguments, reason = "the parts of one running session, each used once")]
    async fn serve(
        &self,
        engine: &Engine,
        info: &Info,
        tty: bool,
        mut output: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
        >,
        mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
        link: Option<Link<'_>>,
        timings: &mut Timings,
    ) -> Option<Result<i64, String>> {
        let cid = info.container_id.as_str();
        // Attached clients (`leash attach`) see what the session prints and,
        // once the starting client has left, the first of them writes.
        let (inputs_tx, mut inputs) = mpsc::channel::<terminal::FromViewer>(64);
        let term = terminal::Terminal::shared(tty, info.container.clone(), inputs_tx);
        self.terminals.lock().unwrap_or_else(|p| p.into_inner()).insert(info.id.clone(), term.clone());
        let lock = || term.lock().unwrap_or_else(|p| p.into_inner());
        let (mut input, out, detach, by) = match link {
            Some(Link { input, out, detach, by }) => (Some(input), Some(out), detach, Some(by)),
            None => (None, None, true, None),
        };
        if let Some(out) = out {
            lock().starter_asks(out.clone());
        }
        // `--detach`, or recovered: the starting client is not there.
        let mut client_gone = detach;
        if detach {
            lock().starter_left();
        }
        if detach && out.is_some() {
            self.publish("session.detach", info, &[("client", "start".to_owned())]);
        }
        let apply = |i: Input| {
            let engine = engine.clone();
            async move {
                match i {
                    Input::Resize(s) => {
                        let _ = engine.resize(cid, s.rows, s.cols).await;
                    }
                    Input::Signal(n) => {
                        let _ = engine.signal(cid, &n.to_string()).await;
                    }
                    _ => {}
                }
            }
        };
        loop {
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => {
                    self.terminals.lock().unwrap_or_else(|p| p.into_inner()).remove(&info.id);
                    return None;
                }
                chunk = output.next() => match chunk {
                    Some(Ok(chunk)) => {
                        if let Some((stream, bytes)) = output_bytes(&chunk) {
                            lock().output(stream, bytes);
                        }
                        if let Some(out) = out
                            && !client_gone
                            && !relay(out, chunk).await
                        {
                            client_gone = true;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(session_id = %info.id, error = %e, "output stream failed");
                        break;
                    }
                    None => break,
                },
                msg = async {
                    match input.as_mut() {
                        Some(i) => i.message().await,
                        None => std::future::pending().await,
                    }
                }, if !client_gone => match msg {
                    Ok(Some(pb::SessionInput { input: Some(i) })) => match i {
                        Input::Stdin(bytes) => {
                            let _ = stdin.write_all(&bytes).await;
                            let _ = stdin.flush().await;
                        }
                        Input::StdinEof(_) => {
                            let _ = stdin.shutdown().await;
                        }
                        Input::Detach(_) => {
                            client_gone = true;
                            lock().starter_left();
                            if let Some(out) = out {
                                emit(out, Output::Detached(true)).await;
                            }
                            self.publish("session.detach", info, &[("client", "start".to_owned())]);
                        }
                        i @ (Input::Resize(_) | Input::Signal(_)) => apply(i).await,
                        Input::Answer(a) => {
                            if let (Some(out), Some(by)) = (out, &by) {
                                self.answer_from_client(&info.id, a, by.clone(), out);
                            }
                        }
                        Input::Start(_) | Input::Attach(_) | Input::Exec(_) => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        // The client went away: stop the command like Ctrl-C would.
                        client_gone = true;
                        tracing::info!(session_id = %info.id, "client disconnected; stopping the session");
                        let _ = engine.signal(cid, "SIGTERM").await;
                        let engine = engine.clone();
                        let cid = cid.to_owned();
                        tokio::spawn(async move {
                            tokio::time::sleep(STOP_GRACE).await;
                            let _ = engine.signal(&cid, "SIGKILL").await;
                        });
                    }
                },
                Some((viewer, i)) = inputs.recv() => {
                    let writes = lock().writes(viewer);
                    match i {
                        Input::Detach(_) => {
                            lock().leave(viewer);
                        }
                        Input::Stdin(bytes) if writes => {
                            let _ = stdin.write_all(&bytes).await;
                            let _ = stdin.flush().await;
                        }
                        i @ (Input::Resize(_) | Input::Signal(_)) if writes => apply(i).await,
                        _ => {}
                    }
                }
            }
        }
        timings.lap("run_ms");
        let code = engine.wait(cid).await;
        let term = self.terminals.lock().unwrap_or_else(|p| p.into_inner()).remove(&info.id);
        if let Some(term) = term {
            let denied = self.denials(&info.id);
            term.lock().unwrap_or_else(|p| p.into_inner()).exit(code.as_ref().map_or(125, |c| *c as i32), denied);
        }
        let code = code.map_err(|e| e.to_string());
        timings.lap("wait_ms");
        self.set_state(&info.id, "exited");
        Some(code)
    }

    /// Asks whether to mount the agent's host config when no configuration
    /// decided it and prompts are allowed; remembers Always and This project
    /// in the caller's config file (written as the caller).
    async fn ask_about_agent_mount(
        &self,
        caller: &Peer,
        plan: &mut plan::Plan,
        input: &mut Streaming<pb::SessionInput>,
        out: &mpsc::Sender<Result<pb::SessionOutput, Status>>,
    ) -> Result<(), String> {
        let Some(m) = plan.agent_mount.clone() else { return Ok(()) };
        if m.decision.is_some() || !plan.interactive {
            // Decided by configuration; or no prompts (documented default: no mount).
            return Ok(());
        }
        let dirs: Vec<String> = m.binds.iter().map(|b| b.source.display().to_string()).collect();
        let prompt = pb::Prompt {
            id: "agent-mount".to_owned(),
            question: format!("Mount {} ({}'s settings) into the container?", dirs.join(" and "), m.agent),
            choices: MOUNT_CHOICES.iter().map(|c| (*c).to_owned()).collect(),
            default_choice: 2,
        };
        if !emit(out, Output::Prompt(prompt)).await {
            return Err("the client went away".into());
        }
        let answer = loop {
            match input.message().await {
                Ok(Some(pb::SessionInput { input: Some(Input::Answer(a)) })) if a.id == "agent-mount" => {
                    break a.choice;
                }
                Ok(Some(_)) => continue,
                _ => return Err("the client went away during the mount prompt".into()),
            }
        };
        let scope = match answer.as_str() {
            "Always" => Some(None),
            "This project only" => Some(Some(plan.cwd.clone())),
            "Just this once" => None,
            _ => return Ok(()),
        };
        if let (Some(project), Some(path)) = (scope, &m.user_config)
            && let Err(e) = remember(caller, path, &m.agent, project.as_deref()).await
        {
            plan.warnings.push(format!("Warning: failed to persist {} mount preference: {e}", m.agent));
        }
        plan.mount_agent();
        Ok(())
    }

    /// A channel to a component for an admission step, waiting a little for
    /// one that is starting.
    async fn component(&self, c: leash_core::Component) -> Result<tonic::transport::Channel, String> {
        self.ctx
            .supervisor
            .channel_within(c, COMPONENT_PATIENCE)
            .await
            .ok_or_else(|| format!("{} is not running", c.binary()))
    }

    /// Loads the session's policy in leash-policy: the `--policy` file the
    /// client sent, else the default.
    async fn open_policy(&self, info: &Info, plan: &plan::Plan) -> Result<(), String> {
        let channel = self.component(leash_core::Component::Policy).await?;
        let sources = plan
            .policy
            .iter()
            .map(|(name, text)| pb::PolicySource { name: name.clone(), text: text.clone() })
            .collect();
        let admin = admin_policies(&self.ctx.system_config);
        let principal = principal_of(&plan.command);
        // The `--policy` file is watched unless it lies under a writable
        // mount of this or any session (leash-policy decides; it knows them all).
        let watch_path = plan
            .policy
            .as_ref()
            .map(|(name, _)| std::path::Path::new(name))
            .filter(|p| p.is_absolute())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut writable_mounts = vec![plan.cwd.clone()];
        writable_mounts.extend(plan.binds.iter().filter(|b| !b.read_only).map(|b| b.source.display().to_string()));
        let request = pb::OpenSessionRequest {
            session: info.id.clone(),
            principal,
            sources,
            admin,
            watch_path,
            owner: info.owner,
            writable_mounts,
            no_protect_host: !plan.protect_host,
        };
        let mut client = pb::policy_client::PolicyClient::new(channel);
        let r = client.open_session(request).await.map_err(|s| s.message().to_owned())?.into_inner();
        if r.valid {
            // The values the proxy will inject are secrets too.
            let tables = client
                .tables(pb::TablesRequest { session: info.id.clone(), principal: String::new() })
                .await
                .map(tonic::Response::into_inner);
            if let Ok(t) = tables {
                let values = t.rewrites.iter().filter_map(|r| leash_daemon::secrets::resolve(&r.value).ok());
                self.ctx.hub.redact_for(&info.id, values);
            }
            if !r.watch_note.is_empty() {
                tracing::info!(session_id = %info.id, "{}", r.watch_note);
            }
            return Ok(());
        }
        let first =
            r.errors.first().map(|e| format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message)).unwrap_or_default();
        let more = if r.errors.len() > 1 {
            format!(" (and {} more; `leashctl policy validate` lists them)", r.errors.len() - 1)
        } else {
            String::new()
        };
        Err(format!("invalid policy: {first}{more}"))
    }

    /// Records the host as the session's container sees it.
    /// Takes the control connection of session `id`, whose first process
    /// is `pid` (`leash exec` cannot reach a session without one).
    async fn take_control(&self, id: &str, pid: Option<i64>) {
        let pid = pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        let Some(pid) = pid else { return };
        match control::Conn::take(pid, id).await {
            Ok(c) => {
                self.controls.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), Arc::new(c));
            }
            Err(e) => tracing::warn!(session_id = %id, error = %e, "cannot take the session's control connection"),
        }
    }

    fn note_host_side(&self, id: &str, pid: Option<i64>) {
        let found = match pid {
            Some(pid) if pid > 0 => leash_daemon::net::host_side_of(pid as u32),
            _ => Err("the container has no process".to_owned()),
        };
        match found {
            Ok(a) => {
                if let Some(i) = self.lock().get_mut(id) {
                    i.host_address = a.to_string();
                }
            }
            Err(e) => tracing::info!(session_id = %id, "the session's network does not reach the host: {e}"),
        }
    }

    /// Has leash-sensor govern the session's container (its cgroup, its
    /// mounts) before the command runs, once the engine is seen to have
    /// placed it below the session's cgroup parent (`below_root`, relative
    /// to the cgroup v2 root), where the sensor's programs run.
    async fn register_sensor(
        &self,
        info: &Info,
        pid: i64,
        below_root: String,
        proxied: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), String> {
        admission::verify_cgroup(pid, &below_root)?;
        let channel = self.component(leash_core::Component::Sensor).await?;
        let proxied = proxied.load(std::sync::atomic::Ordering::SeqCst);
        let r = pb::sensor_client::SensorClient::new(channel)
            .register(pb::RegisterRequest {
                session: info.id.clone(),
                cgroup: String::new(),
                pid: pid as u32,
                proxied,
                supervised: true,
                ask_timeout_ms: info.ask_timeout_s.saturating_mul(1000),
            })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        let tiers: Vec<String> = r.capabilities.iter().map(|c| format!("{}={}", c.action, c.mechanism)).collect();
        if let Some(i) = self.lock().get_mut(&info.id) {
            i.enforcement = tiers.join(" ");
        }
        tracing::info!(session_id = %info.id, marked = r.marked, unmarked = ?r.unmarked, enforcement = %tiers.join(" "), "the sensor governs the session");
        Ok(())
    }

    /// Has leash-proxy mint the session's CA; its certificate (alone, and
    /// after the host's roots) goes in the session dir the container sees.
    async fn prepare_proxy(&self, id: &str, dir: &std::path::Path, secrets: &[secrets::Secret]) -> Result<(), String> {
        let channel = self.component(leash_core::Component::Proxy).await?;
        let secrets = secrets
            .iter()
            .map(|s| pb::SessionSecret { name: s.name.clone(), value: s.value.clone(), decoy: s.decoy.clone() })
            .collect();
        let r = pb::proxy_client::ProxyClient::new(channel)
            .prepare(pb::ProxyPrepareRequest { session: id.to_owned(), secrets })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        let pem = r.ca_certificate_pem;
        let mut bundle = std::fs::read_to_string(plan::HOST_ROOTS).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&pem);
        std::fs::write(dir.join(plan::CA_FILE), &pem)
            .and_then(|()| std::fs::write(dir.join(plan::CA_BUNDLE_FILE), bundle))
            .map_err(|e| format!("cannot write the session's CA in {}: {e}", dir.display()))
    }

    /// Has leash-proxy intercept the session's TCP 80/443 (an admission step).
    async fn intercept(
        &self,
        info: &Info,
        pid: i64,
        prepared: bool,
        dns_refusal: String,
        proxied: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), String> {
        if !prepared {
            return Err("the session's CA was not minted".into());
        }
        let channel = self.component(leash_core::Component::Proxy).await?;
        let r = pb::proxy_client::ProxyClient::new(channel)
            .intercept(pb::InterceptRequest {
                session: info.id.clone(),
                pid: pid as u32,
                dns_refusal,
                ask_timeout_ms: info.ask_timeout_s.saturating_mul(1000),
            })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        proxied.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(session_id = %info.id, port = r.port, rules = r.rules.len(), "the proxy intercepts the session");
        Ok(())
    }

    /// Stops leash-proxy intercepting the session (best effort).
    async fn close_proxy(&self, id: &str) {
        if let Some(channel) = self.ctx.supervisor.channel(leash_core::Component::Proxy).await {
            let _ = pb::proxy_client::ProxyClient::new(channel)
                .close(pb::ProxyCloseRequest { session: id.to_owned() })
                .await;
        }
    }

    /// Stops leash-sensor governing the session (best effort).
    async fn unregister_sensor(&self, id: &str) {
        if let Some(channel) = self.ctx.supervisor.channel(leash_core::Component::Sensor).await {
            let _ = pb::sensor_client::SensorClient::new(channel)
                .unregister(pb::UnregisterRequest { session: id.to_owned() })
                .await;
        }
    }

    /// Forgets the session's policy (best effort: leash-policy may be down).
    async fn close_policy(&self, id: &str) {
        if let Some(channel) = self.ctx.supervisor.channel(leash_core::Component::Policy).await {
            let _ = pb::policy_client::PolicyClient::new(channel)
                .close_session(pb::CloseSessionRequest { session: id.to_owned() })
                .await;
        }
    }

    fn set_state(&self, id: &str, state: &'static str) {
        if let Some(i) = self.lock().get_mut(id) {
            i.state = state;
        }
    }
}

/// The administrator's policies: `policy.d/*.cedar` beside the system
/// configuration file (`/etc/leash/policy.d/`), in name order.
pub fn admin_policies(system_config: &std::path::Path) -> Vec<pb::PolicySource> {
    let dir = system_config.parent().map(|d| d.join("policy.d")).unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "cannot read an administrator's policy"))
                .ok()?;
            Some(pb::PolicySource { name: p.display().to_string(), text })
        })
        .collect()
}

/// The answers to the agent-mount prompt.
pub const MOUNT_CHOICES: [&str; 4] = ["Always", "This project only", "Just this once", "Skip"];

/// Writes a toggle into the caller's config file through a helper process
/// running as the caller: root never writes through a user-controlled path.
async fn remember(caller: &Peer, path: &std::path::Path, agent: &str, project: Option<&str>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--write-user-config").arg(path).args(["--toggle", agent]);
    if let Some(p) = project {
        cmd.args(["--project", p]);
    }
    cmd.env_clear().uid(caller.uid).gid(caller.gid).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| "the config writer did not finish".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

/// Sends one message to the client; false when it is gone.
async fn emit(out: &mpsc::Sender<Result<pb::SessionOutput, Status>>, o: Output) -> bool {
    out.send(Ok(pb::SessionOutput { output: Some(o) })).await.is_ok()
}

/// The bytes of one chunk of output and the stream they came from.
fn output_bytes(chunk: &LogOutput) -> Option<(leash_core::terminal::Stream, &[u8])> {
    use leash_core::terminal::Stream;
    match chunk {
        LogOutput::StdOut { message } | LogOutput::Console { message } => Some((Stream::Stdout, message)),
        LogOutput::StdErr { message } => Some((Stream::Stderr, message)),
        LogOutput::StdIn { .. } => None,
    }
}

/// Passes one chunk of output to the client; false when it is gone.
async fn relay(out: &mpsc::Sender<Result<pb::SessionOutput, Status>>, chunk: LogOutput) -> bool {
    match chunk {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            emit(out, Output::Stdout(message.to_vec())).await
        }
        LogOutput::StdErr { message } => emit(out, Output::Stderr(message.to_vec())).await,
        LogOutput::StdIn { .. } => true,
    }
}

/// Removes a session's cgroup parent from every hierarchy, with what the
/// engine left below it (best effort: the engine removes the container's
/// own cgroup, not its parents; Podman also leaves its monitor's, `conmon`,
/// in each cgroup v1 hierarchy). A cgroup that still holds a process stays.
/// True when none is left.
fn remove_cgroup_dirs(below_root: &str) -> bool {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return true };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    let mut gone = true;
    for root in roots {
        let dir = root.join(below_root);
        let _ = leash_daemon::cgroup::remove_tree(&dir, 4);
        gone &= !dir.is_dir();
    }
    gone
}

/// The wire form of a session.
pub fn info_to_proto(i: &Info) -> pb::SessionInfo {
    pb::SessionInfo {
        id: i.id.clone(),
        owner_uid: i.owner,
        project: i.project.clone(),
        command: i.command.clone(),
        image: i.image.clone(),
        container: i.container.clone(),
        started_unix_ms: leash_daemon::unix_ms(i.started),
        state: i.state.to_owned(),
        enforcement: i.enforcement.clone(),
        host_address: i.host_address.clone(),
        unprotected: i.unprotected,
        clients: i.clients,
        ask_timeout_s: i.ask_timeout_s,
        mcp_servers: i.mcp_servers.clone(),
        mcp_views: Vec::new(),
    }
}

/// The index of a session's rewritten MCP configuration files (config,
/// container path, copy's name in the session dir), which
/// [`Sessions::mcp_views`] reads.
const MCP_VIEWS: &str = "mcp-views.json";

fn write_mcp_views(dir: &Path, views: &[(String, String, PathBuf)]) {
    let index: Vec<[String; 3]> = views
        .iter()
        .map(|(config, path, copy)| {
            let name = copy.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            [config.clone(), path.clone(), name]
        })
        .collect();
    if let Err(e) = std::fs::write(dir.join(MCP_VIEWS), serde_json::to_vec(&index).unwrap_or_default()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the index of the MCP views");
    }
}

/// A regular file's text, not through a link, at most 8 MiB (what a
/// container wrote: nothing bigger is read).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const MAX: u64 = 8 << 20;
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(std::io::Error::other("not a regular file of at most 8 MiB"));
    }
    let mut text = String::new();
    f.take(MAX).read_to_string(&mut text)?;
    Ok(text)
}
