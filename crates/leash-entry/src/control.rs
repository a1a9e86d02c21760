//! The control connection: how leashd runs more commands in a running
//! session (`leash exec`). leash-entry forks them itself, so they are the
//! session's processes in every way the kernel knows: its cgroup, its
//! namespaces, its user, its supervised-calls filter and `no_new_privs`.
//!
//! The connection is a datagram socket pair. leash-entry reads one end; the
//! other waits at descriptor [`CONTROL_FD`] for leashd to copy it
//! (`pidfd_getfd`). No path names it, neither end is inherited, and
//! leash-entry is not dumpable, so no process of the container can copy it
//! or open it through `/proc/1/fd`. A leashd that restarts copies it again
//! and says `Hello`; the commands of the leashd before it (whose clients
//! are gone with it) are hung up.
//!
//! leash-entry never blocks on a command or on leashd: every descriptor is
//! non-blocking, input waits in memory until the command reads it, and a
//! command's output is read only while the frames for leashd stay below
//! [`OUT_MAX`] bytes (a leashd that does not read holds the command back; it
//! does not lose its output).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use leash_core::terminal::{CONTROL_FD, FRAME_MAX, Frame, Stream};
use nix::sys::signal::{self, Signal};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use nix::unistd::Pid;

/// The most output waiting for leashd before commands are read no more.
pub const OUT_MAX: usize = 1 << 20;

/// The most input waiting for one command before leashd's frames wait.
const IN_MAX: usize = 1 << 20;

/// Bytes read from a command's output at a time.
const CHUNK: usize = 32 << 10;

/// One command run through the connection.
struct Proc {
    pid: Pid,
    /// Where its input goes (the terminal, or its stdin's pipe); none
    /// without `-i` or after the end of input.
    input: Option<OwnedFd>,
    /// Input not yet written.
    pending: Vec<u8>,
    /// Close `input` once `pending` is written.
    eof: bool,
    /// Its terminal, for resizes.
    tty: Option<OwnedFd>,
    /// Its outputs still open.
    outputs: Vec<(Stream, OwnedFd)>,
    /// Bytes of output so far.
    offset: u64,
    /// Its exit code, once reaped.
    code: Option<i32>,
}

/// leash-entry's end of the connection and the commands run through it.
pub struct Control {
    sock: OwnedFd,
    /// The end leashd copies; kept open for a leashd that restarts.
    _door: OwnedFd,
    /// What the session's command was given on top of the container's
    /// environment (HOME, the CA's variables…): exec'd commands get it too.
    env: Vec<(String, String)>,
    procs: BTreeMap<u32, Proc>,
    /// Frames for leashd, oldest first.
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    /// Where frames from leashd and commands' output are read into.
    buf: Vec<u8>,
}

/// Opens the connection; its door lands at [`CONTROL_FD`].
pub fn open() -> Result<Control, String> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let (sock, door) = socketpair(AddressFamily::Unix, SockType::Datagram, None, flags)
        .map_err(|e| format!("cannot make the control connection: {e}"))?;
    let at = rustix::io::fcntl_dupfd_cloexec(&door, CONTROL_FD)
        .map_err(|e| format!("cannot place the control connection: {e}"))?;
    if at.as_raw_fd() != CONTROL_FD {
        return Err(format!("descriptor {CONTROL_FD} is taken; the control connection landed at {}", at.as_raw_fd()));
    }
    drop(door);
    Ok(Control {
        sock,
        _door: at,
        env: Vec::new(),
        procs: BTreeMap::new(),
        out: VecDeque::new(),
        out_bytes: 0,
        buf: vec![0; FRAME_MAX + 64],
    })
}

/// What the loop waits on for a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Frames from leashd.
    Frames,
    /// Room for frames to leashd.
    Room,
    /// Output of command `proc`, from its `n`th output.
    Output(u32, usize),
    /// Room for command `proc`'s input.
    Input(u32),
}

impl Control {
    /// The environment the session's command was given.
    pub fn set_env(&mut self, env: &[(String, String)]) {
        self.env = env.to_vec();
    }

    /// The descriptors to wait on, and for what.
    pub fn interests(&self) -> Vec<(BorrowedFd<'_>, nix::poll::PollFlags, Want)> {
        use nix::poll::PollFlags;
        let mut v = Vec::new();
        if !self.procs.values().any(|p| p.pending.len() >= IN_MAX) {
            v.push((self.sock.as_fd(), PollFlags::POLLIN, Want::Frames));
        }
        if !self.out.is_empty() {
            v.push((self.sock.as_fd(), PollFlags::POLLOUT, Want::Room));
        }
        for (id, p) in &self.procs {
            if self.out_bytes < OUT_MAX {
                for (n, (_, fd)) in p.outputs.iter().enumerate() {
                    v.push((fd.as_fd(), PollFlags::POLLIN, Want::Output(*id, n)));
                }
            }
            if let Some(fd) = &p.input
                && !p.pending.is_empty()
            {
                v.push((fd.as_fd(), PollFlags::POLLOUT, Want::Input(*id)));
            }
        }
        v
    }

