//! `leashctl status`: leashd, every component, sessions and the event hub.

use std::process::ExitCode;

use leash_proto::v1::manager_client::ManagerClient;
use leash_proto::v1::{ListSessionsRequest, StatusRequest};

use super::Ctx;
use crate::output::{self, StatusJson};

/// Prints the status. Exits 1 when a component is not running.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let mut client = ManagerClient::new(conn.channel);
    let status = client.status(StatusRequest {}).await?.into_inner();
    // The caller's sessions (root: all) and how each is governed.
    let sessions =
        client.list_sessions(ListSessionsRequest::default()).await.map(|r| r.into_inner().sessions).unwrap_or_default();
    let mut view = StatusJson::from_proto(&status);
    view.governed = sessions
        .iter()
        .map(|s| output::GovernedJson { id: s.id.clone(), state: s.state.clone(), enforcement: s.enforcement.clone() })
        .collect();
    if ctx.json {
        output::json(&view);
    } else {
        output::text(&view.render());
    }
    Ok(if view.all_running() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}
