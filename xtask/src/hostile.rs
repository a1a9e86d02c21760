//! `cargo xtask hostile`: the hostile-agent suite (`crates/leashd/tests/hostile.rs`)
//! with its report: every attempt a prompt-injected agent makes on the
//! file, exec, write and network rules, run inside real sessions on the
//! test images (fallback tier), each printed as held or bypassed with the
//! event that decided it. Fails on any bypass. `cargo test` runs the same
//! suite (CI does), without printing the report.

use crate::util;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        anyhow::bail!("unknown option {a:?} of hostile (it takes none)");
    }
    // The sessions need every daemon's binary, not only leashd's.
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "-p", "leashd", "--test", "hostile", "--", "--nocapture"]))
}
