//! `leash`: run an AI coding agent or any command under leash.

use std::process::ExitCode;

use leash_cli::EXIT_LEASH_FAILURE;
use leash_cli::args::{Args, fix_up};

fn main() -> ExitCode {
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        let layout = leash_cli::daemon::layout()?;
        let conn = leash_cli::daemon::connect_or_start(&layout, "leash").await?;
        if let Some(l) = &args.listen {
            leash_cli::session::check_listen(conn.channel.clone(), l).await?;
        }
        if leash_cli::session::wants_open(&args, &env) {
            leash_cli::commands::ui::open(conn.channel.clone()).await?;
        }
        leash_cli::session::run(conn.channel, start, args.verbose).await
    });
    let code = match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    };
    // The stdin reader may be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    code
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
