//! The Handshake service every daemon serves, and the identity it reports.

use std::time::SystemTime;

use leash_core::{PROTOCOL_VERSION, VERSION};
use leash_proto::v1::handshake_server::Handshake;
use leash_proto::v1::{HelloRequest, HelloResponse};
use tonic::{Request, Response, Status};

/// Who this daemon is.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    /// Program name, e.g. `leash-policy`.
    pub name: &'static str,
    /// Process id.
    pub pid: u32,
    /// Start time.
    pub started: SystemTime,
    /// Instance served.
    pub instance: String,
}

impl DaemonInfo {
    /// This process, started now.
    pub fn new(name: &'static str, instance: &str) -> DaemonInfo {
        DaemonInfo { name, pid: std::process::id(), started: SystemTime::now(), instance: instance.to_owned() }
    }

    /// The handshake answer.
    pub fn hello(&self) -> HelloResponse {
        HelloResponse {
            daemon: self.name.to_owned(),
            version: VERSION.to_owned(),
            protocol: PROTOCOL_VERSION,
            pid: self.pid,
            started_unix_ms: crate::unix_ms(self.started),
            instance: self.instance.clone(),
        }
    }
}

/// The message both sides print when protocols differ.
pub fn mismatch(
    client: &str,
    client_version: &str,
    client_protocol: u32,
    daemon: &str,
    daemon_version: &str,
    daemon_protocol: u32,
) -> String {
    format!(
        "version mismatch: {client} {client_version} speaks protocol {client_protocol}, \
         but {daemon} {daemon_version} speaks protocol {daemon_protocol}; \
         run the same leash version for both (after an upgrade: `leashctl stop --all`, then start leashd again)"
    )
}

#[tonic::async_trait]
impl Handshake for DaemonInfo {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let r = req.into_inner();
        if r.protocol != PROTOCOL_VERSION {
            let msg = mismatch(&r.client, &r.version, r.protocol, self.name, VERSION, PROTOCOL_VERSION);
            tracing::warn!(client = %r.client, client_version = %r.version, "{msg}");
            return Err(Status::failed_precondition(msg));
        }
        if r.version != VERSION {
            tracing::info!(client = %r.client, client_version = %r.version, "client of another build version");
        }
        Ok(Response::new(self.hello()))
    }
}
