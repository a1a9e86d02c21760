//! `leashctl sessions [show [--mcp] ID | stop ID]`: the caller's sessions
//! (root: all).

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
    /// `sessions show --mcp`: the MCP configuration files as the container
    /// sees them.
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_views: Option<Vec<McpViewJson>>,
}

/// An MCP configuration file as the container sees it.
#[derive(Debug, Serialize)]
struct McpViewJson {
    config: String,
    path: String,
    text: String,
}

impl SessionJson {
    fn from_proto(s: leash_proto::v1::SessionInfo, views: bool) -> SessionJson {
        let mcp_views = views.then(|| {
            s.mcp_views.into_iter().map(|v| McpViewJson { config: v.config, path: v.path, text: v.text }).collect()
        });
        SessionJson {
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
            mcp_views,
        }
    }
}

async fn sessions(ctx: &Ctx, req: ListSessionsRequest) -> anyhow::Result<Vec<leash_proto::v1::SessionInfo>> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let list = ManagerClient::new(conn.channel).list_sessions(req).await;
    Ok(list.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner().sessions)
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
    let rows: Vec<SessionJson> = sessions(ctx, ListSessionsRequest::default())
        .await?
        .into_iter()
        .map(|s| SessionJson::from_proto(s, false))
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

/// Shows one session; with `mcp`, its MCP configuration files as its
/// container sees them.
pub async fn show(ctx: &Ctx, id: &str, mcp: bool) -> anyhow::Result<ExitCode> {
    let req = ListSessionsRequest { id: id.to_owned(), mcp_views: mcp };
    let Some(s) = sessions(ctx, req).await?.into_iter().next() else {
        anyhow::bail!("no session {id:?} of yours");
    };
    let s = SessionJson::from_proto(s, mcp);
    if ctx.json {
        output::json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let or_none = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(", ") };
    let rows = [
        ["ID", &s.id],
        ["State", &s.state],
        ["Owner", &s.owner_uid.to_string()],
        ["Project", &s.project],
        ["Command", &s.command.join(" ")],
        ["Image", if s.image.is_empty() { "-" } else { &s.image }],
        ["Container", &s.container],
        ["Started", &s.started],
        ["Clients", &s.clients.to_string()],
        ["Enforcement", &s.enforcement],
        ["Protect-host", if s.protect_host { "on" } else { "off" }],
        ["Host address", if s.host_address.is_empty() { "-" } else { &s.host_address }],
        ["Ask", &if s.ask_timeout_s == 0 { "off".to_owned() } else { format!("{} s", s.ask_timeout_s) }],
        ["MCP servers", &or_none(&s.mcp_servers)],
    ];
    let mut out: String = rows.iter().map(|[k, v]| format!("{:<14}{v}\n", format!("{k}:"))).collect();
    for v in s.mcp_views.iter().flatten() {
        out.push_str(&format!("\n# {}, as the container sees it at {}\n{}", v.config, v.path, v.text));
        if !v.text.ends_with('\n') {
            out.push('\n');
        }
    }
    if mcp && s.mcp_views.as_ref().is_none_or(Vec::is_empty) {
        out.push_str("\nNo MCP configuration file was rewritten for this session: it relays no stdio server.\n");
    }
    output::text(&out);
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
