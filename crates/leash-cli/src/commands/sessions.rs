//! `leashctl sessions [stop ID]`: the caller's sessions (root: all).

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use leash_proto::v1::manager_client::ManagerClient;
use leash_proto::v1::{ListSessionsRequest, StopSessionRequest};
use serde::Serialize;

use super::Ctx;
use crate::output;

/// A session in `sessions --json`.
#[derive(Debug, Serialize)]
struct SessionJson {
    id: String,
    owner_uid: u32,
    project: String,
    command: Vec<String>,
    image: String,
    container: String,
    started: String,
    state: String,
    /// How the sensor governs it, per action.
    enforcement: String,
    /// The host as the container sees it (empty: not reachable).
    host_address: String,
    /// The protect-host layer is on (it is unless the user turned it off).
    protect_host: bool,
    /// Clients attached to its terminal (0: detached).
    clients: u32,
    /// Seconds a denial waits for its user's answer (0: `--ask` is off).
    ask_timeout_s: u32,
    /// The stdio MCP servers leash's relay governs (`.mcp.json: NAME`).
    mcp_servers: Vec<String>,
}

/// The mechanisms in force, compactly: `fanotify+cgroup-sock`.
fn mechanisms(enforcement: &str) -> String {
    let mut v: Vec<&str> = enforcement.split_whitespace().filter_map(|p| p.split_once('=').map(|(_, m)| m)).collect();
    v.dedup();
    let mut unique: Vec<&str> = Vec::new();
    for m in v {
        if !unique.contains(&m) {
            unique.push(m);
        }
    }
    if unique.is_empty() { "-".to_owned() } else { unique.join("+") }
}

/// Lists sessions.
pub async fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let list = ManagerClient::new(conn.channel).list_sessions(ListSessionsRequest {}).await?.into_inner();
    let rows: Vec<SessionJson> = list
        .sessions
        .into_iter()
        .map(|s| SessionJson {
            id: s.id,
            owner_uid: s.owner_uid,
            project: s.project,
            command: s.command,
            image: s.image,
            container: s.container,
            started: output::rfc3339(UNIX_EPOCH + Duration::from_millis(s.started_unix_ms.max(0) as u64)),
            state: s.state,
            enforcement: s.enforcement,
            host_address: s.host_address,
            protect_host: !s.unprotected,
            clients: s.clients,
            ask_timeout_s: s.ask_timeout_s,
            mcp_servers: s.mcp_servers,
        })
        .collect();
    if ctx.json {
        output::json(&rows);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![
        ["ID", "STATE", "CLIENTS", "PROJECT", "COMMAND", "IMAGE", "CONTAINER", "STARTED", "ENFORCEMENT"]
            .map(str::to_owned),
    ];
    for s in &rows {
        table.push([
            s.id.clone(),
            s.state.clone(),
            s.clients.to_string(),
            s.project.clone(),
            s.command.join(" "),
            if s.image.is_empty() { "-".into() } else { s.image.clone() },
            s.container.clone(),
            s.started.clone(),
            if s.protect_host {
                mechanisms(&s.enforcement)
            } else {
                format!("{} (no protect-host)", mechanisms(&s.enforcement))
            },
        ]);
    }
    output::text(&output::table(&table));
    Ok(ExitCode::SUCCESS)
}

/// Stops one session.
pub async fn stop(ctx: &Ctx, id: &str) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel).stop_session(StopSessionRequest { id: id.to_owned() }).await;
    let r = r.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
    if ctx.json {
        output::json(&serde_json::json!({ "stopped": r.id }));
    } else {
        output::line(&format!("stopping session {}", r.id));
    }
    Ok(ExitCode::SUCCESS)
}
