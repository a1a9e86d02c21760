//! Supervised calls on the fallback tier: the seccomp user notifications
//! of the filter leash-entry installs before the agent's first instruction
//! (renames, links, symbolic links, device nodes and fifos, mode, owner and
//! time changes, truncation by path, and opens that may create).
//!
//! Each is decided as a write (`FileOpenReadWrite`) of every path it makes
//! appear or changes. Its arguments live in the caller's memory, which
//! another of its threads (or a process sharing or writing that memory)
//! may change at any time; so the decider reads each argument once,
//! resolves it in the session's root with the caller's credentials, decides
//! on what it resolved, and **performs the call itself** on the directories
//! it resolved: what is decided is what happens. The reply is the call's
//! result. Only the opens that create are let through to the kernel after
//! the decision (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the open itself is
//! then decided by fanotify on the file the kernel opened, so a caller that
//! swaps the path after the decision can at most leave an empty file where
//! writing is forbidden, never write into one (docs/SENSOR.md).
//!
//! The decider runs on a thread of its own that has its own root and
//! working directory (`unshare(CLONE_FS)`): it joins the caller's mount
//! namespace (the kernel refuses to rename a mount point only as seen from
//! the namespace of whoever renames: from the host's, the session's
//! read-write bind of `.git` onto itself could be renamed away), enters the
//! caller's root with `chroot`, so absolute symbolic links resolve as the
//! caller's would, and takes the caller's file-system uid and gid, groups,
//! effective capabilities and umask for each call.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use leash_core::Event;
use leash_core::tables::FileAction;
use nix::libc;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::fan::{self, Evaluate, FileDecision, Governed};
use crate::identity::Identities;

/// How a listener shows among a process's descriptors (`/proc/PID/fd/N`).
pub const LISTENER_LINK: &str = "anon_inode:seccomp notify";

/// The most symbolic links followed for one path (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Takes a copy of the supervised-calls listener of process `pid`.
pub fn take_listener(pid: u32) -> anyhow::Result<OwnedFd> {
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let is_listener =
            std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == std::ffi::OsStr::new(LISTENER_LINK));
        let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if is_listener {
            return crate::holder::descriptor_of(pid, n);
        }
    }
    anyhow::bail!("process {pid} holds no supervised-calls listener ({dir} has no {LISTENER_LINK:?})")
}

/// One notification.
#[derive(Clone, Copy, Debug)]
struct Notif {
    id: u64,
    tid: u32,
    nr: i64,
    args: [u64; 6],
}

impl Notif {
    fn of(n: &libc::seccomp_notif) -> Notif {
        Notif { id: n.id, tid: n.pid, nr: i64::from(n.data.nr), args: n.data.args }
    }
}

/// Where a decider receives its notifications: a shared page of a file
/// its successor opens too. The kernel hands a notification over once
/// (`SECCOMP_IOCTL_NOTIF_RECV`) and never again, and nothing else can
/// answer it while the listener stays open (the sensor keeps a copy), so
/// a decider killed between receiving a call and answering it would leave
/// its caller waiting for ever. So the kernel writes each notification
/// straight into this page as it hands it over, the decider clears the
/// page once it answered, and a successor decides whatever it finds there
/// whose caller still waits (`SECCOMP_IOCTL_NOTIF_ID_VALID`).
pub struct Inbox {
    slot: std::ptr::NonNull<libc::seccomp_notif>,
    _file: File,
}

// SAFETY: the page is only read and written through `&self` by the one
// thread that decides, and by the kernel during `recv`.
#[allow(unsafe_code, reason = "a shared mapping is a raw pointer")]
unsafe impl Send for Inbox {}

const INBOX_BYTES: usize = std::mem::size_of::<libc::seccomp_notif>();

impl Inbox {
    /// Opens (or creates, 0600) the inbox at `path`, keeping what a
    /// predecessor left in it.
    pub fn open(path: &Path) -> io::Result<Inbox> {
        use std::os::unix::fs::OpenOptionsExt;
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        if file.metadata()?.len() < INBOX_BYTES as u64 {
            file.set_len(INBOX_BYTES as u64)?;
        }
        // SAFETY: a shared mapping of `INBOX_BYTES` of a file at least that
        // long, which `Inbox` keeps open until it unmaps it.
        #[allow(unsafe_code, reason = "mapping the inbox's page")]
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                INBOX_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let slot = std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Inbox { slot, _file: file })
    }

    /// The notification a decider received and did not answer, if any.
    fn left(&self) -> Option<Notif> {
        // SAFETY: the slot is mapped, aligned and plain data.
        #[allow(unsafe_code, reason = "reading the inbox's page")]
        let n = unsafe { std::ptr::read_volatile(self.slot.as_ptr()) };
        (n.id != 0).then(|| Notif::of(&n))
    }

    /// Empties the slot: its notification was answered (or its caller is gone).
    fn clear(&self) {
        // SAFETY: as in `left`; zeroes are a valid `seccomp_notif`.
        #[allow(unsafe_code, reason = "clearing the inbox's page")]
        unsafe {
            std::ptr::write_volatile(self.slot.as_ptr(), std::mem::zeroed())
        };
    }

    /// Receives the next notification into the slot.
    fn recv(&self, listener: BorrowedFd<'_>) -> io::Result<Notif> {
        // The kernel wants the buffer zeroed.
        self.clear();
        // SAFETY: the slot is a mapped, writable `seccomp_notif`; the ioctl
        // writes at most its size.
        #[allow(unsafe_code, reason = "the seccomp notification ioctls have no safe wrapper")]
        let r = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, self.slot.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            self.clear();
            return Err(e);
        }
        self.left().ok_or_else(|| io::Error::other("the kernel wrote no notification"))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // SAFETY: mapped in `open`, `INBOX_BYTES` long, unmapped once.
        #[allow(unsafe_code, reason = "unmapping the inbox's page")]
        unsafe {
            libc::munmap(self.slot.as_ptr().cast(), INBOX_BYTES)
        };
    }
}

/// What a call is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// The kernel performs it (an open that creates, decided).
    Continue,
    /// It returned this value.
    Value(i64),
    /// It failed with this error.
    Error(Errno),
}

