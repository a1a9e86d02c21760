//! `leash-storm connect N ADDR:PORT [RATE]`: a load generator for the
//! sensor's event pipeline, run inside a session (built static by
//! `cargo xtask bench sensor`). Each `connect()` of a UDP socket is one
//! governed decision, one event; with RATE, paced to that many per second.
//! Prints the count, the elapsed microseconds and the failures.
//!
//! `leash-storm icmp`: opens an unprivileged ICMP ("ping") socket and
//! prints `icmp=ok` or `icmp=<error>`.
//!
//! Attempts a hostile agent would make on files, each printing
//! `<attempt>=ok` (and what it read) or `<attempt>=<error>`:
//! `leash-storm exchange A B` swaps two names (`renameat2(RENAME_EXCHANGE)`);
//! `leash-storm opath FILE` opens FILE with `O_PATH`, then reads it through
//! `/proc/self/fd/N`; `leash-storm execveat FILE ARG…` runs FILE from an
//! `O_PATH` descriptor with `execveat(AT_EMPTY_PATH)`;
//! `leash-storm handle FILE` opens FILE by a file handle
//! (`name_to_handle_at`, `open_by_handle_at`); `leash-storm uring` sets up
//! an io_uring (whose operations no seccomp filter sees; `uring=ok` means
//! the session allows them); `leash-storm sendfile FILE` opens FILE and
//! has a child that inherits the descriptor copy it to standard output
//! with `sendfile`.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool's output")]

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("icmp") {
        let r = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            Some(rustix::net::ipproto::ICMP),
        );
        match r {
            Ok(_) => println!("icmp=ok"),
            Err(e) => println!("icmp={e}"),
        }
        return ExitCode::SUCCESS;
    }
    if let Some(code) = file_attempt(&args) {
        return code;
    }
    let (what, n, addr, rate) = match args.as_slice() {
        [what, n, addr] => (what, n, addr, None),
        [what, n, addr, rate] => (what, n, addr, rate.parse::<u64>().ok()),
        _ => {
            eprintln!("usage: leash-storm connect N ADDR:PORT [RATE]");
            return ExitCode::from(64);
        }
    };
    let (Ok(n), Ok(addr)) = (n.parse::<u64>(), addr.parse::<SocketAddr>()) else {
        eprintln!("leash-storm: N must be a number and ADDR:PORT an address");
        return ExitCode::from(64);
    };
    if what != "connect" {
        eprintln!("leash-storm: unknown storm {what:?} (connect)");
        return ExitCode::from(64);
    }
    let socket = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leash-storm: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let mut failed = 0u64;
    for i in 0..n {
        if socket.connect(addr).is_err() {
            failed += 1;
        }
        // Paced in steps of 1,000: ahead of schedule, wait for it.
        if let Some(rate) = rate.filter(|r| *r > 0)
            && i % 1000 == 999
        {
            let due = std::time::Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{n} {} {failed}", start.elapsed().as_micros());
    ExitCode::SUCCESS
}

/// The file attempts; None when `args` names none.
fn file_attempt(args: &[String]) -> Option<ExitCode> {
    use rustix::fs::{CWD, Mode, OFlags, RenameFlags};
    let say = |attempt: &str, r: Result<String, String>| {
        match r {
            Ok(v) => println!("{attempt}=ok {v}"),
            Err(e) => println!("{attempt}={e}"),
        }
        ExitCode::SUCCESS
    };
    match args {
        [what, a, b] if what == "exchange" => Some(say(
            "exchange",
            rustix::fs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
                .map(|()| String::new())
                .map_err(|e| e.to_string()),
        )),
        [what, file] if what == "opath" => {
            let r = rustix::fs::open(file, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| e.to_string())
                .and_then(|fd| {
                    use std::os::fd::AsRawFd;
                    std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())
                });
            Some(say("opath", r.map(|t| t.trim().to_owned())))
        }
        [what, file] if what == "openat2" => {
            let how = rustix::fs::ResolveFlags::empty();
            let r = rustix::fs::openat2(CWD, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), how)
                .map_err(|e| e.to_string())
                .and_then(|fd| {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)
                        .map_err(|e| e.to_string())?;
                    Ok(text.trim().to_owned())
                });
            Some(say("openat2", r))
        }
        [what, file, rest @ ..] if what == "execveat" => {
            let fd = match rustix::fs::open(file, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => fd,
                Err(e) => return Some(say("execveat", Err(e.to_string()))),
            };
            let cstr = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
            let argv: Vec<std::ffi::CString> =
                std::iter::once(file.as_str()).chain(rest.iter().map(String::as_str)).map(cstr).collect();
            let env: Vec<std::ffi::CString> = Vec::new();
            // Returns only when the exec failed.
            let e = nix::unistd::execveat(&fd, c"", &argv, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH);
            Some(say("execveat", Err(e.map_or_else(|e| e.desc().to_owned(), |_| "returned".to_owned()))))
        }
        [what, file] if what == "handle" => Some(say("handle", by_handle(file))),
        [what] if what == "uring" => Some(say("uring", uring())),
        [what] if what == "door" => Some(say("control-door", door())),
        [what, file] if what == "sendfile" => {
            let r = rustix::fs::open(file, OFlags::RDONLY, Mode::empty()).map_err(|e| e.to_string()).and_then(|fd| {
                use std::os::fd::AsRawFd;
                // The child inherits the descriptor (no close-on-exec).
                let out = std::process::Command::new("/proc/self/exe")
                    .args(["sendfile-fd", &fd.as_raw_fd().to_string()])
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() { Ok(text.trim().to_owned()) } else { Err(text) }
            });
            Some(say("sendfile", r))
        }
        [what, fd] if what == "sendfile-fd" => {
            let Ok(n) = fd.parse::<i32>() else { return Some(ExitCode::from(64)) };
            // SAFETY: the descriptor was inherited from the parent, which
            // passed its number; nothing else in this process owns it.
            #[allow(unsafe_code, reason = "adopting an inherited descriptor by number")]
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) };
            let stdout = std::io::stdout();
            match rustix::fs::sendfile(&stdout, &fd, None, 1 << 20) {
                Ok(_) => Some(ExitCode::SUCCESS),
                Err(e) => {
                    println!("{e}");
                    Some(ExitCode::from(1))
                }
            }
        }
        _ => None,
    }
}

