//! The init loop: start the command, forward signals, reap zombies.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::control::{Control, Want};

/// Signals passed on to the command rather than acted on.
const FORWARDED: [Signal; 10] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGALRM,
];

/// Becomes the target user for good: groups, then gid, then uid. leash-entry
/// itself then runs as that user too, so the command inherits exactly these
/// credentials (supplementary groups included) and PID 1 holds no root.
pub fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups)?;
    setgid(Gid::from_raw(gid))?;
    setuid(Uid::from_raw(uid))
}

/// Runs `command` and returns its status as an exit code; meanwhile runs
/// the commands leashd asks for through `control`.
pub fn run(command: &[String], env: &[(String, String)], mut control: Option<Control>) -> ExitCode {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).envs(env.iter().map(|(k, v)| (k, v))).process_group(0);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
            #[allow(clippy::print_stderr, reason = "leash-entry reports on stderr")]
            {
                eprintln!("leash-entry: cannot run {}: {e}", command[0]);
            }
            return ExitCode::from(code);
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    // Only now take every signal synchronously, so the command started with
    // the default mask. A child that exited meanwhile is found by the first
    // reap below; other signals in between reach PID 1 with their default
    // disposition, which the kernel ignores for init.
    let mut all = SigSet::all();
    for s in [Signal::SIGSEGV, Signal::SIGBUS, Signal::SIGILL, Signal::SIGFPE] {
        all.remove(s);
    }
    if let Err(e) = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None) {
        let _ = signal::kill(pid, Signal::SIGKILL);
        return crate::fail(&format!("cannot block signals: {e}"));
    }
    let signals = match SignalFd::with_flags(&all, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            return crate::fail(&format!("cannot read signals: {e}"));
        }
    };
    if let Some(code) = reap(pid, control.as_mut()) {
        return ExitCode::from(code);
    }
    // Give the terminal (if any) to the command's process group, so that
    // Ctrl-C and Ctrl-Z reach it and not us. SIGTTOU is blocked, so this
    // works from the background.
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        let _ = nix::unistd::tcsetpgrp(std::io::stdin(), pid);
    }
    loop {
        let wants = control.as_ref().map(Control::interests).unwrap_or_default();
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(signals.as_fd(), PollFlags::POLLIN))
            .chain(wants.iter().map(|(fd, flags, _)| PollFd::new(*fd, *flags)))
            .collect();
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        let wants: Vec<Want> = wants.into_iter().map(|(_, _, w)| w).collect();
        drop(fds);
        if let Some(c) = control.as_mut() {
            for (w, _) in wants.into_iter().zip(&ready[1..]).filter(|(_, r)| **r) {
                c.ready(w);
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if sig == Signal::SIGCHLD {
                if let Some(code) = reap(pid, control.as_mut()) {
                    return ExitCode::from(code);
                }
            } else if FORWARDED.contains(&sig) || sig == Signal::SIGPIPE {
                let _ = signal::kill(pid, sig);
            }
        }
    }
}

/// Reaps every exited child; returns the exit code once `main` has exited.
/// The commands run through `control` learn their codes.
fn reap(main: Pid, mut control: Option<&mut Control>) -> Option<u8> {
    let mut code = None;
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, status)) => (p, status),
            Ok(WaitStatus::Signaled(p, sig, _)) => (p, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => continue,
        };
        if pid == main {
            code = Some(status as u8);
        } else if let Some(c) = control.as_deref_mut() {
            c.reaped(pid, status);
        }
    }
}