/// Asks the kernel to hand each notification to this thread, and each
/// answer back to its caller, on the CPU the waker runs on
/// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6): a supervised call is
/// a strict back and forth between its caller and the decider, which a
/// plain wake-up makes pay a trip through the scheduler each way. Older
/// kernels refuse the flag (EINVAL): nothing changes. Whether it took.
fn sync_wake_up(listener: BorrowedFd<'_>) -> bool {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
    // SAFETY: this ioctl takes its flags by value and touches no memory of ours.
    #[allow(unsafe_code, reason = "the seccomp notification ioctls have no safe wrapper")]
    let r = unsafe {
        libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    };
    r == 0
}

fn send(listener: BorrowedFd<'_>, id: u64, reply: Reply) -> io::Result<()> {
    let (val, error, flags) = match reply {
        Reply::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
        Reply::Value(v) => (v, 0, 0),
        Reply::Error(e) => (0, -e.raw_os_error(), 0),
    };
    let mut resp = libc::seccomp_notif_resp { id, val, error, flags };
    // SAFETY: `resp` is a valid `seccomp_notif_resp` the kernel only reads.
    #[allow(unsafe_code, reason = "the seccomp notification ioctls have no safe wrapper")]
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether the caller is still waiting on this notification (so that the
/// pid it named still is that caller).
fn still_waiting(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: the kernel reads one u64.
    #[allow(unsafe_code, reason = "the seccomp notification ioctls have no safe wrapper")]
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) };
    r == 0
}

/// A call, its arguments read from the caller's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// An open with `O_CREAT`.
    Create {
        dir: i32,
        path: Vec<u8>,
        flags: u64,
        in_root: bool,
    },
    Rename {
        old_dir: i32,
        old: Vec<u8>,
        new_dir: i32,
        new: Vec<u8>,
        flags: u32,
    },
    Link {
        old_dir: i32,
        old: Vec<u8>,
        new_dir: i32,
        new: Vec<u8>,
        flags: u32,
    },
    Symlink {
        target: Vec<u8>,
        dir: i32,
        path: Vec<u8>,
    },
    Mknod {
        dir: i32,
        path: Vec<u8>,
        mode: u32,
        dev: u64,
    },
    /// A change of an existing file: `path` None is the descriptor `dir`
    /// itself.
    Change {
        dir: i32,
        path: Option<Vec<u8>>,
        follow: bool,
        change: Change,
    },
}

/// What a `Call::Change` changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Mode(u32),
    Owner(u32, u32),
    /// Access and modification times; None: now.
    Times(Option<[(i64, i64); 2]>),
    Truncate(i64),
}

impl Call {
    /// The descriptors it names with the path given relative to each.
    fn names(&self) -> Vec<(i32, &[u8])> {
        match self {
            Call::Create { dir, path, .. } | Call::Symlink { dir, path, .. } | Call::Mknod { dir, path, .. } => {
                vec![(*dir, path)]
            }
            Call::Rename { old_dir, old, new_dir, new, .. } | Call::Link { old_dir, old, new_dir, new, .. } => {
                vec![(*old_dir, old), (*new_dir, new)]
            }
            Call::Change { dir, path, .. } => vec![(*dir, path.as_deref().unwrap_or_default())],
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Call::Create { .. } => "open (create)",
            Call::Rename { .. } => "rename",
            Call::Link { .. } => "link",
            Call::Symlink { .. } => "symlink",
            Call::Mknod { .. } => "mknod",
            Call::Change { change: Change::Mode(_), .. } => "chmod",
            Call::Change { change: Change::Owner(..), .. } => "chown",
            Call::Change { change: Change::Times(_), .. } => "utimes",
            Call::Change { change: Change::Truncate(_), .. } => "truncate",
        }
    }
}

const AT_FDCWD: i32 = libc::AT_FDCWD;

