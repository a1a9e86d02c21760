//! `leashctl hello --socket PATH`: the handshake with any leash daemon
//! (a diagnostic: which daemon, version and pid answers on a socket).

use std::path::Path;
use std::process::ExitCode;

use super::Ctx;
use crate::output;

/// Prints what the daemon on `socket` says about itself.
pub async fn run(ctx: &Ctx, socket: &Path) -> anyhow::Result<ExitCode> {
    let conn = leash_daemon::connect(socket, "leashctl").await?;
    let h = conn.hello;
    if ctx.json {
        output::json(&serde_json::json!({
            "daemon": h.daemon, "version": h.version, "protocol": h.protocol,
            "pid": h.pid, "instance": h.instance,
        }));
    } else {
        output::line(&format!(
            "{} {} (protocol {}) pid {} instance {}",
            h.daemon, h.version, h.protocol, h.pid, h.instance
        ));
    }
    Ok(ExitCode::SUCCESS)
}
