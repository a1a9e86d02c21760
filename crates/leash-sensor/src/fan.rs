//! The fallback tier's file decider: fanotify permission events
//! (`FAN_OPEN_PERM`, `FAN_OPEN_EXEC_PERM`) on every mount of a session's
//! container, as seen through `/proc/<pid>/root`, one group per session,
//! decided from the session's compiled tables.
//!
//! fanotify does not say whether an open is for reading or writing: the
//! thread that opens is blocked in its open call until the answer, so its
//! flags are read from `/proc/<tid>/syscall` (`FAN_REPORT_TID` gives the
//! thread); an open made otherwise (io_uring, say) is decided as both a read and a write.
//! Nothing runs for opens the kernel answers from its cache, and nothing at
//! all for processes outside sessions. Paths the tables mark "evaluate" are
//! asked of the policy service; when it cannot answer, enforce mode denies.
//!
//! The group travels between processes (the session's holder, the sensor)
//! as a plain file descriptor; events and answers are read and written here
//! as bytes.
//!
//! An open the policy allows in every mode (read, write, and for an exec
//! permission exec too) is cached in the kernel with an ignore mark on the
//! inode, so later opens of that file cost nothing; every policy or mode
//! change flushes the cache. Only allows are cached, never a deny, and only
//! for a file with one name: the mark is on the inode and answers for all
//! of its names, so an allow decided through a hard link must not answer
//! for the linked (perhaps forbidden) name.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use leash_core::tables::{FileAction, Lookup, Tables};
use leash_core::{Decision, Event, EventKind, Mode};
use nix::fcntl::OFlag;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

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
    /// Its process, parent and executable, read while it waits for the
    /// answer (a process that exits right after is still named).
    pub lineage: Option<(u32, u32, String)>,
    /// The path, as the kernel resolved it (the container's view).
    pub path: String,
    /// What was decided.
    pub action: FileAction,
    /// Whether the open flags were known (else decided as a read and a write).
    pub flags_known: bool,
    /// Allowed by the policy (before the mode).
    pub allow: bool,
    /// The policies that decided.
    pub reasons: Vec<String>,
    /// The mode in force.
    pub mode: Mode,
    /// Answered allow although the policy denies (shadow).
    pub would_deny: bool,
    /// The file has one name only (an allow may be cached for it).
    pub one_name: bool,
    /// How the decision traced the file beyond the path it was opened by
    /// (`via inode of /w/secret.txt`, or the program interpreter that read it).
    pub traced: Option<String>,
}

/// Asks the policy service about a path the tables cannot decide.
pub type Evaluate = Arc<dyn Fn(FileAction, &str) -> Option<(bool, Vec<String>)> + Send + Sync>;

/// What to mark.
#[derive(Clone, Debug)]
pub enum Marks {
    /// Every mount of the container whose init is this pid (its root must be marked).
    Container(u32),
    /// The mounts holding these paths (all must be marked).
    Paths(Vec<PathBuf>),
}

/// The mark for the open an execve makes of its binary.
pub const FLAGS_EXEC: u32 = 0x8000_0000;

/// The flags of the open call `tid` is blocked in, from
/// `/proc/<tid>/syscall` (x86-64 numbering); [`FLAGS_EXEC`] for an execve.
/// None when they cannot be known safely (no open call — io_uring's
/// workers, say — or `openat2`), which decides the open as a read and a write.
#[cfg(target_arch = "x86_64")]
pub fn syscall_flags(tid: u32) -> Option<u32> {
    // The kernel reads a thread's registers only once it is off its CPU,
    // and says "running" (or fails with EAGAIN) until then: the thread is
    // on its way to wait for this answer, so ask again a few times
    // (Debian 12's kernel 6.1 does this to most reads made at once).
    let path = format!("/proc/{tid}/syscall");
    let mut text = None;
    for attempt in 0..SYSCALL_READS {
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.starts_with("running") => {
                text = Some(t);
                break;
            }
            Err(e) if e.raw_os_error() != Some(nix::libc::EAGAIN) => return None,
            _ => std::thread::sleep(std::time::Duration::from_micros(50 << attempt)),
        }
    }
    let text = text?;
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let args: Vec<u64> =
        fields.take(6).filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect();
    let creat = (OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC).bits() as u32;
    match nr {
        2 => args.get(1).map(|f| *f as u32),   // open(path, flags, mode)
        257 => args.get(2).map(|f| *f as u32), // openat(dirfd, path, flags, mode)
        304 => args.get(2).map(|f| *f as u32), // open_by_handle_at(mount_fd, handle, flags)
        85 => Some(creat),                     // creat(path, mode)
        // openat2's flags live in the caller's memory, which another thread
        // may rewrite after the kernel copied them: decided as a write.
        437 => None,
        59 | 322 => Some(FLAGS_EXEC), // execve, execveat
        _ => None,
    }
}