/// Reads what a notification's call is (None: not one of ours, which the
/// filter never sends; answered ENOSYS).
fn read_call(mem: &File, n: &Notif) -> Result<Option<Call>, Errno> {
    let a = n.args;
    let fd = |i: usize| a[i] as i32;
    let s = |i: usize| read_string(mem, a[i]);
    let opt = |i: usize| if a[i] == 0 { Ok(None) } else { read_string(mem, a[i]).map(Some) };
    let follows = |flags: u64| flags & libc::AT_SYMLINK_NOFOLLOW as u64 == 0;
    let change =
        |dir: i32, path: Option<Vec<u8>>, follow: bool, change: Change| Call::Change { dir, path, follow, change };
    let call = match n.nr {
        libc::SYS_open => Call::Create { dir: AT_FDCWD, path: s(0)?, flags: a[1], in_root: false },
        libc::SYS_openat => Call::Create { dir: fd(0), path: s(1)?, flags: a[2], in_root: false },
        libc::SYS_creat => Call::Create {
            dir: AT_FDCWD,
            path: s(0)?,
            flags: (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
            in_root: false,
        },
        libc::SYS_openat2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how = read_bytes(mem, a[2], 24)?;
            let word = |i: usize| u64::from_le_bytes(how[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let resolve = word(2);
            Call::Create { dir: fd(0), path: s(1)?, flags: word(0), in_root: resolve & 0x10 != 0 }
        }
        libc::SYS_rename => Call::Rename { old_dir: AT_FDCWD, old: s(0)?, new_dir: AT_FDCWD, new: s(1)?, flags: 0 },
        libc::SYS_renameat => Call::Rename { old_dir: fd(0), old: s(1)?, new_dir: fd(2), new: s(3)?, flags: 0 },
        libc::SYS_renameat2 => {
            Call::Rename { old_dir: fd(0), old: s(1)?, new_dir: fd(2), new: s(3)?, flags: a[4] as u32 }
        }
        libc::SYS_link => Call::Link { old_dir: AT_FDCWD, old: s(0)?, new_dir: AT_FDCWD, new: s(1)?, flags: 0 },
        libc::SYS_linkat => Call::Link { old_dir: fd(0), old: s(1)?, new_dir: fd(2), new: s(3)?, flags: a[4] as u32 },
        libc::SYS_symlink => Call::Symlink { target: s(0)?, dir: AT_FDCWD, path: s(1)? },
        libc::SYS_symlinkat => Call::Symlink { target: s(0)?, dir: fd(1), path: s(2)? },
        libc::SYS_mknod => Call::Mknod { dir: AT_FDCWD, path: s(0)?, mode: a[1] as u32, dev: a[2] },
        libc::SYS_mknodat => Call::Mknod { dir: fd(0), path: s(1)?, mode: a[2] as u32, dev: a[3] },
        libc::SYS_chmod => change(AT_FDCWD, Some(s(0)?), true, Change::Mode(a[1] as u32)),
        libc::SYS_fchmod => change(fd(0), None, true, Change::Mode(a[1] as u32)),
        libc::SYS_fchmodat => change(fd(0), Some(s(1)?), true, Change::Mode(a[2] as u32)),
        libc::SYS_fchmodat2 => {
            let path =
                if a[3] & libc::AT_EMPTY_PATH as u64 != 0 { opt(1)?.filter(|p| !p.is_empty()) } else { Some(s(1)?) };
            change(fd(0), path, follows(a[3]), Change::Mode(a[2] as u32))
        }
        libc::SYS_chown => change(AT_FDCWD, Some(s(0)?), true, Change::Owner(a[1] as u32, a[2] as u32)),
        libc::SYS_lchown => change(AT_FDCWD, Some(s(0)?), false, Change::Owner(a[1] as u32, a[2] as u32)),
        libc::SYS_fchown => change(fd(0), None, true, Change::Owner(a[1] as u32, a[2] as u32)),
        libc::SYS_fchownat => {
            let path =
                if a[4] & libc::AT_EMPTY_PATH as u64 != 0 { opt(1)?.filter(|p| !p.is_empty()) } else { Some(s(1)?) };
            change(fd(0), path, follows(a[4]), Change::Owner(a[2] as u32, a[3] as u32))
        }
        libc::SYS_utime => {
            // struct utimbuf { time_t actime; time_t modtime; }
            let times = if a[1] == 0 {
                None
            } else {
                let b = read_bytes(mem, a[1], 16)?;
                Some([(i64_at(&b, 0), 0), (i64_at(&b, 8), 0)])
            };
            change(AT_FDCWD, Some(s(0)?), true, Change::Times(times))
        }
        libc::SYS_utimes | libc::SYS_futimesat => {
            let (dir, path, tv) =
                if n.nr == libc::SYS_utimes { (AT_FDCWD, Some(s(0)?), a[1]) } else { (fd(0), opt(1)?, a[2]) };
            // struct timeval[2] { time_t sec; suseconds_t usec; }
            let times = if tv == 0 {
                None
            } else {
                let b = read_bytes(mem, tv, 32)?;
                Some([(i64_at(&b, 0), i64_at(&b, 8) * 1000), (i64_at(&b, 16), i64_at(&b, 24) * 1000)])
            };
            change(dir, path, true, Change::Times(times))
        }
        libc::SYS_utimensat => {
            let times = if a[2] == 0 {
                None
            } else {
                let b = read_bytes(mem, a[2], 32)?;
                Some([(i64_at(&b, 0), i64_at(&b, 8)), (i64_at(&b, 16), i64_at(&b, 24))])
            };
            change(fd(0), opt(1)?, follows(a[3]), Change::Times(times))
        }
        libc::SYS_truncate => change(AT_FDCWD, Some(s(0)?), true, Change::Truncate(a[1] as i64)),
        _ => return Ok(None),
    };
    Ok(Some(call))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_bytes(mem: &File, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut b = vec![0u8; len];
    match mem.read_at(&mut b, addr) {
        Ok(n) if n == len && addr != 0 => Ok(b),
        _ => Err(Errno::FAULT),
    }
}

/// A NUL-terminated string of the caller's, read once.
fn read_string(mem: &File, addr: u64) -> Result<Vec<u8>, Errno> {
    if addr == 0 {
        return Err(Errno::FAULT);
    }
    let mut out = Vec::new();
    let mut at = addr;
    loop {
        // Page by page: the string may end just before an unmapped page.
        let room = 4096 - (at % 4096) as usize;
        let mut buf = vec![0u8; room];
        let n = mem.read_at(&mut buf, at).map_err(|_| Errno::FAULT)?;
        if n == 0 {
            return Err(Errno::FAULT);
        }
        if let Some(end) = buf[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() >= libc::PATH_MAX as usize {
            return Err(Errno::NAMETOOLONG);
        }
        at += n as u64;
    }
}

/// The caller's credentials, as its file operations use them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Creds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    effective: u64,
    umask: u32,
}

impl Creds {
    fn parse(status: &str) -> Option<Creds> {
        let field = |name: &str| status_field(status, name);
        let fourth = |name: &str| field(name)?.split_whitespace().nth(3)?.parse::<u32>().ok();
        Some(Creds {
            fsuid: fourth("Uid:")?,
            fsgid: fourth("Gid:")?,
            groups: field("Groups:")?.split_whitespace().filter_map(|g| g.parse().ok()).collect(),
            effective: u64::from_str_radix(field("CapEff:")?, 16).ok()?,
            umask: u32::from_str_radix(field("Umask:").unwrap_or("0022"), 8).ok()?,
        })
    }
}

fn status_field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim)
}

/// The decider thread's own credentials, and what of a caller's it still
/// wears between calls.
struct Own {
    caps: rustix::thread::CapabilitySets,
    /// The file-system ids, groups and umask the thread has now. Groups
    /// and umask stay on after a call (its own opens are decided by its
    /// ids and capabilities, which go back); each is set again only when
    /// the next caller's differ, so a run of calls by one process costs
    /// two capability changes, not ten credential changes.
    worn: std::cell::RefCell<Worn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Worn {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    umask: u32,
}

impl Own {
    fn take() -> io::Result<Own> {
        let groups = rustix::process::getgroups()?.iter().map(|g| g.as_raw()).collect();
        let umask = rustix::process::umask(Mode::from_bits_truncate(0o022)).bits();
        rustix::process::umask(Mode::from_bits_truncate(umask));
        Ok(Own {
            caps: rustix::thread::capabilities(None)?,
            worn: std::cell::RefCell::new(Worn { fsuid: 0, fsgid: 0, groups, umask }),
        })
    }
}

/// Wears a caller's credentials until dropped.
struct Wearing<'a>(&'a Own);

impl<'a> Wearing<'a> {
    fn put_on(own: &'a Own, c: &Creds) -> io::Result<Wearing<'a>> {
        let guard = Wearing(own);
        let mut worn = own.worn.borrow_mut();
        if worn.groups != c.groups {
            let groups: Vec<_> = c.groups.iter().map(|g| rustix::process::Gid::from_raw(*g)).collect();
            rustix::thread::set_thread_groups(&groups)?;
            worn.groups.clone_from(&c.groups);
        }
        if worn.fsgid != c.fsgid {
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(c.fsgid));
            worn.fsgid = c.fsgid;
        }
        if worn.fsuid != c.fsuid {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(c.fsuid));
            worn.fsuid = c.fsuid;
        }
        let effective = rustix::thread::CapabilitySet::from_bits_retain(c.effective) & own.caps.permitted;
        rustix::thread::set_capabilities(None, rustix::thread::CapabilitySets { effective, ..own.caps })?;
        if worn.umask != c.umask {
            rustix::process::umask(Mode::from_bits_truncate(c.umask));
            worn.umask = c.umask;
        }
        Ok(guard)
    }
}

