//! `leashd`: the leash manager daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use leash_daemon::process::{EXIT_USAGE, run_main};

/// The leash manager: supervises leash-policy, leash-sensor and leash-proxy,
/// runs sessions and the event hub. Usually run by systemd (leashd.service)
/// or started detached by `leash`.
#[derive(Debug, Parser)]
#[command(name = "leashd", version, about, long_about = None)]
struct Args {
    /// Daemon configuration file ([leashd] table); must exist when given.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Recent events kept in memory for `leashctl events`.
    #[arg(long, value_name = "N")]
    history_size: Option<usize>,
    /// Leave the caller's session and process group first (used by `leash`
    /// when it starts leashd in the background).
    #[arg(long)]
    detach: bool,
}

fn main() -> ExitCode {
    let args: Args = match leash_daemon::process::parse_args(EXIT_USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(leashd::config::SYSTEM_CONFIG), false),
    };
    let mut config = match leashd::config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "configuration errors before tracing")]
            {
                eprintln!("leashd: {e}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(n) = args.history_size {
        config.history_size = n;
    }
    if args.detach {
        // Fails only when already a session leader, which is fine.
        let _ = rustix::process::setsid();
    }
    run_main("leashd", true, |ctx| leashd::run(ctx, config))
}