    /// Acts on a descriptor that is ready.
    pub fn ready(&mut self, want: Want) {
        match want {
            Want::Frames => self.receive(),
            Want::Room => self.flush(),
            Want::Output(id, n) => self.read_output(id, Some(n)),
            Want::Input(id) => self.write_input(id),
        }
        self.finish();
        self.flush();
    }

    /// A child was reaped: if it is one of ours, it ends once its output is read.
    pub fn reaped(&mut self, pid: Pid, code: i32) {
        let Some(id) = self.procs.iter().find(|(_, p)| p.pid == pid).map(|(id, _)| *id) else { return };
        if let Some(p) = self.procs.get_mut(&id) {
            p.code = Some(code);
        }
        // What it wrote before it exited is there to read now.
        self.read_output(id, None);
        self.finish();
        self.flush();
    }

    fn push(&mut self, f: &Frame) {
        let mut b = Vec::new();
        if f.encode(&mut b).is_ok() {
            self.out_bytes += b.len();
            self.out.push_back(b);
        }
    }

    fn flush(&mut self) {
        while let Some(b) = self.out.front() {
            match send(self.sock.as_raw_fd(), b, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => {
                    self.out_bytes -= b.len();
                    self.out.pop_front();
                }
                Err(nix::errno::Errno::EINTR) => {}
                // EAGAIN: leashd reads later. Anything else: no leashd
                // holds the door now; a restarted one says Hello.
                Err(_) => return,
            }
        }
    }

    fn receive(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        // A bounded number per turn, so output and signals are not starved.
        for _ in 0..64 {
            let n = match recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            // Only leashd holds the other end: a frame it cannot read is a
            // version mismatch, and is dropped.
            if let Ok(f) = Frame::from_datagram(&buf[..n]) {
                self.on_frame(f);
            }
            if self.procs.values().any(|p| p.pending.len() >= IN_MAX) {
                break;
            }
        }
        self.buf = buf;
    }

    fn on_frame(&mut self, f: Frame) {
        match f {
            Frame::Hello { .. } => {
                // A new leashd: the clients of the commands it did not start are gone.
                let ids: Vec<u32> = self.procs.keys().copied().collect();
                for id in ids {
                    self.hang_up(id);
                }
            }
            Frame::Spawn { proc, tty, interactive, rows, cols, argv, env, cwd } => {
                if proc == 0 || self.procs.contains_key(&proc) || argv.is_empty() {
                    let message = format!("command {proc} cannot be started twice, or has no program");
                    return self.push(&Frame::SpawnFailed { proc, code: 125, message });
                }
                match self.spawn(&argv, &env, &cwd, tty.then_some((rows, cols)), interactive) {
                    Ok(p) => {
                        let pid = p.pid.as_raw() as u32;
                        self.procs.insert(proc, p);
                        self.push(&Frame::Spawned { proc, pid });
                    }
                    Err(e) => {
                        let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
                        self.push(&Frame::SpawnFailed { proc, code, message: format!("cannot run {}: {e}", argv[0]) });
                    }
                }
            }
            Frame::Input { proc, bytes } => {
                if let Some(p) = self.procs.get_mut(&proc)
                    && p.input.is_some()
                {
                    p.pending.extend_from_slice(&bytes);
                    self.write_input(proc);
                }
            }
            Frame::Eof { proc } => {
                if let Some(p) = self.procs.get_mut(&proc) {
                    p.eof = true;
                    self.write_input(proc);
                }
            }
            Frame::Resize { proc, rows, cols } => {
                if let Some(tty) = self.procs.get(&proc).and_then(|p| p.tty.as_ref()) {
                    let _ = rustix::termios::tcsetwinsize(tty, winsize(rows, cols));
                }
            }
            Frame::Signal { proc, signal } => {
                if let (Some(p), Ok(sig)) = (self.procs.get(&proc), Signal::try_from(signal)) {
                    let _ = signal::killpg(p.pid, sig);
                }
            }
            Frame::Hangup { proc } => self.hang_up(proc),
            // Output ring acknowledgements are for the session's own
            // terminal; leashd → entry only otherwise.
            _ => {}
        }
    }

