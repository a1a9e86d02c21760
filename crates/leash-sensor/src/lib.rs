//! The sensor: kernel programs that observe and enforce per session.
//!
//! At start it probes what this kernel allows and loads the fallback tier
//! (cgroup sock programs for connect/sendmsg and ICMP sockets, an exec
//! tracepoint) attached to the instance's cgroup parent, pinned so a restart
//! never pauses them. A session registers (an admission step, before its
//! command runs): its cgroup joins the governed set, its address table goes
//! into the kernel's maps, and a holder process decides its files through
//! fanotify; both follow the policy service's changes. Decisions stream to
//! leashd as events. A restarted sensor takes its sessions back from the
//! state dir, the pinned maps and the holders. It reports no enforcement it
//! does not perform.

pub mod ask;
pub mod bpf;
pub mod calls;
pub mod event;
pub mod fan;
pub mod holder;
pub mod identity;
pub mod probe;
pub mod selftest;
pub mod vmbench;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use leash_core::tables::Tables;
use leash_core::{Component, Event, Mode};
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
use leash_proto::v1 as pb;
use leash_proto::v1::sensor_server::{Sensor, SensorServer};
use leash_proto::v1::{ComponentReport, SensorStatusRequest, ShutdownRequest, ShutdownResponse};
use std::net::IpAddr;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

/// A session's holder: its process, its control socket, and the sensor's
/// own duplicate of its fanotify group (the group never closes while the
/// session runs).
struct HolderLink {
    pid: u32,
    control: std::os::unix::net::UnixStream,
    group: std::os::fd::OwnedFd,
    /// The sensor's duplicate of the session's supervised-calls listener
    /// (kept for the same reason: a listener that closes answers every
    /// supervised call ENOSYS for the rest of the session).
    calls: Option<std::os::fd::OwnedFd>,
    stopping: bool,
}

/// A governed session.
struct Session {
    cgroup_id: u64,
    cgroup_dir: PathBuf,
    rel: String,
    pid: u32,
    slot: u32,
    written: bpf::Written,
    governed: Arc<RwLock<fan::Governed>>,
    learned: Arc<Mutex<Learned>>,
    generation: u64,
    holder: Arc<Mutex<HolderLink>>,
    resolvers: Vec<IpAddr>,
    /// leash-proxy intercepts its TCP 80/443.
    proxied: bool,
    /// Its calls that make names appear are supervised (leash-entry's filter).
    supervised: bool,
    /// How long a denial waits for the user's answer (0: not asked).
    ask_ms: u64,
    /// The file actions the LSM tier decides for it, as the kernel and its
    /// fanotify marks have them (None: not known, after a restart).
    lsm_files: Option<u32>,
    /// Shared with the event reader.
    lsm_known: Arc<AtomicU32>,
    /// What the LSM tier traces by identity (kept across tables).
    lsm_ids: Arc<Mutex<identity::Identities>>,
    /// Frozen until its tables are applied (taken back after a restart
    /// that lost its kernel state or its decider).
    thaw_on_refresh: bool,
}

impl Session {
    /// What to save of it, with its decider's pid.
    fn saved(&self, session: &str, holder: u32) -> Saved {
        Saved {
            session: session.to_owned(),
            pid: self.pid,
            cgroup: self.rel.clone(),
            cgroup_id: self.cgroup_id,
            holder,
            resolvers: self.resolvers.clone(),
            proxied: self.proxied,
            supervised: self.supervised,
            ask_ms: self.ask_ms,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("cgroup_id", &self.cgroup_id).field("slot", &self.slot).finish()
    }
}

/// What survives a sensor restart, in `<state dir>/sensor/sessions/<id>.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    session: String,
    pid: u32,
    cgroup: String,
    cgroup_id: u64,
    holder: u32,
    /// The container's DNS resolvers, read before its first instruction.
    #[serde(default)]
    resolvers: Vec<IpAddr>,
    /// leash-proxy intercepts its TCP 80/443.
    #[serde(default)]
    proxied: bool,
    /// Its calls are supervised: the listener is taken back from its holder.
    #[serde(default)]
    supervised: bool,
    /// How long a denial waits for the user's answer (0: not asked).
    #[serde(default)]
    ask_ms: u64,
}

/// What the ring-buffer reader needs to name a session and its reasons.
#[derive(Clone, Debug)]
struct Known {
    session: String,
    governed: Arc<RwLock<fan::Governed>>,
    learned: Arc<Mutex<Learned>>,
    /// The file actions the LSM tier decides for it (`1 << action number`).
    lsm_files: Arc<AtomicU32>,
    /// The identities written for the LSM tier (what a denial by identity
    /// is traced to).
    lsm_ids: Arc<Mutex<identity::Identities>>,
}

/// What the LSM tier decides for a session's files, when its tables are
/// written: the actions (`1 << action number`, none on the fallback tier),
/// the session's root (its files' identities are read through it), and
/// the session's identities, read again with each write and keeping what
/// was renamed (None: none written, the VM check's negative control).
pub(crate) struct LsmFiles<'a> {
    actions: u32,
    root: &'a std::path::Path,
    identities: Option<&'a Mutex<identity::Identities>>,
}

/// Reason indexes at and above this are a learned address's.
const LEARNED_REASONS: u32 = 1 << 20;

/// Addresses names resolved to, decided by the policy on those names
/// (from the proxy's DNS relay), until their TTL ends.
#[derive(Debug, Default)]
struct Learned {
    entries: HashMap<(IpAddr, u16), LearnedEntry>,
    reasons: Vec<Vec<String>>,
}

#[derive(Debug)]
struct LearnedEntry {
    word: u32,
    name: String,
    expires: std::time::Instant,
}

impl Learned {
    /// The name behind the entry that decided a destination, for events.
    fn name_of(&self, ip: IpAddr, port: u16) -> Option<&str> {
        self.entries.get(&(ip, port)).or_else(|| self.entries.get(&(ip, 0))).map(|e| e.name.as_str())
    }

    fn reason(&mut self, ids: Vec<String>) -> u32 {
        let i = match self.reasons.iter().position(|r| *r == ids) {
            Some(i) => i,
            None => {
                if self.reasons.len() >= 4096 {
                    self.reasons.clear();
                }
                self.reasons.push(ids);
                self.reasons.len() - 1
            }
        };
        LEARNED_REASONS + i as u32
    }
}

