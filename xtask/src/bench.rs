//! `cargo xtask bench <what>`: measurements reported as medians of several
//! runs, beside a baseline measured in the same run.
//!
//! `startup`: release binaries in a private runtime dir; cold start of all
//! daemons to "all healthy" (leashctl status says so) against the baseline
//! of executing the four binaries with `--version`; a component's
//! restart-to-healthy time after SIGKILL; each daemon's idle RSS.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_support::{
    Instance, all_running, component, detached_session, governed_session, median, median_f64, micros, ms, rss_kib,
    sessions_ready, start_plain, timed_exec, timed_loop, write_report,
};
use crate::util;

const RUNS: usize = 10;
const DAEMONS: [&str; 4] = ["leashd", "leash-policy", "leash-sensor", "leash-proxy"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("startup") => startup(),
        Some("session-start") => session_start(),
        Some("attach") => attach(),
        Some("exec") => exec(),
        Some("ask") => ask(),
        // Criterion benchmarks of the policy service (medians, with their spread).
        Some("policy") => util::run(util::cargo().args([
            "bench",
            "--package",
            "leash-policy",
            "--bench",
            "policy",
            "--bench",
            "cache",
            "--bench",
            "reload",
        ])),
        Some("proxy") => crate::bench_proxy::run(),
        Some("mcp") => crate::bench_mcp::run(),
        Some("lsm") => crate::bench_lsm::run(),
        Some("ui") => match args.get(1).map(String::as_str) {
            None => crate::bench_ui::run(false),
            // The WebSocket fan-out alone.
            Some("--fanout-only") => crate::bench_ui::run(true),
            Some(other) => bail!("unknown option {other:?} of bench ui (--fanout-only)"),
        },
        Some("sensor") => match args.get(1).map(String::as_str) {
            None => sensor(false),
            // The event pipeline alone (quick, while working on it).
            Some("--events-only") => sensor(true),
            // What tracing forbidden files by identity costs on new files.
            Some("--new-files") => sensor_new_files(),
            // What a user feels: each workload against plain Docker.
            // `--rows WORD`: only the rows whose name has WORD.
            Some("--rows") => crate::bench_rows::run(args.get(2).map(String::as_str)),
            Some(other) => bail!("unknown option {other:?} of bench sensor (--events-only, --new-files, --rows)"),
        },
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}; available: startup, session-start, attach, exec, ask, policy, sensor, lsm, proxy, mcp, ui"
            )
        }
        None => {
            bail!(
                "which benchmark? available: startup, session-start, attach, exec, ask, policy, sensor, lsm, proxy, mcp, ui"
            )
        }
    }
}

