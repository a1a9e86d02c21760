//! `cargo xtask bench ui`: the audit store (sustained and batched ingest,
//! query latency over ten million events against a full scan in the same
//! run) and the WebSocket's fan-out of a paced event storm to five
//! followers, with the storm's own rate and the daemons' CPU compared
//! against no followers. `--fanout-only` skips the audit store.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use crate::bench_support::{Instance, all_running, governed_session, write_report};
use crate::util;

/// Events the audit store holds for the query benchmark.
const STORED: u64 = 10_000_000;
/// The fan-out storm: events per second, for this many seconds.
const FANOUT_RATE: u64 = 20_000;
const FANOUT_SECONDS: u64 = 5;
const FOLLOWERS: usize = 5;
/// Runs with and without followers (interleaved).
const FANOUT_RUNS: usize = 3;

pub fn run(fanout_only: bool) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench ui runs leashd, Docker and BPF programs and needs root");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    let storm = util::build_static("leash-testkit", "leash-storm", true)?;
    util::run(util::cargo().args(["build", "--release", "--package", "leashd", "--examples"]))?;
    let examples = util::target_dir()?.join("release/examples");
    crate::image::run(&["test".to_owned()])?;
    let image = crate::image::tag("test");

    let audit: Value = if fanout_only {
        Value::Null
    } else {
        util::out(&format!("audit store: {STORED} events (a few minutes)…"));
        serde_json::from_slice(&util::output(Command::new(examples.join("audit_bench")).arg(STORED.to_string()))?)?
    };

    let mut inst = Instance::new(&bin)?;
    inst.leashd = Some(inst.command("leashd").env("LEASH_ENTRY_BIN", &entry).stdout(Stdio::null()).spawn()?);
    let status = inst.wait(Duration::from_secs(20), all_running)?;
    let addr = status["ui"]["listen"].as_str().unwrap_or_default().to_owned();
    let token = std::fs::read_to_string(inst.runtime_dir().join("api.token"))?.trim().to_owned();
    let project = inst.project()?;
    let policy = project.with_file_name("all.cedar");
    std::fs::write(&policy, "permit (principal, action, resource);\n")?;
    let (mut session, container) = governed_session(&inst, &image, &policy, &project, &[])?;
    std::fs::copy(&storm, project.join("leash-storm"))?;
    let counts = |inst: &Instance| {
        let s = inst.status().unwrap_or(Value::Null);
        (s["events"]["published"].as_u64().unwrap_or(0), s["events"]["dropped"].as_u64().unwrap_or(0))
    };
    let n = FANOUT_RATE * FANOUT_SECONDS;
    // CPU seconds of the sensor and of leashd over each storm.
    let pids = {
        let s = inst.status().unwrap_or(Value::Null);
        let sensor = crate::bench_support::component(&s, "leash-sensor")["pid"].as_u64().unwrap_or(0);
        (sensor, s["leashd"]["pid"].as_u64().unwrap_or(0))
    };
    let cpu = || (util::cpu_seconds(pids.0), util::cpu_seconds(pids.1));
    let mut runs = Vec::new();
    for run in 0..FANOUT_RUNS * 2 {
        let followers = if run % 2 == 0 { FOLLOWERS } else { 0 };
        let mut clients = None;
        if followers > 0 {
            let mut c = Command::new(examples.join("ws_clients"))
                .args([&addr, &token, &followers.to_string(), &(FANOUT_SECONDS + 4).to_string()])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(c.stdout.as_mut().expect("piped")).read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("ws_clients: {line}");
            }
            clients = Some(c);
        }
        let (published0, dropped0) = counts(&inst);
        let cpu0 = cpu();
        let out = util::output(Command::new("docker").args([
            "exec",
            &container,
            &project.join("leash-storm").display().to_string(),
            "connect",
            &n.to_string(),
            "127.0.0.1:9",
            &FANOUT_RATE.to_string(),
        ]))?;
        let generated: Vec<f64> =
            String::from_utf8_lossy(&out).split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let generate_s = generated.get(1).copied().unwrap_or(0.0) / 1e6;
        std::thread::sleep(Duration::from_secs(2));
        let (published1, dropped1) = counts(&inst);
        let cpu1 = cpu();
        let received: Vec<u64> = match clients {
            Some(c) => {
                let out = c.wait_with_output()?;
                let v: Value = serde_json::from_slice(&out.stdout)?;
                v["clients"]
                    .as_array()
                    .map(|a| a.iter().map(|c| c["connects"].as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        runs.push(serde_json::json!({
            "followers": followers,
            "generated": n,
            "generate_s": generate_s,
            "published": published1 - published0,
            "dropped": dropped1 - dropped0,
            "received_per_follower": received,
            "sensor_cpu_s": cpu1.0 - cpu0.0,
            "leashd_cpu_s": cpu1.1 - cpu0.1,
        }));
    }
    let _ = session.kill();
    let _ = session.wait();
    inst.stop()?;

    // With followers over without, paired by run; the median (the storm's
    // own duration, then each daemon's CPU).
    let paired = |key: &str| {
        let mut r: Vec<f64> = runs
            .chunks(2)
            .map(|p| p[0][key].as_f64().unwrap_or(0.0) / p[1][key].as_f64().unwrap_or(1.0).max(1e-9))
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let ratio = paired("generate_s");
    let (sensor_cpu, leashd_cpu) = (paired("sensor_cpu_s"), paired("leashd_cpu_s"));
    let min_received = runs
        .iter()
        .flat_map(|r| r["received_per_follower"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .min()
        .unwrap_or(0);
    let dropped: u64 = runs.iter().filter_map(|r| r["dropped"].as_u64()).sum();

    util::out("ui (release)");
    if !audit.is_null() {
        report_audit(&audit);
    }
    util::out(&format!(
        "  WebSocket fan-out: {FANOUT_RATE} events/s for {FANOUT_SECONDS} s to {FOLLOWERS} followers: each received ≥ {min_received} of {n}; \
         {dropped} dropped; the storm's duration with followers / without: {ratio:.3}x (median of {FANOUT_RUNS} pairs)"
    ));
    util::out(&format!(
        "  CPU over each storm, with followers / without (medians of paired runs): leash-sensor {sensor_cpu:.3}x, leashd {leashd_cpu:.3}x"
    ));
    write_report(
        "ui",
        &serde_json::json!({
            "audit": audit, "fanout": runs, "fanout_storm_ratio": ratio,
            "sensor_cpu_ratio": sensor_cpu, "leashd_cpu_ratio": leashd_cpu,
        }),
    )
}

/// The audit store's figures.
fn report_audit(audit: &Value) {
    util::out(&format!(
        "  audit ingest: {:.0} events/s batched (target ≥ 100,000); 50,000/s for 10 s: {} of {} stored, {} lost",
        audit["ingest_batched_per_s"].as_f64().unwrap_or(0.0),
        audit["sustained"]["stored"],
        audit["sustained"]["published"],
        audit["sustained"]["lost"]
    ));
    util::out(&format!(
        "  queries over {} stored events ({:.1} GB), medians of 5; a full scan (count) takes {:.0} ms:",
        audit["stored_events"],
        audit["db_bytes"].as_f64().unwrap_or(0.0) / 1e9,
        audit["scan_ms"].as_f64().unwrap_or(0.0)
    ));
    for q in audit["queries"].as_array().cloned().unwrap_or_default() {
        util::out(&format!(
            "    {:<40} {:>9.2} ms ({:.4}x the scan, {} rows)",
            q["query"].as_str().unwrap_or(""),
            q["median_ms"].as_f64().unwrap_or(0.0),
            q["ratio_to_scan"].as_f64().unwrap_or(0.0),
            q["rows"]
        ));
    }
}