/// Whether the policy's own table names that key exactly (a learned
/// address never replaces it).
fn statically_named(t: &Tables, ip: IpAddr, port: u16) -> bool {
    if port == 0 { t.net.exact.contains_key(&ip) } else { t.net.exact_port.contains_key(&(ip, port)) }
}

struct Shared {
    kernel: Option<bpf::Kernel>,
    /// The LSM tier's file programs are attached.
    lsm: bool,
    caps: probe::Report,
    sessions: Mutex<HashMap<String, Session>>,
    by_cgroup: RwLock<HashMap<u64, Known>>,
    next_slot: AtomicU32,
    /// The followers of the event stream (leashd): each gets its own queue;
    /// a full queue drops the event and counts it.
    events: leash_daemon::fanout::Fanout,
    policy_socket: PathBuf,
    runtime_dir: PathBuf,
    state_dir: PathBuf,
    /// Held while tables are written and while unused slots are collected,
    /// so a collection never takes a table being written.
    tables_lock: Mutex<()>,
}

struct Service {
    core: ComponentCore,
    shared: Arc<Shared>,
}

impl Shared {
    fn publish(&self, e: Event) {
        self.publish_proto(leash_proto::event::to_proto(&e, 0));
    }

    fn publish_proto(&self, e: pb::Event) {
        self.events.publish(e);
    }

    fn saved_path(&self, session: &str) -> PathBuf {
        self.state_dir.join("sensor/sessions").join(format!("{session}.json"))
    }

    fn save(&self, saved: &Saved) {
        let path = self.saved_path(&saved.session);
        let write = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(saved).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = write {
            tracing::warn!(session_id = %saved.session, error = %e, "cannot save the session's registration");
        }
    }

    fn holder_spec(&self, session: &str, rel: &str, cgroup_dir: &std::path::Path, ask_ms: u64) -> holder::Spec {
        holder::Spec {
            session: session.to_owned(),
            cgroup: rel.to_owned(),
            cgroup_dir: cgroup_dir.to_path_buf(),
            policy_socket: self.policy_socket.clone(),
            listen: holder::socket_path(&self.runtime_dir, session),
            ask_ms,
        }
    }

