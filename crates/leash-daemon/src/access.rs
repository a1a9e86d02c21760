//! Who may call a daemon, decided from the caller's socket credentials
//! (SO_PEERCRED), never from anything the caller says.

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The caller's identity as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
}

impl Peer {
    /// True when the caller is root or runs as this daemon's own user.
    pub fn is_privileged(&self) -> bool {
        self.uid == 0 || self.uid == rustix::process::geteuid().as_raw()
    }
}

/// The caller of a request, from the connection's credentials.
/// A request leashd makes itself on behalf of an authenticated caller of its
/// HTTP API carries that caller as a [`Peer`] extension (a client cannot set
/// extensions: they never cross the wire).
pub fn peer<T>(req: &Request<T>) -> Option<Peer> {
    if let Some(p) = req.extensions().get::<Peer>() {
        return Some(*p);
    }
    let cred = req.extensions().get::<UdsConnectInfo>()?.peer_cred?;
    Some(Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() })
}

/// Which callers a socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Root or the daemon's own user (component sockets).
    Privileged,
    /// Anyone who can open the socket; file permissions decide (leashd's
    /// client socket). Handlers that change state check [`require_privileged`].
    Connected,
}

/// A tonic interceptor enforcing `rule`. A request without credentials
/// (which a Unix socket always has) is refused: fail closed.
pub fn interceptor(rule: Rule) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(p) = peer(&req) else {
            return Err(Status::permission_denied("caller credentials unavailable"));
        };
        match rule {
            Rule::Privileged if !p.is_privileged() => {
                tracing::warn!(uid = p.uid, pid = ?p.pid, "refused a caller that is not root");
                Err(Status::permission_denied(format!("uid {} may not call this daemon: root only", p.uid)))
            }
            _ => Ok(req),
        }
    }
}

/// The caller, or PERMISSION_DENIED when the kernel reported no credentials.
pub fn require_peer<T>(req: &Request<T>) -> Result<Peer, Status> {
    peer(req).ok_or_else(|| Status::permission_denied("caller credentials unavailable"))
}

/// Refuses a state-changing call from an unprivileged caller.
pub fn require_privileged<T>(req: &Request<T>, what: &str) -> Result<Peer, Status> {
    match peer(req) {
        Some(p) if p.is_privileged() => Ok(p),
        Some(p) => Err(Status::permission_denied(format!("{what} needs root (caller uid {})", p.uid))),
        None => Err(Status::permission_denied("caller credentials unavailable")),
    }
}
