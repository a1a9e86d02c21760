//! `cargo xtask hostile`: the hostile-agent suite with its report.
//!
//! On the fallback tier (`crates/leashd/tests/hostile.rs`): every attempt
//! a prompt-injected agent makes on the file, exec, write and network
//! rules, inside real sessions on the test images, each printed as held or
//! bypassed with the event that decided it. On the LSM tier: the same
//! kinds of attempts in the VM (`cargo xtask vmtest`, whose check makes
//! them against a process in a governed cgroup, the VM having no container
//! engine), each printed `lsm hostile <attempt>: held`. Fails on any
//! bypass. `cargo test` and `cargo xtask vmtest` run the same (CI does).

use crate::util;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        anyhow::bail!("unknown option {a:?} of hostile (it takes none)");
    }
    // The sessions need every daemon's binary, not only leashd's.
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "-p", "leashd", "--test", "hostile", "--", "--nocapture"]))?;
    util::out("the LSM tier, in the VM:");
    crate::vmtest::run(&[])
}
