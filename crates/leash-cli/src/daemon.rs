//! Reaching leashd: connect, explain failures, start it when allowed.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use leash_core::Layout;
use leash_daemon::{ConnectError, Connected, ProcessEnv, connect, connect_with_retry};

/// How long `leash` waits for a leashd it started to answer.
pub const START_PATIENCE: Duration = Duration::from_secs(10);

/// The layout from the environment (`LEASH_RUNTIME_DIR`, …).
pub fn layout() -> anyhow::Result<Layout> {
    Ok(leash_daemon::env::layout(&ProcessEnv)?)
}

/// Connects to leashd, or explains in one message why not and what to do.
pub async fn connect_manager(layout: &Layout, client: &str) -> anyhow::Result<Connected> {
    let socket = layout.manager_socket();
    match connect(&socket, client).await {
        Ok(c) => {
            warn_version(client, &c);
            Ok(c)
        }
        Err(e) => Err(explain(e)),
    }
}

fn warn_version(client: &str, c: &Connected) {
    if c.hello.version != leash_core::VERSION {
        #[allow(clippy::print_stderr, reason = "a warning for the user")]
        {
            eprintln!(
                "warning: {client} {} is talking to leashd {}; restart leashd after upgrading",
                leash_core::VERSION,
                c.hello.version
            );
        }
    }
}

fn explain(e: ConnectError) -> anyhow::Error {
    match e {
        ConnectError::NotRunning { socket, .. } => anyhow::anyhow!(
            "leashd is not running (nothing answers on {}): start it with `sudo systemctl start leashd`, \
             or run `leash` as root once to start it in the background",
            socket.display()
        ),
        other => anyhow::Error::new(other),
    }
}

/// Connects to leashd; when nothing answers and we are root, starts leashd
/// fully detached (own session, log file in the state dir) and waits for it.
pub async fn connect_or_start(layout: &Layout, client: &str) -> anyhow::Result<Connected> {
    let socket = layout.manager_socket();
    match connect(&socket, client).await {
        Ok(c) => {
            warn_version(client, &c);
            return Ok(c);
        }
        Err(e) if e.is_not_running() && rustix::process::geteuid().is_root() => {}
        Err(e) => return Err(explain(e)),
    }
    let log = start_detached(layout)?;
    match connect_with_retry(&socket, client, START_PATIENCE).await {
        Ok(c) => Ok(c),
        Err(e) => bail!("started leashd, but it did not answer within {START_PATIENCE:?} ({e}); see {}", log.display()),
    }
}

/// Starts `leashd --detach` beside this executable. Returns its log file.
pub fn start_detached(layout: &Layout) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let leashd = exe.with_file_name("leashd");
    std::fs::create_dir_all(&layout.state_dir)
        .with_context(|| format!("cannot create the state directory {}", layout.state_dir.display()))?;
    let log_path = layout.detached_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    Command::new(&leashd)
        .arg("--detach")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", leashd.display()))?;
    Ok(log_path)
}