/// Reads of `/proc/<tid>/syscall` before its flags count as unknown
/// (waits of 50 µs doubling: 6.35 ms in all).
#[cfg(target_arch = "x86_64")]
const SYSCALL_READS: u32 = 8;

/// Elsewhere the syscall table differs: every open is decided as a write.
#[cfg(not(target_arch = "x86_64"))]
pub fn syscall_flags(_tid: u32) -> Option<u32> {
    None
}

const FAN_OPEN_PERM: u64 = 0x0001_0000;
const FAN_OPEN_EXEC_PERM: u64 = 0x0004_0000;
const FAN_ALLOW: u32 = 1;
/// Cached allows per group before the cache starts over.
const MAX_CACHED: usize = 65_536;
const FAN_DENY: u32 = 2;
/// The most descriptors a decider process may have open (its
/// `RLIMIT_NOFILE`): every event it reads gets a number below it.
pub const DECIDER_FDS: u64 = 4096;
/// `struct fanotify_event_metadata`.
const METADATA_BYTES: usize = 24;

/// mountinfo's escapes (`\040` for a space, `\011`, `\012`, `\134`) undone.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(code) = b
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container's mount points, from its own mount namespace.
fn mount_points(pid: u32) -> std::io::Result<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut v: Vec<String> = info.lines().filter_map(|l| l.split_whitespace().nth(4).map(unescape_octal)).collect();
    v.dedup();
    Ok(v)
}

/// A session's fanotify group.
pub struct Group {
    fan: Fanotify,
    /// Odd while a supervised call gives a file a new name (a link or a
    /// rename), bumped again when it is done: an allow cached while it
    /// changes, or across a change, is flushed (see [`Group::naming`]).
    naming: AtomicU64,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Group").finish()
    }
}

impl Group {
    /// The group behind a descriptor handed over by the sensor.
    pub fn from_owned(fd: OwnedFd) -> Group {
        // SAFETY: `from_owned_fd` only asks that the descriptor be a
        // fanotify group; nothing in it depends on that for memory safety
        // (a wrong descriptor makes every call fail with EINVAL). The
        // holder gets its group from the sensor, which created it.
        #[allow(unsafe_code, reason = "nix has no safe way to adopt an existing fanotify descriptor")]
        let f = unsafe { Fanotify::from_owned_fd(fd) };
        Group { fan: f, naming: AtomicU64::new(0) }
    }

    /// A duplicate descriptor of the group (kept by the sensor).
    pub fn duplicate(&self) -> std::io::Result<OwnedFd> {
        self.fan.as_fd().try_clone_to_owned()
    }

    /// Refuses every permission event a decider that died had read and not
    /// answered; how many. Nothing else can answer them: the kernel keeps
    /// them until someone writes a response naming the descriptor number
    /// the dead reader got for the event, or the group closes (which the
    /// sensor's copy prevents); meanwhile the opener waits. The number is
    /// below the reader's descriptor limit (`DECIDER_FDS`, which a holder
    /// sets for itself), so a new decider refuses them all before it reads
    /// (fail closed: the file behind one is unknown). A number may stand
    /// for several events, of deciders that died in turn.
    pub fn refuse_unanswered(&self) -> usize {
        let mut refused = 0;
        for fd in 0..DECIDER_FDS as i32 {
            let mut response = [0u8; 8];
            response[..4].copy_from_slice(&fd.to_ne_bytes());
            response[4..].copy_from_slice(&FAN_DENY.to_ne_bytes());
            // ENOENT: no event waits on this number.
            while nix::unistd::write(&self.fan, &response).is_ok() {
                refused += 1;
            }
        }
        refused
    }