impl Drop for Wearing<'_> {
    fn drop(&mut self) {
        // Capabilities first: the ids go back with them.
        let _ = rustix::thread::set_capabilities(None, self.0.caps);
        let mut worn = self.0.worn.borrow_mut();
        if worn.fsuid != 0 {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
            worn.fsuid = 0;
        }
        if worn.fsgid != 0 {
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
            worn.fsgid = 0;
        }
    }
}

/// What the decider needs of the caller. `proc_dir` is its /proc entry,
/// opened before the caller is confirmed still waiting: everything else
/// of the caller's is opened through it, which fails once that task is
/// gone whatever process reuses its id, and before the decider wears the
/// caller's credentials (which may not open its own /proc entries: a
/// process that changed its ids is not dumpable).
struct Caller<'r> {
    proc_dir: OwnedFd,
    /// The caller's root, as the decider entered it.
    root: BorrowedFd<'r>,
    /// The descriptors the call names as directories (or files), opened.
    dirs: Vec<(i32, Result<OwnedFd, Errno>)>,
    /// Its descriptor directory, when a path goes through `/dev/fd/`.
    fd_dir: Option<OwnedFd>,
    /// Its credentials and process ids (`Tgid`, `PPid`), read from its
    /// status when the call is performed here (an open that creates is
    /// only decided: the kernel performs it with the caller's own).
    creds: Option<(Creds, (u32, u32))>,
}

impl<'r> Caller<'r> {
    fn open(proc_dir: OwnedFd, root: BorrowedFd<'r>, call: &Call, creds: Option<(Creds, (u32, u32))>) -> Caller<'r> {
        let open = |name: &str| rustix::fs::openat(&proc_dir, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty());
        let mut dirs: Vec<(i32, Result<OwnedFd, Errno>)> = Vec::new();
        for (fd, _) in call.names() {
            if dirs.iter().any(|(d, _)| *d == fd) {
                continue;
            }
            let opened = match fd {
                AT_FDCWD => open("cwd").map_err(|_| Errno::NOENT),
                fd if fd < 0 => Err(Errno::BADF),
                fd => open(&format!("fd/{fd}")).map_err(|_| Errno::BADF),
            };
            dirs.push((fd, opened));
        }
        let fd_dir = call
            .names()
            .iter()
            .any(|(_, p)| p.starts_with(b"/dev/fd/"))
            .then(|| {
                rustix::fs::openat(&proc_dir, "fd", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .ok()
            })
            .flatten();
        Caller { proc_dir, root, dirs, fd_dir, creds }
    }

    /// The descriptor a call names as its directory (or file).
    fn dir(&self, fd: i32) -> Result<OwnedFd, Errno> {
        match self.dirs.iter().find(|(d, _)| *d == fd) {
            Some((_, Ok(f))) => f.try_clone().map_err(|_| Errno::NOMEM),
            Some((_, Err(e))) => Err(*e),
            None => Err(Errno::BADF),
        }
    }
}

/// A /proc file of the caller's, read whole with one read where it fits.
fn read_proc(dir: &OwnedFd, name: &str) -> Result<String, Errno> {
    let f = File::from(rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?);
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = io::Read::read(&mut &f, &mut buf[len..]).map_err(|_| Errno::SRCH)?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| Errno::SRCH)
}

/// Where a path starts, and the rest of it: absolute paths from the root,
/// the caller's `/proc/self/…` and `/dev/fd/…` from its own /proc entry,
/// relative ones from the directory descriptor.
fn start<'p>(caller: &Caller<'_>, dir: i32, path: &'p [u8], in_root: bool) -> Result<(OwnedFd, &'p [u8]), Errno> {
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|_| Errno::NOMEM);
    for prefix in [&b"/proc/self/"[..], b"/proc/thread-self/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return Ok((dup(caller.proc_dir.as_fd())?, rest));
        }
    }
    if let Some(rest) = path.strip_prefix(b"/dev/fd/") {
        let fd_dir = caller.fd_dir.as_ref().ok_or(Errno::NOENT)?;
        return Ok((dup(fd_dir.as_fd())?, rest));
    }
    match path.first() {
        Some(b'/') if !in_root => {
            let rest = trim_leading(path);
            Ok((dup(caller.root)?, if rest.is_empty() { b"." } else { rest }))
        }
        Some(b'/') => Ok((caller.dir(dir)?, trim_leading(path))),
        Some(_) => Ok((caller.dir(dir)?, path)),
        None => Err(Errno::NOENT),
    }
}

fn trim_leading(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|b| **b == b'/').count();
    &p[n..]
}

