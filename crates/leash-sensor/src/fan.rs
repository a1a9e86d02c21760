//! The fallback tier's file decider: fanotify permission events
//! (`FAN_OPEN_PERM`, `FAN_OPEN_EXEC_PERM`) on every mount of a session's
//! container, as seen through `/proc/<pid>/root`, one group per session,
//! decided from the session's compiled tables.
//!
//! fanotify does not say whether an open is for reading or writing: the
//! tracepoints record each governed thread's open flags in a map, read here
//! by thread id (`FAN_REPORT_TID`); an open without a record (io_uring, say)
//! is decided as a write. Paths the tables mark "evaluate" are asked of the
//! policy service; when it cannot answer, enforce mode denies.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};

use leash_core::Mode;
use leash_core::tables::{FileAction, Lookup, Tables};
use nix::fcntl::OFlag;
use nix::sys::fanotify::{EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response};

/// What the decider decides with; replaced on every policy or mode change.
#[derive(Debug, Clone)]
pub struct Governed {
    /// The session's tables.
    pub tables: Arc<Tables>,
    /// The session's mode.
    pub mode: Mode,
}

/// One file decision, for the event stream.
#[derive(Clone, Debug)]
pub struct FileDecision {
    /// The session.
    pub session: String,
    /// Thread id of the actor.
    pub tid: u32,
    /// The path, as the kernel resolved it (the container's view).
    pub path: String,
    /// What was decided.
    pub action: FileAction,
    /// Whether the open flags were known (else decided as a write).
    pub flags_known: bool,
    /// Allowed by the policy (before the mode).
    pub allow: bool,
    /// The policies that decided.
    pub reasons: Vec<String>,
    /// The mode in force.
    pub mode: Mode,
    /// Answered allow although the policy denies (shadow).
    pub would_deny: bool,
}

/// Asks the policy service about a path the tables cannot decide.
pub type Evaluate = Arc<dyn Fn(FileAction, &str) -> Option<(bool, Vec<String>)> + Send + Sync>;

/// A running decider.
pub struct Decider {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Mounts marked.
    pub marked: Vec<String>,
    /// Mounts that could not be marked, with why.
    pub unmarked: Vec<String>,
    /// Decisions the event stream had no room for.
    pub dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider").field("marked", &self.marked).field("unmarked", &self.unmarked).finish()
    }
}

impl Drop for Decider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The container's mount points, from its own mount namespace.
fn mount_points(pid: u32) -> std::io::Result<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut v: Vec<String> =
        info.lines().filter_map(|l| l.split_whitespace().nth(4).map(|m| m.replace("\\040", " "))).collect();
    v.dedup();
    Ok(v)
}

/// Whether `tid` runs in the cgroup at `cgroup` (relative to the v2 root).
fn in_cgroup(tid: u32, cgroup: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/cgroup"))
        .map(|c| c.lines().any(|l| l.strip_prefix("0::").is_some_and(|p| p == cgroup)))
        .unwrap_or(false)
}

/// The tracepoints' mark for the open an execve makes of its binary.
pub const FLAGS_EXEC: u32 = 0x8000_0000;

/// The file action of an open with `flags` (None: unknown, decided as a write).
pub fn action_of(flags: Option<u32>) -> FileAction {
    let Some(f) = flags else { return FileAction::Write };
    if f == FLAGS_EXEC {
        // execve reading the binary (its exec is decided on its own event).
        return FileAction::Read;
    }
    let f = OFlag::from_bits_truncate(f as i32);
    let accmode = f & OFlag::O_ACCMODE;
    if accmode == OFlag::O_RDONLY && !f.intersects(OFlag::O_CREAT | OFlag::O_TRUNC) {
        FileAction::Read
    } else {
        FileAction::Write
    }
}

/// Decides one request from the tables (and `evaluate` where they cannot).
pub fn decide(g: &Governed, action: FileAction, path: &str, evaluate: &Evaluate) -> (bool, Vec<String>) {
    match g.tables.lookup(action, path) {
        Lookup::Final(v) => (v.allow, g.tables.reasons(v).to_vec()),
        Lookup::Evaluate => evaluate(action, path).unwrap_or((false, vec!["leash-policy unavailable".into()])),
    }
}

/// What to mark.
#[derive(Clone, Debug)]
pub enum Marks {
    /// Every mount of the container whose init is this pid (its root must be marked).
    Container(u32),
    /// The mounts holding these paths (all must be marked).
    Paths(Vec<PathBuf>),
}

