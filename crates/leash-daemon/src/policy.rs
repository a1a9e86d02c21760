//! What the sensor and the proxy ask of leash-policy alike.

use std::net::IpAddr;
use std::path::Path;

use leash_core::Mode;
use leash_core::tables::{NetGuards, Tables};
use leash_proto::v1 as pb;

/// A client of leash-policy at `socket`, as `who`.
pub async fn client(
    socket: &Path,
    who: &str,
) -> Result<pb::policy_client::PolicyClient<tonic::transport::Channel>, String> {
    let conn = crate::client::connect(socket, who).await.map_err(|e| format!("leash-policy: {e}"))?;
    Ok(pb::policy_client::PolicyClient::new(conn.channel).max_decoding_message_size(crate::serve::MAX_MESSAGE_BYTES))
}

/// The file in the runtime dir where leashd names the address its Control
/// UI is served on (root-owned: nothing a session can write).
pub const API_ADDRESS_FILE: &str = "api.addr";

/// leashd's Control UI address, when it is served.
pub fn control_address(runtime_dir: &Path) -> Option<std::net::SocketAddr> {
    std::fs::read_to_string(runtime_dir.join(API_ADDRESS_FILE)).ok()?.trim().parse().ok()
}

/// A session's tables and mode, with the kernel's network guards added
/// (the host's addresses now, and the session's `resolvers`).
pub async fn session_tables(
    socket: &Path,
    who: &str,
    session: &str,
    resolvers: &[IpAddr],
) -> Result<(Tables, Mode), String> {
    let t = client(socket, who)
        .await?
        .tables(pb::TablesRequest { session: session.to_owned(), principal: String::new() })
        .await
        .map_err(|s| format!("leash-policy: {}", s.message()))?
        .into_inner();
    let (mut tables, mode) = leash_proto::tables::decode(&t)?;
    let host = crate::net::host_addresses();
    let mut guards = NetGuards::standard(&host, resolvers);
    if let Some(api) = control_address(socket.parent().unwrap_or(Path::new("/"))) {
        guards = guards.with_control(api, &host);
    }
    tables.guard_net(&guards);
    Ok((tables, mode))
}
