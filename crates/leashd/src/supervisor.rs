//! Supervision of leash-policy, leash-sensor and leash-proxy.
//!
//! One task owns all supervisor state and consumes [`Cmd`]s; helper tasks
//! (bring-up, exit watchers, health checks, restart timers) only send
//! commands back. Each process a slot tracks has a generation number, so
//! news about an older process is ignored.
//!
//! Architecture invariant: components outlive leashd. They run in their own
//! process groups, leashd never sets a parent-death signal, and a new leashd
//! adopts whatever answers on the component sockets instead of spawning a
//! duplicate.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leash_core::{Component, Event, Layout};
use leash_daemon::{Connected, connect, connect_with_retry, socket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::hub::Hub;
use crate::proc::wait_exit;

/// How long a spawned component may take to answer.
const START_PATIENCE: Duration = Duration::from_secs(5);
/// Health check period and per-check timeout.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// Consecutive failed checks before a component is reported unhealthy.
const HEALTH_FAILURES: u32 = 3;
/// A component that ran this long before exiting restarts without delay.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest delay between restarts of a crash-looping component.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Supervisor state of one component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Spawned or found, not answering yet.
    Starting,
    /// Answering.
    Running,
    /// Exited; a restart is scheduled.
    Restarting,
    /// Not running and not being restarted.
    Down,
    /// Running but failing health checks.
    Unhealthy,
}

/// A snapshot of one component for status reports.
#[derive(Clone, Debug)]
pub struct View {
    /// Which component.
    pub component: Component,
    /// Its state.
    pub state: State,
    /// Pid when running.
    pub pid: Option<u32>,
    /// Version from its handshake.
    pub version: String,
    /// When the running process started.
    pub started: Option<SystemTime>,
    /// Unexpected exits restarted.
    pub restarts: u32,
    /// Its socket.
    pub socket: PathBuf,
    /// Spawned by this leashd (else adopted).
    pub spawned: bool,
    /// Why it is not running.
    pub detail: String,
    /// A channel to it, when running.
    pub channel: Option<Channel>,
}

/// Commands to the supervisor task.
#[derive(Debug)]
enum Cmd {
    Snapshot(oneshot::Sender<Vec<View>>),
    StopAll(oneshot::Sender<Vec<View>>),
    Spawned { c: Component, generation: u64, pid: u32 },
    Up { c: Component, generation: u64, conn: Box<Connected>, spawned: bool },
    Failed { c: Component, generation: u64, detail: String, retry: bool },
    Exited { c: Component, generation: u64, how: String },
    Health { c: Component, generation: u64, ok: bool },
    Restart { c: Component, generation: u64 },
}

/// A handle to the supervisor task.
#[derive(Clone, Debug)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// What the supervisor needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the component binaries are.
    pub bin_dir: PathBuf,
    /// Sockets and state.
    pub layout: Layout,
    /// Lifecycle events go here.
    pub hub: Hub,
}

#[derive(Debug)]
struct Slot {
    component: Component,
    state: State,
    generation: u64,
    pid: Option<u32>,
    version: String,
    started: Option<SystemTime>,
    started_at: Instant,
    restarts: u32,
    quick_exits: u32,
    spawned: bool,
    detail: String,
    channel: Option<Channel>,
    health_failures: u32,
    /// Cancels the helper tasks of the current generation.
    tasks: CancellationToken,
}

struct Sup {
    opts: Options,
    slots: BTreeMap<Component, Slot>,
    tx: mpsc::UnboundedSender<Cmd>,
    stopping: bool,
}

impl Supervisor {
    /// Starts supervising every component.
    pub fn start(opts: Options) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let restarts = load_restarts(&opts.layout);
        let slots = Component::ALL
            .into_iter()
            .map(|c| {
                let slot = Slot {
                    component: c,
                    state: State::Starting,
                    generation: 0,
                    pid: None,
                    version: String::new(),
                    started: None,
                    started_at: Instant::now(),
                    restarts: restarts.get(c.short()).copied().unwrap_or(0),
                    quick_exits: 0,
                    spawned: false,
                    detail: String::new(),
                    channel: None,
                    health_failures: 0,
                    tasks: CancellationToken::new(),
                };
                (c, slot)
            })
            .collect();
        let mut sup = Sup { opts, slots, tx: tx.clone(), stopping: false };
        tokio::spawn(async move {
            for c in Component::ALL {
                sup.bring_up(c);
            }
            sup.run(rx).await;
        });
        Supervisor { tx }
    }

    /// The components as the supervisor sees them now.
    pub async fn snapshot(&self) -> Vec<View> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Snapshot(reply));
        rx.await.unwrap_or_default()
    }

    /// A channel to a running component.
    pub async fn channel(&self, c: Component) -> Option<Channel> {
        self.snapshot().await.into_iter().find(|v| v.component == c).and_then(|v| v.channel)
    }

    /// [`Supervisor::channel`], waiting up to `patience` for the component
    /// (just started, or restarting).
    pub async fn channel_within(&self, c: Component, patience: std::time::Duration) -> Option<Channel> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(ch) = self.channel(c).await {
                return Some(ch);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Stops supervising: no more restarts. Returns the components, so the
    /// caller can ask the running ones to stop.
    pub async fn stop_all(&self) -> Vec<View> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::StopAll(reply));
        rx.await.unwrap_or_default()
    }
}

