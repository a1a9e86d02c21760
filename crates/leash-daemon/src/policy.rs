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
    tables.guard_net(&NetGuards::standard(&crate::net::host_addresses(), resolvers));
    Ok((tables, mode))
}