    /// Reads a holder's decisions; when it dies while the session runs,
    /// freezes the session, starts another holder on the same group, sends
    /// it the tables and thaws the session.
    fn supervise(self: &Arc<Self>, session: String, mut stream: std::os::unix::net::UnixStream) {
        loop {
            holder::read_events(&stream, |e| self.publish_proto(e));
            let found = {
                let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.get(&session).map(|s| {
                    (s.holder.clone(), s.governed.clone(), s.cgroup_dir.clone(), s.rel.clone(), s.saved(&session, 0))
                })
            };
            let Some((link, governed, cgroup_dir, rel, saved)) = found else { return };
            let mut l = link.lock().unwrap_or_else(|p| p.into_inner());
            if l.stopping || !cgroup_dir.exists() {
                return;
            }
            let dead = l.pid;
            let frozen = holder::freeze(&cgroup_dir, true);
            // Its stream ended; make sure it is gone before another decides.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(dead as i32), nix::sys::signal::Signal::SIGKILL);
            let spec = self.holder_spec(&session, &rel, &cgroup_dir, saved.ask_ms);
            let replaced = holder::spawn(&spec, &l.group, l.calls.as_ref()).and_then(|(new_pid, control)| {
                let g = governed.read().unwrap_or_else(|p| p.into_inner()).clone();
                holder::send_tables(&control, &g.tables, g.mode)?;
                Ok((new_pid, control))
            });
            match replaced {
                Ok((new_pid, control)) => {
                    stream = match control.try_clone() {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    l.pid = new_pid;
                    l.control = control;
                    drop(l);
                    if frozen.is_ok() {
                        let _ = holder::freeze(&cgroup_dir, false);
                    }
                    self.save(&Saved { holder: new_pid, ..saved });
                    tracing::warn!(session_id = %session, dead, new_pid, "the session's file decider died; replaced");
                    let mut e = Event::daemon("sensor.decider.restart", "leash-sensor", new_pid)
                        .with("previous", dead.to_string())
                        .with("frozen", if frozen.is_ok() { "yes" } else { "no" });
                    e.session = Some(session.clone());
                    self.publish(e);
                }
                Err(e) => {
                    // No decider: the session stays frozen (fail closed).
                    tracing::error!(session_id = %session, error = %format!("{e:#}"), "cannot replace the session's file decider; the session stays frozen");
                    return;
                }
            }
        }
    }

    async fn policy(&self) -> Result<pb::policy_client::PolicyClient<tonic::transport::Channel>, String> {
        leash_daemon::policy::client(&self.policy_socket, "leash-sensor").await
    }

    /// The session's tables with the kernel's network guards added.
    async fn tables(&self, session: &str, resolvers: &[IpAddr]) -> Result<(Tables, Mode), String> {
        leash_daemon::policy::session_tables(&self.policy_socket, "leash-sensor", session, resolvers).await
    }

    /// Writes a session's tables into the kernel under a fresh slot, then
    /// flips the session to it (one map update), then removes the old ones.
    /// The file actions the LSM tier takes for `tables` here.
    fn lsm_actions(&self, tables: &Tables) -> u32 {
        if self.lsm { bpf::lsm_coverage(tables) } else { 0 }
    }

    fn apply(
        &self,
        cgroup_id: u64,
        tables: &Arc<Tables>,
        mode: Mode,
        proxied: bool,
        learned: &Learned,
        files: &LsmFiles<'_>,
    ) -> Result<(u32, bpf::Written), String> {
        let kernel = self.kernel.as_ref().ok_or("the kernel programs are not loaded")?;
        let _written_alone = self.tables_lock.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut written = kernel.maps.write_net(slot, &tables.net).map_err(|e| format!("{e:#}"))?;
        if files.actions != 0 {
            let w = kernel.maps.write_files(slot, tables, files.actions, &mut written).and_then(|()| {
                let Some(ids) = files.identities else { return Ok(()) };
                let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                ids.refresh(tables, files.root);
                kernel.maps.write_identities(slot, tables, files.actions, files.root, ids.names(), &mut written)
            });
            if let Err(e) = w {
                kernel.maps.clear(&written);
                return Err(format!("{e:#}"));
            }
        }
        // What the session learned from names goes into the new slot before
        // the switch, so it never goes missing.
        let now = std::time::Instant::now();
        for ((ip, port), e) in learned.entries.iter().filter(|(_, e)| e.expires > now) {
            if !statically_named(tables, *ip, *port) {
                let _ = kernel.maps.write_learned(slot, *ip, *port, e.word);
            }
        }
        let entry = bpf::SessionEntry {
            slot,
            mode: bpf::mode_number(mode),
            default4: bpf::default_verdict(tables.net.default_v4),
            default6: bpf::default_verdict(tables.net.default_v6),
            evaluate: u32::from(tables.net.evaluate_all),
            generation: tables.generation as u32,
            proxied: u32::from(proxied),
            lsm_files: files.actions,
        };
        if let Err(e) = kernel.maps.set_session(cgroup_id, &entry) {
            kernel.maps.clear(&written);
            return Err(format!("{e:#}"));
        }
        Ok((slot, written))
    }

    /// Follows a changed policy into the kernel and the file decider,
    /// retrying a few times (the previous tables stay meanwhile); the next
    /// change, or the next reconnection to leash-policy, tries again.
    async fn refresh(&self, session: &str) {
        let mut wait = Duration::from_millis(100);
        for _ in 0..5 {
            if self.refresh_once(session).await {
                return;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        tracing::error!(session_id = %session, "the session's new tables could not be applied; the previous stay in force");
    }

    /// One attempt; true when applied (or nothing left to apply).
    async fn refresh_once(&self, session: &str) -> bool {
        let found = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(session).map(|s| {
            (s.cgroup_id, s.resolvers.clone(), s.proxied, s.pid, s.lsm_files, s.holder.clone(), s.lsm_ids.clone())
        });
        let Some((cgroup_id, resolvers, proxied, pid, lsm_before, link, lsm_ids)) = found else {
            return true;
        };
        let (tables, mode) = match self.tables(session, &resolvers).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(session_id = %session, error = %e, "cannot load the session's new tables; the previous stay, retrying");
                return false;
            }
        };
        let generation = tables.generation;
        let tables = Arc::new(tables);
        let learned = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(session).map(|s| s.learned.clone());
        let learned = learned.unwrap_or_default();
        let actions = self.lsm_actions(&tables);
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let files = LsmFiles { actions, root: &root, identities: Some(&lsm_ids) };
        let events = fan::events_for(actions);
        // What fanotify takes over is marked before the LSM tier lets it go
        // (and what it hands over is unmarked after): never undecided.
        let remark = lsm_before != Some(actions);
        if remark {
            let l = link.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = fan::remark(&l.group, pid, events, nix::sys::fanotify::MaskFlags::empty()) {
                tracing::warn!(session_id = %session, error = %format!("{e:#}"), "cannot mark the session's mounts; the previous tables stay, retrying");
                return false;
            }
        }
        let applied =
            self.apply(cgroup_id, &tables, mode, proxied, &learned.lock().unwrap_or_else(|p| p.into_inner()), &files);
        match applied {
            Ok((slot, written)) => {
                let found = {
                    let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                    sessions.get_mut(session).map(|s| {
                        if let Some(k) = &self.kernel {
                            k.maps.clear(&s.written);
                        }
                        s.slot = slot;
                        s.written = written;
                        s.generation = generation;
                        s.lsm_files = Some(actions);
                        s.lsm_known.store(actions, Ordering::Relaxed);
                        *s.governed.write().unwrap_or_else(|p| p.into_inner()) =
                            fan::Governed { tables: tables.clone(), mode };
                        let thaw = std::mem::take(&mut s.thaw_on_refresh).then(|| s.cgroup_dir.clone());
                        (s.holder.clone(), thaw)
                    })
                };
                if let Some((link, thaw)) = found {
                    // Written outside the sessions' lock (the socket has a write timeout).
                    let l = link.lock().unwrap_or_else(|p| p.into_inner());
                    if remark {
                        let all = nix::sys::fanotify::MaskFlags::FAN_OPEN_PERM
                            | nix::sys::fanotify::MaskFlags::FAN_OPEN_EXEC_PERM;
                        if let Err(e) = fan::remark(&l.group, pid, nix::sys::fanotify::MaskFlags::empty(), all - events)
                        {
                            tracing::warn!(session_id = %session, error = %format!("{e:#}"), "cannot unmark what the LSM tier took over (both decide it)");
                        }
                    }
                    if let Err(e) = holder::send_tables(&l.control, &tables, mode) {
                        tracing::warn!(session_id = %session, error = %e, "cannot reach the session's file decider");
                    }
                    drop(l);
                    if let Some(dir) = thaw {
                        let _ = holder::freeze(&dir, false);
                    }
                    tracing::info!(session_id = %session, generation, mode = ?mode, "tables applied");
                }
                if let Some(k) = &self.kernel {
                    let _alone = self.tables_lock.lock().unwrap_or_else(|p| p.into_inner());
                    k.maps.collect_garbage();
                }
                true
            }
            Err(e) => {
                tracing::warn!(session_id = %session, error = %e, "cannot apply the session's new tables; retrying");
                false
            }
        }
    }

    /// A kernel event on the wire (built directly: this is the hot path).
    /// `procs` is the lineage the kernel reported (forks, execs, exits) for
    /// naming each process's executable without asking /proc again.
    fn kernel_event(&self, raw: &event::RawEvent, procs: &mut Lineage) -> Option<pb::Event> {
        let (session, reasons, name, lsm_files, traced) = {
            let known = self.by_cgroup.read().unwrap_or_else(|p| p.into_inner());
            let k = known.get(&raw.cgroup_id)?;
            // A learned address's verdict names the name behind it too.
            let (reasons, name) = match bpf::decode(raw.verdict).1 {
                Some(r) if r >= LEARNED_REASONS => {
                    let l = k.learned.lock().unwrap_or_else(|p| p.into_inner());
                    let name = raw.addr.and_then(|ip| l.name_of(ip, raw.port)).map(str::to_owned);
                    (l.reasons.get((r - LEARNED_REASONS) as usize).cloned(), name)
                }
                Some(r) => {
                    let g = k.governed.read().unwrap_or_else(|p| p.into_inner());
                    (g.tables.reasons.get(r as usize).cloned(), None)
                }
                None => (None, None),
            };
            // A denial by identity, under the name the tables forbid.
            let traced = raw.traced.and_then(|(dev, ino, depth)| {
                let ids = k.lsm_ids.lock().unwrap_or_else(|p| p.into_inner());
                let known = ids.names().iter().find(|(id, _)| id.1 == ino && bpf::kernel_dev(id.0) == dev)?.1.clone();
                Some(identity::traced_name(&known, &raw.path, depth.into()))
            });
            (k.session.clone(), reasons.unwrap_or_default(), name, k.lsm_files.load(Ordering::Relaxed), traced)
        };
        // A decision of the LSM tier, rather than an observation.
        let lsm = raw.flags & event::FLAG_LSM != 0 && matches!(raw.kind, event::KIND_OPEN | event::KIND_EXEC);
        let lsm_execs = lsm_files & bpf::lsm_bit(leash_core::tables::FileAction::Exec) != 0;
        let executable = procs.executable(raw);
        let (kind, action, resource) = match raw.kind {
            event::KIND_CONNECT | event::KIND_SENDMSG => {
                let resource = match raw.addr? {
                    std::net::IpAddr::V4(a) => format!("{a}:{}", raw.port),
                    std::net::IpAddr::V6(a) => format!("[{a}]:{}", raw.port),
                };
                (pb::EventKind::Connect, "NetworkConnect", resource)
            }
            event::KIND_EXEC => (pb::EventKind::Exec, "ProcessExec", raw.path.clone()),
            event::KIND_OPEN if lsm => {
                let action = if raw.flags & 0xff == 2 { "FileOpenReadWrite" } else { "FileOpenReadOnly" };
                (pb::EventKind::File, action, raw.path.clone())
            }
            event::KIND_ICMP => (pb::EventKind::Connect, "NetworkConnect", "ICMP socket (ping)".to_owned()),
            event::KIND_FORK => (pb::EventKind::Process, "process.fork", executable.clone()),
            event::KIND_EXIT => (pb::EventKind::Process, "process.exit", executable.clone()),
            _ => return None,
        };
        let mode = match raw.mode {
            0 => pb::Mode::Record,
            1 => pb::Mode::Shadow,
            _ => pb::Mode::Enforce,
        };
        let allow = bpf::decode(raw.verdict).0;
        let lifecycle = matches!(raw.kind, event::KIND_FORK | event::KIND_EXIT);
        let observed = (raw.kind == event::KIND_EXEC && !lsm) || lifecycle;
        let (mechanism, syscall) = match raw.kind {
            _ if lsm && raw.flags & event::FLAG_NAME_ONLY != 0 => {
                ("bpf-lsm (a path hook, by the entry's directory and name)", None)
            }
            event::KIND_OPEN => ("bpf-lsm (file_open)", None),
            event::KIND_EXEC if lsm => ("bpf-lsm (bprm_check_security or a mapping of code)", None),
            event::KIND_EXEC if lsm_execs => ("tracepoint (observed; execs are decided by bpf-lsm)", None),
            event::KIND_EXEC => ("tracepoint (observed; execs are decided by fanotify)", None),
            event::KIND_FORK | event::KIND_EXIT => ("tracepoint (observed)", None),
            event::KIND_CONNECT if raw.verdict & bpf::VERDICT_PROXY != 0 => {
                ("cgroup-sock (to leash-proxy, which decides by name)", Some("connect"))
            }
            event::KIND_SENDMSG => ("cgroup-sock", Some("sendmsg")),
            event::KIND_ICMP => ("cgroup-sock (socket creation)", Some("socket")),
            _ => ("cgroup-sock", Some("connect")),
        };
        let mut details = std::collections::BTreeMap::new();
        details.insert("tid".into(), raw.tid.to_string());
        details.insert("ppid".into(), raw.ppid.to_string());
        details.insert("mechanism".into(), mechanism.into());
        if let Some(s) = syscall {
            details.insert("syscall".into(), s.into());
        }
        if let Some(n) = name {
            details.insert("name".into(), n);
        }
        if let Some(t) = traced {
            details.insert("traced".into(), format!("via inode of {t}"));
        }
        if raw.kind == event::KIND_EXIT {
            // As wait() reports it: a signal in the low 7 bits, else the status.
            match raw.flags & 0x7f {
                0 => details.insert("exit_code".into(), ((raw.flags >> 8) & 0xff).to_string()),
                signal => details.insert("signal".into(), signal.to_string()),
            };
        } else {
            details.insert("uid".into(), raw.uid.to_string());
            details.insert("comm".into(), raw.comm.clone());
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Some(pb::Event {
            seq: 0,
            time_unix_nanos: now.as_nanos() as i64,
            session,
            pid: raw.pid,
            executable,
            kind: kind as i32,
            action: action.to_owned(),
            resource,
            mode: mode as i32,
            decision: if lifecycle {
                pb::Decision::Unspecified
            } else if !allow && mode == pb::Mode::Enforce && !observed {
                pb::Decision::Deny
            } else {
                pb::Decision::Allow
            } as i32,
            would_deny: !allow && mode == pb::Mode::Shadow && !observed,
            policy_ids: reasons,
            details,
        })
    }
}

/// The processes of governed sessions and their executables, as the
/// kernel's fork, exec and exit events report them (bounded: a process
/// missed is looked up in /proc).
#[derive(Default)]
struct Lineage {
    executables: HashMap<u32, String>,
}

impl Lineage {
    const MAX: usize = 16_384;

    /// The executable of the event's process, updating the lineage.
    fn executable(&mut self, raw: &event::RawEvent) -> String {
        if self.executables.len() >= Self::MAX {
            self.executables.clear();
        }
        match raw.kind {
            // A child runs its parent's executable until it execs.
            event::KIND_FORK => {
                let exe = match self.executables.get(&raw.ppid) {
                    Some(e) => e.clone(),
                    None => fan::executable(raw.pid),
                };
                self.executables.insert(raw.pid, exe.clone());
                exe
            }
            event::KIND_EXIT => self.executables.remove(&raw.pid).unwrap_or_default(),
            event::KIND_EXEC => {
                let exe = fan::executable(raw.pid);
                self.executables.insert(raw.pid, exe.clone());
                exe
            }
            _ => self.executables.entry(raw.pid).or_insert_with(|| fan::executable(raw.pid)).clone(),
        }
    }
}

fn capability_to_proto(c: &probe::Capability) -> pb::Capability {
    pb::Capability { action: c.action.to_owned(), mechanism: c.mechanism.to_owned(), reason: c.reason.clone() }
}

/// The container's cgroup (relative to the v2 root) and its id.
fn cgroup_of(pid: u32) -> Result<(String, u64), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| format!("process {pid}: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("process {pid} has no cgroup v2 membership"))?
        .to_owned();
    let root = bpf::cgroup2_root().map_err(|e| format!("{e:#}"))?;
    let dir = root.join(rel.trim_start_matches('/'));
    let id = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.ino();
    Ok((rel, id))
}

#[tonic::async_trait]
impl Sensor for Service {
    type EventsStream = leash_daemon::fanout::EventStream;

    async fn status(&self, _: Request<SensorStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        let s = &self.shared;
        let programs = match &s.kernel {
            Some(k) => format!("{} attached ({})", k.links.len(), k.cgroup.display()),
            None => "none loaded".to_owned(),
        };
        let dropped = s.events.dropped() + s.kernel.as_ref().map_or(0, |k| k.maps.dropped());
        Ok(self.core.report(vec![
            ("tier", s.caps.tier.clone()),
            ("programs", programs),
            ("sessions", s.sessions.lock().unwrap_or_else(|p| p.into_inner()).len().to_string()),
            ("dropped_events", dropped.to_string()),
            ("folded_events", s.events.folded().to_string()),
        ]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }

    async fn capabilities(
        &self,
        _: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let caps = &self.shared.caps;
        Ok(Response::new(pb::CapabilitiesResponse {
            capabilities: caps.capabilities.iter().map(capability_to_proto).collect(),
            tier: caps.tier.clone(),
            probes: caps.probes.iter().map(|(n, v)| pb::Fact { name: n.clone(), value: v.clone() }).collect(),
            gaps: caps.gaps.iter().map(|(n, v)| pb::Fact { name: n.clone(), value: v.clone() }).collect(),
        }))
    }

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        let s = self.shared.clone();
        // A second registration of the same session replaces the first.
        self.unregister(Request::new(pb::UnregisterRequest { session: req.session.clone() })).await?;
        if s.kernel.is_none() {
            return Err(Status::failed_precondition(format!(
                "the kernel programs are not loaded: {}",
                s.caps.probes.iter().find(|(n, _)| n == "programs").map(|(_, v)| v.as_str()).unwrap_or("unknown")
            )));
        }
        let (rel, cgroup_id) = cgroup_of(req.pid).map_err(Status::failed_precondition)?;
        // The network programs are attached to the instance's cgroup parent:
        // a container outside it would have no connect enforcement at all.
        let attached = s.kernel.as_ref().map(|k| k.cgroup.clone()).unwrap_or_default();
        let cgroup_dir = bpf::cgroup2_root().map(|r| r.join(rel.trim_start_matches('/'))).unwrap_or_default();
        if !cgroup_dir.starts_with(&attached) {
            return Err(Status::failed_precondition(format!(
                "the container's cgroup {} is not below {}, where the programs are attached (leash governs \
                 engines that place containers with the cgroupfs driver; `docker info` names the engine's)",
                cgroup_dir.display(),
                attached.display()
            )));
        }
        // Read before the session's first instruction: nothing of the agent's yet.
        let resolvers = leash_daemon::net::resolvers_of(req.pid);
        let (tables, mode) = s.tables(&req.session, &resolvers).await.map_err(Status::unavailable)?;
        let generation = tables.generation;
        let tables = Arc::new(tables);
        let learned = Arc::new(Mutex::new(Learned::default()));
        // The LSM tier takes the file actions it can decide alone; fanotify
        // is marked for the rest.
        let lsm_files = s.lsm_actions(&tables);
        let root = PathBuf::from(format!("/proc/{}/root", req.pid));
        let lsm_ids = Arc::new(Mutex::new(identity::Identities::default()));
        let files = LsmFiles { actions: lsm_files, root: &root, identities: Some(&lsm_ids) };
        let (slot, written) =
            s.apply(cgroup_id, &tables, mode, req.proxied, &Learned::default(), &files).map_err(Status::internal)?;
        let undo = |s: &Shared| {
            if let Some(k) = &s.kernel {
                k.maps.remove_session(cgroup_id);
                k.maps.clear(&written);
            }
        };
        let created = fan::create_group(&fan::Marks::Container(req.pid), fan::events_for(lsm_files))
            .and_then(|(g, marked, unmarked)| Ok((g.duplicate()?, marked, unmarked)));
        let (group, marked, unmarked) = match created {
            Ok(g) => g,
            Err(e) => {
                undo(&s);
                return Err(Status::failed_precondition(format!("cannot govern the session's files: {e:#}")));
            }
        };
        // Taken while leash-entry waits for its release: the agent has not run.
        let calls = match req.supervised.then(|| calls::take_listener(req.pid)).transpose() {
            Ok(c) => c,
            Err(e) => {
                undo(&s);
                return Err(Status::failed_precondition(format!("cannot supervise the session's calls: {e:#}")));
            }
        };
        let spec = s.holder_spec(&req.session, &rel, &cgroup_dir, req.ask_timeout_ms.into());
        let started = holder::spawn(&spec, &group, calls.as_ref()).and_then(|(pid, control)| {
            holder::send_tables(&control, &tables, mode)?;
            Ok((pid, control))
        });
        let (holder_pid, control) = match started {
            Ok(h) => h,
            Err(e) => {
                undo(&s);
                return Err(Status::internal(format!("cannot start the session's file decider: {e:#}")));
            }
        };
        let reader = control.try_clone().map_err(|e| Status::internal(e.to_string()))?;
        let governed = Arc::new(RwLock::new(fan::Governed { tables, mode }));
        let lsm_known = Arc::new(AtomicU32::new(lsm_files));
        s.by_cgroup.write().unwrap_or_else(|p| p.into_inner()).insert(
            cgroup_id,
            Known {
                session: req.session.clone(),
                governed: governed.clone(),
                learned: learned.clone(),
                lsm_files: lsm_known.clone(),
                lsm_ids: lsm_ids.clone(),
            },
        );
        let link = HolderLink { pid: holder_pid, control, group, calls, stopping: false };
        let session = Session {
            cgroup_id,
            cgroup_dir,
            rel: rel.clone(),
            pid: req.pid,
            slot,
            written,
            governed,
            learned,
            generation,
            holder: Arc::new(Mutex::new(link)),
            resolvers: resolvers.clone(),
            proxied: req.proxied,
            supervised: req.supervised,
            ask_ms: req.ask_timeout_ms.into(),
            lsm_files: Some(lsm_files),
            lsm_known,
            lsm_ids,
            thaw_on_refresh: false,
        };
        s.save(&session.saved(&req.session, holder_pid));
        s.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(req.session.clone(), session);
        let (sup, id) = (s.clone(), req.session.clone());
        std::thread::Builder::new()
            .name("holder-events".into())
            .spawn(move || sup.supervise(id, reader))
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(session_id = %req.session, cgroup_id, holder = holder_pid, marked = marked.len(), unmarked = ?unmarked, lsm_files, "governing the session");
        Ok(Response::new(pb::RegisterResponse {
            capabilities: session_capabilities(&s.caps.capabilities, lsm_files)
                .iter()
                .map(capability_to_proto)
                .collect(),
            marked: marked.len() as u32,
            unmarked,
            generation,
        }))
    }

    async fn learn(&self, req: Request<pb::LearnRequest>) -> Result<Response<pb::LearnResponse>, Status> {
        let req = req.into_inner();
        let kernel = self
            .shared
            .kernel
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("the kernel programs are not loaded"))?;
        let found = {
            let sessions = self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.get(&req.session).map(|s| (s.slot, s.learned.clone(), s.governed.clone()))
        };
        let (slot, learned, governed) =
            found.ok_or_else(|| Status::not_found(format!("no governed session {}", req.session)))?;
        let tables = governed.read().unwrap_or_else(|p| p.into_inner()).tables.clone();
        let mut written = 0;
        let _alone = self.shared.tables_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut l = learned.lock().unwrap_or_else(|p| p.into_inner());
        for a in &req.addresses {
            let Ok(ip) = a.ip.parse::<IpAddr>().map(leash_core::tables::normalize_ip) else { continue };
            let port = u16::try_from(a.port).unwrap_or(0);
            if statically_named(&tables, ip, port) {
                continue;
            }
            let mut ids = a.reasons.clone();
            ids.push(format!("(via the name {})", req.name));
            let reason = l.reason(ids);
            let word = bpf::encode(leash_core::tables::Verdict::new(a.allow, reason));
            let expires = std::time::Instant::now() + Duration::from_secs(u64::from(a.ttl.clamp(1, 3600)));
            if kernel.maps.write_learned(slot, ip, port, word).is_ok() {
                l.entries.insert((ip, port), LearnedEntry { word, name: req.name.clone(), expires });
                written += 1;
            }
        }
        Ok(Response::new(pb::LearnResponse { written }))
    }

    async fn answer(&self, req: Request<pb::AnswerRequest>) -> Result<Response<pb::AnswerResponse>, Status> {
        let req = req.into_inner();
        let link =
            self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&req.session).map(|s| s.holder.clone());
        let link = link.ok_or_else(|| Status::not_found(format!("no governed session {}", req.session)))?;
        let a = ask::Answer { id: req.ask_id, allow: req.allow, how: req.how };
        let sent = holder::send_answer(&link.lock().unwrap_or_else(|p| p.into_inner()).control, &a);
        sent.map_err(|e| Status::unavailable(format!("the session's file decider: {e}")))?;
        Ok(Response::new(pb::AnswerResponse {}))
    }

    async fn unregister(
        &self,
        req: Request<pb::UnregisterRequest>,
    ) -> Result<Response<pb::UnregisterResponse>, Status> {
        let session = req.into_inner().session;
        let removed = self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&session);
        if let Some(s) = removed {
            {
                let mut l = s.holder.lock().unwrap_or_else(|p| p.into_inner());
                l.stopping = true;
                let _ = holder::send_stop(&l.control);
            }
            if let Some(k) = &self.shared.kernel {
                k.maps.remove_session(s.cgroup_id);
                k.maps.clear(&s.written);
            }
            self.shared.by_cgroup.write().unwrap_or_else(|p| p.into_inner()).remove(&s.cgroup_id);
            let _ = std::fs::remove_file(self.shared.saved_path(&session));
            tracing::info!(session_id = %session, "no longer governing the session");
        }
        Ok(Response::new(pb::UnregisterResponse {}))
    }