    /// Answers the permission event `fd` and closes its descriptor.
    pub fn respond(&self, fd: i32, allow: bool) {
        let mut response = [0u8; 8];
        response[..4].copy_from_slice(&fd.to_ne_bytes());
        response[4..].copy_from_slice(&(if allow { FAN_ALLOW } else { FAN_DENY }).to_ne_bytes());
        if let Err(e) = nix::unistd::write(&self.fan, &response) {
            tracing::warn!(error = %e, "cannot answer a fanotify event");
        }
        let _ = nix::unistd::close(fd);
    }

    /// Drops every cached allow.
    pub fn flush_cache(&self) {
        let r = self.fan.mark(MarkFlags::FAN_MARK_FLUSH, MaskFlags::empty(), nix::fcntl::AT_FDCWD, None::<&Path>);
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot flush the fanotify cache");
        }
    }

    /// Gives a file a new name under the cache's invariant (an allow
    /// cached for a file never answers for a name it was not decided
    /// for): `name_it` runs with the allows cached for `before` (the files
    /// about to get a new name, each a directory and a name in it) dropped,
    /// no allow is cached meanwhile, and those for `after` (the names they
    /// got) are dropped again; a directory renamed drops every cached allow
    /// (the files below it get new names too).
    pub fn naming<T>(
        &self,
        before: &[(BorrowedFd<'_>, &[u8])],
        whole: bool,
        name_it: impl FnOnce() -> T,
        after: &[(BorrowedFd<'_>, &[u8])],
    ) -> T {
        self.naming.fetch_add(1, Ordering::SeqCst);
        let forget = |names: &[(BorrowedFd<'_>, &[u8])]| {
            // The name itself and, when it is a symbolic link, the file it
            // names (a link may be made to either).
            for (dir, name) in names {
                for follow in [MarkFlags::FAN_MARK_DONT_FOLLOW, MarkFlags::empty()] {
                    let _ = self.fan.mark(
                        MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_IGNORED_MASK | follow,
                        MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM,
                        dir,
                        Some(*name),
                    );
                }
            }
        };
        if whole {
            self.flush_cache();
        } else {
            forget(before);
        }
        let r = name_it();
        if whole {
            self.flush_cache();
        } else {
            forget(after);
        }
        self.naming.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// Caches an allow, for opens and execs, for the file behind an
    /// event's descriptor.
    fn cache_allow(&self, event_fd: i32) {
        // The descriptor's magic link names the very inode that was opened.
        let path = PathBuf::from(format!("/proc/self/fd/{event_fd}"));
        let _ = self.fan.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY,
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM,
            nix::fcntl::AT_FDCWD,
            Some(&path),
        );
    }
}

/// The permission events a session's group is marked for when the LSM
/// tier decides the file actions in `lsm_files` (`1 << action number`):
/// opens unless it decides both reads and writes, execs unless it decides
/// execs. Nothing at all when it decides every file action.
pub fn events_for(lsm_files: u32) -> MaskFlags {
    let decides = |a| lsm_files & crate::bpf::lsm_bit(a) != 0;
    let mut m = MaskFlags::empty();
    if !decides(FileAction::Read) || !decides(FileAction::Write) {
        m |= MaskFlags::FAN_OPEN_PERM;
    }
    if !decides(FileAction::Exec) {
        m |= MaskFlags::FAN_OPEN_EXEC_PERM;
    }
    m
}

/// The places `marks` names: (as reported, as marked).
fn targets(marks: &Marks) -> anyhow::Result<Vec<(String, PathBuf)>> {
    Ok(match marks {
        Marks::Container(pid) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            mount_points(*pid)?.into_iter().map(|m| (m.clone(), root.join(m.trim_start_matches('/')))).collect()
        }
        Marks::Paths(paths) => paths.iter().map(|p| (p.display().to_string(), p.clone())).collect(),
    })
}

/// Marks a session's group (`group`, a descriptor of it) for `add` and
/// unmarks it for `remove`, on every mount of its container. A change of
/// who decides marks what fanotify takes over before the LSM tier lets it
/// go, and unmarks what it hands over after, so that nothing is undecided.
pub fn remark(group: &OwnedFd, pid: u32, add: MaskFlags, remove: MaskFlags) -> anyhow::Result<()> {
    let group = Group::from_owned(group.try_clone()?);
    for (m, path) in targets(&Marks::Container(pid))? {
        let mark = |flags: MarkFlags, mask: MaskFlags| {
            group.fan.mark(flags | MarkFlags::FAN_MARK_MOUNT, mask, nix::fcntl::AT_FDCWD, Some(&path))
        };
        if !add.is_empty()
            && let Err(e) = mark(MarkFlags::FAN_MARK_ADD, add)
            && m == "/"
        {
            anyhow::bail!("cannot mark the container's root mount: {e}");
        }
        if !remove.is_empty() {
            // ENOENT: not marked for those.
            let _ = mark(MarkFlags::FAN_MARK_REMOVE, remove);
        }
    }
    Ok(())
}

/// A fanotify group for permission events, marked for `events` (none:
/// not marked at all, the LSM tier decides); with what was marked and
/// what could not be (and why).
pub fn create_group(marks: &Marks, events: MaskFlags) -> anyhow::Result<(Group, Vec<String>, Vec<String>)> {
    let group = Fanotify::init(
        // Unlimited: a full queue would drop permission events, and a dropped
        // permission event is an allowed open.
        InitFlags::FAN_CLASS_CONTENT
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_REPORT_TID
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_UNLIMITED_QUEUE,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )?;
    let (mut marked, mut unmarked) = (Vec::new(), Vec::new());
    if events.is_empty() {
        return Ok((Group { fan: group, naming: AtomicU64::new(0) }, marked, unmarked));
    }
    for (m, path) in targets(marks)? {
        let r =
            group.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT, events, nix::fcntl::AT_FDCWD, Some(&path));
        match r {
            Ok(()) => marked.push(m),
            Err(e) => unmarked.push(format!("{m}: {e}")),
        }
    }
    match marks {
        Marks::Container(_) if !marked.iter().any(|m| m == "/") => {
            anyhow::bail!("cannot mark the container's root mount: {}", unmarked.join("; "))
        }
        Marks::Paths(_) if !unmarked.is_empty() => anyhow::bail!("cannot mark {}", unmarked.join("; ")),
        _ => {}
    }
    Ok((Group { fan: group, naming: AtomicU64::new(0) }, marked, unmarked))
}

/// Whether `tid` runs in the cgroup at `cgroup` (relative to the v2 root).
/// A thread whose cgroup cannot be read (it is exiting) counts as inside:
/// deciding it by the policy is the safe side.
fn in_cgroup(tid: u32, cgroup: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/cgroup"))
        .map(|c| c.lines().any(|l| l.strip_prefix("0::").is_some_and(|p| p == cgroup)))
        .unwrap_or(true)
}

/// The file action of an open with `flags` (None: unknown, decided as a write and, by
/// the decider, as a read too).
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

/// The reason of a denial made because leash-policy did not answer.
const POLICY_UNAVAILABLE: &str = "leash-policy unavailable";
/// The reason of a denial of a file whose path cannot be known.
const UNRESOLVABLE: &str = "unresolvable path";

/// Decides one request from the tables (and `evaluate` where they cannot).
pub fn decide(g: &Governed, action: FileAction, path: &str, evaluate: &Evaluate) -> (bool, Vec<String>) {
    match g.tables.lookup(action, path) {
        Lookup::Final(v) => (v.allow, g.tables.reasons(v).to_vec()),
        Lookup::Evaluate => evaluate(action, path).unwrap_or((false, vec![POLICY_UNAVAILABLE.into()])),
    }
}

/// One event read from the group.
#[derive(Debug, PartialEq, Eq)]
struct RawFan {
    mask: u64,
    fd: i32,
    pid: i32,
}

fn parse_events(buf: &[u8]) -> Vec<RawFan> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + METADATA_BYTES <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let mask = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
        let fd = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
        let pid = i32::from_ne_bytes(buf[at + 20..at + 24].try_into().expect("4 bytes"));
        out.push(RawFan { mask, fd, pid });
        if len < METADATA_BYTES {
            break;
        }
        at += len;
    }
    out
}

