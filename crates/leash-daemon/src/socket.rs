//! Binding a daemon's Unix socket: one owner at a time, stale sockets removed.
//!
//! Ownership is a `flock` on `<name>.lock` beside the socket, held for the
//! daemon's life. A second daemon fails to take it and names the owner's pid;
//! a socket file left by a dead daemon is removed because its lock is free.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use leash_core::Layout;

/// Who may connect, as file permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketMode {
    /// 0600: the daemon's user only (component sockets).
    Private,
    /// 0660, group set to the given gid when there is one (leashd's client socket).
    Group(Option<u32>),
}

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another live daemon holds the lock.
    #[error("another daemon (pid {pid}) is already serving {socket}; stop it first (`leashctl stop --all`)")]
    AlreadyRunning {
        /// The owner's pid, as written in the lock file (0 when unreadable).
        pid: u32,
        /// The socket.
        socket: PathBuf,
    },
    /// Something that is not a socket sits at the socket's path.
    #[error("{0} exists and is not a socket; remove it by hand")]
    NotASocket(PathBuf),
    /// Any other IO failure.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// A bound socket and the lock that makes it ours. Dropping it removes the
/// socket file.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
    _lock: File,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the listener (once) to serve on it.
    pub fn take_listener(&mut self) -> io::Result<tokio::net::UnixListener> {
        let l = self.listener.take().ok_or_else(|| io::Error::other("listener already taken"))?;
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // We still hold the lock, so the file is ours to remove.
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds `socket`, after taking its lock and removing a stale socket file.
pub fn bind(socket: &Path, mode: SocketMode) -> Result<BoundSocket, BindError> {
    let io_err = |source| BindError::Io { path: socket.to_owned(), source };
    let lock_path = Layout::lock_for(socket);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| BindError::Io { path: lock_path.clone(), source })?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut s = String::new();
            let _ = lock.read_to_string(&mut s);
            return Err(BindError::AlreadyRunning { pid: s.trim().parse().unwrap_or(0), socket: socket.to_owned() });
        }
        Err(e) => return Err(BindError::Io { path: lock_path, source: e.into() }),
    }
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .map_err(io_err)?;

    match fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            tracing::info!(socket = %socket.display(), "removing stale socket");
            fs::remove_file(socket).map_err(io_err)?;
        }
        Ok(_) => return Err(BindError::NotASocket(socket.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(io_err)?;
    let perm = match mode {
        SocketMode::Private => 0o600,
        SocketMode::Group(gid) => {
            if let Some(gid) = gid {
                rustix::fs::chown(socket, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| io_err(e.into()))?;
            }
            0o660
        }
    };
    fs::set_permissions(socket, fs::Permissions::from_mode(perm)).map_err(io_err)?;
    Ok(BoundSocket { listener: Some(listener), path: socket.to_owned(), _lock: lock })
}

/// The pid recorded in a socket's lock file, when its owner still holds it.
pub fn owner_pid(socket: &Path) -> Option<u32> {
    let lock = File::open(Layout::lock_for(socket)).ok()?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => None, // free: nobody owns it
        Err(_) => fs::read_to_string(Layout::lock_for(socket)).ok()?.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_bind_is_refused_and_stale_socket_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("d.sock");
        let first = bind(&sock, SocketMode::Private).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&sock, SocketMode::Private).unwrap_err();
        assert!(matches!(err, BindError::AlreadyRunning { pid, .. } if pid == std::process::id()), "{err}");
        assert_eq!(owner_pid(&sock), Some(std::process::id()));
        drop(first);
        assert!(!sock.exists());
        // A stale socket: a bound file with nobody holding the lock.
        let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(stale);
        assert!(sock.exists());
        let again = bind(&sock, SocketMode::Group(None)).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(again);
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("d.sock");
        fs::write(&sock, "x").unwrap();
        assert!(matches!(bind(&sock, SocketMode::Private), Err(BindError::NotASocket(_))));
    }
}