impl Sup {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Snapshot(reply) => {
                let _ = reply.send(self.views());
            }
            Cmd::StopAll(reply) => {
                self.stopping = true;
                let _ = reply.send(self.views());
            }
            Cmd::Spawned { c, generation, pid } => {
                let slot = self.slot(c);
                if slot.generation == generation {
                    slot.pid = Some(pid);
                    slot.spawned = true;
                    slot.started = Some(SystemTime::now());
                    self.publish(Event::daemon("component.spawn", c.binary(), pid));
                }
            }
            Cmd::Up { c, generation, conn, spawned } => {
                let slot = self.slot(c);
                if slot.generation != generation {
                    return;
                }
                let hello = conn.hello;
                slot.state = State::Running;
                slot.pid = Some(hello.pid);
                slot.version = hello.version.clone();
                slot.started = Some(UNIX_EPOCH + Duration::from_millis(hello.started_unix_ms.max(0) as u64));
                slot.spawned = spawned;
                slot.detail.clear();
                slot.channel = Some(conn.channel.clone());
                slot.health_failures = 0;
                let tasks = slot.tasks.clone();
                let action = if spawned { "component.ready" } else { "component.adopt" };
                tracing::info!(component = %c, pid = hello.pid, version = %hello.version, "{action}");
                self.publish(Event::daemon(action, c.binary(), hello.pid).with("version", hello.version));
                if !spawned {
                    self.watch_pid(c, generation, hello.pid, tasks.clone());
                }
                self.watch_health(c, generation, conn.channel, tasks);
            }
            Cmd::Failed { c, generation, detail, retry } => {
                let slot = self.slot(c);
                if slot.generation != generation {
                    return;
                }
                tracing::warn!(component = %c, "{detail}");
                slot.detail = detail.clone();
                let pid = slot.pid.unwrap_or(0);
                self.publish(Event::daemon("component.fail", c.binary(), pid).with("detail", detail));
                if retry {
                    self.schedule_restart(c, "failed to start");
                } else {
                    let slot = self.slot(c);
                    slot.state = State::Down;
                    slot.tasks.cancel();
                }
            }
            Cmd::Exited { c, generation, how } => {
                let stopping = self.stopping;
                let slot = self.slot(c);
                if slot.generation != generation || slot.state == State::Down {
                    return;
                }
                let pid = slot.pid.take().unwrap_or(0);
                slot.channel = None;
                slot.started = None;
                slot.tasks.cancel();
                if stopping {
                    slot.state = State::Down;
                    slot.detail = "stopped".to_owned();
                    self.publish(Event::daemon("component.stop", c.binary(), pid).with("exit", how));
                    return;
                }
                tracing::warn!(component = %c, pid, exit = %how, "component exited; restarting");
                slot.restarts += 1;
                self.save_restarts();
                self.publish(Event::daemon("component.exit", c.binary(), pid).with("exit", how.clone()));
                self.schedule_restart(c, &how);
            }
            Cmd::Health { c, generation, ok } => {
                let slot = self.slot(c);
                if slot.generation != generation || !matches!(slot.state, State::Running | State::Unhealthy) {
                    return;
                }
                if ok {
                    if slot.state == State::Unhealthy {
                        tracing::info!(component = %c, "healthy again");
                    }
                    slot.health_failures = 0;
                    slot.state = State::Running;
                    slot.detail.clear();
                } else {
                    slot.health_failures += 1;
                    if slot.health_failures >= HEALTH_FAILURES && slot.state == State::Running {
                        slot.state = State::Unhealthy;
                        slot.detail = format!("{} health checks failed", slot.health_failures);
                        let pid = slot.pid.unwrap_or(0);
                        tracing::warn!(component = %c, "unhealthy");
                        self.publish(Event::daemon("component.unhealthy", c.binary(), pid));
                    }
                }
            }
            Cmd::Restart { c, generation } => {
                let slot = self.slot(c);
                if slot.generation == generation && slot.state == State::Restarting && !self.stopping {
                    self.bring_up(c);
                }
            }
        }
    }

    fn slot(&mut self, c: Component) -> &mut Slot {
        self.slots.get_mut(&c).expect("every component has a slot")
    }

    fn publish(&self, e: Event) {
        self.opts.hub.publish(e);
    }

    fn views(&self) -> Vec<View> {
        self.slots
            .values()
            .map(|s| View {
                component: s.component,
                state: s.state,
                pid: s.pid,
                version: s.version.clone(),
                started: s.started,
                restarts: s.restarts,
                socket: self.opts.layout.component_socket(s.component),
                spawned: s.spawned,
                detail: s.detail.clone(),
                channel: s.channel.clone(),
            })
            .collect()
    }

    /// Starts a new generation: adopt what answers, else spawn.
    fn bring_up(&mut self, c: Component) {
        let slot = self.slot(c);
        slot.tasks.cancel();
        slot.tasks = CancellationToken::new();
        slot.generation += 1;
        slot.state = State::Starting;
        slot.pid = None;
        slot.channel = None;
        slot.started_at = Instant::now();
        let generation = slot.generation;
        let tasks = slot.tasks.clone();
        let tx = self.tx.clone();
        let opts = self.opts.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tasks.cancelled() => {}
                cmd = bring_up(c, generation, opts, tx.clone(), tasks.clone()) => {
                    if let Some(cmd) = cmd { let _ = tx.send(cmd); }
                }
            }
        });
    }

    fn schedule_restart(&mut self, c: Component, why: &str) {
        let slot = self.slot(c);
        if slot.started_at.elapsed() >= STABLE_AFTER {
            slot.quick_exits = 0;
        }
        let delay = match slot.quick_exits {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 1)).min(MAX_BACKOFF),
        };
        slot.quick_exits += 1;
        slot.state = State::Restarting;
        slot.detail = format!("{why}; restarting in {} ms", delay.as_millis());
        let generation = slot.generation;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Cmd::Restart { c, generation });
        });
    }

    /// Watches a process that is not our child, through a pidfd.
    fn watch_pid(&self, c: Component, generation: u64, pid: u32, tasks: CancellationToken) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tasks.cancelled() => {}
                r = wait_exit(pid) => {
                    let how = match r { Ok(()) => "exited".to_owned(), Err(e) => format!("cannot watch pid {pid}: {e}") };
                    let _ = tx.send(Cmd::Exited { c, generation, how });
                }
            }
        });
    }

    fn watch_health(&self, c: Component, generation: u64, channel: Channel, tasks: CancellationToken) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut client = HealthClient::new(channel);
            let mut tick = tokio::time::interval(HEALTH_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = tasks.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let check = client.check(HealthCheckRequest { service: String::new() });
                let ok = matches!(
                    tokio::time::timeout(HEALTH_PERIOD, check).await,
                    Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
                );
                if tx.send(Cmd::Health { c, generation, ok }).is_err() {
                    return;
                }
            }
        });
    }

    fn save_restarts(&self) {
        let map: BTreeMap<&str, u32> = self.slots.values().map(|s| (s.component.short(), s.restarts)).collect();
        let path = self.opts.layout.supervisor_state();
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec(&map)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot save restart counters");
        }
    }
}

