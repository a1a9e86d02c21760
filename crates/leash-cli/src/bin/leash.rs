//! `leash`: run an AI coding agent or any command under leash.

use std::process::ExitCode;

use clap::Parser;
use leash_cli::EXIT_LEASH_FAILURE;

/// Run an AI coding agent (claude, codex, gemini, qwen, opencode) or any
/// command in a container, with every file open, exec, connection, HTTP
/// request and MCP call decided by Cedar policy.
///
/// leash is a thin client of leashd (the background daemon). When leashd is
/// not running, leash starts it in the background if run as root; otherwise
/// it says how to start the service.
///
/// Exit codes: the command's own exit code; 125 when leash itself fails.
#[derive(Debug, Parser)]
#[command(name = "leash", version, about, long_about, trailing_var_arg = true)]
struct Args {
    /// The command to run, e.g. `claude` or `-- make test`.
    #[arg(value_name = "COMMAND", allow_hyphen_values = true, num_args = 0..)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args: Args = match leash_daemon::process::parse_args(EXIT_LEASH_FAILURE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        let layout = leash_cli::daemon::layout()?;
        let conn = leash_cli::daemon::connect_or_start(&layout, "leash").await?;
        if args.command.is_empty() {
            anyhow::bail!("a command is required; provide one after '--' (leashd {} is running)", conn.hello.version);
        }
        anyhow::bail!(
            "leashd {} cannot run sessions yet: this build provides the daemons, `leashctl status` and `leashctl events`",
            conn.hello.version
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    #[allow(clippy::print_stderr, reason = "the CLI's error line")]
    {
        eprintln!("leash: {}", leash_cli::output::error_chain(e));
    }
    ExitCode::from(EXIT_LEASH_FAILURE)
}
