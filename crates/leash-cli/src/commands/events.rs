//! `leashctl events [--follow] [--tail N]`: recent events, then live ones.

use std::process::ExitCode;

use leash_proto::v1::EventsRequest;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output::{self, EventJson};

/// Streams events until the history is printed (or, with `follow`, until
/// leashd stops or the user interrupts).
/// Which events to print.
#[derive(Debug, Default)]
pub struct Filter {
    /// A session id or prefix.
    pub session: Option<String>,
    /// An action, exactly.
    pub action: Option<String>,
    /// "allow" or "deny".
    pub decision: Option<&'static str>,
}

impl Filter {
    fn keeps(&self, e: &EventJson) -> bool {
        self.session.as_ref().is_none_or(|s| e.session.starts_with(s.as_str()))
            && self.action.as_ref().is_none_or(|a| e.action == *a)
            && self.decision.is_none_or(|d| e.decision == Some(d))
    }
}

/// Prints events, optionally following.
pub async fn run(ctx: &Ctx, follow: bool, tail: u32, filter: &Filter) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let mut stream = ManagerClient::new(conn.channel).events(EventsRequest { follow, tail }).await?.into_inner();
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(event) = next? else { break };
        let e = EventJson::from_proto(&event);
        if !filter.keeps(&e) {
            continue;
        }
        if ctx.json {
            output::json(&e);
        } else {
            output::line(&e.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}