/// The path of a descriptor, as the decider (in the caller's root) sees it.
fn path_of(proc: &OwnedFd, fd: &OwnedFd) -> Result<String, Errno> {
    let link = rustix::fs::readlinkat(proc, format!("thread-self/fd/{}", fd.as_raw_fd()), Vec::new())?;
    Ok(link.to_string_lossy().into_owned())
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// A directory entry a call makes or changes: its directory (opened), the
/// name in it as the call gives it, and its full path for the decision.
struct Entry {
    dir: OwnedFd,
    name: Vec<u8>,
    path: String,
}

/// Resolves the directory of `path` (following links), not its last name;
/// `dot` is the error for a last name of `.` or `..`.
fn entry(base: &OwnedFd, path: &[u8], proc: &OwnedFd, dot: Errno) -> Result<Entry, Errno> {
    let slashes = path.iter().rev().take_while(|b| **b == b'/').count();
    let trimmed = &path[..path.len() - slashes];
    let (parent, last) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (&b"."[..], trimmed),
    };
    if last.is_empty() || last == b"." || last == b".." {
        return Err(dot);
    }
    let dir = rustix::fs::openat(base, parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let full = join(&path_of(proc, &dir)?, &String::from_utf8_lossy(last));
    // The name keeps a trailing slash: the kernel then insists on a directory.
    let mut name = last.to_vec();
    if slashes > 0 {
        name.push(b'/');
    }
    Ok(Entry { dir, name, path: full })
}

/// Resolves the file `path` names (following a last symbolic link when
/// `follow`), opened `O_PATH`, and its path.
fn target(base: &OwnedFd, path: &[u8], follow: bool, proc: &OwnedFd) -> Result<(OwnedFd, String), Errno> {
    let nofollow = if follow { OFlags::empty() } else { OFlags::NOFOLLOW };
    let fd = rustix::fs::openat(base, path, OFlags::PATH | OFlags::CLOEXEC | nofollow, Mode::empty())?;
    let p = path_of(proc, &fd)?;
    Ok((fd, p))
}

/// The entry an open with `O_CREAT` creates: a last name that is a symbolic
/// link is followed (even dangling: the kernel creates its target), unless
/// the open has `O_EXCL` or `O_NOFOLLOW`.
fn created(caller: &Caller<'_>, mut base: OwnedFd, path: &[u8], flags: u64, proc: &OwnedFd) -> Result<Entry, Errno> {
    let follow = flags & (libc::O_EXCL | libc::O_NOFOLLOW) as u64 == 0;
    let mut path = path.to_vec();
    for _ in 0..MAX_LINKS {
        let e = entry(&base, &path, proc, Errno::ISDIR)?;
        if !follow {
            return Ok(e);
        }
        match rustix::fs::statat(&e.dir, e.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                let link = rustix::fs::readlinkat(&e.dir, e.name.as_slice(), Vec::new())?.into_bytes();
                base = if link.first() == Some(&b'/') {
                    caller.root.try_clone_to_owned().map_err(|_| Errno::NOMEM)?
                } else {
                    e.dir
                };
                path = if link.first() == Some(&b'/') { trim_leading(&link).to_vec() } else { link };
                if path.is_empty() {
                    path = b".".to_vec();
                }
            }
            _ => return Ok(e),
        }
    }
    Err(Errno::LOOP)
}

/// A call's outcome: the reply, and the paths it was decided on.
#[derive(Debug)]
struct Outcome {
    reply: Reply,
    /// Each path decided, with the decision, the deciding policies and how
    /// it was traced to another name.
    decided: Vec<(String, bool, Vec<String>, Option<String>)>,
    /// Denied by the policy (whatever the mode made of it).
    denied: bool,
    /// The caller's process and parent, when its status was read.
    lineage: Option<(u32, u32)>,
}

/// What the decider decides with.
#[derive(Clone)]
pub struct Supervisor {
    /// The session.
    pub session: String,
    /// The tables and mode.
    pub governed: Arc<RwLock<Governed>>,
    /// The policy service, for "evaluate".
    pub evaluate: Evaluate,
    /// Stop when set.
    pub stop: Arc<AtomicBool>,
    /// The session's fanotify group, whose cached allows a new name must
    /// not inherit.
    pub group: Option<Arc<fan::Group>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("session", &self.session).finish_non_exhaustive()
    }
}

/// Answers a listener's notifications until `stop`, or until no process
/// uses the filter any more; each decision goes to `out` as an event.
pub fn run(s: &Supervisor, listener: &OwnedFd, inbox: &Inbox, mut out: impl FnMut(Event)) -> anyhow::Result<()> {
    // The policy service is asked from a thread that stays in the host's
    // namespaces (its socket is a host path).
    let s = &Supervisor { evaluate: from_another_thread(s.evaluate.clone())?, ..s.clone() };
    // A root and working directory of this thread's own, to chroot into
    // each caller's root without moving the rest of the process.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    let synced = sync_wake_up(listener.as_fd());
    tracing::debug!(session_id = %s.session, synced, "supervised calls: synchronous wake-ups");
    let mut state = ThreadState {
        proc: rustix::fs::open("/proc", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?,
        own: Own::take()?,
        mnt_ns: None,
        root: None,
        ids: Identities::default(),
    };
    let mut answer = |n: &Notif, state: &mut ThreadState| {
        let g = s.governed.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (call, outcome) = handle(s, &g, state, listener.as_fd(), n);
        if let Err(e) = send(listener.as_fd(), n.id, outcome.reply) {
            tracing::debug!(session_id = %s.session, error = %e, "a supervised call's caller went away");
        }
        inbox.clear();
        if let Some(call) = call {
            for e in events(s, &g, n, &call, &outcome) {
                out(e);
            }
        }
    };
    // What a decider that died had received and not answered: decided
    // again (a call it performed before dying fails the second time, as
    // a repeated call would; never silently twice).
    if let Some(n) = inbox.left() {
        if still_waiting(listener.as_fd(), n.id) {
            tracing::warn!(session_id = %s.session, id = n.id, "deciding a call the previous decider left unanswered");
            answer(&n, &mut state);
        } else {
            inbox.clear();
        }
    }
    while !s.stop.load(Ordering::Relaxed) {
        let mut fds = [nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => anyhow::bail!("polling the supervised-calls listener: {e}"),
        }
        let revents = fds[0].revents().unwrap_or(nix::poll::PollFlags::empty());
        if !revents.contains(nix::poll::PollFlags::POLLIN) {
            if revents.contains(nix::poll::PollFlags::POLLHUP) {
                // No process of the session is left under the filter.
                return Ok(());
            }
            continue;
        }
        let n = match inbox.recv(listener.as_fd()) {
            Ok(n) => n,
            // The caller went away before it was read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => anyhow::bail!("reading the supervised-calls listener: {e}"),
        };
        answer(&n, &mut state);
    }
    Ok(())
}

/// What the decider thread keeps between calls.
struct ThreadState {
    /// The host's /proc.
    proc: OwnedFd,
    /// Its own credentials.
    own: Own,
    /// The mount namespace it is in (its inode), once it joined one.
    mnt_ns: Option<u64>,
    /// The root it entered, and that root's identity (device, inode and
    /// mount): entered again only when a caller's differs.
    root: Option<(OwnedFd, RootId)>,
    /// The forbidden files and directories by identity, read in the
    /// caller's root (the thread's, once it entered one).
    ids: Identities,
}

/// `evaluate`, run on a thread of its own.
fn from_another_thread(evaluate: Evaluate) -> io::Result<Evaluate> {
    type Ask = (FileAction, String, std::sync::mpsc::SyncSender<Option<(bool, Vec<String>)>>);
    let (tx, rx) = std::sync::mpsc::channel::<Ask>();
    std::thread::Builder::new().name("holder-calls-ask".into()).spawn(move || {
        for (action, path, reply) in rx {
            let _ = reply.send(evaluate(action, &path));
        }
    })?;
    let tx = std::sync::Mutex::new(tx);
    Ok(Arc::new(move |action, path| {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        tx.lock().unwrap_or_else(|p| p.into_inner()).send((action, path.to_owned(), reply)).ok()?;
        answer.recv().ok().flatten()
    }))
}

/// A root directory's identity: the same inode on the same mount of the
/// same namespace is the same view of the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RootId {
    dev: (u32, u32),
    ino: u64,
    mnt: u64,
}