fn startup() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench startup runs the daemons and needs root");
    }
    let bin = util::build_binaries(true)?;
    let mut baseline = Vec::new();
    let mut cold = Vec::new();
    let mut restart = Vec::new();
    let mut rss: Vec<(String, u64)> = Vec::new();
    for run in 0..RUNS {
        // Baseline: executing the four binaries at all.
        let t = Instant::now();
        for d in DAEMONS {
            util::output(Command::new(bin.join(d)).arg("--version"))?;
        }
        baseline.push(t.elapsed());

        let mut inst = Instance::new(&bin)?;
        let t = Instant::now();
        inst.leashd = Some(inst.command("leashd").stdout(Stdio::null()).spawn()?);
        let status = inst.wait(Duration::from_secs(20), all_running)?;
        cold.push(t.elapsed());

        let old = component(&status, "leash-sensor")["pid"].as_u64().context("sensor pid")?;
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(old as i32).context("pid")?,
            rustix::process::Signal::KILL,
        )?;
        let status = inst.wait(Duration::from_secs(20), |s| {
            let c = component(s, "leash-sensor");
            c["state"] == "running" && c["pid"].as_u64() != Some(old)
        })?;
        restart.push(t.elapsed());

        if run == RUNS - 1 {
            std::thread::sleep(Duration::from_secs(2));
            let status = inst.status().unwrap_or(status);
            let leashd = status["leashd"]["pid"].as_u64().context("leashd pid")?;
            rss.push(("leashd".to_owned(), rss_kib(leashd)?));
            for name in &DAEMONS[1..] {
                let pid = component(&status, name)["pid"].as_u64().context("pid")?;
                rss.push((name.to_string(), rss_kib(pid)?));
            }
        }
        inst.stop()?;
    }
    let (b, c, r) = (median(baseline), median(cold), median(restart));
    util::out(&format!("startup (release, medians of {RUNS} runs)"));
    util::out(&format!("  baseline: exec the 4 binaries (--version)   {}", ms(b)));
    util::out(&format!(
        "  cold start to all healthy                  {}  ({:.1}x baseline)",
        ms(c),
        c.as_secs_f64() / b.as_secs_f64()
    ));
    util::out(&format!(
        "  component restart to healthy (SIGKILL)     {}  ({:.1}x baseline)",
        ms(r),
        r.as_secs_f64() / b.as_secs_f64()
    ));
    util::out("  idle RSS after 2 s:");
    for (name, kib) in &rss {
        util::out(&format!("    {name:<14} {:>6.1} MiB", *kib as f64 / 1024.0));
    }
    let report = serde_json::json!({
        "runs": RUNS,
        "baseline_ms": b.as_secs_f64() * 1e3,
        "cold_start_ms": c.as_secs_f64() * 1e3,
        "restart_ms": r.as_secs_f64() * 1e3,
        "rss_kib": rss.iter().map(|(n, k)| (n.clone(), *k)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    write_report("startup", &report)
}

/// One side of [`against_docker`]: its label, its report key, and its
/// command's arguments given the session id and the container.
type Side<'a> = (&'a str, &'a str, fn(&str, &str) -> Vec<String>);

/// One of leash's commands on a detached session against the engine's
/// counterpart on its container, interleaved after two warm-up pairs,
/// medians of [`RUNS`]; `measure` times one command.
fn against_docker(
    bench: &str,
    what: &str,
    ours: Side<'_>,
    theirs: Side<'_>,
    measure: fn(&mut Command) -> anyhow::Result<Duration>,
) -> anyhow::Result<()> {
    let (mut inst, image) = sessions_ready(&format!("bench {bench} runs leashd and Docker and needs root"))?;
    let (id, container) = detached_session(&inst, &image)?;
    let leash = |inst: &Instance| measure(inst.command("leash").args(ours.2(&id, &container)));
    let docker = || measure(Command::new("docker").args(theirs.2(&id, &container)));
    for _ in 0..2 {
        leash(&inst)?;
        docker()?;
    }
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        o.push(leash(&inst)?);
        b.push(docker()?);
    }
    let _ = inst.command("leashctl").args(["sessions", "stop", &id]).output();
    inst.stop()?;
    let (o, b) = (median(o), median(b));
    let ratio = o.as_secs_f64() / b.as_secs_f64();
    util::out(&format!("{bench} (release, medians of {RUNS} interleaved runs; {what})"));
    util::out(&format!("  baseline: {:<38}{}", theirs.0, ms(b)));
    util::out(&format!("  {:<48}{}  ({ratio:.2}x baseline)", ours.0, ms(o)));
    let mut report = serde_json::Map::new();
    report.insert("runs".into(), RUNS.into());
    report.insert(theirs.1.into(), (b.as_secs_f64() * 1e3).into());
    report.insert(ours.1.into(), (o.as_secs_f64() * 1e3).into());
    report.insert("ratio".into(), ratio.into());
    write_report(bench, &Value::Object(report))
}

/// `leash exec ID -- true` in a running session against `docker exec
/// CONTAINER true` in the same container, each to its exit.
fn exec() -> anyhow::Result<()> {
    let to_exit = |cmd: &mut Command| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let out = cmd.stdin(Stdio::null()).output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(d)
    };
    against_docker(
        "exec",
        "to the command's exit",
        ("leash exec ID -- true", "leash_exec_ms", |id, _| ["exec", id, "--", "true"].map(String::from).to_vec()),
        ("docker exec CONTAINER true", "docker_exec_ms", |_, c| ["exec", c, "true"].map(String::from).to_vec()),
        to_exit,
    )
}

