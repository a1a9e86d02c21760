//! `cargo xtask bench sensor --rows`: what a user feels, row by row — each
//! workload in a governed session (the default policy's shape: everything
//! allowed, protect-host on) against plain Docker of the same image with
//! the same bind mount, in interleaved pairs; the CPU each daemon (and the
//! session's holder) used, and their resident memory before and after.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::json;

use crate::bench_support::{
    daemon_pids, governed_session, median_f64, memory_mib, sessions_ready, start_plain, timed, timed_exec, timed_loop,
    write_report,
};
use crate::util;

/// Interleaved pairs per row (the order alternates).
const PAIRS: usize = 5;
/// Distinct files of the second row.
const DISTINCT: u32 = 1_000;
/// Files in the install-like tree.
const TREE_FILES: u32 = 10_000;

struct Row {
    name: &'static str,
    script: String,
    /// Operations one run does (for the per-operation times).
    ops: u32,
}

fn rows() -> Vec<Row> {
    vec![
        Row { name: "open/close one file 200,000x", script: timed_loop(200_000, ": < f"), ops: 200_000 },
        Row {
            name: "open/close 1,000 distinct files, 200,000 opens",
            script: timed_loop(200_000, &format!(": < d/$((i % {DISTINCT}))")),
            ops: 200_000,
        },
        Row { name: "fork+exec of a static binary 1,000x", script: timed_loop(1_000, "/bin/true"), ops: 1_000 },
        Row {
            name: "untar 10,000 new small files, read each, delete",
            script: timed(
                "rm -rf nt && mkdir nt && tar xf tree.tar -C nt && find nt -type f -exec cat {} + > /dev/null && rm -rf nt",
            ),
            ops: TREE_FILES,
        },
    ]
}

pub fn run(only: Option<&str>) -> anyhow::Result<()> {
    let rows: Vec<Row> = rows().into_iter().filter(|r| only.is_none_or(|w| r.name.contains(w))).collect();
    if rows.is_empty() {
        let names: Vec<&str> = self::rows().iter().map(|r| r.name).collect();
        anyhow::bail!("no row of bench sensor --rows has {:?} in its name: {}", only.unwrap_or(""), names.join("; "));
    }
    let (mut inst, image) = sessions_ready("bench sensor --rows runs leashd, Docker and BPF programs and needs root")?;
    let idle = inst.status().context("leashd's status")?;
    let project = inst.project()?;
    std::fs::write(project.join("f"), "x")?;
    std::fs::create_dir_all(project.join("d"))?;
    for i in 0..DISTINCT {
        std::fs::write(project.join("d").join(i.to_string()), "x")?;
    }
    // An install-like tree: 100 packages of 100 small files.
    let tree = project.with_file_name("tree");
    for i in 0..TREE_FILES {
        let dir = tree.join(format!("pkg{}", i / 100));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{i}.js")), format!("module.exports = {i};\n"))?;
    }
    util::run(Command::new("tar").arg("cf").arg(project.join("tree.tar")).arg("-C").arg(&tree).arg("."))?;
    std::fs::remove_dir_all(&tree)?;
    let policy = project.with_file_name("rows.cedar");
    std::fs::write(&policy, "@id(\"all\") permit (principal, action, resource);\n")?;

    let (mut session, governed) = governed_session(&inst, &image, &policy, &project, &[])?;
    let plain = "leash-bench-rows";
    start_plain(plain, &image, &project)?;
    let pids = daemon_pids(&inst.status().context("leashd's status")?);
    let cpu = |pids: &[(String, u64)]| -> Vec<f64> { pids.iter().map(|(_, p)| util::cpu_seconds(*p)).collect() };

    let mut report = Vec::new();
    util::out(&format!(
        "sensor --rows (release, fallback tier, enforce mode, the default policy's shape; {PAIRS} interleaved pairs \
         per row, leash vs plain Docker of the same image and bind mount; median ratio, min-max)"
    ));
    for row in rows {
        let run = |c: &str| timed_exec(c, &project, &row.script);
        // Warm both (the kernel's cache, the page cache).
        run(&governed)?;
        run(plain)?;
        let (mut ratios, mut g_us, mut p_us) = (Vec::new(), Vec::new(), Vec::new());
        let before = cpu(&pids);
        for pair in 0..PAIRS {
            let (g, p) = if pair % 2 == 0 {
                let g = run(&governed)?;
                (g, run(plain)?)
            } else {
                let p = run(plain)?;
                (run(&governed)?, p)
            };
            ratios.push(g / p);
            g_us.push(g / f64::from(row.ops));
            p_us.push(p / f64::from(row.ops));
        }
        // Per daemon (the holders summed).
        let mut used = std::collections::BTreeMap::<String, f64>::new();
        for ((name, _), (after, before)) in pids.iter().zip(cpu(&pids).iter().zip(&before)) {
            *used.entry(name.clone()).or_default() += after - before;
        }
        let median = median_f64(ratios.clone());
        let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let cpu_text: Vec<String> = used.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect();
        util::out(&format!(
            "  {:<50} {median:.3}x ({lo:.3}-{hi:.3})  {:.2} vs {:.2} µs/op  CPU over {PAIRS} runs: {}",
            row.name,
            median_f64(g_us.clone()),
            median_f64(p_us.clone()),
            cpu_text.join(", ")
        ));
        report.push(json!({
            "row": row.name,
            "ratio": median,
            "min": lo,
            "max": hi,
            "governed_us_per_op": median_f64(g_us),
            "plain_us_per_op": median_f64(p_us),
            "cpu_seconds": used,
        }));
    }
    let after = inst.status().context("leashd's status")?;
    let events = after["events"]["published"].as_u64().unwrap_or(0);
    util::out(&format!("  memory MiB idle: {}", memory_mib(&idle)));
    util::out(&format!("  memory MiB after the rows ({events} events published): {}", memory_mib(&after)));
    let _ = Command::new("docker").args(["rm", "-f", plain]).output();
    let _ = session.kill();
    let _ = session.wait();
    inst.stop()?;
    remove_project_files(&project);
    write_report(
        "sensor-rows",
        &json!({ "pairs": PAIRS, "rows": report, "memory_mib": { "idle": memory_mib(&idle), "after": memory_mib(&after) }, "events": events }),
    )
}

fn remove_project_files(project: &Path) {
    let _ = std::fs::remove_dir_all(project.join("d"));
    let _ = std::fs::remove_file(project.join("tree.tar"));
}
