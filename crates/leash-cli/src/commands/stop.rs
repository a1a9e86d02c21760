//! `leashctl stop --all`: stop every component, then leashd. When leashd
//! does not run (`systemctl stop leashd` leaves the components running on
//! purpose), root stops the components itself.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use leash_core::Component;
use leash_proto::v1::StopAllRequest;
use leash_proto::v1::manager_client::ManagerClient;
use rustix::process::Signal;

use super::Ctx;
use crate::output;

/// How long to wait for leashd to remove its socket after replying.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long a component has to exit after SIGTERM before SIGKILL.
const COMPONENT_PATIENCE: Duration = Duration::from_secs(10);

/// Stops everything and waits until leashd's socket is gone.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    // Nobody holds leashd's socket lock: no leashd runs. (Only root sees
    // the lock files; anyone else gets leashd's own answer or error.)
    if rustix::process::geteuid().is_root() && leash_daemon::socket::owner_pid(&ctx.layout.manager_socket()).is_none() {
        return without_leashd(ctx).await;
    }
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

/// Stops the components that run without a leashd: SIGTERM to the process
/// holding each component's socket (its lock file names it), SIGKILL after
/// [`COMPONENT_PATIENCE`]. Sessions and their file deciders keep running,
/// as with leashd.
async fn without_leashd(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut running: Vec<(Component, u32)> = Vec::new();
    for c in Component::ALL {
        let Some(pid) = leash_daemon::socket::owner_pid(&ctx.layout.component_socket(c)) else { continue };
        // Only the component itself is signalled, whatever pid its lock file names.
        match running_binary(pid) {
            Some(exe) if exe == c.binary() => running.push((c, pid)),
            other => output::line(&format!(
                "not stopping pid {pid}, which holds {}'s lock: it is {}, not {}",
                c.binary(),
                other.as_deref().unwrap_or("gone"),
                c.binary()
            )),
        }
    }
    for (_, pid) in &running {
        signal(*pid, Signal::TERM);
    }
    let mut stopped = Vec::new();
    for (c, pid) in running {
        let sock = ctx.layout.component_socket(c);
        let deadline = tokio::time::Instant::now() + COMPONENT_PATIENCE;
        while leash_daemon::socket::owner_pid(&sock) == Some(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = leash_daemon::socket::owner_pid(&sock) == Some(pid);
        if killed {
            signal(pid, Signal::KILL);
        }
        stopped.push((c.binary(), pid, killed));
    }
    if ctx.json {
        let names: Vec<&str> = stopped.iter().map(|(name, _, _)| *name).collect();
        output::json(&serde_json::json!({ "stopped": names, "leashd": "not running" }));
    } else {
        for (name, pid, killed) in &stopped {
            let how = if *killed { " (killed: it did not stop within 10 s)" } else { "" };
            output::line(&format!("stopped {name} (pid {pid}){how}"));
        }
        output::line("leashd was not running");
    }
    Ok(ExitCode::SUCCESS)
}

/// The file name of a process's executable (an upgraded one's too, which
/// the kernel calls `NAME (deleted)`).
fn running_binary(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    Some(name.strip_suffix(" (deleted)").map(str::to_owned).unwrap_or(name))
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}