/// Everything a decider loop needs.
pub struct Loop {
    /// The session.
    pub session: String,
    /// The session's cgroup, relative to the v2 root.
    pub cgroup: String,
    /// The tables and mode.
    pub governed: Arc<RwLock<Governed>>,
    /// The policy service, for "evaluate".
    pub evaluate: Evaluate,
    /// Stop when set.
    pub stop: Arc<AtomicBool>,
    /// Cache allows in the kernel.
    pub cache: bool,
    /// Ask the user about denials (enforce mode) instead of refusing at once.
    pub ask: Option<Arc<crate::ask::Asks>>,
}

/// Reads and answers the group's events until `stop` (or, when
/// `cgroup_dir` is given, until that cgroup is gone); each decision goes
/// to `out`.
pub fn run(l: &Loop, group: &Group, cgroup_dir: Option<&Path>, mut out: impl FnMut(Out)) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * METADATA_BYTES];
    let mut cached = 0usize;
    let mut identities = crate::identity::Identities::default();
    // However the loop ends, nothing it parked is left waiting: a group
    // that closes with events unanswered lets them through.
    let _refuse = RefuseParked { l, group };
    while !l.stop.load(Ordering::Relaxed) {
        if cgroup_dir.is_some_and(|d| !d.exists()) {
            settle_asks(l, group, &mut out);
            return Ok(());
        }
        let mut fds = [nix::poll::PollFd::new(group.fan.as_fd(), nix::poll::PollFlags::POLLIN)];
        // Parked denials' answers and deadlines are looked at between reads.
        let wait = if l.ask.as_ref().is_some_and(|a| a.waiting() > 0) { 20u16 } else { 200 };
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(wait)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                settle_asks(l, group, &mut out);
                continue;
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("polling the fanotify group: {e}"),
        }
        let n = match nix::unistd::read(group.fan.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("reading the fanotify group: {e}"),
        };
        let g = l.governed.read().unwrap_or_else(|p| p.into_inner()).clone();
        for ev in parse_events(&buf[..n]) {
            if ev.fd < 0 {
                tracing::warn!(session_id = %l.session, "fanotify queue overflow");
                continue;
            }
            let naming = group.naming.load(Ordering::SeqCst);
            let d = decide_one(l, &g, &ev, &mut identities);
            let answer = match &d {
                None => true,
                Some(d) => d.allow || d.mode != Mode::Enforce,
            };
            if l.cache
                && let Some(d) = &d
                && d.mode != Mode::Record
                && cacheable(&g, d)
            {
                if cached >= MAX_CACHED {
                    // Bounded: every mark pins an inode and counts against root's limit.
                    group.flush_cache();
                    cached = 0;
                }
                group.cache_allow(ev.fd);
                tracing::debug!(session_id = %l.session, path = %d.path, "an allow cached");
                cached += 1;
                // The policy changed while this was decided: what was just
                // cached belongs to the old one.
                let now = l.governed.read().unwrap_or_else(|p| p.into_inner());
                // So did a name while a link or rename was under way.
                let renamed = naming % 2 == 1 || group.naming.load(Ordering::SeqCst) != naming;
                if renamed || !Arc::ptr_eq(&now.tables, &g.tables) || now.mode != g.mode {
                    group.flush_cache();
                    cached = 0;
                }
            }
            // Denied in enforce mode, with asking on: the opener waits for
            // the user's answer (`ask`); its event goes up as a question.
            if !answer
                && let Some(asks) = &l.ask
                && let Some(d) = &d
                && offerable(d)
                && let Some(id) = asks.park(ev.fd, d)
            {
                let timeout = asks.timeout.as_millis().to_string();
                let mut e = to_event(d.clone()).with("ask_id", id.to_string()).with("ask_timeout_ms", timeout);
                e.decision = None;
                out(Out::Asking(e));
                continue;
            }
            group.respond(ev.fd, answer);
            if let Some(d) = d {
                out(Out::Decided(d));
            }
        }
        settle_asks(l, group, &mut out);
    }
    settle_asks(l, group, &mut out);
    Ok(())
}

