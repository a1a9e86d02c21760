//! `cargo xtask fuzz [TARGET] [--time S]`: runs the fuzz targets in `fuzz/`
//! (cargo-fuzz, libFuzzer, the nightly toolchain), each for S seconds
//! (default 600), from the committed seeds in `fuzz/seeds/<target>` and a
//! working corpus under `<target dir>/fuzz-corpus/<target>`; prints the
//! executions per second of each and fails on a crash (libFuzzer leaves it
//! in `fuzz/artifacts/<target>/`).

use std::process::Command;

use anyhow::{Context, bail};

use crate::util;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (mut only, mut secs) = (None, 600u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => secs = it.next().and_then(|s| s.parse().ok()).context("--time takes a number of seconds")?,
            t if !t.starts_with('-') && only.is_none() => only = Some(t.to_owned()),
            other => bail!("unknown option {other:?} of fuzz ([TARGET] [--time S])"),
        }
    }
    let dir = util::root().join("fuzz");
    let mut targets: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    targets.sort();
    if let Some(t) = &only {
        if !targets.contains(t) {
            bail!("no fuzz target {t:?}; the targets: {}", targets.join(", "));
        }
        targets = vec![t.clone()];
    }
    let fuzz = |args: &[&str]| {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo", "fuzz"]).args(args).current_dir(&dir);
        c
    };
    if !fuzz(&["--version"]).output().is_ok_and(|o| o.status.success()) {
        bail!(
            "cargo-fuzz on the nightly toolchain is needed: `cargo install cargo-fuzz` (and `rustup toolchain list` shows nightly)"
        );
    }
    let mut summary = Vec::new();
    for t in &targets {
        let corpus = util::target_dir()?.join("fuzz-corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let seeds = dir.join("seeds").join(t);
        util::out(&format!("fuzz: {t} for {secs} s"));
        let out = fuzz(&["run", t])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={secs}"), "-print_final_stats=1", "-timeout=10"])
            .output()
            .with_context(|| format!("running the fuzz target {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines().find_map(|l| l.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_owned()))
        };
        let (runs, per_s) = (stat("number_of_executed_units"), stat("average_exec_per_sec"));
        if !out.status.success() {
            util::err(&log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "fuzz target {t} failed after {} executions; the input is in fuzz/artifacts/{t}/",
                runs.unwrap_or_default()
            );
        }
        summary.push(format!(
            "  {t:<16} {} executions, {} per second, no crash",
            runs.unwrap_or_else(|| "?".into()),
            per_s.unwrap_or_else(|| "?".into())
        ));
    }
    util::out(&format!("fuzz ({secs} s each):"));
    for s in summary {
        util::out(&s);
    }
    Ok(())
}