fn root_id(dir: BorrowedFd<'_>, name: &str) -> Result<RootId, Errno> {
    let flags = if name.is_empty() { AtFlags::EMPTY_PATH } else { AtFlags::empty() };
    let st = rustix::fs::statx(dir, name, flags, rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::MNT_ID)?;
    if st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() == 0 {
        // No mount id from this kernel: never taken for the same root.
        return Err(Errno::NOSYS);
    }
    Ok(RootId { dev: (st.stx_dev_major, st.stx_dev_minor), ino: st.stx_ino, mnt: st.stx_mnt_id })
}

/// The mount namespace of the task behind `dir` (its inode).
fn mnt_ns_of(dir: &OwnedFd) -> Result<u64, Errno> {
    let link = rustix::fs::readlinkat(dir, "ns/mnt", Vec::new()).map_err(|_| Errno::SRCH)?;
    let link = link.to_string_lossy();
    link.strip_prefix("mnt:[").and_then(|l| l.strip_suffix(']')).and_then(|n| n.parse().ok()).ok_or(Errno::SRCH)
}

/// Decides and performs one call.
fn handle(
    s: &Supervisor,
    g: &Governed,
    t: &mut ThreadState,
    listener: BorrowedFd<'_>,
    n: &Notif,
) -> (Option<Call>, Outcome) {
    let failed = |e: Errno| Outcome { reply: Reply::Error(e), decided: Vec::new(), denied: false, lineage: None };
    let open_dir = |name: String| {
        rustix::fs::openat(&t.proc, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    };
    let Ok(proc_dir) = open_dir(n.tid.to_string()) else { return (None, failed(Errno::SRCH)) };
    let mem = match rustix::fs::openat(&proc_dir, "mem", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(m) => File::from(m),
        Err(_) => return (None, failed(Errno::SRCH)),
    };
    let call = match read_call(&mem, n) {
        Ok(Some(c)) => c,
        Ok(None) => return (None, failed(Errno::NOSYS)),
        Err(e) => return (None, failed(e)),
    };
    drop(mem);
    // An open that creates nothing new is fanotify's alone.
    if let Call::Create { flags, .. } = &call
        && flags & libc::O_CREAT as u64 == 0
    {
        return (Some(call), Outcome { reply: Reply::Continue, decided: Vec::new(), denied: false, lineage: None });
    }
    let outcome = (|| -> Result<Outcome, Errno> {
        // Only what the decider performs itself needs the caller's credentials.
        let creds = match call {
            Call::Create { .. } => None,
            _ => {
                let status = read_proc(&proc_dir, "status").map_err(|_| Errno::SRCH)?;
                let ids = (|| {
                    Some((status_field(&status, "Tgid:")?.parse().ok()?, status_field(&status, "PPid:")?.parse().ok()?))
                })();
                Some((Creds::parse(&status).ok_or(Errno::SRCH)?, ids.ok_or(Errno::SRCH)?))
            }
        };
        let ns = mnt_ns_of(&proc_dir)?;
        let root_now = root_id(proc_dir.as_fd(), "root").map_err(|_| Errno::SRCH)?;
        // The pid still names the caller: nothing above was read from another
        // process, and everything after is read through its /proc entry.
        if !still_waiting(listener, n.id) {
            return Err(Errno::SRCH);
        }
        if t.mnt_ns != Some(ns) {
            let mnt = rustix::fs::openat(&proc_dir, "ns/mnt", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|_| Errno::SRCH)?;
            if rustix::fs::fstat(&mnt)?.st_ino != ns {
                return Err(Errno::SRCH);
            }
            nix::sched::setns(&mnt, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| Errno::from_raw_os_error(e as i32))?;
            t.mnt_ns = Some(ns);
            // Joining a namespace moved the thread to its root.
            t.root = None;
        }
        if t.root.as_ref().is_none_or(|(_, id)| *id != root_now) {
            t.root = None;
            let root = rustix::fs::openat(
                &proc_dir,
                "root",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|_| Errno::SRCH)?;
            // The identity of what was opened, which a chroot since the
            // look above may have made another.
            let id = root_id(root.as_fd(), "")?;
            rustix::process::fchdir(&root)?;
            rustix::process::chroot(".")?;
            t.root = Some((root, id));
        }
        let Some((root, _)) = &t.root else { return Err(Errno::SRCH) };
        let caller = Caller::open(proc_dir, root.as_fd(), &call, creds);
        // Read as the decider (the caller may not see into what is forbidden).
        if g.mode != leash_core::Mode::Record {
            t.ids.refresh(&g.tables, Path::new("/"));
        }
        let _wearing = match &caller.creds {
            Some((c, _)) => Some(Wearing::put_on(&t.own, c).map_err(|_| Errno::PERM)?),
            None => None,
        };
        let mut o = perform(s, g, &t.proc, &caller, &call, &t.ids)?;
        o.lineage = caller.creds.as_ref().map(|(_, (pid, ppid))| (*pid, *ppid));
        Ok(o)
    })();
    (Some(call), outcome.unwrap_or_else(failed))
}

/// A path to decide a write of: where the call names it, and the name the
/// policy knows it by when that is another (`traced`, by identity).
struct Target {
    path: String,
    traced: Option<String>,
    /// Decided as a write into the directory `path` names (what the policy
    /// forbids below it), not of the directory's own name.
    inside: bool,
}

impl Target {
    /// An entry: its directory's identity may be a forbidden directory (or
    /// one below one) under another name (renamed, say), in which case the
    /// entry is decided under that name too.
    fn of_entry(e: &Entry, ids: &Identities) -> Target {
        let traced = (|| {
            let st = rustix::fs::fstat(&e.dir).ok()?;
            let dir = e.path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d })?;
            let other = ids.other_name(Path::new("/"), dir, (st.st_dev, st.st_ino))?;
            Some(join(other.trim_end_matches('/'), e.path.rsplit('/').next().unwrap_or("")))
        })();
        Target { path: e.path.clone(), traced, inside: false }
    }

    /// A file: its own identity, or an ancestor's.
    fn of_file(fd: &OwnedFd, path: &str, ids: &Identities) -> Target {
        let traced = (|| {
            let st = rustix::fs::fstat(fd).ok()?;
            ids.other_name(Path::new("/"), path, (st.st_dev, st.st_ino))
        })();
        Target { path: path.to_owned(), traced, inside: false }
    }

    /// What moving the directory `dir` moves that the policy guards: the
    /// guarded files and directories at or below it, each decided as a
    /// write (a directory: of a name inside it).
    fn below(dir: &str, g: &Governed) -> Vec<Target> {
        let (files, dirs) = g.tables.guarded();
        let at = format!("{}/", dir.trim_end_matches('/'));
        let files = files.into_iter().filter(|f| f.starts_with(&at)).map(|f| (f, false));
        let dirs = dirs.into_iter().filter(|d| d.starts_with(&at)).map(|d| (d, true));
        files.chain(dirs).map(|(path, inside)| Target { path, traced: None, inside }).collect()
    }

    /// The path the tables are asked about.
    fn decided_as(&self, path: &str) -> String {
        // "/d/." is in "/d/"; "/d/" itself is not.
        if self.inside { format!("{}/.", path.trim_end_matches('/')) } else { path.to_owned() }
    }
}