    async fn self_test(&self, req: Request<pb::SelfTestRequest>) -> Result<Response<pb::SelfTestResponse>, Status> {
        let without = req.into_inner().without;
        for w in &without {
            if w != "fanotify" && w != "cgroup-sock" && w != "bpf-lsm" {
                return Err(Status::invalid_argument(format!(
                    "unknown mechanism {w:?}: fanotify, bpf-lsm or cgroup-sock"
                )));
            }
        }
        let shared = self.shared.clone();
        let (caps, lines) = tokio::task::spawn_blocking(move || selftest::run(&shared, &without))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::failed_precondition)?;
        let checks: Vec<pb::SelfTestCheck> = ["open", "exec", "connect", "sendmsg"]
            .into_iter()
            .map(|a| {
                let outcome =
                    lines.iter().find(|(k, _)| k == a).map(|(_, v)| v.clone()).unwrap_or_else(|| "no answer".into());
                pb::SelfTestCheck { action: a.to_owned(), passed: outcome == "denied", outcome }
            })
            .collect();
        Ok(Response::new(pb::SelfTestResponse {
            capabilities: caps.iter().map(capability_to_proto).collect(),
            passed: checks.iter().all(|c| c.passed),
            checks,
        }))
    }

    async fn events(&self, _: Request<pb::SensorEventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        Ok(Response::new(self.shared.events.follow(self.core.shutdown.clone())))
    }
}