    /// The client of `id` is gone: its group is hung up, as a closed
    /// terminal would, and nothing more is read from or written to it.
    fn hang_up(&mut self, id: u32) {
        if let Some(p) = self.procs.remove(&id) {
            let _ = signal::killpg(p.pid, Signal::SIGHUP);
            let _ = signal::killpg(p.pid, Signal::SIGCONT);
        }
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[String],
        cwd: &str,
        tty: Option<(u16, u16)>,
        interactive: bool,
    ) -> io::Result<Proc> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(self.env.iter().map(|(k, v)| (k, v)));
        for e in env {
            match e.split_once('=') {
                Some((k, v)) if !k.is_empty() => cmd.env(k, v),
                _ => cmd.env_remove(e),
            };
        }
        if !cwd.is_empty() {
            cmd.current_dir(cwd);
        }
        let mut tty_session = false;
        let mut p = Proc {
            pid: Pid::from_raw(0),
            input: None,
            pending: Vec::new(),
            eof: false,
            tty: None,
            outputs: Vec::new(),
            offset: 0,
            code: None,
        };
        if let Some((rows, cols)) = tty {
            use rustix::pty::OpenptFlags;
            let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
            rustix::pty::grantpt(&master)?;
            rustix::pty::unlockpt(&master)?;
            let peer = rustix::pty::ioctl_tiocgptpeer(
                &master,
                OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
            )?;
            let _ = rustix::termios::tcsetwinsize(&peer, winsize(rows, cols));
            cmd.stdin(Stdio::from(peer.try_clone()?)).stdout(Stdio::from(peer.try_clone()?)).stderr(Stdio::from(peer));
            tty_session = true;
            set_nonblocking(&master)?;
            if interactive {
                p.input = Some(master.try_clone()?);
            }
            p.outputs.push((Stream::Stdout, master.try_clone()?));
            p.tty = Some(master);
        } else {
            cmd.stdin(if interactive { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
        }
        // Between fork and exec: the signals leash-entry blocks (it reads
        // them from a signalfd) unblocked again, and with a terminal a
        // session of its own with it as its controlling terminal, so that
        // Ctrl-C and job control act on the command.
        #[allow(unsafe_code, reason = "std has no safe way to run system calls between fork and exec")]
        // SAFETY: the closure only makes system calls (async-signal-safe)
        // and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                )?;
                if tty_session {
                    rustix::process::setsid()?;
                    rustix::process::ioctl_tiocsctty(std::io::stdin())?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        p.pid = Pid::from_raw(child.id() as i32);
        if let Some(stdin) = child.stdin.take() {
            let fd = OwnedFd::from(stdin);
            set_nonblocking(&fd)?;
            p.input = Some(fd);
        }
        for (stream, fd) in [
            (Stream::Stdout, child.stdout.take().map(OwnedFd::from)),
            (Stream::Stderr, child.stderr.take().map(OwnedFd::from)),
        ] {
            if let Some(fd) = fd {
                set_nonblocking(&fd)?;
                p.outputs.push((stream, fd));
            }
        }
        // Reaped by PID 1's loop, by pid; the handle is not needed.
        drop(child);
        Ok(p)
    }

    /// Reads what output `id` has now (only its `n`th output, or all).
    fn read_output(&mut self, id: u32, only: Option<usize>) {
        let Some(p) = self.procs.get_mut(&id) else { return };
        let mut frames = Vec::new();
        let mut closed = Vec::new();
        let buf = &mut self.buf[..CHUNK];
        for (n, (stream, fd)) in p.outputs.iter().enumerate() {
            if only.is_some_and(|o| o != n) {
                continue;
            }
            // Once exited, everything there is; else one chunk per turn.
            loop {
                match rustix::io::read(fd, &mut *buf) {
                    Ok(0) => {
                        closed.push(n);
                        break;
                    }
                    Ok(k) => {
                        frames.push(Frame::Output {
                            proc: id,
                            stream: *stream,
                            offset: p.offset,
                            bytes: buf[..k].to_vec(),
                        });
                        p.offset += k as u64;
                        if p.code.is_none() {
                            break;
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    // EIO: a terminal whose every other end has closed.
                    Err(_) => {
                        closed.push(n);
                        break;
                    }
                }
            }
        }
        for n in closed.into_iter().rev() {
            p.outputs.remove(n);
        }
        for f in &frames {
            self.push(f);
        }
    }

    fn write_input(&mut self, id: u32) {
        let Some(p) = self.procs.get_mut(&id) else { return };
        let Some(fd) = &p.input else {
            p.pending.clear();
            return;
        };
        while !p.pending.is_empty() {
            match rustix::io::write(fd, &p.pending) {
                Ok(k) => {
                    p.pending.drain(..k);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                // It closed its input: what it did not read is dropped.
                Err(_) => {
                    p.pending.clear();
                    p.input = None;
                    return;
                }
            }
        }
        // A terminal's input ends only when the command ends; a pipe's now.
        if p.eof && p.tty.is_none() {
            p.input = None;
        }
    }

    /// Commands that exited end with `Exit` once what they wrote is read
    /// (what a process they left behind writes later is not waited for).
    fn finish(&mut self) {
        let done: Vec<u32> = self.procs.iter().filter(|(_, p)| p.code.is_some()).map(|(id, _)| *id).collect();
        for id in done {
            if let Some(p) = self.procs.remove(&id) {
                self.push(&Frame::Exit { proc: id, code: p.code.unwrap_or(125) });
            }
        }
    }
}

fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}