/// Copies the control connection of the container's first process (its
/// descriptor `CONTROL_FD`, through which leashd runs `leash exec`
/// commands) and, holding it, asks for a command.
fn door() -> Result<String, String> {
    use leash_core::terminal::{CONTROL_FD, Frame};
    let one = rustix::process::Pid::from_raw(1).ok_or("pid 1")?;
    let pidfd = rustix::process::pidfd_open(one, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open: {e}"))?;
    let fd = rustix::process::pidfd_getfd(&pidfd, CONTROL_FD, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| format!("pidfd_getfd: {e}"))?;
    let spawn = Frame::Spawn {
        proc: 7,
        tty: false,
        interactive: false,
        rows: 0,
        cols: 0,
        argv: vec!["touch".into(), "door-ran".into()],
        env: Vec::new(),
        cwd: String::new(),
    };
    let mut frame = Vec::new();
    spawn.encode(&mut frame).map_err(|e| e.to_string())?;
    rustix::net::send(&fd, &frame, rustix::net::SendFlags::empty()).map_err(|e| format!("took it; send: {e}"))?;
    Ok("took the control connection and sent a spawn".into())
}

/// Opens `file` by its handle: `open_by_handle_at` needs no path walk, so
/// no name of the file is involved in the open.
fn by_handle(file: &str) -> Result<String, String> {
    use nix::libc;
    let path = std::ffi::CString::new(file).map_err(|e| e.to_string())?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut handle = vec![0u8; 8 + 128];
    handle[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0i32;
    // SAFETY: `handle` has room for the header and 128 handle bytes, as
    // its header says; `path` is NUL-terminated; `mount_id` is writable.
    #[allow(unsafe_code, reason = "name_to_handle_at and open_by_handle_at have no wrappers")]
    let fd = unsafe {
        if libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            handle.as_mut_ptr(),
            &mut mount_id,
            0,
        ) != 0
        {
            return Err(format!("name_to_handle_at: {}", std::io::Error::last_os_error()));
        }
        let mount = libc::open(c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        libc::syscall(libc::SYS_open_by_handle_at, mount, handle.as_mut_ptr(), libc::O_RDONLY)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    std::fs::read_to_string(format!("/proc/self/fd/{fd}")).map(|t| t.trim().to_owned()).map_err(|e| e.to_string())
}

/// Sets up an io_uring.
fn uring() -> Result<String, String> {
    use nix::libc;
    // struct io_uring_params: 120 bytes, zeroed.
    let mut params = [0u8; 120];
    // SAFETY: `params` is a zeroed io_uring_params the kernel fills in.
    #[allow(unsafe_code, reason = "io_uring_setup has no wrapper")]
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 { Err(std::io::Error::last_os_error().to_string()) } else { Ok(String::new()) }
}
