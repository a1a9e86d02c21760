//! `leash-entry`: PID 1 inside a session's container.
//!
//! Statically linked (see `cargo xtask entry`) so it runs in any image, even
//! one without a libc. In order it:
//! 1. installs trust for the session CA (`--ca`): a full bundle of the
//!    image's system roots plus the CA, for the system store and the
//!    variables Node, OpenSSL, Python and curl read; never through a bind mount;
//! 2. prepares the target user (`--user UID:GID`): passwd and group entries
//!    and a HOME;
//! 3. with `--supervise`, installs the supervised-calls filter
//!    (`supervise`): from here on the calls that make names appear are
//!    decided by leash-sensor, which takes the listener while leashd
//!    admits the session; leash-entry closes its own copy on release;
//! 4. waits on leashd's one-shot release channel (`--release SOCKET`): a
//!    Unix socket on which leashd writes `go` once every admission step has
//!    passed, or anything else to abort; the channel is closed before the
//!    command starts;
//! 5. starts the command as the target user, in its own process group and
//!    in the terminal's foreground, forwards signals to it, reaps every
//!    zombie, and exits with its status: the command's code, 128+n when a
//!    signal ended it, 127 when it is not found, 126 when it cannot run;
//! 6. meanwhile runs the commands leashd asks for over the control
//!    connection (`control`: `leash exec`), as the same user.
//!
//! leash-entry is not dumpable from its first instruction: the container's
//! processes, the agent's among them, cannot trace it or copy its
//! descriptors.
//!
//! Errors print `leash-entry: …` on stderr and exit 125.

mod control;
mod init;
mod relay;
mod release;
mod setup;
mod supervise;

use std::process::ExitCode;

/// Exit code for leash-entry's own failures (as leash's).
const EXIT_OWN_FAILURE: u8 = 125;

/// What leashd asks of leash-entry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    /// Target uid and gid.
    user: Option<(u32, u32)>,
    /// Supplementary groups of the target user.
    groups: Vec<u32>,
    /// User name for the passwd entry.
    name: Option<String>,
    /// HOME for the target user.
    home: Option<String>,
    /// The session CA certificate (PEM).
    ca: Option<String>,
    /// The release socket.
    release: Option<String>,
    /// Install the supervised-calls filter.
    supervise: bool,
    /// The command.
    command: Vec<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--user" => {
                let v = value("--user")?;
                let (u, g) = v.split_once(':').ok_or_else(|| format!("--user {v:?}: expected UID:GID"))?;
                let num = |s: &str| s.parse::<u32>().map_err(|_| format!("--user {v:?}: {s:?} is not a number"));
                a.user = Some((num(u)?, num(g)?));
            }
            "--groups" => {
                let v = value("--groups")?;
                a.groups = v
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(|g| g.parse::<u32>().map_err(|_| format!("--groups {v:?}: {g:?} is not a number")))
                    .collect::<Result<_, _>>()?;
            }
            "--name" => a.name = Some(value("--name")?),
            "--home" => a.home = Some(value("--home")?),
            "--ca" => a.ca = Some(value("--ca")?),
            "--release" => a.release = Some(value("--release")?),
            "--supervise" => a.supervise = true,
            "--" => {
                a.command = it.collect();
                break;
            }
            other if other.starts_with('-') => return Err(format!("unknown option {other:?}")),
            _ => {
                a.command = std::iter::once(arg).chain(it).collect();
                break;
            }
        }
    }
    if a.command.is_empty() {
        return Err("usage: leash-entry [--user UID:GID] [--name NAME] [--home DIR] [--ca PEM] [--release SOCKET] [--supervise] [--] COMMAND [ARG...]".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some(leash_core::stdio_mcp::RELAY_COMMAND) {
        argv.next();
        return match relay::parse(argv) {
            Ok(a) => relay::run(&a),
            Err(e) => fail(&e),
        };
    }
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    // Not dumpable, from the first instruction on: no process of the
    // container may read this one's memory or copy its descriptors (the
    // control connection's door).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return fail(&format!("cannot make leash-entry undumpable: {e}"));
    }
    let mut control = match control::open() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(ca) = &args.ca {
        match setup::install_trust(ca) {
            Ok(vars) => env.extend(vars),
            Err(e) => return fail(&format!("cannot install the session CA: {e}")),
        }
    }
    if let Some((uid, gid)) = args.user {
        let name = args.name.as_deref().unwrap_or("leash");
        let home = args.home.clone().unwrap_or_else(|| if uid == 0 { "/root".into() } else { format!("/home/{name}") });
        if let Err(e) = setup::prepare_user(uid, gid, name, &home) {
            return fail(&format!("cannot prepare user {uid}:{gid}: {e}"));
        }
        env.push(("HOME".into(), home));
        // USER and LOGNAME as given with -e win.
        for var in ["USER", "LOGNAME"] {
            if std::env::var_os(var).is_none() {
                env.push((var.into(), name.into()));
            }
        }
    }
    // Installed after the setup above (which creates files) and before
    // the release, so the sensor can take the listener while it admits.
    let listener = match args.supervise.then(supervise::install).transpose() {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if let Some(sock) = &args.release
        && let Err(e) = setup::await_release(sock)
    {
        return fail(&e);
    }
    // The sensor holds it now; a copy here would only be one more to guard.
    drop(listener);
    if let Some((uid, gid)) = args.user
        && let Err(e) = init::drop_privileges(uid, gid, &args.groups)
    {
        return fail(&format!("cannot become {uid}:{gid}: {e}"));
    }
    // A change of user makes a process dumpable again where the system
    // says so (`fs.suid_dumpable`); not this one.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return fail(&format!("cannot make leash-entry undumpable: {e}"));
    }
    control.set_env(&env);
    init::run(&args.command, &env, Some(control))
}

fn fail(msg: &str) -> ExitCode {
    #[allow(clippy::print_stderr, reason = "leash-entry reports on stderr; it has no logger")]
    {
        eprintln!("leash-entry: {msg}");
    }
    ExitCode::from(EXIT_OWN_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_options_and_command() {
        let a = p(&[
            "--user",
            "1000:100",
            "--groups",
            "5,27",
            "--release",
            "/leash/release.sock",
            "--supervise",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        assert_eq!(a.user, Some((1000, 100)));
        assert_eq!(a.groups, [5, 27]);
        assert_eq!(a.release.as_deref(), Some("/leash/release.sock"));
        assert!(a.supervise);
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
        assert_eq!(p(&["true", "--user"]).unwrap().command, ["true", "--user"]);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(p(&[]).unwrap_err().starts_with("usage"));
        assert_eq!(p(&["--user", "x:1", "true"]).unwrap_err(), "--user \"x:1\": \"x\" is not a number");
        assert_eq!(p(&["--bogus", "true"]).unwrap_err(), "unknown option \"--bogus\"");
        assert_eq!(p(&["--home"]).unwrap_err(), "--home needs a value");
    }
}
