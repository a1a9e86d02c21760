//! leashd: the long-running manager.
//!
//! It serves the Manager API on `<runtime dir>/leashd.sock`, supervises
//! leash-policy, leash-sensor and leash-proxy, and runs the event hub.
//! Sessions, the audit store and the Control UI plug in here.

pub mod api;
pub mod audit;
pub mod config;
pub mod engine;
pub mod follow;
pub mod grpc;
pub mod hub;
pub mod otlp;
pub mod proc;
pub mod replay;
pub mod session;
pub mod supervisor;

use std::path::PathBuf;

use anyhow::Context;
use leash_core::Event;
use leash_daemon::SocketMode;
use leash_daemon::access::Rule;
use leash_daemon::process::Ctx;
use leash_daemon::serve::MAX_MESSAGE_BYTES;
use leash_proto::v1::manager_server::ManagerServer;
use tonic::service::RoutesBuilder;

pub use config::Config;

/// Runs leashd until SIGTERM/SIGINT or `leashctl stop --all`.
pub async fn run(ctx: Ctx, config: Config) -> anyhow::Result<()> {
    // The `leash` group, when there is one, also reads the API token.
    let mut group = None;
    let bound = ctx.bind(&ctx.layout.manager_socket(), |g| {
        group = g;
        SocketMode::Group(g)
    })?;
    if let Err(e) = std::fs::create_dir_all(&ctx.layout.state_dir) {
        tracing::warn!(dir = %ctx.layout.state_dir.display(), error = %e, "cannot create the state directory");
    }
    let bin_dir = match config.bin_dir.clone() {
        Some(dir) => dir,
        None => own_dir().context("cannot find leashd's own directory to locate the component binaries")?,
    };
    let hub = hub::Hub::new(config.history_size, config.event_queue);
    // The audit store follows the hub from the first event on.
    let audit = match audit::Audit::start(&ctx.layout.state_dir, &hub, config.retention) {
        Ok(a) => {
            // Queries read the store: memory keeps what the Control UI
            // replays to a new viewer, not `history_size` events.
            hub.limit_history(hub::HISTORY_WITH_STORE);
            Some(a)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the audit store cannot be opened; events are kept in memory only");
            None
        }
    };
    // The OTLP exporter, when configured, follows the hub from the first event on too.
    let otlp = config.otlp_endpoint.as_deref().and_then(|e| match otlp::parse_endpoint(e) {
        Ok(endpoint) => {
            tracing::info!(endpoint = e, "exporting events over OTLP");
            Some(otlp::start(endpoint, &hub, ctx.shutdown.clone()))
        }
        Err(m) => {
            tracing::error!(error = %m, "events are not exported");
            None
        }
    });
    hub.publish(Event::daemon("daemon.start", ctx.info.name, ctx.info.pid).with("version", leash_core::VERSION));
    let supervisor = supervisor::Supervisor::start(supervisor::Options {
        bin_dir: bin_dir.clone(),
        layout: ctx.layout.clone(),
        hub: hub.clone(),
    });
    let sessions = session::Sessions::new(session::Ctx {
        layout: ctx.layout.clone(),
        hub: hub.clone(),
        entry_bin: config.entry_bin.clone().unwrap_or_else(|| session::plan::entry_bin(&bin_dir)),
        system_config: config.path.clone(),
        shutdown: ctx.shutdown.clone(),
        supervisor: supervisor.clone(),
    });
    // Sessions left by an earlier leashd are listed from the first answer on
    // (bounded: a slow engine must not hold up the manager).
    if tokio::time::timeout(std::time::Duration::from_secs(3), sessions.recover()).await.is_err() {
        tracing::warn!("the container engine did not answer within 3 s; earlier sessions are not listed");
    }
    // Subscribed before the sensor's events are followed: no question is missed.
    tokio::spawn(sessions.clone().watch_asks());
    tokio::spawn(follow::policy(supervisor.clone(), hub.clone(), ctx.shutdown.clone()));
    tokio::spawn(follow::sensor(supervisor.clone(), hub.clone(), ctx.shutdown.clone()));
    tokio::spawn(follow::proxy(supervisor.clone(), hub.clone(), ctx.shutdown.clone()));
    let manager = grpc::ManagerService {
        info: ctx.info.clone(),
        layout: ctx.layout.clone(),
        supervisor,
        hub,
        audit,
        shutdown: ctx.shutdown.clone(),
        sessions,
        api: std::sync::Arc::default(),
        otlp,
    };
    let api = api::start(config.listen, manager.clone(), &ctx.layout.runtime_dir, group, ctx.shutdown.clone()).await;
    let _ = manager.api.set(api);
    let mut routes = RoutesBuilder::default();
    routes.add_service(ManagerServer::new(manager).max_decoding_message_size(MAX_MESSAGE_BYTES));
    leash_daemon::serve(bound, ctx.info, Rule::Connected, routes, ctx.shutdown).await?;
    Ok(())
}

fn own_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(PathBuf::from).ok_or_else(|| std::io::Error::other("executable has no parent directory"))
}