/// `leash attach` to a detached session, from the command to the first
/// byte of the session's earlier output, against `docker logs --follow` of
/// the same container (the engine's own replay of what it printed).
fn attach() -> anyhow::Result<()> {
    let first_byte = |cmd: &mut Command| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut byte = [0u8; 1];
        let read = std::io::Read::read(child.stdout.as_mut().context("stdout")?, &mut byte);
        let d = t.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        if read? != 1 {
            bail!("no output from {cmd:?}");
        }
        Ok(d)
    };
    against_docker(
        "attach",
        "to the first byte of earlier output",
        ("leash attach ID", "leash_attach_ms", |id, _| vec!["attach".to_owned(), id.to_owned()]),
        ("docker logs --follow CONTAINER", "docker_logs_follow_ms", |_, c| {
            ["logs", "--follow", c].map(String::from).to_vec()
        }),
        first_byte,
    )
}

/// `leash -- true` against `docker run --rm <same image> true`, warm.
fn session_start() -> anyhow::Result<()> {
    let (mut inst, image) = sessions_ready("bench session-start runs leashd and Docker and needs root")?;
    let project = inst.project()?;
    let leash = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        let out = inst
            .command("leash")
            .args(["--image", &image, "--", "true"])
            .current_dir(&project)
            .stdin(Stdio::null())
            .output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!("leash -- true failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(d)
    };
    let docker = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        util::output(Command::new("docker").args(["run", "--rm", &image, "true"]))?;
        Ok(t.elapsed())
    };
    // Warm both paths (page cache, image layers, the engine's caches).
    for _ in 0..2 {
        leash()?;
        docker()?;
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours.push(leash()?);
        base.push(docker()?);
    }
    // leashd's own breakdown, from the sessions' remove events.
    let out = util::output(inst.command("leashctl").args(["events", "--json"]))?;
    let mut phases: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in String::from_utf8_lossy(&out).lines() {
        let e: Value = serde_json::from_str(line)?;
        if e["action"] == "session.remove" {
            for (k, v) in e["details"].as_object().into_iter().flatten() {
                if let Some(ms) = v.as_str().and_then(|s| s.parse::<f64>().ok()) {
                    phases.entry(k.clone()).or_default().push(ms);
                }
            }
        }
    }
    inst.stop()?;
    let (o, b) = (median(ours), median(base));
    util::out(&format!("session-start (release, warm, medians of {RUNS} runs)"));
    util::out(&format!("  baseline: docker run --rm {image} true   {}", ms(b)));
    util::out(&format!(
        "  leash --image {image} -- true         {}  ({:.2}x baseline)",
        ms(o),
        o.as_secs_f64() / b.as_secs_f64()
    ));
    util::out("  leashd's breakdown (medians over all sessions, ms):");
    let mut report_phases = serde_json::Map::new();
    for name in ["prepare_ms", "create_ms", "start_ms", "release_ms", "run_ms", "wait_ms", "remove_ms"] {
        if let Some(mut v) = phases.remove(name) {
            v.sort_by(f64::total_cmp);
            let m = v[v.len() / 2];
            util::out(&format!("    {:<11} {m:>7.1}", name.trim_end_matches("_ms")));
            report_phases.insert(name.to_owned(), m.into());
        }
    }
    let report = serde_json::json!({
        "runs": RUNS,
        "docker_run_ms": b.as_secs_f64() * 1e3,
        "leash_ms": o.as_secs_f64() * 1e3,
        "ratio": o.as_secs_f64() / b.as_secs_f64(),
        "phases_ms": report_phases,
    });
    write_report("session-start", &report)
}

/// Interleaved runs of the sensor benchmark.
const SENSOR_RUNS: usize = 20;
const OPENS: u32 = 100_000;
const EXECS: u32 = 2_000;
const STORM: u64 = 1_000_000;

