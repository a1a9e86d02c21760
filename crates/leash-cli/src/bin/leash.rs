//! `leash`: run an AI coding agent or any command under leash.

use std::process::ExitCode;

use leash_cli::EXIT_LEASH_FAILURE;
use leash_cli::args::{Args, AttachArgs, ExecArgs, fix_up};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // `leash attach ID` (a command named attach: `leash -- attach`).
    if argv.get(1).is_some_and(|a| a == "attach") {
        return attach(argv[1..].to_vec());
    }
    // `leash exec ID CMD…` (a command named exec: `leash -- exec`).
    if argv.get(1).is_some_and(|a| a == "exec") {
        return exec(argv[1..].to_vec());
    }
    let args: Args =
        match leash_daemon::process::parse_args_from(fix_up(std::env::args().collect()), EXIT_LEASH_FAILURE) {
            Ok(a) => a,
            Err(code) => return code,
        };
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (start, warnings) = match leash_cli::session::start_message(&args, &env) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    for w in warnings {
        eprintln_line(&format!("leash: {w}"));
    }
    session(async {
        let layout = leash_cli::daemon::layout()?;
        let conn = leash_cli::daemon::connect_or_start(&layout, "leash").await?;
        if let Some(l) = &args.listen {
            leash_cli::session::check_listen(conn.channel.clone(), l).await?;
        }
        if leash_cli::session::wants_open(&args, &env) {
            leash_cli::commands::ui::open(conn.channel.clone()).await?;
        }
        let client = leash_cli::session::Client::start(start, args.detach_keys.as_deref(), args.verbose)?;
        leash_cli::session::run(conn.channel, client).await
    })
}

/// Runs a session's client to its exit code.
fn session(client: impl std::future::Future<Output = anyhow::Result<u8>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    let code = match runtime.block_on(client) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    };
    // The stdin reader may be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    code
}

fn attach(argv: Vec<String>) -> ExitCode {
    let args: AttachArgs = match leash_daemon::process::parse_args_from(argv, EXIT_LEASH_FAILURE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    session(async {
        let client = leash_cli::session::Client::attach(args.id, args.detach_keys.as_deref())?;
        let layout = leash_cli::daemon::layout()?;
        let conn = leash_cli::daemon::connect_manager(&layout, "leash").await?;
        leash_cli::session::run(conn.channel, client).await
    })
}

fn exec(argv: Vec<String>) -> ExitCode {
    let args: ExecArgs = match leash_daemon::process::parse_args_from(argv, EXIT_LEASH_FAILURE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    session(async {
        let client = leash_cli::session::Client::exec(args)?;
        let layout = leash_cli::daemon::layout()?;
        let conn = leash_cli::daemon::connect_manager(&layout, "leash").await?;
        leash_cli::session::run(conn.channel, client).await
    })
}

fn eprintln_line(s: &str) {
    #[allow(clippy::print_stderr, reason = "the CLI's messages")]
    {
        eprintln!("{s}");
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln_line(&format!("leash: {}", leash_cli::output::error_chain(e)));
    ExitCode::from(EXIT_LEASH_FAILURE)
}