fn load_restarts(layout: &Layout) -> BTreeMap<String, u32> {
    std::fs::read(layout.supervisor_state()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Adopts the component answering on its socket, or spawns one and waits
/// for it to answer. Returns the command that reports the outcome, or none
/// when a spawned child's exit will report it.
async fn bring_up(
    c: Component,
    generation: u64,
    opts: Options,
    tx: mpsc::UnboundedSender<Cmd>,
    tasks: CancellationToken,
) -> Option<Cmd> {
    let sock = opts.layout.component_socket(c);
    let failed = |detail: String, retry: bool| Some(Cmd::Failed { c, generation, detail, retry });
    let up = |conn, spawned| Some(Cmd::Up { c, generation, conn: Box::new(conn), spawned });
    match connect(&sock, "leashd").await {
        Ok(conn) => return up(conn, false),
        Err(e) if !e.is_not_running() => return failed(format!("{c} answers but cannot be used: {e}"), false),
        Err(_) => {}
    }
    if let Some(pid) = socket::owner_pid(&sock) {
        // Started by someone else (its own unit, another leashd): wait for it.
        tracing::info!(component = %c, pid, "component starting elsewhere; waiting for it");
        return match connect_with_retry(&sock, "leashd", START_PATIENCE).await {
            Ok(conn) => up(conn, false),
            Err(e) => failed(format!("{c} (pid {pid}) holds its socket but does not answer: {e}"), true),
        };
    }
    let bin = opts.bin_dir.join(c.binary());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).process_group(0).kill_on_drop(false);
    // systemd's notify socket is leashd's alone: a component that inherited
    // it could claim to be the service's main process.
    cmd.env_remove("NOTIFY_SOCKET");
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start {}: {e}", bin.display()), false),
    };
    let pid = child.id().unwrap_or(0);
    let _ = tx.send(Cmd::Spawned { c, generation, pid });
    // Reap the child whatever happens to this generation's other tasks.
    let reaper_tx = tx.clone();
    tokio::spawn(async move {
        let how = match child.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => status.to_string(),
            },
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = reaper_tx.send(Cmd::Exited { c, generation, how });
    });
    match connect_with_retry(&sock, "leashd", START_PATIENCE).await {
        Ok(conn) => up(conn, true),
        Err(_) if tasks.is_cancelled() => None,
        Err(e) => {
            // It runs but never answered: kill it; its exit restarts it with backoff.
            tracing::warn!(component = %c, pid, error = %e, "did not answer within {START_PATIENCE:?}; killing it");
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            None
        }
    }
}
