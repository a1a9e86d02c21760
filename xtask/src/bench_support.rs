//! What the benchmarks share: a private release instance of the daemons
//! (`Instance`), governed sessions and plain containers to time scripts
//! in, medians, the daemons' memory, and the reports under
//! `<target>/bench/`. The benchmarks use it; it uses none of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::util;

/// A private instance of the release daemons (a runtime and state dir of
/// its own), stopped when dropped.
pub(crate) struct Instance {
    _root: tempfile::TempDir,
    runtime: PathBuf,
    bin: PathBuf,
    pub(crate) leashd: Option<Child>,
}

impl Instance {
    pub(crate) fn new(bin: &Path) -> anyhow::Result<Instance> {
        let root = tempfile::Builder::new().prefix("leash-bench-").tempdir()?;
        Ok(Instance { runtime: root.path().join("run"), _root: root, bin: bin.to_owned(), leashd: None })
    }

    pub(crate) fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("LEASH_RUNTIME_DIR", &self.runtime)
            .env("LEASH_STATE_DIR", self.runtime.with_file_name("state"))
            .env("LEASH_INSTANCE", "bench")
            .env("LEASH_LOG", "warn")
            // The Control UI on a free port: a benchmark never takes 18080.
            .env("LEASH_LISTEN", "127.0.0.1:0")
            .env_remove("NOTIFY_SOCKET");
        c
    }

    pub(crate) fn runtime_dir(&self) -> &Path {
        &self.runtime
    }

    pub(crate) fn project(&self) -> anyhow::Result<PathBuf> {
        let p = self.runtime.with_file_name("project");
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    pub(crate) fn status(&self) -> Option<Value> {
        let out = self.command("leashctl").args(["status", "--json"]).stderr(Stdio::null()).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub(crate) fn wait(&self, limit: Duration, mut ok: impl FnMut(&Value) -> bool) -> anyhow::Result<Value> {
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

    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        util::output(self.command("leashctl").args(["stop", "--all"]))?;
        if let Some(mut c) = self.leashd.take() {
            c.wait()?;
        }
        Ok(())
    }
}

/// A session running `sleep 3600` in `image` under `policy`: the `leash`
/// process and the container's name.
pub(crate) fn governed_session(
    inst: &Instance,
    image: &str,
    policy: &Path,
    project: &Path,
    flags: &[&str],
) -> anyhow::Result<(std::process::Child, String)> {
    let session = inst
        .command("leash")
        .args(["--image", image, "--policy", &policy.display().to_string()])
        .args(flags)
        .args(["--", "sh", "-c", RUNNER])
        .current_dir(project)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    loop {
        let out = util::output(inst.command("leashctl").args(["sessions", "--json"]))?;
        let v: Value = serde_json::from_slice(&out)?;
        let here = project.canonicalize().unwrap_or_else(|_| project.to_owned());
        let ours = |s: &&Value| s["project"].as_str().is_some_and(|p| Path::new(p) == here);
        if let Some(c) = v.as_array().and_then(|a| a.iter().find(ours)).filter(|s| s["state"] == "running") {
            return Ok((session, c["container"].as_str().unwrap_or_default().to_owned()));
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the governed session did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn all_running(s: &Value) -> bool {
    s["components"].as_array().is_some_and(|cs| cs.len() == 3 && cs.iter().all(|c| c["state"] == "running"))
}

pub(crate) fn component<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["components"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

/// Writes a benchmark's figures to `<target>/bench/<name>.json`.
pub(crate) fn write_report(name: &str, report: &Value) -> anyhow::Result<()> {
    let dir = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)?;
    util::out(&format!("  written to {}", path.display()));
    Ok(())
}

pub(crate) fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn rss_kib(pid: u64) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// A release instance with leashd running and the test image built, ready
/// for sessions; `why_root` is the refusal when not root.
pub(crate) fn sessions_ready(why_root: &str) -> anyhow::Result<(Instance, String)> {
    if !rustix::process::geteuid().is_root() {
        bail!("{why_root}");
    }
    let bin = util::build_binaries(true)?;
    let entry = util::build_static_entry(true)?;
    crate::image::run(&["test".to_owned()])?;
    let mut inst = Instance::new(&bin)?;
    inst.leashd = Some(inst.command("leashd").env("LEASH_ENTRY_BIN", &entry).stdout(Stdio::null()).spawn()?);
    inst.wait(Duration::from_secs(20), all_running)?;
    Ok((inst, crate::image::tag("test")))
}

/// A detached session that printed `ready` and sleeps: its id and container.
pub(crate) fn detached_session(inst: &Instance, image: &str) -> anyhow::Result<(String, String)> {
    let project = inst.project()?;
    let started = inst
        .command("leash")
        .args(["-d", "--image", image, "--", "sh", "-c", "echo ready; sleep 600"])
        .current_dir(&project)
        .stdin(Stdio::null())
        .output()?;
    if !started.status.success() {
        bail!("leash -d failed: {}", String::from_utf8_lossy(&started.stderr));
    }
    let id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    let sessions: Value =
        serde_json::from_slice(&util::output(inst.command("leashctl").args(["sessions", "--json"]))?)?;
    let container = sessions
        .as_array()
        .and_then(|v| v.iter().find(|s| s["id"] == id.as_str()))
        .and_then(|s| s["container"].as_str())
        .context("the detached session in leashctl sessions")?
        .to_owned();
    // Until the session's output is there to replay.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&util::output(Command::new("docker").args(["logs", &container]))?).contains("ready")
    {
        if Instant::now() > deadline {
            bail!("the session printed nothing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((id, container))
}

/// A shell loop that prints how many microseconds `body` took `n` times
/// (busybox's `adjtimex` gives the time to the microsecond).
pub(crate) fn timed_loop(n: u32, body: &str) -> String {
    timed(&format!("i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done"))
}

/// A shell block that prints how many microseconds `body` took.
pub(crate) fn timed(body: &str) -> String {
    format!(
        "now() {{ adjtimex | awk '/tv_sec/{{s=$2}} /tv_usec/{{u=$2}} END{{printf \"%s%06d\", s, u}}'; }}; \
         s=$(now); {body}; e=$(now); echo $((e-s))"
    )
}

/// What a benchmark container runs: each job the bench hands it (a
/// script in /tmp, started through a fifo) runs as a child of the
/// container's command, so in a session it is governed exactly as the
/// agent is (leash-entry's supervised-calls filter included, which a
/// `docker exec` would not have).
const RUNNER: &str = "mkfifo /tmp/leash-bench-go /tmp/leash-bench-done; \
     while :; do read _ < /tmp/leash-bench-go; sh /tmp/leash-bench-job > /tmp/leash-bench-out 2>&1; \
     echo done > /tmp/leash-bench-done; done";

/// Starts `name`, an ungoverned container of `image` with `dir` mounted at
/// the same path (replacing one left by an earlier run): the baseline.
pub(crate) fn start_plain(name: &str, image: &str, dir: &Path) -> anyhow::Result<()> {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
    let mount = format!("{0}:{0}", dir.display());
    util::output(Command::new("docker").args(["run", "-d", "--name", name, "-v", &mount, image, "sh", "-c", RUNNER]))?;
    Ok(())
}

/// Runs a [`timed_loop`] script as a job of `container`'s runner, in
/// `dir`; its microseconds.
pub(crate) fn timed_exec(container: &str, dir: &Path, script: &str) -> anyhow::Result<f64> {
    use std::io::Write;
    let job = format!("cd '{}' || exit 1\n{script}\n", dir.display());
    let mut put = Command::new("docker")
        .args(["exec", "-i", container, "sh", "-c", "cat > /tmp/leash-bench-job"])
        .stdin(Stdio::piped())
        .spawn()?;
    put.stdin.take().context("stdin")?.write_all(job.as_bytes())?;
    anyhow::ensure!(put.wait()?.success(), "cannot hand a job to {container}");
    micros(&util::output(Command::new("docker").args([
        "exec",
        container,
        "sh",
        "-c",
        "echo go > /tmp/leash-bench-go; cat /tmp/leash-bench-done > /dev/null; cat /tmp/leash-bench-out",
    ]))?)
}

pub(crate) fn micros(out: &[u8]) -> anyhow::Result<f64> {
    let text = String::from_utf8_lossy(out);
    text.trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok())
        .with_context(|| format!("no timing in {text:?}"))
}

/// The median (NaN for none).
pub(crate) fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n.is_multiple_of(2) => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        _ => v[n / 2],
    }
}

/// The daemons' pids by name, and the session holders' (`leash-sensor --hold`).
pub(crate) fn daemon_pids(status: &Value) -> Vec<(String, u64)> {
    let mut out = vec![("leashd".to_owned(), status["leashd"]["pid"].as_u64().unwrap_or(0))];
    for c in status["components"].as_array().into_iter().flatten() {
        out.push((c["name"].as_str().unwrap_or_default().to_owned(), c["pid"].as_u64().unwrap_or(0)));
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u64>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"leash-sensor")) && args.iter().any(|a| *a == b"--hold") {
            out.push(("leash-sensor holders".to_owned(), pid));
        }
    }
    out
}

/// Memory by daemon, MiB, as `leashctl status --json` reports it: resident
/// (`rss`) and proportional (`pss`: shared pages divided, the sensor's
/// event ring, mapped twice, counted once), with their sums.
pub(crate) fn memory_mib(status: &Value) -> Value {
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / 1048576.0;
    let mut m = serde_json::Map::new();
    let (mut rss, mut pss) = (0.0, 0.0);
    let mut add = |name: String, d: &Value| {
        let (r, p) = (mib(&d["rss_bytes"]), mib(&d["pss_bytes"]));
        rss += r;
        pss += p;
        m.insert(name, json!({ "rss": (r * 10.0).round() / 10.0, "pss": (p * 10.0).round() / 10.0 }));
    };
    add("leashd".into(), &status["leashd"]);
    for c in status["components"].as_array().into_iter().flatten() {
        add(c["name"].as_str().unwrap_or_default().to_owned(), c);
    }
    m.insert("total".into(), json!({ "rss": (rss * 10.0).round() / 10.0, "pss": (pss * 10.0).round() / 10.0 }));
    Value::Object(m)
}
