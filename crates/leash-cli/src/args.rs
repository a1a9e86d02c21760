//! `leash`'s command line: the Go leash's flags, parsed with clap after one
//! fix-up for `-v`, which is a volume when followed by `src:dst` and
//! verbose otherwise (as in the Go leash).

use clap::Parser;

/// Run an AI coding agent (claude, codex, gemini, qwen, opencode) or any
/// command in a container, with every file open, exec, connection, HTTP
/// request and MCP call decided by Cedar policy.
///
/// The current directory is mounted at the same path and the command runs
/// there, as you, with your terminal. leash is a thin client of leashd (the
/// background daemon): as root it starts leashd when nothing answers;
/// otherwise it says how to start the service.
///
/// With a terminal, Ctrl-P Ctrl-Q leaves the session running (`-d` starts
/// it so); `leash attach ID` joins it again (`leash attach --help`).
///
/// Exit codes: the command's own exit code; 125 when leash itself fails.
#[derive(Debug, Parser)]
#[command(name = "leash", version, about, long_about, trailing_var_arg = true, disable_version_flag = true)]
pub struct Args {
    /// Print the version.
    #[arg(long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// Never allocate a terminal (stdin and stdout are piped) and never prompt.
    #[arg(short = 'I', long)]
    pub no_interactive: bool,
    /// Cedar policy file for this session (LEASH_POLICY_FILE).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<String>,
    /// Bind mount SRC:DST[:ro|rw] (repeatable). `-v` without SRC:DST means --verbose.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:MODE]")]
    pub volumes: Vec<String>,
    /// Set KEY=VALUE in the container, or pass KEY from your environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]", allow_hyphen_values = true)]
    pub env: Vec<String>,
    /// A credential the container gets only as a decoy: NAME (from your
    /// environment), NAME=VALUE or NAME@FILE (repeatable). The proxy puts
    /// the real value back in requests where a SecretUse policy allows it.
    #[arg(long = "secret", value_name = "NAME[=VALUE|@FILE]")]
    pub secrets: Vec<String>,
    /// Publish a container port: [IP:][HOST:]CONTAINER[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish", visible_alias = "port-forward", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes.
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// The image to run the command in (LEASH_TARGET_IMAGE, TARGET_IMAGE).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Accepted for compatibility and ignored: leash runs no manager container.
    #[arg(long, value_name = "IMAGE")]
    pub leash_image: Option<String>,
    /// The Control UI's address: accepted when it is leashd's own (Go
    /// grammar: `:18080`, `127.0.0.1:18080`); leashd's --listen sets it.
    #[arg(short = 'l', long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Open the Control UI in your browser ($BROWSER, else xdg-open) with a
    /// single-use login code (also OPEN=1).
    #[arg(short = 'o', long)]
    pub open: bool,
    /// Show what leash does.
    #[arg(short = 'V', long)]
    pub verbose: bool,
    /// Memory limit, e.g. 512m or 2g.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Run the command as root in the container (only when you are root).
    #[arg(long)]
    pub root: bool,
    /// Run even when an enforcement layer cannot be set up; every event says so.
    #[arg(long)]
    pub degraded: bool,
    /// Run without the protect-host layer, which otherwise forbids writing
    /// what runs code later (git hooks, .envrc, the agents' settings).
    #[arg(long)]
    pub no_protect_host: bool,
    /// Ask before refusing: when the policy denies a file open or an exec
    /// in enforce mode, the operation waits while this terminal (or the
    /// Control UI) asks: allow once, for this session, always (a permit
    /// appended to the policy file) or deny. No answer within `[leash]
    /// ask_timeout` seconds (30) denies. The administrator's policy.d and
    /// protect-host are never asked about. Also `[leash] ask = true`.
    #[arg(long)]
    pub ask: bool,
    /// A resolver for the container, by IP address (repeatable; docker's
    /// --dns). The session's DNS still goes through leash's relay.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// An entry of the container's /etc/hosts: NAME:IP (repeatable; docker's
    /// --add-host). The proxy still decides by name and verifies the
    /// upstream's certificate for it.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_hosts: Vec<String>,
    /// Start the session and leave it running in the background: print its
    /// id and return (`leash attach ID` joins it; `leashctl sessions stop
    /// ID` ends it).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The keys that leave the session running and return (Docker's syntax:
    /// `ctrl-<key>` or a character, comma-separated; default ctrl-p,ctrl-q;
    /// "" for none). Only with a terminal.
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// The command: an agent (claude, codex, gemini, qwen, opencode) or anything after `--`.
    #[arg(value_name = "COMMAND", num_args = 0..)]
    pub command: Vec<String>,
}

