//! `leashd`: the leash manager daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use leash_daemon::process::{EXIT_USAGE, run_main};

// Events are many small allocations each (strings, maps); mimalloc halves
// their cost against glibc's allocator (`cargo xtask bench sensor`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The Control UI and HTTP API address (Go grammar: `:18080`,
    /// `127.0.0.1:18080`, `[::1]`, "" to disable). Beats `LEASH_LISTEN` and
    /// the `[leashd] listen` key. Default 127.0.0.1:18080.
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Option<String>,
    /// Allow a listen address other machines can reach (`[leashd] listen_public`).
    #[arg(long)]
    listen_public: bool,
    /// Export every event to this OTLP/gRPC collector (`http://HOST:4317`;
    /// `[leashd] otlp_endpoint`). Off by default.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Leave the caller's session and process group first (used by `leash`
    /// when it starts leashd in the background).
    #[arg(long)]
    detach: bool,
    /// Internal: remember an agent-mount answer in this user config file
    /// (leashd runs this as the session's user).
    #[arg(long, hide = true, value_name = "FILE", requires = "toggle")]
    write_user_config: Option<PathBuf>,
    /// Internal, with --write-user-config: the agent whose mount to enable.
    #[arg(long, hide = true)]
    toggle: Option<String>,
    /// Internal, with --write-user-config: only for this project directory.
    #[arg(long, hide = true)]
    project: Option<String>,
    /// Internal: append the Cedar statement on stdin to this policy file
    /// (leashd runs this as the session's user when a question is answered "always").
    #[arg(long, hide = true, value_name = "FILE")]
    append_policy: Option<PathBuf>,
    /// Write leashd's manual page into DIR and exit.
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = match leash_daemon::process::parse_args(EXIT_USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Some(dir) = &args.man {
        use clap::CommandFactory;
        return match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::Man::new(Args::command()).generate_to(dir))
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                #[allow(clippy::print_stderr, reason = "the one line of a failed --man")]
                {
                    eprintln!("leashd: cannot write the manual page into {}: {e}", dir.display());
                }
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if let Some(path) = &args.append_policy {
        return match leashd::session::ask::append_to_policy_file(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                #[allow(clippy::print_stderr, reason = "the helper reports to leashd through stderr")]
                {
                    eprintln!("{e}");
                }
                ExitCode::from(leash_daemon::process::EXIT_FAILURE)
            }
        };
    }
    if let (Some(path), Some(agent)) = (&args.write_user_config, &args.toggle) {
        return match leashd::session::config::write_toggle(path, agent, args.project.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                #[allow(clippy::print_stderr, reason = "the helper reports to leashd through stderr")]
                {
                    eprintln!("{e}");
                }
                ExitCode::from(leash_daemon::process::EXIT_FAILURE)
            }
        };
    }
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
    let listen = args.listen.clone().or_else(|| std::env::var("LEASH_LISTEN").ok());
    if let Some(v) = listen {
        match leash_core::listen::parse(&v) {
            Ok(a) => config.listen = a,
            Err(e) => {
                #[allow(clippy::print_stderr, reason = "configuration errors before tracing")]
                {
                    eprintln!("leashd: --listen: {e}");
                }
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    config.listen_public |= args.listen_public;
    if let Some(e) = &args.otlp_endpoint {
        if let Err(m) = leashd::otlp::parse_endpoint(e) {
            #[allow(clippy::print_stderr, reason = "configuration errors before tracing")]
            {
                eprintln!("leashd: --otlp-endpoint: {m}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
        config.otlp_endpoint = Some(e.clone());
    }
    if let Some(a) = config.listen
        && !leash_core::listen::is_loopback(&a)
        && !config.listen_public
    {
        #[allow(clippy::print_stderr, reason = "configuration errors before tracing")]
        {
            eprintln!(
                "leashd: --listen {a}: other machines could reach the Control UI; pass --listen-public (or set listen_public = true under [leashd]) to mean it"
            );
        }
        return ExitCode::from(EXIT_USAGE);
    }
    if args.detach {
        // Fails only when already a session leader, which is fine.
        let _ = rustix::process::setsid();
    }
    leash_daemon::process::give_back_mimalloc();
    run_main("leashd", true, |ctx| leashd::run(ctx, config))
}
