//! `leashctl events [--follow] [--tail N] [filters]`: stored events (leashd's
//! audit store), then live ones.

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
    /// Not before (Unix nanoseconds; 0: any).
    pub since_unix_nanos: i64,
    /// A substring of the resource.
    pub contains: Option<String>,
}

/// `--since`: a duration back from now (`30s`, `10m`, `2h`, `7d`) or an
/// RFC 3339 time; Unix nanoseconds.
pub fn parse_since(s: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(last) = s.chars().last()
        && let Some(mult) = unit(last)
        && let Ok(n) = s[..s.len() - 1].parse::<u64>()
    {
        let back = std::time::Duration::from_secs(n.saturating_mul(mult));
        return Ok(now.saturating_sub(back).as_nanos() as i64);
    }
    crate::output::parse_rfc3339(s)
        .ok_or_else(|| format!("{s:?} is neither a duration (30s, 10m, 2h, 7d) nor an RFC 3339 time"))
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
    let request = EventsRequest {
        follow,
        tail,
        session: filter.session.clone().unwrap_or_default(),
        since_unix_nanos: filter.since_unix_nanos,
        action: filter.action.clone().unwrap_or_default(),
        decision: filter.decision.unwrap_or_default().to_owned(),
        contains: filter.contains.clone().unwrap_or_default(),
    };
    let mut stream = ManagerClient::new(conn.channel).events(request).await?.into_inner();
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