/// The median of paired ratios, with a 95 % confidence interval from order
/// statistics (ranks 6 and 15 of 20).
fn ratio_summary(mut ratios: Vec<f64>) -> (f64, f64, f64) {
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = median_f64(ratios.clone());
    let (lo, hi) = if n >= 20 { (ratios[5], ratios[14]) } else { (ratios[0], ratios[n - 1]) };
    (median, lo, hi)
}

fn describe(name: &str, (median, lo, hi): (f64, f64, f64), target: f64) -> String {
    let verdict = if hi < 1.02 {
        "noise (under 1.02x)".to_owned()
    } else if median <= target {
        format!("within the {target:.2}x target")
    } else {
        format!("over the {target:.2}x target")
    };
    format!("  {name:<44} {median:.3}x  (95% CI {lo:.3}-{hi:.3})  {verdict}")
}

fn sensor(events_only: bool) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench sensor runs leashd, Docker and BPF programs and needs root");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    let storm = util::build_static("leash-testkit", "leash-storm", true)?;
    crate::image::run(&["test".to_owned()])?;
    let image = crate::image::tag("test");
    let mut inst = Instance::new(&bin)?;
    let start = |inst: &mut Instance| -> anyhow::Result<()> {
        inst.leashd = Some(inst.command("leashd").env("LEASH_ENTRY_BIN", &entry).stdout(Stdio::null()).spawn()?);
        inst.wait(Duration::from_secs(20), all_running)?;
        Ok(())
    };
    let project = inst.project()?;
    std::fs::write(project.join("f"), "x")?;
    // 1,000 rules: everything allowed but 999 directories nobody opens.
    let mut policy = "@id(\"all\") permit (principal, action, resource);\n".to_owned();
    for i in 0..999 {
        policy.push_str(&format!(
            "forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"/nonexistent/d{i}/\");\n"
        ));
    }
    let policy_path = project.with_file_name("bench.cedar");
    std::fs::write(&policy_path, policy)?;

    // Host processes outside any session: the sensor loaded (a session
    // governed) or not at all, interleaved.
    let host_file = project.join("f");
    let host_loop = || -> anyhow::Result<f64> {
        let out = util::output(Command::new("/bin/busybox").args([
            "sh",
            "-c",
            &timed_loop(OPENS, &format!(": < {}", host_file.display())),
        ]))?;
        micros(&out)
    };
    let mut host_ratios = Vec::new();
    for _ in 0..if events_only { 0 } else { SENSOR_RUNS / 2 } {
        let without = host_loop()?;
        start(&mut inst)?;
        let with = host_loop()?;
        inst.stop()?;
        host_ratios.push(with / without);
        start(&mut inst)?;
        let with2 = host_loop()?;
        inst.stop()?;
        let without2 = host_loop()?;
        host_ratios.push(with2 / without2);
    }

    start(&mut inst)?;
    let (mut session, governed) = governed_session(&inst, &image, &policy_path, &project, &[])?;
    let plain = "leash-bench-ungoverned";
    start_plain(plain, &image, &project)?;
    let exec_in = |container: &str, script: &str| timed_exec(container, &project, script);
    let open_loop = timed_loop(OPENS, ": < f");
    let exec_loop = timed_loop(EXECS, "/bin/true");
    let runs = if events_only { 0 } else { SENSOR_RUNS };
    // Warm both.
    for c in [governed.as_str(), plain].into_iter().take(if events_only { 0 } else { 2 }) {
        exec_in(c, &open_loop)?;
        exec_in(c, &exec_loop)?;
    }
    let (mut open_ratios, mut exec_ratios) = (Vec::new(), Vec::new());
    let (mut open_abs, mut exec_abs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Alternate which goes first.
        let (a, b) = if run.is_multiple_of(2) { (governed.as_str(), plain) } else { (plain, governed.as_str()) };
        let (oa, ob) = (exec_in(a, &open_loop)?, exec_in(b, &open_loop)?);
        let (ea, eb) = (exec_in(a, &exec_loop)?, exec_in(b, &exec_loop)?);
        let ((og, op), (eg, ep)) = if run.is_multiple_of(2) { ((oa, ob), (ea, eb)) } else { ((ob, oa), (eb, ea)) };
        open_ratios.push(og / op);
        exec_ratios.push(eg / ep);
        open_abs.push((og / f64::from(OPENS), op / f64::from(OPENS)));
        exec_abs.push((eg / f64::from(EXECS), ep / f64::from(EXECS)));
    }
    // The event pipeline: a storm of governed connects (one event each),
    // kernel → ring buffer → sensor → leashd, counted at both ends.
    std::fs::copy(&storm, project.join("leash-storm"))?;
    let counts = |inst: &Instance| -> (u64, u64) {
        let s = inst.status().unwrap_or(Value::Null);
        let sensor_dropped = component(&s, "leash-sensor")["facts"]["dropped_events"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        (s["events"]["published"].as_u64().unwrap_or(0), s["events"]["dropped"].as_u64().unwrap_or(0) + sensor_dropped)
    };
    let stored = |inst: &Instance| inst.status().and_then(|s| s["events"]["stored"].as_u64()).unwrap_or(0);
    let store_failed = |inst: &Instance| inst.status().and_then(|s| s["events"]["store_failed"].as_u64()).unwrap_or(0);
    // Sustained: the highest paced rate (3 s of events) that arrives whole,
    // with nothing dropped; and an unpaced storm, counted at both ends.
    let mut storms = Vec::new();
    let storm = |rate: Option<u64>, n: u64| -> anyhow::Result<Value> {
        let (published0, dropped0) = counts(&inst);
        let (stored0, store_failed0) = (stored(&inst), store_failed(&inst));
        let started = Instant::now();
        let mut args = vec![
            "exec".to_owned(),
            governed.clone(),
            project.join("leash-storm").display().to_string(),
            "connect".to_owned(),
            n.to_string(),
            "127.0.0.1:9".to_owned(),
        ];
        if let Some(r) = rate {
            args.push(r.to_string());
        }
        let out = util::output(Command::new("docker").args(&args))?;
        let generated: Vec<f64> =
            String::from_utf8_lossy(&out).split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let generate_s = generated.get(1).copied().unwrap_or(0.0) / 1e6;
        // Delivered: wait until every event arrived or nothing moves for 2 s.
        let (mut last, mut last_change) = (published0, Instant::now());
        let mut delivered_at = started.elapsed();
        loop {
            let (p, _) = counts(&inst);
            if p != last {
                last = p;
                last_change = Instant::now();
                delivered_at = started.elapsed();
            }
            if p >= published0 + n || last_change.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The audit store's writer catches up on its own time.
        let mut stored1 = stored(&inst);
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(50));
            let now = stored(&inst);
            if now == stored1 {
                break;
            }
            stored1 = now;
        }
        let (published1, dropped1) = counts(&inst);
        let delivered = published1.saturating_sub(published0);
        Ok(serde_json::json!({
            "paced_per_s": rate,
            "generated": n,
            "generated_per_s": n as f64 / generate_s.max(1e-9),
            "delivered": delivered,
            "delivered_per_s": delivered as f64 / delivered_at.as_secs_f64(),
            "dropped": dropped1.saturating_sub(dropped0),
            "stored": stored1.saturating_sub(stored0),
            "store_failed": store_failed(&inst).saturating_sub(store_failed0),
        }))
    };
    let memory_before = inst.status().map(|s| crate::bench_support::memory_mib(&s)).unwrap_or(Value::Null);
    let mut sustained = 0u64;
    for rate in [50_000u64, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 500_000, 600_000] {
        let r = storm(Some(rate), rate * 3)?;
        let whole = r["delivered"].as_u64().is_some_and(|d| d >= rate * 3) && r["dropped"].as_u64() == Some(0);
        storms.push(r);
        if !whole {
            break;
        }
        sustained = rate;
    }
    storms.push(storm(None, STORM)?);
    // Memory after the storms (over a million events), and once more after
    // 10 s without events: what the daemons give back after a burst.
    let events_total: u64 = storms.iter().filter_map(|s| s["delivered"].as_u64()).sum();
    let memory_after = inst.status().map(|s| crate::bench_support::memory_mib(&s)).unwrap_or(Value::Null);
    std::thread::sleep(Duration::from_secs(10));
    let memory_rested = inst.status().map(|s| crate::bench_support::memory_mib(&s)).unwrap_or(Value::Null);
    let dropped = inst.status().map(|s| component(&s, "leash-sensor")["facts"].clone()).unwrap_or(Value::Null);
    let _ = Command::new("docker").args(["rm", "-f", plain]).output();
    let _ = session.kill();
    let _ = session.wait();
    inst.stop()?;

    let unpaced = storms.last().cloned().unwrap_or(Value::Null);
    let mut report = serde_json::json!({
        "rules": 1000,
        "events_sustained_per_s": sustained,
        "event_storms": storms,
        "sensor_status": dropped,
        "memory_mib": {
            "before": memory_before,
            "after_events": memory_after,
            "after_10s_idle": memory_rested,
            "events_delivered": events_total,
        },
    });
    if !events_only {
        let per = |v: &[(f64, f64)]| {
            let mut g: Vec<f64> = v.iter().map(|x| x.0).collect();
            let mut p: Vec<f64> = v.iter().map(|x| x.1).collect();
            g.sort_by(f64::total_cmp);
            p.sort_by(f64::total_cmp);
            (g[g.len() / 2], p[p.len() / 2])
        };
        let (og, op) = per(&open_abs);
        let (eg, ep) = per(&exec_abs);
        let (open, exec, host) = (ratio_summary(open_ratios), ratio_summary(exec_ratios), ratio_summary(host_ratios));
        util::out(&format!(
            "sensor (release, fallback tier, enforce mode, 1,000 rules; {SENSOR_RUNS} interleaved runs, paired ratios)"
        ));
        util::out(&describe(&format!("open/close x{OPENS} in the session ({og:.2} vs {op:.2} µs)"), open, 1.03));
        util::out(&describe(&format!("exec x{EXECS} in the session ({eg:.0} vs {ep:.0} µs)"), exec, 1.05));
        util::out(&describe("host open/close outside any session", host, 1.02));
        report["runs"] = SENSOR_RUNS.into();
        report["open"] =
            serde_json::json!({"ratio": open.0, "ci95": [open.1, open.2], "governed_us": og, "ungoverned_us": op});
        report["exec"] =
            serde_json::json!({"ratio": exec.0, "ci95": [exec.1, exec.2], "governed_us": eg, "ungoverned_us": ep});
        report["host_open"] = serde_json::json!({"ratio": host.0, "ci95": [host.1, host.2]});
    }
    util::out(&format!(
        "  events, kernel to leashd: sustained {sustained} events/s with none dropped (paced 3 s steps); \
         unpaced {} generated at {:.0}/s: {} delivered, {} dropped (counted)",
        unpaced["generated"],
        unpaced["generated_per_s"].as_f64().unwrap_or(0.0),
        unpaced["delivered"],
        unpaced["dropped"]
    ));
    let total = |m: &Value, k: &str| m["total"][k].as_f64().unwrap_or(0.0);
    util::out(&format!(
        "  memory of the daemons, RSS / PSS MiB: {:.1} / {:.1} before; {:.1} / {:.1} after {events_total} events; \
         {:.1} / {:.1} after 10 s without events",
        total(&memory_before, "rss"),
        total(&memory_before, "pss"),
        total(&memory_after, "rss"),
        total(&memory_after, "pss"),
        total(&memory_rested, "rss"),
        total(&memory_rested, "pss"),
    ));
    write_report(if events_only { "sensor-events" } else { "sensor" }, &report)
}