/// Decides a write of each target (under its traced name too); performs
/// `act` when every one is allowed (or the mode lets it through).
fn decide_then(
    s: &Supervisor,
    g: &Governed,
    targets: &[Target],
    act: impl FnOnce() -> Result<Reply, Errno>,
) -> Result<Outcome, Errno> {
    let mut decided = Vec::new();
    for t in targets {
        let (mut allow, mut reasons, mut traced) = match g.mode {
            leash_core::Mode::Record => (true, Vec::new(), None),
            _ => {
                let (a, r) = fan::decide(g, FileAction::Write, &t.decided_as(&t.path), &s.evaluate);
                (a, r, None)
            }
        };
        if allow
            && g.mode != leash_core::Mode::Record
            && let Some(other) = &t.traced
        {
            let (a, r) = fan::decide(g, FileAction::Write, &t.decided_as(other), &s.evaluate);
            if !a {
                (allow, reasons, traced) = (false, r, Some(format!("via inode of {}", other.trim_end_matches('/'))));
            }
        }
        decided.push((t.path.clone(), allow, reasons, traced));
    }
    let denied = decided.iter().any(|(_, a, _, _)| !a);
    if denied && g.mode == leash_core::Mode::Enforce {
        return Ok(Outcome { reply: Reply::Error(Errno::PERM), decided, denied, lineage: None });
    }
    let reply = act().unwrap_or_else(Reply::Error);
    Ok(Outcome { reply, decided, denied, lineage: None })
}

fn done(r: rustix::io::Result<()>) -> Result<Reply, Errno> {
    r.map(|()| Reply::Value(0))
}

