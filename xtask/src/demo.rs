//! `cargo xtask demo`: build leash and the test image, start leashd if
//! nothing answers, run a scripted session, and show its events.

use std::process::Command;

use anyhow::bail;

use crate::util;

/// What the scripted session does: what an agent would, in small.
const SCRIPT: &str = "echo \"hello from $(hostname) as $(id -un) in $(pwd)\"; ls; echo demo > leash-demo.txt; cat leash-demo.txt; rm leash-demo.txt";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("demo takes no options, got {a:?}");
    }
    if !rustix::process::geteuid().is_root() {
        bail!("the demo starts leashd, which needs root (run it with sudo)");
    }
    let bin = util::build_binaries(false)?;
    let entry = util::build_static_entry(false)?;
    crate::image::run(&["test".to_owned()])?;
    let leashctl = || Command::new(bin.join("leashctl"));

    util::out(&format!("\n$ leash --image {} -- sh -c '...'", crate::image::tag("test")));
    // leash starts leashd in the background when nothing answers; that
    // leashd mounts this static leash-entry into sessions.
    util::run(
        Command::new(bin.join("leash"))
            .args(["--verbose", "--image", &crate::image::tag("test"), "--", "sh", "-c", SCRIPT])
            .env("LEASH_ENTRY_BIN", &entry),
    )?;
    util::out("\n$ leashctl status");
    let _ = leashctl().arg("status").status()?;
    util::out("\n$ leashctl events --tail 12");
    util::run(leashctl().args(["events", "--tail", "12"]))?;
    util::out(&format!("\nleashd keeps running; stop everything with: {} stop --all", bin.join("leashctl").display()));
    Ok(())
}