/// Runs `script` in three containers (each with its directory) `runs`
/// times after one warm-up, rotating which goes first; each run's
/// microseconds, in the containers' order.
fn rotated(containers: &[(String, PathBuf)], script: &str, runs: usize) -> anyhow::Result<Vec<[f64; 3]>> {
    let run_in = |(container, dir): &(String, PathBuf)| timed_exec(container, dir, script);
    for c in containers {
        run_in(c)?;
    }
    let mut out = Vec::new();
    for run in 0..runs {
        let mut t = [0.0; 3];
        for k in 0..3 {
            let i = (run + k) % 3;
            t[i] = run_in(&containers[i])?;
        }
        out.push(t);
    }
    Ok(out)
}

/// Runs of `bench ask`.
const ASK_RUNS: usize = 7;
/// New files (each created, then read by a program run for it) per run of `bench ask`.
const ASK_FILES: u32 = 2_000;

/// What `leash --ask` costs operations the policy allows (it must cost
/// nothing: only denials wait): the same work in a session with `--ask`,
/// one without, and plain Docker, under a policy that allows it all but
/// is not "permit everything" (each new file is decided in user space).
fn ask() -> anyhow::Result<()> {
    let (mut inst, image) = sessions_ready("bench ask runs leashd, Docker and BPF programs and needs root")?;
    let base = inst.project()?;
    let policy = base.join("ask.cedar");
    std::fs::write(&policy, include_str!("../../policies/examples/e17-system-programs-only.cedar"))?;
    let mut sessions = Vec::new();
    let mut containers = Vec::new();
    for (name, flags) in [("asking", &["--ask"][..]), ("not-asking", &[][..])] {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        let (session, container) = governed_session(&inst, &image, &policy, &dir, flags)?;
        sessions.push(session);
        containers.push((container, dir));
    }
    let plain = "leash-bench-ask";
    start_plain(plain, &image, &base)?;
    std::fs::create_dir_all(base.join("plain"))?;
    containers.push((plain.to_owned(), base.join("plain")));
    let script =
        format!("rm -rf nf && mkdir nf && cd nf && {}", timed_loop(ASK_FILES, "echo x > n$i; cat n$i > /dev/null"));
    let times = rotated(&containers, &script, ASK_RUNS)?;
    let _ = Command::new("docker").args(["rm", "-f", plain]).output();
    for mut s in sessions {
        let _ = s.kill();
        let _ = s.wait();
    }
    inst.stop()?;
    let asking = ratio_summary(times.iter().map(|t| t[0] / t[1]).collect());
    let governed = ratio_summary(times.iter().map(|t| t[1] / t[2]).collect());
    let per_op = |k: usize| median_f64(times.iter().map(|t| t[k] / f64::from(ASK_FILES)).collect());
    util::out(&format!(
        "ask (release, fallback tier; {ASK_RUNS} interleaved runs of {ASK_FILES} new files, each created and \
         read by a program run for it, all allowed; medians of paired ratios)"
    ));
    util::out(&format!(
        "  per file: {:.1} µs with --ask, {:.1} µs without, {:.1} µs plain Docker",
        per_op(0),
        per_op(1),
        per_op(2)
    ));
    util::out(&describe("--ask vs the same session without", asking, 1.02));
    util::out(&describe("governed (without --ask) vs plain Docker", governed, 1.05));
    write_report(
        "ask",
        &serde_json::json!({
            "runs": ASK_RUNS,
            "files": ASK_FILES,
            "per_file_us": { "asking": per_op(0), "not_asking": per_op(1), "plain": per_op(2) },
            "asking_vs_not": { "ratio": asking.0, "ci95": [asking.1, asking.2] },
            "governed_vs_plain": { "ratio": governed.0, "ci95": [governed.1, governed.2] },
        }),
    )
}

