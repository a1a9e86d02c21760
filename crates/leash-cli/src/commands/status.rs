//! `leashctl status`: leashd, every component, sessions and the event hub.

use std::process::ExitCode;

use leash_proto::v1::StatusRequest;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output::{self, StatusJson};

/// Prints the status. Exits 1 when a component is not running.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let status = ManagerClient::new(conn.channel).status(StatusRequest {}).await?.into_inner();
    let view = StatusJson::from_proto(&status);
    if ctx.json {
        output::json(&view);
    } else {
        output::text(&view.render());
    }
    Ok(if view.all_running() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}
