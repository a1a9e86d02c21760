//! Connecting to a daemon: dial the socket, handshake, optionally retry.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use leash_core::{PROTOCOL_VERSION, VERSION};
use leash_proto::v1::handshake_client::HandshakeClient;
use leash_proto::v1::{HelloRequest, HelloResponse};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::handshake::mismatch;

/// Why a daemon could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket, or nobody listening on it.
    #[error("nothing answers on {socket}: {source}")]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// The dial error.
        #[source]
        source: io::Error,
    },
    /// The socket or its directory is not ours to open.
    #[error("permission denied opening {0}: run as root or as a member of the `leash` group")]
    PermissionDenied(PathBuf),
    /// The peer speaks another protocol version.
    #[error("{0}")]
    VersionMismatch(String),
    /// The daemon refused or failed the handshake.
    #[error("handshake with {socket} failed: {status}")]
    Handshake {
        /// The socket.
        socket: PathBuf,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// Any other transport failure.
    #[error("cannot connect to {socket}: {source}")]
    Transport {
        /// The socket.
        socket: PathBuf,
        /// The failure.
        #[source]
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    /// True when retrying may help (the daemon may still be starting).
    pub fn is_not_running(&self) -> bool {
        matches!(self, ConnectError::NotRunning { .. })
    }
}

/// A handshaken connection.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The channel; reconnects by dialing the same socket.
    pub channel: Channel,
    /// What the daemon said about itself.
    pub hello: HelloResponse,
}

/// Dials `socket` once and exchanges versions.
pub async fn connect(socket: &Path, client: &str) -> Result<Connected, ConnectError> {
    let first = UnixStream::connect(socket).await.map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied(socket.to_owned()),
        _ => ConnectError::NotRunning { socket: socket.to_owned(), source },
    })?;
    // The first connection is the one just dialed; later ones dial again.
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let first = first.lock().map(|mut f| f.take()).unwrap_or(None);
        async move {
            let stream = match first {
                Some(s) => s,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is never dialed; it only has to parse.
    let channel = Endpoint::from_static("http://leash.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Transport { socket: socket.to_owned(), source })?;
    let request = HelloRequest { client: client.to_owned(), version: VERSION.to_owned(), protocol: PROTOCOL_VERSION };
    let hello = match HandshakeClient::new(channel.clone()).hello(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return Err(ConnectError::VersionMismatch(status.message().to_owned()));
        }
        Err(status) => return Err(ConnectError::Handshake { socket: socket.to_owned(), status }),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(ConnectError::VersionMismatch(mismatch(
            client,
            VERSION,
            PROTOCOL_VERSION,
            &hello.daemon,
            &hello.version,
            hello.protocol,
        )));
    }
    Ok(Connected { channel, hello })
}

/// Like [`connect`], retrying with backoff (10 ms doubling to 200 ms) while
/// nothing answers, until `patience` has passed.
pub async fn connect_with_retry(socket: &Path, client: &str, patience: Duration) -> Result<Connected, ConnectError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(10);
    loop {
        match connect(socket, client).await {
            Err(e) if e.is_not_running() && tokio::time::Instant::now() + delay < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}
