//! `cargo xtask bench lsm`: the tiers' cost in the VM, where both run.
//! Boots the kernel `cargo xtask vmtest` uses (TCG) with an initramfs whose
//! init runs `leash-sensor --vm-bench`: each workload ungoverned, on the
//! LSM tier and on the fallback tier, interleaved, five rounds; this prints
//! the medians of the per-round ratios (ratios within the VM only: TCG's
//! absolute times mean nothing for a real machine).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;

use crate::{util, vmtest};

pub fn run() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench lsm builds an initramfs with device nodes and needs root");
    }
    let started = Instant::now();
    let work = vmtest::dir()?;
    std::fs::create_dir_all(work.join("debs"))?;
    let vmlinuz = vmtest::kernel(&work)?;
    let (qemu, libs, data) = vmtest::qemu(&work)?;
    let sensor = util::build_static("leash-sensor", "leash-sensor", true)?;
    let tree = work.join("bench-initramfs");
    vmtest::busybox_tree(&tree)?;
    std::fs::copy(&sensor, tree.join("bin/leash-sensor"))?;
    std::fs::write(tree.join("init"), vmtest::init("/bin/leash-sensor --vm-bench"))?;
    util::run(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    let image = work.join("bench-initramfs.cpio.gz");
    vmtest::pack(&tree, &image)?;
    util::out("bench lsm: booting the VM (TCG, 2 vCPUs); the workloads take a few minutes");
    let mut cmd = Command::new("timeout");
    cmd.arg("1200").arg(&qemu);
    for d in &data {
        cmd.arg("-L").arg(d);
    }
    if !libs.is_empty() {
        cmd.env("LD_LIBRARY_PATH", &libs);
    }
    cmd.args(["-accel", "tcg,thread=multi,tb-size=64", "-smp", "2", "-m", "1G", "-nographic", "-no-reboot"])
        .args(["-nic", "none", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 lsm=lockdown,capability,landlock,yama,bpf panic=-1"])
        .stdin(Stdio::null());
    let out = cmd.output().context("running qemu")?;
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let log = work.join("bench-console.log");
    std::fs::write(&log, console.as_bytes())?;
    let lines: Vec<&str> = console.lines().filter_map(|l| l.split_once("VMBENCH ").map(|(_, r)| r.trim())).collect();
    if !lines.contains(&"done") {
        let why = lines.iter().find(|l| l.starts_with("FAILED")).copied().unwrap_or("no answer");
        bail!("bench lsm: {why}; the console is in {}", log.display());
    }
    // (workload, tier) → per round nanoseconds.
    let mut runs: BTreeMap<(String, String), BTreeMap<usize, f64>> = BTreeMap::new();
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [workload, tier, round, ns] = f.as_slice()
            && let (Ok(round), Ok(ns)) = (round.parse::<usize>(), ns.parse::<f64>())
        {
            runs.entry(((*workload).to_owned(), (*tier).to_owned())).or_default().insert(round, ns);
        }
    }
    let ratio = |workload: &str, over: &str, under: &str| -> Option<f64> {
        let (a, b) =
            (runs.get(&(workload.to_owned(), over.to_owned()))?, runs.get(&(workload.to_owned(), under.to_owned()))?);
        let per_round: Vec<f64> = a.iter().filter_map(|(r, x)| Some(x / b.get(r)?)).collect();
        (!per_round.is_empty()).then(|| crate::bench_support::median_f64(per_round))
    };
    let median_ms = |workload: &str, tier: &str| {
        runs.get(&(workload.to_owned(), tier.to_owned()))
            .map(|r| crate::bench_support::median_f64(r.values().copied().collect()) / 1e6)
            .unwrap_or(f64::NAN)
    };
    let workloads = ["same-file", "distinct-files", "new-files", "fork-exec"];
    util::out("workload        ungoverned   bpf-lsm   fallback   lsm/ungoverned  fallback/ungoverned  lsm/fallback");
    let mut report = serde_json::Map::new();
    for w in workloads {
        let (l, f, lf) =
            (ratio(w, "bpf-lsm", "ungoverned"), ratio(w, "fallback", "ungoverned"), ratio(w, "bpf-lsm", "fallback"));
        let show = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x"));
        util::out(&format!(
            "{w:<15} {:>8.1} ms {:>7.1} ms {:>7.1} ms   {:>12}  {:>19}  {:>12}",
            median_ms(w, "ungoverned"),
            median_ms(w, "bpf-lsm"),
            median_ms(w, "fallback"),
            show(l),
            show(f),
            show(lf)
        ));
        report.insert(
            w.to_owned(),
            json!({
                "ms": { "ungoverned": median_ms(w, "ungoverned"), "bpf-lsm": median_ms(w, "bpf-lsm"), "fallback": median_ms(w, "fallback") },
                "lsm_vs_ungoverned": l, "fallback_vs_ungoverned": f, "lsm_vs_fallback": lf,
            }),
        );
    }
    util::out(&format!(
        "bench lsm: medians of 5 interleaved rounds (TCG: ratios within the VM only); {:.0} s; console in {}",
        started.elapsed().as_secs_f64(),
        log.display()
    ));
    crate::bench_support::write_report("lsm", &serde_json::Value::Object(report))
}