/// Resolves, decides and performs one call, in the caller's root and
/// credentials.
fn perform(
    s: &Supervisor,
    g: &Governed,
    proc: &OwnedFd,
    caller: &Caller<'_>,
    call: &Call,
    ids: &Identities,
) -> Result<Outcome, Errno> {
    match call {
        Call::Create { dir, path, flags, in_root } => {
            let (base, rest) = start(caller, *dir, path, *in_root)?;
            let e = created(caller, base, rest, *flags, proc)?;
            decide_then(s, g, &[Target::of_entry(&e, ids)], || Ok(Reply::Continue))
        }
        Call::Rename { old_dir, old, new_dir, new, flags } => {
            let (ob, orest) = start(caller, *old_dir, old, false)?;
            let (nb, nrest) = start(caller, *new_dir, new, false)?;
            let o = entry(&ob, orest, proc, Errno::BUSY)?;
            let n = entry(&nb, nrest, proc, Errno::BUSY)?;
            let mut targets = vec![Target::of_entry(&o, ids), Target::of_entry(&n, ids)];
            // A directory moves everything below it: what the policy guards
            // there is decided too (under the directory's traced name also).
            let is_dir = rustix::fs::statat(&o.dir, o.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if is_dir {
                let traced = targets[0].traced.clone();
                targets.extend(Target::below(&o.path, g));
                if let Some(t) = traced {
                    targets.extend(Target::below(&t, g));
                }
            }
            decide_then(s, g, &targets, || {
                let flags = RenameFlags::from_bits_retain(*flags);
                let rename = || rustix::fs::renameat_with(&o.dir, o.name.as_slice(), &n.dir, n.name.as_slice(), flags);
                // Both names, either way: an exchange swaps them.
                let names = [(o.dir.as_fd(), o.name.as_slice()), (n.dir.as_fd(), n.name.as_slice())];
                done(renaming(s, &names, is_dir, rename))
            })
        }
        Call::Link { old_dir, old, new_dir, new, flags } => {
            let (nb, nrest) = start(caller, *new_dir, new, false)?;
            let n = entry(&nb, nrest, proc, Errno::EXIST)?;
            if old.is_empty() && flags & libc::AT_EMPTY_PATH as u32 != 0 {
                // The file behind the descriptor, through its /proc link.
                let fd = caller.dir(*old_dir)?;
                let link = format!("thread-self/fd/{}", fd.as_raw_fd());
                return decide_then(s, g, &[Target::of_entry(&n, ids)], || {
                    let names = [(proc.as_fd(), link.as_bytes()), (n.dir.as_fd(), n.name.as_slice())];
                    done(renaming(s, &names, false, || {
                        rustix::fs::linkat(proc, link.as_str(), &n.dir, n.name.as_slice(), AtFlags::SYMLINK_FOLLOW)
                    }))
                });
            }
            let (ob, orest) = start(caller, *old_dir, old, false)?;
            let follow = AtFlags::from_bits_retain(*flags) & AtFlags::SYMLINK_FOLLOW;
            decide_then(s, g, &[Target::of_entry(&n, ids)], || {
                let names = [(ob.as_fd(), orest), (n.dir.as_fd(), n.name.as_slice())];
                done(renaming(s, &names, false, || rustix::fs::linkat(&ob, orest, &n.dir, n.name.as_slice(), follow)))
            })
        }
        Call::Symlink { target, dir, path } => {
            let (b, rest) = start(caller, *dir, path, false)?;
            let e = entry(&b, rest, proc, Errno::EXIST)?;
            decide_then(s, g, &[Target::of_entry(&e, ids)], || {
                done(rustix::fs::symlinkat(target.as_slice(), &e.dir, e.name.as_slice()))
            })
        }
        Call::Mknod { dir, path, mode, dev } => {
            let (b, rest) = start(caller, *dir, path, false)?;
            let e = entry(&b, rest, proc, Errno::EXIST)?;
            let kind = rustix::fs::FileType::from_raw_mode(*mode);
            let perm = Mode::from_raw_mode(*mode);
            decide_then(s, g, &[Target::of_entry(&e, ids)], || {
                done(rustix::fs::mknodat(&e.dir, e.name.as_slice(), kind, perm, *dev))
            })
        }
        Call::Change { dir, path, follow, change } => {
            let (fd, p) = match path {
                None => {
                    let fd = caller.dir(*dir)?;
                    let p = path_of(proc, &fd)?;
                    (fd, p)
                }
                Some(path) => {
                    let (b, rest) = start(caller, *dir, path, false)?;
                    target(&b, rest, *follow, proc)?
                }
            };
            let t = Target::of_file(&fd, &p, ids);
            decide_then(s, g, &[t], || apply(proc, &fd, *change))
        }
    }
}

/// Runs a link or rename under the cache's invariant (an allow cached for
/// a file never answers for a name it was not decided for): the allows
/// cached for the files named are dropped before and after, and none is
/// cached meanwhile ([`fan::Group::naming`]); a directory drops them all.
fn renaming<T>(s: &Supervisor, names: &[(BorrowedFd<'_>, &[u8])], whole: bool, name_it: impl FnOnce() -> T) -> T {
    match &s.group {
        Some(group) => group.naming(names, whole, name_it, names),
        None => name_it(),
    }
}

/// Applies a change to the file behind an `O_PATH` descriptor.
fn apply(proc: &OwnedFd, fd: &OwnedFd, change: Change) -> Result<Reply, Errno> {
    let st = rustix::fs::fstat(fd)?;
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    // Through the descriptor's /proc link, which names this very file.
    let link = format!("thread-self/fd/{}", fd.as_raw_fd());
    match change {
        Change::Mode(_) if is_link => Err(Errno::OPNOTSUPP),
        Change::Mode(mode) => {
            done(rustix::fs::chmodat(proc, link.as_str(), Mode::from_raw_mode(mode), AtFlags::empty()))
        }
        Change::Owner(uid, gid) => {
            let id = |v: u32| (v != u32::MAX).then_some(v);
            done(rustix::fs::chownat(
                fd,
                "",
                id(uid).map(rustix::fs::Uid::from_raw),
                id(gid).map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            ))
        }
        Change::Times(times) => {
            let ts = |(sec, nsec): (i64, i64)| Timespec { tv_sec: sec, tv_nsec: nsec as _ };
            let now = Timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW as _ };
            let t = match times {
                Some([a, m]) => Timestamps { last_access: ts(a), last_modification: ts(m) },
                None => Timestamps { last_access: now, last_modification: now },
            };
            if is_link {
                // A link itself (lutimes): through its directory entry is not
                // reachable from an O_PATH descriptor; the empty path is.
                return done(rustix::fs::utimensat(fd, "", &t, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW));
            }
            done(rustix::fs::utimensat(proc, link.as_str(), &t, AtFlags::empty()))
        }
        Change::Truncate(len) => {
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(Errno::ISDIR);
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Errno::INVAL);
            }
            if len < 0 {
                return Err(Errno::INVAL);
            }
            let file = rustix::fs::openat(proc, link.as_str(), OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
            done(rustix::fs::ftruncate(&file, len as u64))
        }
    }
}

/// The events of one call: one per path decided (an open that creates,
/// only when refused: fanotify records the open itself).
fn events(s: &Supervisor, g: &Governed, n: &Notif, call: &Call, o: &Outcome) -> Vec<Event> {
    if matches!(call, Call::Create { .. }) && !o.denied {
        return Vec::new();
    }
    let result = match o.reply {
        Reply::Continue => "let through to the kernel".to_owned(),
        Reply::Value(_) => "performed".to_owned(),
        Reply::Error(e) => format!("failed: {e}"),
    };
    let lineage = match o.lineage {
        Some((pid, ppid)) => Some((pid, ppid, fan::executable(pid))),
        None => fan::lineage(n.tid),
    };
    o.decided
        .iter()
        .map(|(path, allow, reasons, traced)| {
            let d = FileDecision {
                session: s.session.clone(),
                tid: n.tid,
                lineage: lineage.clone(),
                path: path.clone(),
                action: FileAction::Write,
                flags_known: true,
                allow: *allow,
                reasons: reasons.clone(),
                mode: g.mode,
                would_deny: !allow && g.mode == leash_core::Mode::Shadow,
                one_name: false,
                traced: traced.clone(),
            };
            let mut e = fan::to_event(d)
                .with("mechanism", "seccomp user notification")
                .with("path_source", "resolved by the sensor in the session's root")
                .with("call", call.name())
                .with("result", result.clone());
            e.details.remove("open_flags");
            if let Call::Rename { .. } = call
                && let [(from, ..), (to, ..), ..] = o.decided.as_slice()
            {
                e = e.with("renamed", format!("{from} -> {to}"));
            }
            e
        })
        .collect()
}
