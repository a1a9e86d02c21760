//! `cargo xtask bench <what>`: measurements reported as medians of several
//! runs, beside a baseline measured in the same run.
//!
//! `startup`: release binaries in a private runtime dir; cold start of all
//! daemons to "all healthy" (leashctl status says so) against the baseline
//! of executing the four binaries with `--version`; a component's
//! restart-to-healthy time after SIGKILL; each daemon's idle RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util;

const RUNS: usize = 10;
const DAEMONS: [&str; 4] = ["leashd", "leash-policy", "leash-sensor", "leash-proxy"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("startup") => startup(),
        Some("session-start") => session_start(),
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
        Some(other) => bail!("unknown benchmark {other:?}; available: startup, session-start, policy"),
        None => bail!("which benchmark? available: startup, session-start, policy"),
    }
}

struct Instance {
    _root: tempfile::TempDir,
    runtime: PathBuf,
    bin: PathBuf,
    leashd: Option<Child>,
}

impl Instance {
    fn new(bin: &Path) -> anyhow::Result<Instance> {
        let root = tempfile::Builder::new().prefix("leash-bench-").tempdir()?;
        Ok(Instance { runtime: root.path().join("run"), _root: root, bin: bin.to_owned(), leashd: None })
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("LEASH_RUNTIME_DIR", &self.runtime)
            .env("LEASH_STATE_DIR", self.runtime.with_file_name("state"))
            .env("LEASH_INSTANCE", "bench")
            .env("LEASH_LOG", "warn")
            .env_remove("NOTIFY_SOCKET");
        c
    }

    fn project(&self) -> anyhow::Result<PathBuf> {
        let p = self.runtime.with_file_name("project");
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    fn status(&self) -> Option<Value> {
        let out = self.command("leashctl").args(["status", "--json"]).stderr(Stdio::null()).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait(&self, limit: Duration, mut ok: impl FnMut(&Value) -> bool) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status().filter(&mut ok) {
                return Ok(s);
            }
            if start.elapsed() > limit {
                bail!("leash did not reach the expected state within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        util::output(self.command("leashctl").args(["stop", "--all"]))?;
        if let Some(mut c) = self.leashd.take() {
            c.wait()?;
        }
        Ok(())
    }
}

fn all_running(s: &Value) -> bool {
    s["components"].as_array().is_some_and(|cs| cs.len() == 3 && cs.iter().all(|c| c["state"] == "running"))
}

fn component<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["components"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

/// Writes a benchmark's figures to `<target>/bench/<name>.json`.
fn write_report(name: &str, report: &Value) -> anyhow::Result<()> {
    let dir = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)?;
    util::out(&format!("  written to {}", path.display()));
    Ok(())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u64) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
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

/// `leash -- true` against `docker run --rm <same image> true`, warm.
fn session_start() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench session-start runs leashd and Docker and needs root");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    crate::image::run(&["test".to_owned()])?;
    let image = crate::image::tag("test");
    let mut inst = Instance::new(&bin)?;
    inst.leashd = Some(inst.command("leashd").env("LEASH_ENTRY_BIN", &entry).stdout(Stdio::null()).spawn()?);
    inst.wait(Duration::from_secs(20), all_running)?;
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
    for name in ["prepare_ms", "create_ms", "start_ms", "release_ms", "run_ms", "remove_ms"] {
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
