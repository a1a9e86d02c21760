//! `leashctl doctor`'s self-test: a throwaway process, governed the way a
//! session is (its own cgroup below the instance's, the same kernel maps and
//! the same fanotify decider), tries a forbidden open, exec and connect; each
//! must be denied. The tables are fixed (no Cedar): the test is of the
//! kernel mechanisms. Leaving a mechanism out is the negative control. The
//! attempts: open, exec, connect, and a UDP datagram (sendmsg).
//!
//! In the VM, on the LSM tier, the child also makes a hostile agent's
//! attempts on names, execs and writes ([`hostile`]); each must be held.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use leash_core::Mode;
use leash_core::tables::{FileAction, NetTable, PathTable, Tables, Verdict};

use crate::{Shared, fan, probe};

/// The hidden flag that makes the sensor binary the self-test's child.
pub const CHILD_FLAG: &str = "--self-test-child";
/// After the child's directory: also make the hostile attempts.
pub const HOSTILE_FLAG: &str = "--hostile";
/// A destination no policy of the test allows (TEST-NET-1, discard port).
const FORBIDDEN_DESTINATION: &str = "192.0.2.1:9";

fn fixed_tables(dir: &Path) -> Tables {
    let allow = Verdict::new(true, 0);
    let deny = Verdict::new(false, 1);
    let mut files = BTreeMap::new();
    let path = |n: &str| dir.join(n).display().to_string();
    for action in FileAction::ALL {
        let mut t = PathTable { default: Some(allow), ..Default::default() };
        let target = if action == FileAction::Exec { "forbidden-exec" } else { "forbidden" };
        t.exact.insert(path(target), deny);
        // What the hostile attempts go for: files and a directory forbidden
        // to read (writing them, and so linking and renaming, is allowed),
        // and a directory and a name forbidden to write.
        match action {
            FileAction::Read | FileAction::Open => {
                t.exact.insert(path("secret-a"), deny);
                t.exact.insert(path("secret-b"), deny);
                t.prefixes.insert(format!("{}/", path("private")), deny);
            }
            FileAction::Write => {
                t.prefixes.insert(format!("{}/", path("protected")), deny);
                t.exact.insert(path(".envrc"), deny);
            }
            FileAction::Exec => {}
        }
        files.insert(action, t);
    }
    let addr: std::net::SocketAddr = FORBIDDEN_DESTINATION.parse().expect("a literal address");
    let mut net = NetTable { default_v4: Some(allow), default_v6: Some(allow), ..Default::default() };
    net.exact_port.insert((addr.ip(), addr.port()), deny);
    Tables {
        generation: 1,
        files,
        net,
        reasons: vec![vec!["self-test-allow".into()], vec!["self-test-forbid".into()]],
        ..Default::default()
    }
}

