//! `leash-sensor`: the kernel sensor daemon.

use std::process::ExitCode;

fn main() -> ExitCode {
    const NAME: &str = "leash-sensor";
    if let Some(code) = leash_daemon::process::simple_args(NAME, "the leash kernel sensor") {
        return code;
    }
    leash_daemon::process::run_main(NAME, false, leash_sensor::run)
}