/// `leash attach ID`: join the terminal of a running session (its output
/// since the session started, up to 1 MiB, first). The detach keys leave it
/// running; when the session ends, `leash attach` returns its exit code.
#[derive(Debug, Parser)]
#[command(name = "leash attach", about, long_about)]
pub struct AttachArgs {
    /// The keys that leave the session running and return (Docker's syntax;
    /// default ctrl-p,ctrl-q; "" for none).
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// The session's id, or a unique prefix of it (`leashctl sessions`).
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `leash exec ID -- CMD…`: run another command in a running session. Its
/// processes are the session's (forked by the session's first process): the
/// same policy decides what they do, and their decisions are the session's
/// events. It runs as the session's user; when this client goes, the
/// command is hung up (SIGHUP), as a closed terminal would.
#[derive(Debug, Parser)]
#[command(name = "leash exec", about, long_about, trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep its stdin open and send this client's to it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give it a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (NAME=value) on top of the session
    /// command's (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Its working directory inside the container (default: the session command's).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The session's id, or a unique prefix of it (`leashctl sessions`).
    #[arg(value_name = "ID")]
    pub id: String,
    /// The command and its arguments.
    #[arg(value_name = "COMMAND", required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Flags of `leash` that take a value, so the `-v` fix-up knows where the
/// command starts.
const TAKES_VALUE: [&str; 19] = [
    "--policy",
    "--detach-keys",
    "--secret",
    "--dns",
    "--add-host",
    "-v",
    "--volume",
    "-e",
    "--env",
    "-p",
    "--publish",
    "--port-forward",
    "--image",
    "--leash-image",
    "-l",
    "--listen",
    "--memory",
    "--cpus",
    "--pids-limit",
];

/// Rewrites a `-v` that is not followed by `SRC:DST` into `--verbose`.
/// Flags end at `--` or at the first argument that is not a flag (the command).
pub fn fix_up(args: Vec<String>) -> Vec<String> {
    let mut it = args.into_iter();
    let mut out: Vec<String> = it.next().into_iter().collect();
    let rest: Vec<String> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let a = &rest[i];
        if a == "--" || !a.starts_with('-') {
            out.extend(rest[i..].iter().cloned());
            break;
        }
        if a == "-v" {
            match rest.get(i + 1) {
                Some(next) if !next.starts_with('-') && next.contains(':') => {
                    out.extend([a.clone(), next.clone()]);
                    i += 2;
                }
                _ => {
                    out.push("--verbose".into());
                    i += 1;
                }
            }
            continue;
        }
        out.push(a.clone());
        i += 1;
        if TAKES_VALUE.contains(&a.as_str())
            && let Some(v) = rest.get(i)
        {
            out.push(v.clone());
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(s: &str) -> Vec<String> {
        fix_up(s.split_whitespace().map(str::to_owned).collect())
    }

    #[test]
    fn dash_v_is_a_volume_or_verbose() {
        assert_eq!(fx("leash -v a:/b true"), ["leash", "-v", "a:/b", "true"]);
        assert_eq!(fx("leash -v true"), ["leash", "--verbose", "true"]);
        assert_eq!(fx("leash -v -e A=1 true"), ["leash", "--verbose", "-e", "A=1", "true"]);
        assert_eq!(fx("leash -e -v true"), ["leash", "-e", "-v", "true"]);
        assert_eq!(fx("leash -- ls -v x:y"), ["leash", "--", "ls", "-v", "x:y"]);
        assert_eq!(fx("leash claude -v"), ["leash", "claude", "-v"]);
    }

    #[test]
    fn parses_the_go_surface() {
        let a = Args::try_parse_from(fx("leash -I -e A=1 --env B -v /x:/y:ro --image img -p 8080:80 -- sh -c true"))
            .unwrap();
        assert!(a.no_interactive);
        assert_eq!(a.env, ["A=1", "B"]);
        assert_eq!(a.volumes, ["/x:/y:ro"]);
        assert_eq!(a.image.as_deref(), Some("img"));
        assert_eq!(a.publish, ["8080:80"]);
        assert_eq!(a.command, ["sh", "-c", "true"]);
        let a = Args::try_parse_from(fx("leash --dns 172.17.0.1 --dns ::1 -- true")).unwrap();
        assert_eq!(a.dns, ["172.17.0.1", "::1"]);
        let a = Args::try_parse_from(fx("leash --add-host api.test:10.0.0.1 --add-host v6.test:::1 -- true")).unwrap();
        assert_eq!(a.add_hosts, ["api.test:10.0.0.1", "v6.test:::1"]);
        let a = Args::try_parse_from(fx("leash claude --resume")).unwrap();
        assert_eq!(a.command, ["claude", "--resume"]);
        assert!(Args::try_parse_from(fx("leash --bogus true")).is_err());
    }
}