/// Refuses what its loop parked when the loop ends.
struct RefuseParked<'a> {
    l: &'a Loop,
    group: &'a Group,
}

impl Drop for RefuseParked<'_> {
    fn drop(&mut self) {
        if let Some(asks) = &self.l.ask {
            asks.refuse_all(self.group);
        }
    }
}

/// Denies the parked denials whose deadline passed and reports those answered.
fn settle_asks(l: &Loop, group: &Group, out: &mut impl FnMut(Out)) {
    if let Some(asks) = &l.ask {
        asks.expire(group, std::time::Instant::now());
        for (d, how) in asks.answered() {
            out(Out::Asked(d, how));
        }
    }
}

/// What a decider loop reports.
#[derive(Debug)]
pub enum Out {
    /// A decision made.
    Decided(FileDecision),
    /// A denial parked while the user is asked (the question, as an event).
    Asking(Event),
    /// A parked denial answered: the decision as answered, and how ("once",
    /// "session", "always", "deny", "timeout").
    Asked(FileDecision, String),
}

impl Out {
    /// As an event.
    pub fn into_event(self) -> Event {
        match self {
            Out::Decided(d) => to_event(d),
            Out::Asking(e) => e,
            Out::Asked(d, how) => to_event(d).with("ask", how),
        }
    }
}