/// Starts governing the files of the container (or paths) in `marks`, for
/// processes in `cgroup` (relative to the v2 root).
#[allow(clippy::too_many_arguments, reason = "the session's whole context, once")]
pub fn start(
    session: String,
    marks: Marks,
    cgroup: String,
    governed: Arc<RwLock<Governed>>,
    open_flags: Arc<dyn Fn(u32) -> Option<u32> + Send + Sync>,
    evaluate: Evaluate,
    out: SyncSender<FileDecision>,
) -> anyhow::Result<Decider> {
    let group = Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_REPORT_TID | InitFlags::FAN_NONBLOCK,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )?;
    let (mut marked, mut unmarked) = (Vec::new(), Vec::new());
    let targets: Vec<(String, PathBuf)> = match &marks {
        Marks::Container(pid) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            mount_points(*pid)?.into_iter().map(|m| (m.clone(), root.join(m.trim_start_matches('/')))).collect()
        }
        Marks::Paths(paths) => paths.iter().map(|p| (p.display().to_string(), p.clone())).collect(),
    };
    for (m, path) in targets {
        let r = group.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM,
            nix::fcntl::AT_FDCWD,
            Some(&path),
        );
        match r {
            Ok(()) => marked.push(m),
            Err(e) => unmarked.push(format!("{m}: {e}")),
        }
    }
    match &marks {
        Marks::Container(_) if !marked.iter().any(|m| m == "/") => {
            anyhow::bail!("cannot mark the container's root mount: {}", unmarked.join("; "))
        }
        Marks::Paths(_) if !unmarked.is_empty() => anyhow::bail!("cannot mark {}", unmarked.join("; ")),
        _ => {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let (stop2, dropped2) = (stop.clone(), dropped.clone());
    let thread = std::thread::Builder::new().name(format!("fanotify-{}", &session[..session.len().min(8)])).spawn(
        move || {
            let mut members: HashMap<u32, bool> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) {
                let mut fds = [nix::poll::PollFd::new(group.as_fd(), nix::poll::PollFlags::POLLIN)];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(session_id = %session, error = %e, "the file decider stopped");
                        return;
                    }
                }
                let events = match group.read_events() {
                    Ok(e) => e,
                    Err(nix::errno::Errno::EAGAIN) => continue,
                    Err(e) => {
                        tracing::error!(session_id = %session, error = %e, "the file decider stopped");
                        return;
                    }
                };
                let g = governed.read().unwrap_or_else(|p| p.into_inner()).clone();
                for ev in events {
                    let Some(fd) = ev.fd() else {
                        tracing::warn!(session_id = %session, "fanotify queue overflow");
                        continue;
                    };
                    let mask = ev.mask();
                    if !mask.intersects(MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM) {
                        continue;
                    }
                    let tid = ev.pid() as u32;
                    let flags = open_flags(tid);
                    if members.len() > 4096 {
                        members.clear();
                    }
                    let member = flags.is_some() || *members.entry(tid).or_insert_with(|| in_cgroup(tid, &cgroup));
                    let allow_now = |group: &Fanotify, yes: bool| {
                        let r = if yes { Response::FAN_ALLOW } else { Response::FAN_DENY };
                        if let Err(e) = group.write_response(FanotifyResponse::new(fd, r)) {
                            tracing::warn!(error = %e, "cannot answer a fanotify event");
                        }
                    };
                    if !member {
                        // Outside the session (a host process looking in): never affected.
                        allow_now(&group, true);
                        continue;
                    }
                    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let action =
                        if mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM) { FileAction::Exec } else { action_of(flags) };
                    let (allow, reasons) = match g.mode {
                        Mode::Record => (true, Vec::new()),
                        _ => decide(&g, action, &path, &evaluate),
                    };
                    let answer = allow || g.mode != Mode::Enforce;
                    allow_now(&group, answer);
                    let d = FileDecision {
                        session: session.clone(),
                        tid,
                        path,
                        action,
                        flags_known: flags.is_some() || action == FileAction::Exec,
                        allow,
                        reasons,
                        mode: g.mode,
                        would_deny: !allow && g.mode == Mode::Shadow,
                    };
                    if out.try_send(d).is_err() {
                        dropped2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        },
    )?;
    Ok(Decider { stop, thread: Some(thread), marked, unmarked, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_decide_read_or_write() {
        assert_eq!(action_of(Some(0)), FileAction::Read);
        assert_eq!(action_of(Some(OFlag::O_WRONLY.bits() as u32)), FileAction::Write);
        assert_eq!(action_of(Some(OFlag::O_RDWR.bits() as u32)), FileAction::Write);
        assert_eq!(action_of(Some((OFlag::O_RDONLY | OFlag::O_CREAT).bits() as u32)), FileAction::Write);
        assert_eq!(action_of(Some((OFlag::O_RDONLY | OFlag::O_CLOEXEC).bits() as u32)), FileAction::Read);
        assert_eq!(action_of(None), FileAction::Write, "unknown flags are decided as a write");
        assert_eq!(action_of(Some(FLAGS_EXEC)), FileAction::Read);
    }
}
