//! `leashctl events [--follow] [--tail N]`: recent events, then live ones.

use std::process::ExitCode;

use leash_proto::v1::EventsRequest;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output::{self, EventJson};

/// Streams events until the history is printed (or, with `follow`, until
/// leashd stops or the user interrupts).
pub async fn run(ctx: &Ctx, follow: bool, tail: u32, session: Option<&str>) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let mut stream = ManagerClient::new(conn.channel).events(EventsRequest { follow, tail }).await?.into_inner();
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(event) = next? else { break };
        if session.is_some_and(|s| !event.session.starts_with(s)) {
            continue;
        }
        let e = EventJson::from_proto(&event);
        if ctx.json {
            output::json(&e);
        } else {
            output::line(&e.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}