/// Whether a denial is the policy's, which a user may be asked to
/// overrule: not one made because the policy could not be asked or the
/// path could not be known.
fn offerable(d: &FileDecision) -> bool {
    !d.path.is_empty() && !d.reasons.iter().any(|r| r == POLICY_UNAVAILABLE || r == UNRESOLVABLE)
}

/// Whether an allowed open may be cached: the policy allows the path in
/// every open mode and to execute, by the tables alone, under the one name
/// the file has. A file the policy forbids to execute is never cached, not
/// even for reading: the program interpreter runs a program by reading it.
fn cacheable(g: &Governed, d: &FileDecision) -> bool {
    let allowed = |a: FileAction| matches!(g.tables.lookup(a, &d.path), Lookup::Final(v) if v.allow);
    d.allow && d.one_name && d.traced.is_none() && !d.path.is_empty() && FileAction::ALL.into_iter().all(allowed)
}

/// Whether a file has one name only, and an allow cached for it answers
/// for it alone: a regular file with one link. An ignore mark is on the
/// inode, so it answers for every name the inode has: an allow decided
/// for one of several names (a hard link the agent made of a forbidden
/// file, say) must not be cached, or it would open the forbidden name too.
/// Nor a directory's: an ignore mark on a directory can answer for the
/// events of the files in it (Debian 12's kernel 6.1 does: with the
/// project directory's allow cached, renamed and linked forbidden files in
/// it opened unseen), so directories are decided at every open.
fn one_name(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.is_file() && meta.nlink() == 1
}

/// Whether an executable is a program interpreter (the dynamic loader):
/// run directly (`ld.so PROG`), it opens the program for reading and maps
/// it, and the kernel never sees an exec of it.
pub fn is_program_interpreter(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    name.starts_with("ld-linux") || name.starts_with("ld-musl-") || name.starts_with("ld64.so") || name == "ld.so"
}

