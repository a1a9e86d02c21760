//! `leashctl ui` and `leash --open`: the Control UI in the user's browser.

use std::process::ExitCode;

use leash_proto::v1 as pb;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;

/// Asks leashd for a single-use login address and opens it.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    open(conn.channel).await?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the UI through `channel`: the code in the address is good once,
/// for seconds, and becomes a cookie; it is handed to the browser on its
/// command line only (never printed).
pub async fn open(channel: tonic::transport::Channel) -> anyhow::Result<()> {
    let url = ManagerClient::new(channel)
        .ui_login(pb::UiLoginRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .url;
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| "xdg-open".into());
    let mut parts = browser.split_whitespace();
    let program = parts.next().unwrap_or("xdg-open");
    let status = std::process::Command::new(program)
        .args(parts)
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {
            let base = url.split("login?").next().unwrap_or(&url);
            #[allow(clippy::print_stderr, reason = "a note beside the command's own output")]
            {
                eprintln!("leash: the Control UI is open in your browser ({base})");
            }
            Ok(())
        }
        Ok(s) => anyhow::bail!("{program} failed ({s}); set BROWSER to your browser"),
        Err(e) => anyhow::bail!("cannot run {program}: {e}; set BROWSER to your browser"),
    }
}