/// The child: waits for "go", tries the four, prints one line each (and,
/// with `hostile`, one per hostile attempt).
pub fn child(dir: &Path, hostile: bool) -> ExitCode {
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);
    // EPERM from fanotify and the cgroup programs, EACCES from BPF LSM.
    let denied = |e: &std::io::Error| matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES));
    let open = match std::fs::File::open(dir.join("forbidden")) {
        Ok(_) => "allowed: the file opened".to_owned(),
        Err(e) if denied(&e) => "denied".to_owned(),
        Err(e) => format!("allowed: the open failed otherwise ({e})"),
    };
    let exec = match std::process::Command::new(dir.join("forbidden-exec")).stdout(Stdio::null()).status() {
        Ok(_) => "allowed: the program ran".to_owned(),
        Err(e) if denied(&e) => "denied".to_owned(),
        Err(e) => format!("allowed: the exec failed otherwise ({e})"),
    };
    let addr: std::net::SocketAddr = FORBIDDEN_DESTINATION.parse().expect("a literal address");
    let connect = match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => "allowed: connected".to_owned(),
        Err(e) if denied(&e) => "denied".to_owned(),
        Err(e) => format!("allowed: the network answered ({e})"),
    };
    let sendmsg = match std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"leash", addr)) {
        Ok(_) => "allowed: the datagram went out".to_owned(),
        Err(e) if denied(&e) => "denied".to_owned(),
        Err(e) => format!("allowed: the network answered ({e})"),
    };
    #[allow(clippy::print_stdout, reason = "the child reports to the sensor through stdout")]
    {
        println!("open={open}\nexec={exec}\nconnect={connect}\nsendmsg={sendmsg}");
        if hostile {
            for (attempt, outcome) in hostile_attempts(dir) {
                println!("hostile {attempt}={outcome}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// What the files the hostile attempts go for hold.
const HOSTILE_FILES: [(&str, &str); 7] = [
    ("secret-a", "SECRET-A"),
    ("secret-b", "SECRET-B"),
    ("private/key", "PRIVATE"),
    ("private/key2", "PRIVATE"),
    ("protected/file", "protected"),
    ("notes", "notes"),
    ("evil", "#!/bin/sh\n"),
];

/// A hostile agent's attempts on names, execs and writes, each `held`
/// (refused with EPERM or EACCES, and nothing left behind), `BYPASSED`, or
/// `inconclusive` (a step before the attempt itself failed).
fn hostile_attempts(dir: &Path) -> Vec<(&'static str, String)> {
    use std::io::Error;
    use std::os::unix::fs::PermissionsExt;
    let p = |n: &str| dir.join(n);
    let denied = |e: &Error| matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES));
    let judge = |r: std::io::Result<()>| match r {
        Ok(()) => "BYPASSED: it succeeded".to_owned(),
        Err(e) if denied(&e) => "held".to_owned(),
        Err(e) => format!("inconclusive: {e}"),
    };
    // A step that must succeed before the attempt proper.
    let step = |r: std::io::Result<()>| r.map_err(|e| Error::other(format!("a step before the attempt failed: {e}")));
    let read = |n: &str| std::fs::read(p(n)).map(drop);
    let nothing_at = |n: &str, r: std::io::Result<()>| match (r, std::fs::symlink_metadata(p(n))) {
        (Ok(()), _) => Ok(()),
        (Err(e), Err(_)) => Err(e),
        (Err(_), Ok(_)) => Ok(()), // refused, yet something appeared: a bypass
    };
    let run = |n: &str| std::process::Command::new(p(n)).stdout(Stdio::null()).stderr(Stdio::null()).status().map(drop);
    let exec_map = |mprotect: bool| -> std::io::Result<()> {
        let f = std::fs::File::open(p("forbidden-exec"))?;
        use std::os::fd::AsRawFd;
        let (first, then) = if mprotect {
            (nix::libc::PROT_READ, nix::libc::PROT_READ | nix::libc::PROT_EXEC)
        } else {
            (nix::libc::PROT_READ | nix::libc::PROT_EXEC, 0)
        };
        // SAFETY: a private mapping of a file this process opened, never
        // read through; unmapped before returning.
        #[allow(unsafe_code, reason = "mapping a file for execution is what the attempt is")]
        unsafe {
            let m = nix::libc::mmap(std::ptr::null_mut(), 4096, first, nix::libc::MAP_PRIVATE, f.as_raw_fd(), 0);
            if m == nix::libc::MAP_FAILED {
                return Err(Error::last_os_error());
            }
            let r =
                if mprotect && nix::libc::mprotect(m, 4096, then) != 0 { Err(Error::last_os_error()) } else { Ok(()) };
            nix::libc::munmap(m, 4096);
            r
        }
    };
    let by_handle = || -> std::io::Result<()> {
        let path = std::ffi::CString::new(p("secret-a").as_os_str().as_encoded_bytes()).map_err(Error::other)?;
        let mut handle = vec![0u8; 8 + 128];
        handle[..4].copy_from_slice(&128u32.to_ne_bytes());
        let mut mount_id = 0i32;
        // SAFETY: the handle buffer has room for the 128 bytes its header
        // announces; the path is NUL-terminated.
        #[allow(unsafe_code, reason = "name_to_handle_at and open_by_handle_at have no wrappers")]
        unsafe {
            use nix::libc;
            if libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                path.as_ptr(),
                handle.as_mut_ptr(),
                &mut mount_id,
                0,
            ) != 0
            {
                return step(Err(Error::last_os_error()));
            }
            let dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(Error::other)?;
            let mount = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            let fd = libc::syscall(libc::SYS_open_by_handle_at, mount, handle.as_mut_ptr(), libc::O_RDONLY);
            libc::close(mount);
            if fd < 0 {
                return Err(Error::last_os_error());
            }
            libc::close(fd as i32);
        }
        Ok(())
    };
    let fexecve = || -> std::io::Result<()> {
        // A descriptor without close-on-exec, run through /proc/self/fd/N.
        let fd = rustix::fs::open(p("forbidden-exec"), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty())?;
        use std::os::fd::AsRawFd;
        let r = std::process::Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).stdout(Stdio::null()).status();
        drop(fd);
        r.map(drop)
    };
    let reopen = || -> std::io::Result<()> {
        let fd = rustix::fs::open(
            p("secret-a"),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        use std::os::fd::AsRawFd;
        std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).map(drop)
    };
    vec![
        ("link-read", judge(step(std::fs::hard_link(p("secret-a"), p("hard"))).and_then(|()| read("hard")))),
        ("rename-read", judge(step(std::fs::rename(p("secret-b"), p("moved"))).and_then(|()| read("moved")))),
        (
            "link-in-dir-read",
            judge(step(std::fs::hard_link(p("private/key2"), p("hard2"))).and_then(|()| read("hard2"))),
        ),
        ("rename-dir-read", judge(step(std::fs::rename(p("private"), p("stolen"))).and_then(|()| read("stolen/key")))),
        (
            "exchange-read",
            judge(
                step(
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        p("hard"),
                        rustix::fs::CWD,
                        p("notes"),
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .map_err(Error::from),
                )
                .and_then(|()| read("notes")),
            ),
        ),
        ("opath-reopen", judge(reopen())),
        ("open-by-handle", judge(by_handle())),
        ("fexecve", judge(fexecve())),
        ("mmap-exec", judge(exec_map(false))),
        ("mprotect-exec", judge(exec_map(true))),
        ("link-exec", judge(step(std::fs::hard_link(p("forbidden-exec"), p("t2"))).and_then(|()| run("t2")))),
        ("create-envrc", judge(nothing_at(".envrc", std::fs::File::create(p(".envrc")).map(drop)))),
        (
            "create-in-protected",
            judge(nothing_at("protected/new", std::fs::File::create(p("protected/new")).map(drop))),
        ),
        ("rename-into-protected", judge(nothing_at("protected/hook", std::fs::rename(p("evil"), p("protected/hook"))))),
        ("link-into-protected", judge(nothing_at("protected/l", std::fs::hard_link(p("notes"), p("protected/l"))))),
        ("symlink-into-protected", judge(nothing_at("protected/s", std::os::unix::fs::symlink("x", p("protected/s"))))),
        (
            "mkfifo-in-protected",
            judge(nothing_at(
                "protected/fifo",
                nix::unistd::mkfifo(&p("protected/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(Error::from),
            )),
        ),
        (
            "chmod-protected",
            judge(std::fs::set_permissions(p("protected/file"), std::fs::Permissions::from_mode(0o755))),
        ),
        ("truncate-protected", judge(nix::unistd::truncate(&p("protected/file"), 0).map_err(Error::from))),
        (
            "rename-over-protected",
            judge(
                step(std::fs::write(p("evil2"), "x")).and_then(|()| std::fs::rename(p("evil2"), p("protected/file"))),
            ),
        ),
        ("rename-protected-away", judge(std::fs::rename(p("protected"), p("elsewhere")))),
    ]
}

/// The flag that makes the sensor binary the corpus check's child.
pub const CORPUS_FLAG: &str = "--corpus-child";

/// The corpus check's child: after a "go" line on stdin, opens each path
/// of the following lines for reading and prints `path<TAB>outcome`.
pub fn corpus_child() -> ExitCode {
    let mut lines = std::io::stdin().lock().lines().map_while(Result::ok);
    // Governed from here on.
    let _go = lines.next();
    let denied = |e: &std::io::Error| matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES));
    let mut out = std::io::stdout().lock();
    for path in lines {
        let outcome = match std::fs::File::open(&path) {
            Ok(_) => "allowed".to_owned(),
            Err(e) if denied(&e) => "denied".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        let _ = writeln!(out, "{path}\t{outcome}");
    }
    ExitCode::SUCCESS
}

/// Tables that decide reads by `read` and allow everything else.
fn reading(dir: &Path, read: PathTable) -> Arc<Tables> {
    let allow = PathTable { default: Some(Verdict::new(true, 0)), ..Default::default() };
    let mut tables = fixed_tables(dir);
    tables.files = BTreeMap::from([
        (FileAction::Read, read.clone()),
        (FileAction::Open, read),
        (FileAction::Write, allow.clone()),
        (FileAction::Exec, allow),
    ]);
    Arc::new(tables)
}

/// A new cgroup's id, and a corpus child (waiting for "go") to move into it.
fn corpus_child_in(cgroup: &Path) -> Result<(u64, std::process::Child), String> {
    std::fs::create_dir_all(cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let cgroup_id = std::fs::metadata(cgroup).map_err(|e| e.to_string())?.ino();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .arg(CORPUS_FLAG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the test process: {e}"))?;
    Ok((cgroup_id, child))
}

/// A small deterministic generator (xorshift64*), so a seed replays a corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// The LSM tier against the tables, on a generated corpus: a tree of
/// files, random read tables over it (exact files, directory prefixes,
/// exceptions inside them, a default), every file opened by a governed
/// process; each answer must be the tables' (`Tables::lookup`). Returns
/// the paths where they differ, with both answers.
fn corpus(shared: &Arc<Shared>, seed: u64) -> Result<(usize, Vec<String>), String> {
    let kernel = shared.kernel.as_ref().ok_or("the kernel programs are not loaded")?;
    let mut rng = Rng(seed | 1);
    let n = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let me = std::process::id();
    let dir = std::env::temp_dir().join(format!("leash-corpus-{me}-{n}"));
    let cgroup = kernel.cgroup.join(format!("corpus-{me}-{n}"));
    let _cleanup = Cleanup { dir: dir.clone(), cgroup: cgroup.clone() };
    let names = ["a", "b", "c", "d"];
    let mut dirs = vec![dir.clone()];
    for _ in 0..12 {
        let mut d = dirs[rng.below(dirs.len())].clone();
        d.push(names[rng.below(names.len())]);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let mut files = Vec::new();
    for i in 0..150 {
        let f = dirs[rng.below(dirs.len())].join(format!("f{i}"));
        std::fs::create_dir_all(f.parent().unwrap_or(&dir)).map_err(|e| e.to_string())?;
        std::fs::write(&f, "corpus\n").map_err(|e| format!("{}: {e}", f.display()))?;
        files.push(f.display().to_string());
    }
    let verdict = |rng: &mut Rng| Verdict::new(rng.coin(), if rng.coin() { 1 } else { 0 });
    let mut read = PathTable { default: Some(verdict(&mut rng)), ..Default::default() };
    for _ in 0..8 {
        let d = format!("{}/", dirs[rng.below(dirs.len())].display());
        read.prefixes.insert(d, verdict(&mut rng));
    }
    for _ in 0..25 {
        read.exact.insert(files[rng.below(files.len())].clone(), verdict(&mut rng));
    }
    let tables = reading(&dir, read);
    let (cgroup_id, mut child) = corpus_child_in(&cgroup)?;
    let answers = (|| -> Result<Vec<String>, String> {
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string())
            .map_err(|e| format!("cannot move the corpus process into {}: {e}", cgroup.display()))?;
        let actions = shared.lsm_actions(&tables);
        if actions & crate::bpf::lsm_bit(FileAction::Read) == 0 {
            return Err(format!("the LSM tier does not take the corpus's read table (actions {actions:#x})"));
        }
        let ids = std::sync::Mutex::default();
        let files_ = crate::LsmFiles { actions, root: Path::new("/"), identities: Some(&ids) };
        let (_, written) = shared.apply(cgroup_id, &tables, Mode::Enforce, false, &Default::default(), &files_)?;
        let _registered = Unregister(&kernel.maps, cgroup_id, Some(written));
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut input = String::from("go\n");
        for f in &files {
            input.push_str(f);
            input.push('\n');
        }
        stdin.write_all(input.as_bytes()).map_err(|e| e.to_string())?;
        drop(stdin);
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let answers = answers?;
    let mut differ = Vec::new();
    for line in &answers {
        let Some((path, outcome)) = line.split_once('\t') else { continue };
        let expected = match tables.lookup(FileAction::Read, path) {
            leash_core::tables::Lookup::Final(v) => v.allow,
            leash_core::tables::Lookup::Evaluate => false,
        };
        let got = match outcome {
            "allowed" => true,
            "denied" => false,
            other => {
                differ.push(format!("{path}: {other}"));
                continue;
            }
        };
        if got != expected {
            differ
                .push(format!("{path}: the tables {}, the kernel {outcome}", if expected { "allow" } else { "deny" }));
        }
    }
    if answers.len() != files.len() {
        differ.push(format!("{} answers for {} files", answers.len(), files.len()));
    }
    Ok((answers.len(), differ))
}

/// The LSM tier keeps a renamed forbidden directory's identity when the
/// tables are written again (as on every reconnection to leash-policy):
/// `private/` is forbidden to read; it is renamed to `moved/`, the tables
/// are written again, and a governed process reads `moved/key`. With
/// `carry` false the identities start afresh at the second write (the
/// negative control: the read must then get through). The outcome:
/// "denied", or what happened.
fn renamed_then_rewritten(shared: &Arc<Shared>, carry: bool) -> Result<String, String> {
    let kernel = shared.kernel.as_ref().ok_or("the kernel programs are not loaded")?;
    let n = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let me = std::process::id();
    let dir = std::env::temp_dir().join(format!("leash-rewrite-{me}-{n}"));
    let cgroup = kernel.cgroup.join(format!("rewrite-{me}-{n}"));
    let _cleanup = Cleanup { dir: dir.clone(), cgroup: cgroup.clone() };
    std::fs::create_dir_all(dir.join("private")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("private/key"), "PRIVATE\n").map_err(|e| e.to_string())?;
    let deny = Verdict::new(false, 1);
    let mut read = PathTable { default: Some(Verdict::new(true, 0)), ..Default::default() };
    read.prefixes.insert(format!("{}/private/", dir.display()), deny);
    let tables = reading(&dir, read);
    let (cgroup_id, mut child) = corpus_child_in(&cgroup)?;
    let outcome = (|| -> Result<String, String> {
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).map_err(|e| e.to_string())?;
        let actions = shared.lsm_actions(&tables);
        let ids = std::sync::Mutex::default();
        let files = crate::LsmFiles { actions, root: Path::new("/"), identities: Some(&ids) };
        let (_, first) = shared.apply(cgroup_id, &tables, Mode::Enforce, false, &Default::default(), &files)?;
        std::fs::rename(dir.join("private"), dir.join("moved")).map_err(|e| e.to_string())?;
        let fresh = std::sync::Mutex::default();
        let again = crate::LsmFiles { identities: Some(if carry { &ids } else { &fresh }), ..files };
        // The same tables, written again under a new slot (a new Arc, as a refresh has).
        let (_, second) =
            shared.apply(cgroup_id, &Arc::new((*tables).clone()), Mode::Enforce, false, &Default::default(), &again)?;
        kernel.maps.clear(&first);
        let _registered = Unregister(&kernel.maps, cgroup_id, Some(second));
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        writeln!(stdin, "go\n{}", dir.join("moved/key").display()).map_err(|e| e.to_string())?;
        drop(stdin);
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let line = std::io::BufReader::new(stdout).lines().map_while(Result::ok).next().unwrap_or_default();
        Ok(line.split_once('\t').map_or(line.clone(), |(_, o)| o.to_owned()))
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Removes a test cgroup from the kernel's maps (and its table entries)
/// whatever happens next.
struct Unregister<'a>(&'a crate::bpf::Maps, u64, Option<crate::bpf::Written>);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.remove_session(self.1);
        if let Some(w) = &self.2 {
            self.0.clear(w);
        }
    }
}

/// Removes what the test made, whatever happened.
struct Cleanup {
    dir: PathBuf,
    cgroup: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The capabilities the test ran with, and each attempt's outcome.
pub(crate) type Outcome = (Vec<probe::Capability>, Vec<(String, String)>);

/// Runs the test; blocking.
pub(crate) fn run(shared: &Arc<Shared>, without: &[String]) -> Result<Outcome, String> {
    run_with(shared, without, false)
}

/// [`run`]; with `lsm`, the files are decided by the LSM programs from
/// the kernel's file tables instead of fanotify.
fn run_with(shared: &Arc<Shared>, without: &[String], lsm: bool) -> Result<Outcome, String> {
    let kernel = shared.kernel.as_ref().ok_or("the kernel programs are not loaded")?;
    let n = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let me = std::process::id();
    let dir = std::env::temp_dir().join(format!("leash-selftest-{me}-{n}"));
    let cgroup = kernel.cgroup.join(format!("selftest-{me}-{n}"));
    let _cleanup = Cleanup { dir: dir.clone(), cgroup: cgroup.clone() };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("forbidden"), "self-test\n").map_err(|e| e.to_string())?;
    let program = ["/bin/true", "/usr/bin/true"].into_iter().find(|p| Path::new(p).exists()).ok_or("no /bin/true")?;
    std::fs::copy(program, dir.join("forbidden-exec")).map_err(|e| e.to_string())?;
    for (name, body) in HOSTILE_FILES {
        let f = dir.join(name);
        std::fs::create_dir_all(f.parent().unwrap_or(&dir)).map_err(|e| e.to_string())?;
        std::fs::write(&f, body).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    std::fs::create_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let cgroup_id = std::fs::metadata(&cgroup).map_err(|e| e.to_string())?.ino();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(&dir)
        .args(lsm.then_some(HOSTILE_FLAG))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the test process: {e}"))?;
    let outcome = (|| -> Result<Vec<(String, String)>, String> {
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string())
            .map_err(|e| format!("cannot move the test process into {}: {e}", cgroup.display()))?;
        let tables = Arc::new(fixed_tables(&dir));
        let off = |m: &str| without.iter().any(|w| w == m);
        // Whatever happens next, the test cgroup leaves the kernel's maps.
        let mut registered = Unregister(&kernel.maps, cgroup_id, None);
        // The LSM tier decides what it can, as for a session.
        let actions = if off("bpf-lsm") { 0 } else { shared.lsm_actions(&tables) };
        if !off("cgroup-sock") {
            let ids = std::sync::Mutex::default();
            let files =
                crate::LsmFiles { actions, root: Path::new("/"), identities: (!off("identities")).then_some(&ids) };
            let (_, written) = shared.apply(cgroup_id, &tables, Mode::Enforce, false, &Default::default(), &files)?;
            registered.2 = Some(written);
        }
        let rel = format!(
            "/{}",
            cgroup
                .strip_prefix(crate::bpf::cgroup2_root().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?
                .display()
        );
        let mut decider = None;
        let events = fan::events_for(actions);
        if !off("fanotify") && !events.is_empty() {
            let governed = Arc::new(RwLock::new(fan::Governed { tables: tables.clone(), mode: Mode::Enforce }));
            let (group, _, _) =
                fan::create_group(&fan::Marks::Paths(vec![dir.clone()]), events).map_err(|e| format!("{e:#}"))?;
            let l = fan::Loop {
                session: "self-test".into(),
                cgroup: rel,
                governed,
                evaluate: Arc::new(|_, _| None),
                stop: Default::default(),
                cache: false,
                ask: None,
            };
            decider = Some(fan::spawn(l, group).map_err(|e| format!("{e:#}"))?);
        }
        let mut stdin = child.stdin.take().ok_or_else(|| "no stdin".to_owned())?;
        writeln!(stdin, "go").map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or_else(|| "no stdout".to_owned())?;
        let lines: Vec<(String, String)> = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        drop(decider);
        drop(registered);
        Ok(lines)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let lines = outcome?;
    let caps = probe::without(&shared.caps, without);
    Ok((caps, lines))
}

/// A sensor's shared state with nothing but a kernel (no sessions, no
/// policy service), for the VM check.
pub(crate) fn bare(kernel: crate::bpf::Kernel, caps: probe::Report, lsm: bool) -> Arc<Shared> {
    Arc::new(Shared {
        kernel: Some(kernel),
        lsm,
        caps,
        sessions: Default::default(),
        by_cgroup: Default::default(),
        next_slot: std::sync::atomic::AtomicU32::new(1),
        events: Default::default(),
        policy_socket: PathBuf::new(),
        runtime_dir: std::env::temp_dir(),
        state_dir: std::env::temp_dir(),
        tables_lock: Default::default(),
    })
}

/// The hidden flag for the VM check (`cargo xtask vmtest` runs it as the
/// guest's test).
pub const VM_CHECK_FLAG: &str = "--vm-check";

/// In a guest booted by `cargo xtask vmtest`: probes BPF LSM, loads the
/// fallback tier on this kernel, runs the self-test and its negative
/// control, and prints `VMCHECK …` lines and a `VMCHECK RESULT:` line.
pub fn vm_check() -> ExitCode {
    #[allow(clippy::print_stdout, reason = "the guest reports on its console")]
    fn say(line: &str) {
        println!("VMCHECK {line}");
    }
    let mut failures = Vec::new();
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    say(&format!("active LSMs: {}", lsms.trim()));
    match crate::bpf::probe_lsm() {
        Ok(()) => say("bpf-lsm: programs load and bpf is an active LSM"),
        Err(e) => {
            say(&format!("bpf-lsm: {e}"));
            failures.push("bpf-lsm");
        }
    }
    let Ok(root) = crate::bpf::cgroup2_root() else {
        say("RESULT: FAIL: no cgroup2");
        return ExitCode::from(1);
    };
    let kernel = match crate::bpf::load(&root.join("leash-vm"), Path::new("/sys/fs/bpf/leash/vm"), false) {
        Ok(k) => k,
        Err(e) => {
            say(&format!("programs: {e:#}"));
            say("RESULT: FAIL: programs");
            return ExitCode::from(1);
        }
    };
    say(&format!("programs: {} attached", kernel.links.len()));
    let caps = probe::run(Ok(()));
    for c in &caps.capabilities {
        say(&format!("capability {} = {} ({})", c.action, c.mechanism, c.reason));
    }
    let shared = bare(kernel, caps, false);
    for (label, without) in
        [("self-test", vec![]), ("negative control", vec!["fanotify".to_owned(), "cgroup-sock".to_owned()])]
    {
        match run(&shared, &without) {
            Ok((_, lines)) => {
                for (action, outcome) in &lines {
                    say(&format!("{label} {action}: {outcome}"));
                }
                let denied = lines.iter().filter(|(_, o)| o == "denied").count();
                let expected = if without.is_empty() { lines.len() } else { 0 };
                if lines.len() != 4 || denied != expected {
                    failures.push(if without.is_empty() { "self-test" } else { "negative-control" });
                }
            }
            Err(e) => {
                say(&format!("{label}: {e}"));
                failures.push("self-test");
            }
        }
    }
    drop(shared);
    // Sessions' tier: the programs as the sensor loads them where the
    // kernel runs BPF LSM (the cgroup programs, and the LSM tier for files).
    let pins = Path::new("/sys/fs/bpf/leash/vm-sessions");
    match crate::bpf::load(&root.join("leash-vm-sessions"), pins, true) {
        Ok(k) => {
            let attached = k.links.iter().any(|(n, _)| n.starts_with("leash_lsm_"));
            let caps = probe::decide(Ok(()), crate::bpf::probe_lsm(), attached, probe::fanotify());
            say(&format!("sessions' tier: {} ({} programs attached)", caps.tier, k.links.len()));
            if caps.tier != "lsm" {
                failures.push("sessions-tier");
            }
            let shared = bare(k, caps, attached);
            for (label, without, denied_expected) in [
                ("sessions' self-test", vec![], true),
                // Without fanotify: the LSM tier alone denies the files.
                ("sessions' self-test without fanotify", vec!["fanotify".to_owned()], true),
                (
                    "sessions' negative control",
                    vec!["bpf-lsm".to_owned(), "fanotify".to_owned(), "cgroup-sock".to_owned()],
                    false,
                ),
            ] {
                match run(&shared, &without) {
                    Ok((_, lines)) => {
                        for (action, outcome) in &lines {
                            say(&format!("{label} {action}: {outcome}"));
                        }
                        let denied = lines.iter().filter(|(_, o)| o == "denied").count();
                        if lines.len() != 4 || denied != if denied_expected { 4 } else { 0 } {
                            failures.push("sessions-self-test");
                        }
                    }
                    Err(e) => {
                        say(&format!("{label}: {e}"));
                        failures.push("sessions-self-test");
                    }
                }
            }
            // A renamed forbidden directory keeps its identity when the
            // tables are written again; without what was known, it does not.
            for (label, carry, expected) in [
                ("rename then rewrite", true, true),
                ("rename then rewrite, nothing kept (negative control)", false, false),
            ] {
                match renamed_then_rewritten(&shared, carry) {
                    Ok(o) => {
                        say(&format!("{label}: {o}"));
                        if (o == "denied") != expected {
                            failures.push("rename-rewrite");
                        }
                    }
                    Err(e) => {
                        say(&format!("{label}: {e}"));
                        failures.push("rename-rewrite");
                    }
                }
            }
            // The LSM programs' lookups against the tables, on generated corpora.
            let base =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
            for round in 0..3u64 {
                let seed = base.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                match corpus(&shared, seed) {
                    Ok((n, differ)) if differ.is_empty() => {
                        say(&format!("corpus seed {seed}: {n} files, the LSM tier agrees with the tables"));
                    }
                    Ok((n, differ)) => {
                        say(&format!("corpus seed {seed}: {n} files, {} differ:", differ.len()));
                        for d in differ.iter().take(20) {
                            say(&format!("  {d}"));
                        }
                        failures.push("corpus");
                    }
                    Err(e) => {
                        say(&format!("corpus seed {seed}: {e}"));
                        failures.push("corpus");
                    }
                }
            }
            drop(shared);
            crate::bpf::unpin_all(pins);
        }
        Err(e) => {
            say(&format!("sessions' tier: {e:#}"));
            failures.push("sessions-tier");
        }
    }
    // The LSM tier: the same test, decided by the LSM programs alone.
    match crate::bpf::load_lsm() {
        Ok(k) => {
            say(&format!("lsm programs: {} attached", k.links.len()));
            let lsm_shared = bare(crate::bpf::Kernel { cgroup: root.join("leash-vm"), ..k }, Default::default(), true);
            let outcome = run_with(&lsm_shared, &["fanotify".to_owned()], true);
            if let Some(k) = &lsm_shared.kernel {
                say(&format!("lsm counters (decided, unresolved, exact, prefix, default): {:?}", k.maps.lsm_stats()));
            }
            match outcome {
                Ok((_, lines)) => {
                    let (hostile, basic): (Vec<_>, Vec<_>) = lines.iter().partition(|(a, _)| a.starts_with("hostile "));
                    for (action, outcome) in &basic {
                        say(&format!("lsm {action}: {outcome}"));
                    }
                    if basic.len() != 4 || basic.iter().any(|(_, o)| o != "denied") {
                        failures.push("lsm");
                    }
                    for (attempt, outcome) in &hostile {
                        say(&format!("lsm {attempt}: {outcome}"));
                    }
                    let held = hostile.iter().filter(|(_, o)| o == "held").count();
                    say(&format!("lsm hostile: {held} of {} held", hostile.len()));
                    if hostile.is_empty() || held != hostile.len() {
                        failures.push("lsm-hostile");
                    }
                    // The negative control: without the identities, a link
                    // of a forbidden file reads it (the attempts can fail).
                    match run_with(&lsm_shared, &["fanotify".to_owned(), "identities".to_owned()], true) {
                        Ok((_, lines)) => {
                            let link = lines.iter().find(|(a, _)| a == "hostile link-read").map(|(_, o)| o.as_str());
                            say(&format!(
                                "lsm hostile negative control (no identities): link-read {}",
                                link.unwrap_or("missing")
                            ));
                            if !link.is_some_and(|o| o.starts_with("BYPASSED")) {
                                failures.push("lsm-hostile-negative-control");
                            }
                        }
                        Err(e) => {
                            say(&format!("lsm hostile negative control: {e}"));
                            failures.push("lsm-hostile-negative-control");
                        }
                    }
                }
                Err(e) => {
                    say(&format!("lsm: {e}"));
                    failures.push("lsm");
                }
            }
        }
        Err(e) => {
            say(&format!("lsm programs: {e:#}"));
            failures.push("lsm");
        }
    }
    if failures.is_empty() {
        say("RESULT: PASS");
        ExitCode::SUCCESS
    } else {
        say(&format!("RESULT: FAIL: {}", failures.join(" ")));
        ExitCode::from(1)
    }
}