/// The opened file's path, as the kernel resolves it; the " (deleted)"
/// the kernel appends to an unlinked file is taken off (the decision is
/// for the path it had).
fn resolved_path(fd: i32) -> Option<String> {
    let link = format!("/proc/self/fd/{fd}");
    let path = std::fs::read_link(&link).ok()?.to_string_lossy().into_owned();
    if !path.starts_with('/') {
        return None;
    }
    let unlinked = std::fs::metadata(&link).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.nlink() == 0
    });
    match path.strip_suffix(" (deleted)") {
        Some(p) if unlinked => Some(p.to_owned()),
        _ => Some(path),
    }
}

/// Decides one event; None for a process outside the session (always allowed).
fn decide_one(
    l: &Loop,
    g: &Governed,
    ev: &RawFan,
    identities: &mut crate::identity::Identities,
) -> Option<FileDecision> {
    if ev.mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM) == 0 {
        return None;
    }
    let tid = ev.pid as u32;
    // Asked every time: a thread can enter the cgroup after its first open
    // (`docker exec` joins it late), and thread ids are reused.
    if !in_cgroup(tid, &l.cgroup) {
        // Outside the session (a host process looking in): never affected.
        tracing::debug!(session_id = %l.session, tid, "an open outside the session's cgroup");
        return None;
    }
    let exec = ev.mask & FAN_OPEN_EXEC_PERM != 0;
    let flags = if exec { None } else { syscall_flags(tid) };
    let path = resolved_path(ev.fd);
    let action = if exec { FileAction::Exec } else { action_of(flags) };
    // Flags unknown (io_uring's workers, openat2, a thread whose call
    // cannot be read): the open may read or write, and both must be
    // allowed — a file forbidden to read only is not let through as a write.
    let unknown = !exec && flags.is_none();
    let decide_as = |p: &str| {
        let (a, r) = decide(g, action, p, &l.evaluate);
        if a && unknown { decide(g, FileAction::Read, p, &l.evaluate) } else { (a, r) }
    };
    let (mut allow, mut reasons) = match (g.mode, &path) {
        (Mode::Record, _) => (true, Vec::new()),
        // No path (longer than the kernel will print, say): denied.
        (_, None) => (false, vec![UNRESOLVABLE.to_owned()]),
        (_, Some(p)) => decide_as(p),
    };
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", ev.fd)).ok();
    let lineage = lineage(tid);
    let mut traced = None;
    if g.mode != Mode::Record
        && allow
        && let Some(p) = &path
    {
        // The file under the name the policy forbids it by (a link, a
        // rename of it or of a directory above it).
        let root = PathBuf::from(format!("/proc/{tid}/root"));
        identities.refresh(&g.tables, &root);
        if let Some(m) = &meta
            && let Some(other) = identities.other_name(&root, p, crate::identity::id_of(m))
        {
            let (a, r) = decide_as(&other);
            if !a {
                (allow, reasons) = (false, r);
                traced = Some(format!("via inode of {other}"));
            }
        }
        // A program the policy forbids to execute, read by the program
        // interpreter run directly: that read is its exec.
        if allow
            && (action == FileAction::Read || unknown)
            && let Some((_, _, exe)) = &lineage
            && is_program_interpreter(exe)
        {
            let (a, r) = decide(g, FileAction::Exec, p, &l.evaluate);
            if !a {
                (allow, reasons) = (false, r);
                traced = Some(format!("loaded by the program interpreter {exe}"));
            }
        }
    }
    let path = path.unwrap_or_default();
    tracing::debug!(session_id = %l.session, tid, %path, ?action, ?flags, allow, ?traced, known = identities.names().len(), "fanotify decision");
    Some(FileDecision {
        session: l.session.clone(),
        tid,
        lineage,
        one_name: meta.as_ref().is_some_and(one_name),
        traced,
        path,
        action,
        flags_known: flags.is_some() || exec,
        allow,
        reasons,
        mode: g.mode,
        would_deny: !allow && g.mode == Mode::Shadow,
    })
}

