//! `leash-proxy`: the L7 proxy daemon.

use std::process::ExitCode;

fn main() -> ExitCode {
    const NAME: &str = "leash-proxy";
    if let Some(code) = leash_daemon::process::simple_args(NAME, "the leash L7 proxy") {
        return code;
    }
    leash_daemon::process::run_main(NAME, true, leash_proxy::run)
}
