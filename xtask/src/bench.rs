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
        Some(other) => bail!("unknown benchmark {other:?}; available: startup"),
        None => bail!("which benchmark? available: startup"),
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
    let dir = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("startup.json"), serde_json::to_vec_pretty(&report)?)?;
    util::out(&format!("  written to {}", dir.join("startup.json").display()));
    Ok(())
}