/// The Cedar action of a file action.
pub fn action_name(a: FileAction) -> &'static str {
    match a {
        FileAction::Open => "FileOpen",
        FileAction::Read => "FileOpenReadOnly",
        FileAction::Write => "FileOpenReadWrite",
        FileAction::Exec => "ProcessExec",
    }
}

/// The executable of a process, as the kernel knows it.
pub fn executable(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A thread's process, parent and executable, from /proc.
pub(crate) fn lineage(tid: u32) -> Option<(u32, u32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u32>().ok()));
    let pid = field("Tgid:")?;
    Some((pid, field("PPid:")?, executable(pid)))
}

/// A decision as an event.
pub fn to_event(d: FileDecision) -> Event {
    let (pid, ppid, exe) = match d.lineage {
        Some((pid, ppid, exe)) => (pid, Some(ppid), exe),
        None => (d.tid, None, String::new()),
    };
    let mut e = Event::daemon(action_name(d.action), "", pid);
    e.kind = if d.action == FileAction::Exec { EventKind::Exec } else { EventKind::File };
    e.resource = d.path;
    e.session = Some(d.session);
    e.executable = exe;
    e.mode = Some(d.mode);
    e.decision = Some(if d.allow || d.mode != Mode::Enforce { Decision::Allow } else { Decision::Deny });
    e.would_deny = d.would_deny;
    e.policy_ids = d.reasons;
    let e = e.with("tid", d.tid.to_string());
    let e = match ppid {
        Some(p) => e.with("ppid", p.to_string()),
        None => e,
    };
    let e = match d.traced {
        Some(t) => e.with("traced", t),
        None => e,
    };
    e.with("mechanism", "fanotify")
        .with("path_source", "kernel-resolved (the opened file)")
        .with("open_flags", if d.flags_known { "from the open call" } else { "unknown: decided as a write" })
}

/// An in-process decider on a thread (the self-test's).
pub struct Decider {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Decisions the consumer had no room for.
    pub dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider").finish_non_exhaustive()
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

/// Runs a decider on a thread of this process until dropped.
pub fn spawn(mut l: Loop, group: Group) -> anyhow::Result<Decider> {
    let stop = Arc::new(AtomicBool::new(false));
    l.stop = stop.clone();
    let dropped = Arc::new(AtomicU64::new(0));
    let thread = std::thread::Builder::new().name("fanotify".into()).spawn(move || {
        if let Err(e) = run(&l, &group, None, |_| {}) {
            tracing::error!(session_id = %l.session, error = %format!("{e:#}"), "the file decider stopped");
        }
    })?;
    Ok(Decider { stop, thread: Some(thread), dropped })
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

    #[test]
    fn flags_come_from_the_call_the_thread_is_in() {
        // A thread blocked in a read of a pipe is in no open call.
        let (r, mut w) = std::io::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            let mut r = r;
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut r, &mut b);
            tid
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::io::Write::write_all(&mut w, b"x").unwrap();
        let tid = reader.join().unwrap();
        assert_eq!(syscall_flags(tid), None);
        assert_eq!(syscall_flags(u32::MAX), None, "no such thread");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal("/work/my\\040project"), "/work/my project");
        assert_eq!(unescape_octal("/a\\134b\\011c"), "/a\\b\tc");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn events_parse_from_the_kernel_layout() {
        let mut b = Vec::new();
        for (fd, pid) in [(5i32, 100i32), (6, 101)] {
            b.extend_from_slice(&24u32.to_ne_bytes());
            b.extend_from_slice(&[3, 0, 24, 0]);
            b.extend_from_slice(&FAN_OPEN_PERM.to_ne_bytes());
            b.extend_from_slice(&fd.to_ne_bytes());
            b.extend_from_slice(&pid.to_ne_bytes());
        }
        let e = parse_events(&b);
        assert_eq!(
            e,
            vec![RawFan { mask: FAN_OPEN_PERM, fd: 5, pid: 100 }, RawFan { mask: FAN_OPEN_PERM, fd: 6, pid: 101 }]
        );
    }
}