/// The host's capabilities as they apply to one session: a file action
/// the LSM tier does not take for it (its rules need user space) is
/// fanotify's.
fn session_capabilities(caps: &[probe::Capability], lsm_files: u32) -> Vec<probe::Capability> {
    use leash_core::tables::FileAction;
    caps.iter()
        .map(|c| {
            let action = match c.action {
                "file-read" => FileAction::Read,
                "file-write" => FileAction::Write,
                "exec" => FileAction::Exec,
                _ => return c.clone(),
            };
            if c.mechanism != "bpf-lsm" || lsm_files & bpf::lsm_bit(action) != 0 {
                return c.clone();
            }
            probe::Capability {
                action: c.action,
                mechanism: "fanotify",
                reason: "this session's rules for it need user space (path patterns or name conditions)".into(),
            }
        })
        .collect()
}

/// Reads the ring buffer on a thread of its own.
fn read_ring(shared: Arc<Shared>) {
    let Some(kernel) = shared.kernel.as_ref() else { return };
    let reader = shared.clone();
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    let mut procs = Lineage::default();
    // The events of one wakeup, published together after the ring is drained.
    let pending = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let collected = pending.clone();
    let added = builder.add(&kernel.maps.events, move |data: &[u8]| {
        if let Some(raw) = event::RawEvent::parse(data)
            && let Some(e) = reader.kernel_event(&raw, &mut procs)
        {
            let mut batch = collected.borrow_mut();
            batch.push(e);
            if batch.len() >= leash_daemon::fanout::MAX_BATCH {
                reader.events.publish_batch(std::mem::take(&mut *batch));
            }
        }
        0
    });
    if let Err(e) = added {
        tracing::error!(error = %e, "cannot read the kernel's events");
        return;
    }
    let ring = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the kernel's events");
            return;
        }
    };
    loop {
        // Wakeups are batched in the kernel; polling at least every 50 ms
        // bounds how long an event waits.
        let read = ring.poll(Duration::from_millis(50)).and_then(|()| ring.consume());
        let batch = std::mem::take(&mut *pending.borrow_mut());
        if batch.is_empty() {
            // Nothing came: what this thread's events were made of, freed
            // by the threads that sent them, is given back.
            leash_daemon::process::idle();
        }
        shared.events.publish_batch(batch);
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the kernel's events failed");
                return;
            }
        }
    }
}

