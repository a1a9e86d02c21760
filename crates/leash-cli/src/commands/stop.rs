//! `leashctl stop --all`: stop every component, then leashd.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use leash_proto::v1::StopAllRequest;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output;

/// How long to wait for leashd to remove its socket after replying.
const PATIENCE: Duration = Duration::from_secs(10);

/// Stops everything and waits until leashd's socket is gone.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let reply = ManagerClient::new(conn.channel).stop_all(StopAllRequest {}).await?.into_inner();
    let socket = ctx.layout.manager_socket();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while socket.exists() {
        if tokio::time::Instant::now() > deadline {
            bail!("components stopped, but leashd still holds {} after {PATIENCE:?}", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if ctx.json {
        output::json(&serde_json::json!({ "stopped": reply.stopped, "leashd": "stopped" }));
    } else {
        for name in &reply.stopped {
            output::line(&format!("stopped {name}"));
        }
        output::line("stopped leashd");
    }
    Ok(ExitCode::SUCCESS)
}