/// Files each run of `bench sensor --new-files` creates and opens.
const NEW_FILES: u32 = 10_000;
/// Interleaved runs of `bench sensor --new-files`.
const NEW_FILE_RUNS: usize = 10;
/// Files in the forbidden directory whose identities the decider traces.
const TRACED_FILES: usize = 1_000;

/// Creating and opening 10,000 new files: in a session whose policy
/// forbids a directory that exists (with 1,000 files, so the decider traces
/// identities on every open it decides), in a session whose forbidden
/// directory does not exist (nothing to trace), and under plain Docker; the
/// same image, interleaved.
fn sensor_new_files() -> anyhow::Result<()> {
    let (mut inst, image) = sessions_ready("bench sensor runs leashd, Docker and BPF programs and needs root")?;
    let base = inst.project()?;
    let (traced, untraced) = (base.join("traced"), base.join("untraced"));
    let mut sessions = Vec::new();
    let mut containers = Vec::new();
    for (dir, forbidden) in [(&traced, traced.join("private")), (&untraced, PathBuf::from("/nonexistent/private"))] {
        std::fs::create_dir_all(dir)?;
        if forbidden.starts_with(dir) {
            std::fs::create_dir_all(&forbidden)?;
            for i in 0..TRACED_FILES {
                std::fs::write(forbidden.join(format!("f{i}")), "s")?;
            }
        }
        let policy = dir.with_extension("cedar");
        std::fs::write(
            &policy,
            format!(
                "@id(\"all\") permit (principal, action, resource);\n\
                 @id(\"private\") forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"{}/\");\n",
                forbidden.display()
            ),
        )?;
        let (session, container) = governed_session(&inst, &image, &policy, dir, &[])?;
        sessions.push(session);
        containers.push((container, dir.clone()));
    }
    let plain = "leash-bench-new-files";
    start_plain(plain, &image, &base)?;
    containers.push((plain.to_owned(), untraced.clone()));
    let script = format!("rm -rf nf && mkdir nf && cd nf && {}", timed_loop(NEW_FILES, "echo x > n$i; : < n$i"));
    let (mut traced_r, mut untraced_r, mut identity_r) = (Vec::new(), Vec::new(), Vec::new());
    let mut abs = Vec::new();
    for t in rotated(&containers, &script, NEW_FILE_RUNS)? {
        traced_r.push(t[0] / t[2]);
        untraced_r.push(t[1] / t[2]);
        identity_r.push(t[0] / t[1]);
        abs.push(t.map(|x| x / f64::from(NEW_FILES)));
    }
    let _ = Command::new("docker").args(["rm", "-f", plain]).output();
    for mut s in sessions {
        let _ = s.kill();
        let _ = s.wait();
    }
    inst.stop()?;
    let per_file = |k: usize| median_f64(abs.iter().map(|a| a[k]).collect());
    let (tr, un, id) = (ratio_summary(traced_r), ratio_summary(untraced_r), ratio_summary(identity_r));
    util::out(&format!(
        "sensor --new-files (release, fallback tier; {NEW_FILE_RUNS} interleaved runs of {NEW_FILES} new files, \
         each created then opened; medians of paired ratios)"
    ));
    util::out(&format!(
        "  per file: {:.1} µs traced, {:.1} µs untraced, {:.1} µs plain Docker",
        per_file(0),
        per_file(1),
        per_file(2)
    ));
    util::out(&describe("governed, tracing 1,000 forbidden files", tr, 1.05));
    util::out(&describe("governed, nothing to trace", un, 1.05));
    util::out(&describe("identity tracing alone (traced vs untraced)", id, 1.05));
    write_report(
        "sensor-new-files",
        &serde_json::json!({
            "runs": NEW_FILE_RUNS,
            "files": NEW_FILES,
            "traced_files": TRACED_FILES,
            "per_file_us": { "traced": per_file(0), "untraced": per_file(1), "plain": per_file(2) },
            "traced_vs_plain": { "ratio": tr.0, "ci95": [tr.1, tr.2] },
            "untraced_vs_plain": { "ratio": un.0, "ci95": [un.1, un.2] },
            "identity": { "ratio": id.0, "ci95": [id.1, id.2] },
        }),
    )
}