/// Removes learned addresses whose TTL ended, every second.
async fn expire_learned(shared: Arc<Shared>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(kernel) = shared.kernel.as_ref() else { return };
        let now = std::time::Instant::now();
        let sessions: Vec<(u32, Arc<Mutex<Learned>>)> = shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| (s.slot, s.learned.clone()))
            .collect();
        let _alone = shared.tables_lock.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, learned) in sessions {
            let mut l = learned.lock().unwrap_or_else(|p| p.into_inner());
            l.entries.retain(|(ip, port), e| {
                let keep = e.expires > now;
                if !keep {
                    kernel.maps.remove_learned(slot, *ip, *port);
                }
                keep
            });
        }
    }
}

/// Follows the policy service's changes into the governed sessions.
async fn follow_policy(shared: Arc<Shared>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let follow = async {
            let Ok(mut client) = shared.policy().await else { return };
            let Ok(stream) = client.watch(pb::WatchRequest { session: String::new() }).await else { return };
            let mut stream = stream.into_inner();
            // After a reconnect, every session is refreshed (changes may have been missed).
            let ids: Vec<String> = shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
            for id in ids {
                shared.refresh(&id).await;
            }
            while let Ok(Some(c)) = stream.message().await {
                if c.kind == "current" || c.kind == "close" || c.kind == "invalid" || c.kind == "unwatched" {
                    continue;
                }
                let known =
                    shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&c.session).map(|s| s.generation);
                if known.is_some_and(|g| g < c.generation) {
                    shared.refresh(&c.session).await;
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = follow => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Takes back the sessions an earlier sensor governed: their holders (and
/// groups) if alive, else new ones; the pinned maps kept their network
/// decisions meanwhile. The tables are refreshed once leash-policy answers.
fn restore(shared: &Arc<Shared>) {
    let dir = shared.state_dir.join("sensor/sessions");
    let live: std::collections::BTreeSet<u64> =
        shared.kernel.as_ref().map(|k| k.maps.sessions().into_iter().map(|(id, _)| id).collect()).unwrap_or_default();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(saved) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Saved>(&b).ok()) else {
            continue;
        };
        let cgroup_dir = bpf::cgroup2_root().map(|r| r.join(saved.cgroup.trim_start_matches('/'))).unwrap_or_default();
        if !cgroup_dir.exists() {
            if let Some(k) = &shared.kernel {
                k.maps.remove_session(saved.cgroup_id);
            }
            let _ = std::fs::remove_file(&path);
            continue;
        }
        // The kernel lost this session's tables (the pinned state could not
        // be reused): frozen until they are written again.
        let mut thaw_on_refresh = false;
        if !live.contains(&saved.cgroup_id) {
            tracing::warn!(session_id = %saved.session, "the kernel lost the session's tables; frozen until they are back");
            thaw_on_refresh = holder::freeze(&cgroup_dir, true).is_ok();
        }
        let spec = shared.holder_spec(&saved.session, &saved.cgroup, &cgroup_dir, saved.ask_ms);
        let (control, group, holder_pid, calls) = match holder::reconnect(&spec.listen, saved.holder) {
            Ok((control, group)) => {
                let calls = if saved.supervised {
                    calls::take_listener(saved.holder)
                        .map_err(|e| tracing::error!(session_id = %saved.session, error = %format!("{e:#}"), "the session's supervised-calls listener is gone: its supervised calls fail (ENOSYS)"))
                        .ok()
                } else {
                    None
                };
                (control, group, saved.holder, calls)
            }
            Err(e) => {
                // The holder died too: its group closed. Govern afresh, frozen
                // until the new decider has its tables.
                tracing::error!(session_id = %saved.session, error = %format!("{e:#}"), "the session's file decider was gone; starting another");
                // Frozen until the new decider has its tables.
                thaw_on_refresh |= holder::freeze(&cgroup_dir, true).is_ok();
                if saved.supervised {
                    // It was held by the sensor and the holder only.
                    tracing::error!(session_id = %saved.session, "the session's supervised-calls listener is gone with its holder: its supervised calls fail (ENOSYS)");
                }
                // Marked for everything until the tables say what the LSM tier takes.
                let started = fan::create_group(&fan::Marks::Container(saved.pid), fan::events_for(0)).and_then(
                    |(group, _, _)| {
                        let group = group.duplicate()?;
                        holder::spawn(&spec, &group, None).map(|(pid, control)| (control, group, pid, None))
                    },
                );
                match started {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(session_id = %saved.session, error = %format!("{e:#}"), "cannot govern the session's files; it stays frozen");
                        continue;
                    }
                }
            }
        };
        let Ok(reader) = control.try_clone() else { continue };
        let governed =
            Arc::new(RwLock::new(fan::Governed { tables: Arc::new(Tables::default()), mode: Mode::Enforce }));
        let learned = Arc::new(Mutex::new(Learned::default()));
        // What the kernel still has: the pinned sessions map says what the
        // LSM tier decides (until the first refresh writes it again).
        let lsm_known = Arc::new(AtomicU32::new(
            shared
                .kernel
                .as_ref()
                .and_then(|k| k.maps.sessions().into_iter().find(|(id, _)| *id == saved.cgroup_id))
                .map_or(0, |(_, e)| e.lsm_files),
        ));
        let lsm_ids = Arc::new(Mutex::new(identity::Identities::default()));
        shared.by_cgroup.write().unwrap_or_else(|p| p.into_inner()).insert(
            saved.cgroup_id,
            Known {
                session: saved.session.clone(),
                governed: governed.clone(),
                learned: learned.clone(),
                lsm_files: lsm_known.clone(),
                lsm_ids: lsm_ids.clone(),
            },
        );
        shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
            saved.session.clone(),
            Session {
                cgroup_id: saved.cgroup_id,
                cgroup_dir,
                rel: saved.cgroup.clone(),
                pid: saved.pid,
                slot: 0,
                written: bpf::Written::default(),
                governed,
                learned,
                generation: 0,
                holder: Arc::new(Mutex::new(HolderLink { pid: holder_pid, control, group, calls, stopping: false })),
                resolvers: saved.resolvers.clone(),
                proxied: saved.proxied,
                supervised: saved.supervised,
                ask_ms: saved.ask_ms,
                lsm_files: None,
                lsm_known,
                lsm_ids,
                thaw_on_refresh,
            },
        );
        shared.save(&Saved { holder: holder_pid, ..saved });
        let (sup, id) =
            (shared.clone(), entry.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let _ = std::thread::Builder::new().name("holder-events".into()).spawn(move || sup.supervise(id, reader));
        tracing::info!(session_id = %entry.path().display(), holder = holder_pid, "took the session back");
    }
}

/// The environment variable that keeps sessions off the LSM tier
/// (`LEASH_SENSOR_LSM=0`: the fallback tier governs them on every kernel).
pub const LSM_ENV: &str = "LEASH_SENSOR_LSM";

/// Whether sessions may use the LSM tier where the kernel runs BPF LSM:
/// unless [`LSM_ENV`] is `0`.
pub fn lsm_allowed() -> bool {
    std::env::var_os(LSM_ENV).is_none_or(|v| v != "0")
}

/// Runs the sensor until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    // libbpf's own messages go to the log, not to stderr (the probe's
    // expected refusals would read as errors there).
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, |level, msg| match level {
        libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{}", msg.trim_end()),
        _ => tracing::trace!(target: "libbpf", "{}", msg.trim_end()),
    })));
    let bound = ctx.bind_component(Component::Sensor)?;
    let cgroup = bpf::cgroup2_root().map(|r| r.join(ctx.layout.cgroup_parent()));
    let pins = ctx.layout.bpffs_dir();
    // The LSM tier where the kernel runs BPF LSM (found by trying).
    let lsm_probe = bpf::probe_lsm();
    // Sessions use the LSM tier wherever it runs, unless kept off it.
    let lsm_wanted = lsm_probe.is_ok() && lsm_allowed();
    if lsm_probe.is_ok() && !lsm_wanted {
        tracing::info!("BPF LSM runs here; sessions stay on the fallback tier ({LSM_ENV}=0)");
    }
    let kernel = cgroup.and_then(|c| bpf::load(&c, &pins, lsm_wanted));
    let lsm = kernel.as_ref().is_ok_and(|k| k.links.iter().any(|(name, _)| name.starts_with("leash_lsm_")));
    let caps =
        probe::decide(kernel.as_ref().map_err(|e| format!("{e:#}")).map(|_| ()), lsm_probe, lsm, probe::fanotify());
    for c in &caps.capabilities {
        tracing::info!(action = c.action, mechanism = c.mechanism, reason = %c.reason, "capability");
    }
    let kernel = kernel.ok();
    // Slots already in the pinned maps (from before a restart) stay taken.
    let next_slot = kernel.as_ref().map_or(1, |k| k.maps.sessions().iter().map(|(_, e)| e.slot).max().unwrap_or(0) + 1);
    let shared = Arc::new(Shared {
        kernel,
        lsm,
        caps,
        sessions: Mutex::default(),
        by_cgroup: RwLock::default(),
        next_slot: AtomicU32::new(next_slot),
        events: leash_daemon::fanout::Fanout::default(),
        policy_socket: ctx.layout.component_socket(Component::Policy),
        runtime_dir: ctx.layout.runtime_dir.clone(),
        state_dir: ctx.layout.state_dir.clone(),
        tables_lock: Mutex::new(()),
    });
    restore(&shared);
    tokio::spawn(expire_learned(shared.clone(), ctx.shutdown.clone()));
    let ring = shared.clone();
    std::thread::Builder::new().name("ringbuf".into()).spawn(move || read_ring(ring))?;
    tokio::spawn(follow_policy(shared.clone(), ctx.shutdown.clone()));
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    routes.add_service(SensorServer::new(Service { core, shared: shared.clone() }));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    // A sensor stopped with nothing to govern leaves nothing attached.
    let idle = shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
    if idle && let Some(k) = &shared.kernel {
        bpf::unpin_all(&k.pins);
        let _ = std::fs::remove_dir(&k.cgroup);
    }
    Ok(())
}
