//! `leashctl`: inspect and control leash.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leash_cli::commands::{self, Ctx};
use leash_cli::{EXIT_FAILURE, EXIT_USAGE};

/// Inspect and control leash: the daemons, sessions and events.
///
/// leashctl talks to leashd on <runtime dir>/leashd.sock (LEASH_RUNTIME_DIR,
/// default /run/leash). Reading needs membership of the `leash` group or
/// root; changing needs root.
///
/// Exit codes: 0 success, 1 runtime failure (or, for `status`, a component
/// that is not running), 64 usage or configuration error.
#[derive(Debug, Parser)]
#[command(name = "leashctl", version, about, long_about)]
struct Args {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show leashd, every component (state, pid, version, uptime, restarts,
    /// socket), the number of sessions and the event hub's counters. Exits 1
    /// when a component is not running.
    Status,
    /// Print recent events; with --follow, keep printing new ones.
    Events {
        /// Keep the stream open and print events as they happen.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print only the last N recent events first (0: all kept in memory).
        #[arg(long, value_name = "N", default_value_t = 0)]
        tail: u32,
        /// Only the events of this session (an id or a unique prefix).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only this action (FileOpenReadOnly, ProcessExec, NetworkConnect, session.exit, …).
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
        /// Only this decision.
        #[arg(long, value_enum)]
        decision: Option<DecisionArg>,
        /// Only events since then: a duration back from now (30s, 10m, 2h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events whose resource (a path, a host) contains this.
        #[arg(long, value_name = "TEXT")]
        contains: Option<String>,
        /// Print the stored events as JSON lines and exit (for archives and other tools).
        #[arg(long, value_name = "FORMAT", value_parser = ["jsonl"], conflicts_with = "follow")]
        export: Option<String>,
    },
    /// Cedar policies: validate files, decide a request.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// List your sessions (root: all), show or stop one.
    Sessions {
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// Find what a crashed or killed leash left behind — BPF pins and
    /// session containers and cgroups of instances that run no daemon,
    /// session dirs without a container, stale sockets — and with --yes
    /// remove it (root).
    Gc {
        /// Look at every instance's leftovers, not only this one's
        /// (`LEASH_INSTANCE`, else `default`).
        #[arg(long)]
        all: bool,
        /// Remove what was found (without it, only list it).
        #[arg(long)]
        yes: bool,
    },
    /// Stop leash: every component, then leashd (root only).
    Stop {
        /// Stop everything (the only mode for now; required so that a bare
        /// `stop` never stops everything by accident).
        #[arg(long, required = true)]
        all: bool,
    },
    /// What this kernel lets leash enforce, per action, and a self-test in
    /// which a governed process must be denied a forbidden open, exec and
    /// connect (root). Exits 1 when the self-test fails.
    Doctor {
        /// Leave a mechanism off for the self-test (fanotify, bpf-lsm, cgroup-sock): the
        /// negative control, which must fail.
        #[arg(long, value_name = "MECHANISM")]
        without: Vec<String>,
    },
    /// Open the Control UI in your browser ($BROWSER, else xdg-open) with a
    /// single-use login code.
    Ui,
    /// Print the shell completions of leash and leashctl: `source <(leashctl
    /// completions bash)`, or save them in your shell's completions directory.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: commands::completions::Shell,
        /// Only this command's (leash or leashctl), for a completions
        /// directory that wants a file per command.
        #[arg(long, value_name = "COMMAND", value_parser = ["leash", "leashctl"])]
        command: Option<String>,
    },
    /// Write the manual pages of leash and leashctl (one per verb) into DIR
    /// (`leashd --man DIR` writes leashd's).
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Exchange versions with any leash daemon's socket and print its answer.
    Hello {
        /// The socket, e.g. /run/leash/policy.sock.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Parse, validate against the leash schema and lint; exits 1 when invalid.
    Validate {
        /// Cedar files, loaded together in this order.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Decide one request against the default policy and say which policies decided.
    Check {
        /// FileOpen, FileOpenReadOnly, FileOpenReadWrite, ProcessExec, NetworkConnect, HttpRewrite or McpCall.
        action: String,
        /// A path, host[:port], tool@server, or Type::"id".
        resource: String,
        /// Context attributes, KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// The agent making the request.
        #[arg(long, default_value = "claude")]
        principal: String,
        /// Decide against this session's policy instead of the default.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Show a session's policy (or the default): its mode, one line per policy, lints.
    Show {
        /// The session (an id or a unique prefix); the default policy when absent.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Print the Cedar sources too.
        #[arg(long)]
        sources: bool,
    },
    /// One line per policy, in the Go leash's words.
    Lines {
        /// The session (an id or a unique prefix); the default policy when absent.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Replace the file layer (or with --runtime the runtime layer) of a
    /// running session's policy live, or of the default for new sessions; an
    /// invalid policy is refused and the previous one stays in force. A
    /// single file is watched and reloaded on change.
    Set {
        /// Cedar files, loaded together in this order.
        #[arg(required = true)]
        files: Vec<String>,
        /// The session (an id or a unique prefix); the default for new sessions when absent (root).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Replace the runtime layer instead of the file layer.
        #[arg(long)]
        runtime: bool,
    },
    /// Add statements to the runtime layer.
    Add {
        /// Cedar statements.
        #[arg(required = true)]
        statements: Vec<String>,
        /// The session (an id or a unique prefix); the default for new sessions when absent (root).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Remove statements, by policy id (as `policy lines` shows) or by text.
    Remove {
        /// Policy ids or statements.
        #[arg(required = true)]
        policies: Vec<String>,
        /// The session (an id or a unique prefix); the default for new sessions when absent (root).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Fold the runtime layer into the file layer and keep a copy in the state dir.
    Persist {
        /// The session (an id or a unique prefix); the default for new sessions when absent (root).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Also write the result back to the policy file (with your rights).
        #[arg(long)]
        write_back: bool,
    },
    /// The compiled decision tables of a session's policy (or the default).
    Tables {
        /// The session (an id or a unique prefix); the default policy when absent.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Evaluate candidate policy files against a recorded session: what they
    /// would have denied that the session did (exit 1 when anything), what
    /// they would allow that was denied, and what cannot be replayed exactly.
    Replay {
        /// The candidate's Cedar files.
        #[arg(required = true)]
        files: Vec<String>,
        /// The recorded session (an id or a unique prefix; ended ones too).
        #[arg(long, value_name = "ID", required = true)]
        session: String,
    },
    /// Switch a session's mode live (a session starts in enforce).
    Mode {
        /// record, shadow or enforce.
        #[arg(value_enum)]
        mode: ModeArg,
        /// The session (an id or a unique prefix).
        #[arg(long, value_name = "ID", required = true)]
        session: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DecisionArg {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// Observe only: everything allowed and recorded, nothing evaluated.
    Record,
    /// Evaluate and record would-deny, but allow.
    Shadow,
    /// Deny what the policy denies.
    Enforce,
}

#[derive(Debug, Subcommand)]
enum SessionsAction {
    /// One session in full; with --mcp, its MCP configuration files as its
    /// container sees them.
    Show {
        /// The session id (a unique prefix is enough).
        id: String,
        /// Print each MCP configuration file leash rewrote for the session
        /// (its stdio servers wrapped in the relay), as the container sees it.
        #[arg(long)]
        mcp: bool,
    },
    /// Stop a session: SIGTERM to its command, SIGKILL after 10 s.
    Stop {
        /// The session id (a unique prefix is enough).
        id: String,
    },
}

fn main() -> ExitCode {
    let args: Args = match leash_daemon::process::parse_args(EXIT_USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Command::Completions { shell, command } = &args.command {
        use clap::CommandFactory;
        commands::completions::print(*shell, Args::command(), command.as_deref());
        return ExitCode::SUCCESS;
    }
    if let Command::Man { dir } = &args.command {
        use clap::CommandFactory;
        return match commands::completions::man_pages(dir, Args::command()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&anyhow::anyhow!("cannot write the manual pages into {}: {e}", dir.display()), EXIT_FAILURE),
        };
    }
    let layout = match leash_cli::daemon::layout() {
        Ok(l) => l,
        Err(e) => return fail(&e, EXIT_USAGE),
    };
    let ctx = Ctx { layout, json: args.json };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&e.into(), EXIT_FAILURE),
    };
    let result = runtime.block_on(async {
        match &args.command {
            Command::Status => commands::status::run(&ctx).await,
            Command::Events { follow, tail, session, action, decision, since, contains, export } => {
                let since_unix_nanos = match since.as_deref().map(commands::events::parse_since).transpose() {
                    Ok(t) => t.unwrap_or(0),
                    Err(e) => return Ok(fail(&anyhow::anyhow!("--since: {e}"), EXIT_USAGE)),
                };
                let filter = commands::events::Filter {
                    session: session.clone(),
                    action: action.clone(),
                    decision: decision.map(|d| match d {
                        DecisionArg::Allow => "allow",
                        DecisionArg::Deny => "deny",
                    }),
                    since_unix_nanos,
                    contains: contains.clone(),
                };
                let ctx = if export.is_some() { Ctx { json: true, ..ctx } } else { ctx };
                commands::events::run(&ctx, *follow, *tail, &filter).await
            }
            Command::Stop { all: _ } => commands::stop::run(&ctx).await,
            Command::Gc { all, yes } => commands::gc::run(&ctx, *all, *yes).await,
            Command::Policy { action: PolicyAction::Validate { files } } => {
                commands::policy::validate(&ctx, files).await
            }
            Command::Policy { action: PolicyAction::Check { action, resource, context, principal, session } } => {
                commands::policy::check(&ctx, session.as_deref(), principal, action, resource, context).await
            }
            Command::Policy { action: PolicyAction::Show { session, sources } } => {
                commands::policy::show(&ctx, session.as_deref(), *sources, false).await
            }
            Command::Policy { action: PolicyAction::Set { files, session, runtime } } => {
                commands::policy::set(&ctx, session.as_deref(), files, *runtime).await
            }
            Command::Policy { action: PolicyAction::Add { statements, session } } => {
                commands::policy::edit(&ctx, session.as_deref(), statements, &[]).await
            }
            Command::Policy { action: PolicyAction::Remove { policies, session } } => {
                commands::policy::edit(&ctx, session.as_deref(), &[], policies).await
            }
            Command::Policy { action: PolicyAction::Persist { session, write_back } } => {
                commands::policy::persist(&ctx, session.as_deref(), *write_back).await
            }
            Command::Policy { action: PolicyAction::Tables { session } } => {
                commands::policy::tables(&ctx, session.as_deref()).await
            }
            Command::Policy { action: PolicyAction::Lines { session } } => {
                commands::policy::show(&ctx, session.as_deref(), false, true).await
            }
            Command::Policy { action: PolicyAction::Mode { mode, session } } => {
                let mode = match mode {
                    ModeArg::Record => "record",
                    ModeArg::Shadow => "shadow",
                    ModeArg::Enforce => "enforce",
                };
                commands::policy::mode(&ctx, session, mode).await
            }
            Command::Sessions { action: None } => commands::sessions::list(&ctx).await,
            Command::Sessions { action: Some(SessionsAction::Stop { id }) } => commands::sessions::stop(&ctx, id).await,
            Command::Sessions { action: Some(SessionsAction::Show { id, mcp }) } => {
                commands::sessions::show(&ctx, id, *mcp).await
            }
            Command::Policy { action: PolicyAction::Replay { files, session } } => {
                commands::policy::replay(&ctx, files, session).await
            }
            Command::Ui => commands::ui::run(&ctx).await,
            Command::Hello { socket } => commands::hello::run(&ctx, socket).await,
            Command::Completions { .. } | Command::Man { .. } => Ok(ExitCode::SUCCESS),
            Command::Doctor { without } => commands::doctor::run(&ctx, without).await,
        }
    });
    result.unwrap_or_else(|e| fail(&e, EXIT_FAILURE))
}

fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    #[allow(clippy::print_stderr, reason = "the CLI's error line")]
    {
        eprintln!("leashctl: {}", leash_cli::output::error_chain(e));
    }
    ExitCode::from(code)
}
