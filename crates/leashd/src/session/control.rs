//! leashd's end of a session's control connection: the datagram socket
//! leash-entry (the container's first process) keeps at
//! [`CONTROL_FD`], copied with `pidfd_getfd`. Through it leashd asks
//! leash-entry to run more commands in the session (`leash exec`) and
//! relays their terminals. A leashd that restarts copies it again.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use leash_core::terminal::{CONTROL_FD, FRAME_MAX, Frame};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// Frames queued for one command's client before the reader waits for it.
const ROUTE_QUEUE: usize = 256;

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>>;

/// One session's control connection.
#[derive(Debug)]
pub struct Conn {
    sock: Arc<UnixDatagram>,
    routes: Routes,
    next: AtomicU32,
    reader: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Copies descriptor [`CONTROL_FD`] of process `pid` (the host's view of
/// the container's first process), and checks that it is a datagram socket.
fn copy_door(pid: u32) -> std::io::Result<OwnedFd> {
    let fd = leash_daemon::process::descriptor_of(pid, CONTROL_FD)?;
    if rustix::net::sockopt::socket_type(&fd)? != rustix::net::SocketType::DGRAM {
        return Err(std::io::Error::other(format!("descriptor {CONTROL_FD} is not the control connection")));
    }
    Ok(fd)
}

impl Conn {
    /// Takes the control connection of the session whose first process is
    /// `pid`, and says Hello (leash-entry hangs up the commands of a leashd
    /// before this one).
    pub async fn take(pid: u32, session: &str) -> std::io::Result<Conn> {
        let std = std::os::unix::net::UnixDatagram::from(copy_door(pid)?);
        std.set_nonblocking(true)?;
        let sock = Arc::new(UnixDatagram::from_std(std)?);
        send(&sock, &Frame::Hello { from: 0 }).await?;
        let routes: Routes = Arc::default();
        let reader = tokio::spawn(read(sock.clone(), routes.clone(), session.to_owned())).abort_handle();
        // Ids unlike those of a leashd before this one, whose frames may
        // still be queued on the connection.
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        Ok(Conn { sock, routes, next: AtomicU32::new(seed | 1), reader })
    }

    /// A new command's id and the frames leash-entry sends about it.
    pub fn open(&self) -> (u32, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !routes.contains_key(&id) {
                routes.insert(id, tx);
                return (id, rx);
            }
        }
    }

    /// Forgets command `id`.
    pub fn close(&self, id: u32) {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Sends a frame to leash-entry (waits while its queue is full).
    pub async fn send(&self, f: &Frame) -> std::io::Result<()> {
        send(&self.sock, f).await
    }

    /// Sends input for command `id` in frames below the largest.
    pub async fn input(&self, id: u32, bytes: &[u8]) -> std::io::Result<()> {
        for piece in bytes.chunks(FRAME_MAX - 64) {
            self.send(&Frame::Input { proc: id, bytes: piece.to_vec() }).await?;
        }
        Ok(())
    }
}

async fn send(sock: &UnixDatagram, f: &Frame) -> std::io::Result<()> {
    let mut b = Vec::new();
    f.encode(&mut b).map_err(std::io::Error::other)?;
    sock.send(&b).await.map(|_| ())
}

/// Routes what leash-entry sends to the client of the command it is about.
async fn read(sock: Arc<UnixDatagram>, routes: Routes, session: String) {
    let mut buf = vec![0u8; FRAME_MAX + 64];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(session_id = %session, error = %e, "the control connection failed");
                return;
            }
        };
        let f = match Frame::from_datagram(&buf[..n]) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(session_id = %session, error = %e, "leash-entry sent a frame leashd cannot read");
                continue;
            }
        };
        let route = f.proc().and_then(|p| routes.lock().unwrap_or_else(|p| p.into_inner()).get(&p).cloned());
        // Frames of commands nobody follows any more (a leashd before this
        // one started them) are dropped.
        if let Some(tx) = route {
            let _ = tx.send(f).await;
        }
    }
}
