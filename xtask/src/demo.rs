//! `cargo xtask demo`: build, start leashd if nothing answers, and show
//! what it runs.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::util;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("demo takes no options, got {a:?}");
    }
    if !rustix::process::geteuid().is_root() {
        bail!("the demo starts leashd, which needs root (run it with sudo)");
    }
    let bin = util::build_binaries(false)?;
    let leashctl = || Command::new(bin.join("leashctl"));
    let running = leashctl().arg("status").output()?.stdout.starts_with(b"leashd");
    if !running {
        util::out("leashd is not running; starting it in the background");
        // leashd detaches itself and logs to the state dir.
        let leash = Command::new(bin.join("leash")).output()?;
        if !String::from_utf8_lossy(&leash.stderr).contains("a command is required") {
            bail!("starting leashd failed: {}", String::from_utf8_lossy(&leash.stderr));
        }
        let start = Instant::now();
        while leashctl().arg("status").output()?.status.code() != Some(0) {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("leashd did not become healthy within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    util::out("\n$ leashctl status");
    util::run(leashctl().arg("status"))?;
    util::out("\n$ leashctl events --tail 10");
    util::run(leashctl().args(["events", "--tail", "10"]))?;
    util::out(&format!("\nleashd keeps running; stop everything with: {} stop --all", bin.join("leashctl").display()));
    Ok(())
}
