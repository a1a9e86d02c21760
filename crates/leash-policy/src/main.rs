//! `leash-policy`: the policy daemon.

use std::process::ExitCode;

fn main() -> ExitCode {
    const NAME: &str = "leash-policy";
    if let Some(code) = leash_daemon::process::simple_args(NAME, "the leash policy service") {
        return code;
    }
    leash_daemon::process::run_main(NAME, false, leash_policy::run)
}
