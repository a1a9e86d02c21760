//! `leash-entry`: the init inside a session's container (std only, so it
//! links statically and runs in any image).
//!
//! At this stage it replaces itself with the command it is given and
//! reports failures the way shells do (127 not found, 126 not executable).
//! Trust installation, the release channel, dropping to the target user,
//! signal forwarding and reaping arrive with sessions.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "--") {
        args.next();
    }
    let Some(program) = args.next() else {
        return fail(2, "usage: leash-entry [--] COMMAND [ARG...]");
    };
    let err = Command::new(&program).args(args).exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    fail(code, &format!("cannot run {}: {err}", program.to_string_lossy()))
}

fn fail(code: u8, msg: &str) -> ExitCode {
    #[allow(clippy::print_stderr, reason = "leash-entry reports on stderr; it has no logger")]
    {
        eprintln!("leash-entry: {msg}");
    }
    ExitCode::from(code)
}
