//! Test helpers: a private leash stack (runtime dir, state dir, instance)
//! driven through the built binaries, polling with patience, process
//! inspection. Dev-dependency only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod http;
pub mod upstream;

/// Patience multiplier for slow machines: `LEASH_TEST_PATIENCE=3` triples
/// every wait.
pub fn patience(d: Duration) -> Duration {
    let k: u32 = std::env::var("LEASH_TEST_PATIENCE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    d * k.max(1)
}

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what`
/// after `limit` (scaled by [`patience`]).
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let limit = patience(limit);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `git` on the host in `project` (with a committer identity);
/// panics when it fails.
pub fn git(project: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=leash", "-c", "user.email=leash@example.com", "-C"])
        .arg(project)
        .args(args)
        .output()
        .expect("git on the host");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// The directory holding the workspace's built binaries (the test
/// executable lives in `<target>/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    for name in ["leashd", "leashctl", "leash", "leash-policy", "leash-sensor", "leash-proxy"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build the workspace's binaries first (`cargo test --workspace` does)",
            dir.join(name).display()
        );
    }
    dir
}

/// How this kernel has sessions' files decided: "bpf-lsm" where the
/// sensor's own probe finds that BPF LSM programs load and `bpf` is an
/// active LSM, unless the run keeps sessions off it (`LEASH_SENSOR_LSM=0`,
/// which the daemons inherit), else "fanotify".
pub fn file_mechanism() -> &'static str {
    static MECHANISM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    MECHANISM.get_or_init(|| {
        let out = Command::new(bin_dir().join("leash-sensor")).arg("--probe").output().expect("leash-sensor --probe");
        let probe = String::from_utf8_lossy(&out.stdout).into_owned();
        let allowed = std::env::var_os("LEASH_SENSOR_LSM").is_none_or(|v| v != "0");
        if allowed && probe.lines().any(|l| l == "bpf-lsm: ok") { "bpf-lsm" } else { "fanotify" }
    })
}

/// The static leash-entry, built once per test process into
/// `<target>/static` (a target dir of its own, so this works while the outer
/// cargo holds the main one).
pub fn static_entry() -> PathBuf {
    static ENTRY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ENTRY.get_or_init(|| build_static("leash-entry", "leash-entry")).clone()
}

/// The static `leash-storm` (a load and probe generator to run inside
/// session containers), built on first use.
pub fn static_storm() -> PathBuf {
    static STORM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STORM.get_or_init(|| build_static("leash-testkit", "leash-storm")).clone()
}

/// Builds one binary statically (glibc `crt-static`) under `<target>/static`,
/// or, when `LEASH_TEST_STATIC_DIR` names a directory of them built
/// beforehand, takes it from there (`cargo xtask vmtest --sessions`: the
/// VM has no cargo).
fn build_static(package: &str, bin: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LEASH_TEST_STATIC_DIR") {
        let prebuilt = Path::new(&dir).join(bin);
        assert!(prebuilt.exists(), "{} is missing (LEASH_TEST_STATIC_DIR names the prebuilt ones)", prebuilt.display());
        return prebuilt;
    }
    let target = bin_dir().parent().expect("target dir").to_path_buf();
    let triple = std::env::var("LEASH_TEST_TRIPLE").unwrap_or_else(|_| host_triple());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "--package", package, "--bin", bin, "--target", &triple, "--target-dir"])
        .arg(target.join("static"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build the static {bin}: {e}"));
    assert!(status.success(), "building the static {bin} failed");
    target.join("static").join(triple).join("debug").join(bin)
}

/// This machine's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc).arg("-vV").output().unwrap_or_else(|e| panic!("run rustc -vV: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host triple")
}

/// The image most session tests run in (`cargo xtask image test`).
pub const TEST_IMAGE: &str = "leash-test:latest";

/// The container engine a test run's sessions use: Docker, or Podman
/// through its Docker-compatible API (`LEASH_TEST_ENGINE=podman`). The
/// stacks' leashd, the `docker` CLI of [`docker`] and every helper here talk
/// to it, so one test binary runs on either engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The Docker engine (the default).
    Docker,
    /// Podman's Docker-compatible API at [`PODMAN_SOCKET`].
    Podman,
}

impl Engine {
    /// The `DOCKER_HOST` that reaches it; `None`: the local Docker socket.
    pub fn docker_host(self) -> Option<String> {
        match self {
            Engine::Docker => None,
            Engine::Podman => Some(format!("unix://{PODMAN_SOCKET}")),
        }
    }

    /// Its name, as `LEASH_TEST_ENGINE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// The engine this test run uses (`LEASH_TEST_ENGINE`: `docker`, the
/// default, or `podman`); panics on anything else.
pub fn engine() -> Engine {
    match std::env::var("LEASH_TEST_ENGINE").as_deref() {
        Err(_) | Ok("" | "docker") => Engine::Docker,
        Ok("podman") => Engine::Podman,
        Ok(other) => panic!("LEASH_TEST_ENGINE={other:?}: expected docker or podman"),
    }
}

/// The `docker` CLI talking to this test run's engine ([`engine`]).
pub fn docker() -> Command {
    docker_on(engine())
}

/// The `docker` CLI talking to `engine`.
pub fn docker_on(engine: Engine) -> Command {
    let mut c = Command::new("docker");
    match engine.docker_host() {
        Some(host) => c.env("DOCKER_HOST", host),
        None => c.env_remove("DOCKER_HOST"),
    };
    c
}

/// Runs `docker ARGS` on `engine` quietly; true when it succeeds.
fn docker_ok(engine: Engine, args: &[&str]) -> bool {
    docker_on(engine).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Returns false (after printing why) when this run's engine ([`engine`])
/// or the test image is missing and the test may skip; panics instead in
/// CI.
pub fn require_docker(test: &str) -> bool {
    require_engine(test, engine())
}

/// Returns false (after printing why) when `engine` or the test image is
/// missing and the test may skip; panics instead in CI. The images are
/// built in Docker (`cargo xtask image`), so Podman needs Docker too.
fn require_engine(test: &str, engine: Engine) -> bool {
    if !require_root(test) {
        return false;
    }
    if !docker_ok(Engine::Docker, &["info"]) {
        return skip(test, "the Docker engine is not running (scripts/setup.sh starts it)");
    }
    if engine == Engine::Podman && !docker_ok(Engine::Podman, &["version"]) {
        return skip(test, "Podman's API service is not running (scripts/setup.sh starts it)");
    }
    require_image_on(test, engine, TEST_IMAGE)
}

/// Returns false (after printing why) when Docker lacks `image` (a
/// `leash-<name>` image, which leash never pulls) and the test may skip;
/// panics instead in CI, naming the command that builds it. On Podman, the
/// image is then copied there from Docker unless Podman holds the same one.
pub fn require_image(test: &str, image: &str) -> bool {
    require_image_on(test, engine(), image)
}

fn require_image_on(test: &str, engine: Engine, image: &str) -> bool {
    if !docker_ok(Engine::Docker, &["image", "inspect", image]) {
        let name = image.strip_prefix("leash-").and_then(|r| r.split(':').next()).unwrap_or(image);
        return skip(test, &format!("the image {image} is missing (`cargo xtask image {name}` builds it)"));
    }
    if engine == Engine::Podman {
        copy_to_podman(image);
    }
    true
}

/// Copies `image` from Docker into Podman (`docker save | podman load`)
/// unless Podman has the same image (by id) already; once at a time.
fn copy_to_podman(image: &str) {
    static COPYING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COPYING.lock().unwrap_or_else(|p| p.into_inner());
    let id = |engine: Engine| {
        let out = docker_on(engine).args(["image", "inspect", "-f", "{{.Id}}", image]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let wanted = id(Engine::Docker).unwrap_or_else(|| panic!("{image} vanished from Docker"));
    if id(Engine::Podman).as_ref() == Some(&wanted) {
        return;
    }
    let status = Command::new("sh")
        .args(["-c", "docker save \"$1\" | podman load -q", "sh", image])
        .env_remove("DOCKER_HOST")
        .stdout(Stdio::null())
        .status()
        .expect("run docker save | podman load");
    assert!(status.success(), "loading {image} into Podman failed");
    assert_eq!(id(Engine::Podman), Some(wanted), "{image} in Podman is not Docker's after loading it");
}

/// Skips `test` saying why, or panics where tests must not skip.
fn skip(test: &str, why: &str) -> bool {
    assert!(!must_run(), "{test}: {why}, and CI must run it");
    #[allow(clippy::print_stderr, reason = "the skip is reported where test output goes")]
    {
        eprintln!("skipping {test}: {why}");
    }
    false
}

/// The host as a session's container sees it (its default route's
/// gateway), found the way leashd finds it: from the routing table of a
/// container of [`TEST_IMAGE`] on the default network, never from what the
/// engine reports about the network. Panics, naming what was looked at,
/// when there is none: a policy must never be built from an empty address.
pub fn host_address() -> String {
    static FOUND: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let args = leash_core::hostside::probe_args(TEST_IMAGE);
            let out = docker()
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("no host address: `docker {}` did not run: {e}", args.join(" ")));
            let route = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "no host address: `docker {}` failed (the test image comes from `cargo xtask image test`): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            leash_core::hostside::default_gateway(&route, &format!("/proc/net/route of `docker {}`", args.join(" ")))
                .unwrap_or_else(|e| panic!("no host address: {e}"))
                .to_string()
        })
        .clone()
}

/// Podman's Docker-compatible API socket (scripts/setup.sh starts it).
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Returns false (after printing why) when Podman's API is not served and
/// the test may skip; panics instead in CI. Loads the test image into Podman
/// from Docker unless Podman has the same one.
pub fn require_podman(test: &str) -> bool {
    require_engine(test, Engine::Podman)
}

/// True when tests must not skip (in CI, or when asked).
pub fn must_run() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("LEASH_REQUIRE_PRIVILEGED").is_some()
}

/// Returns false (after printing why) when the test cannot run here and
/// may skip; panics instead when skipping is not allowed.
pub fn require_root(test: &str) -> bool {
    rustix::process::geteuid().is_root() || skip(test, "it needs root")
}

/// A private leash instance: its own runtime dir, state dir and instance
/// name. Dropping it stops every process it started.
#[derive(Debug)]
pub struct Stack {
    root: tempfile::TempDir,
    /// Runtime dir (sockets).
    pub runtime_dir: PathBuf,
    /// State dir.
    pub state_dir: PathBuf,
    /// Instance name.
    pub instance: String,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    leashds: Vec<Child>,
    /// The `DOCKER_HOST` the latest leashd was started with.
    docker_host: Option<std::ffi::OsString>,
}

impl Stack {
    /// A fresh stack; nothing runs yet.
    pub fn new() -> Stack {
        let root = tempfile::Builder::new().prefix("leash-test-").tempdir().expect("tempdir");
        // Other uids must be able to reach the runtime dir's parent for the
        // permission tests; the runtime dir itself is locked down by leashd.
        set_mode(root.path(), 0o755);
        let instance = format!("t{}", root.path().file_name().unwrap().to_string_lossy().replace("leash-test-", ""));
        let instance: String = instance.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
        Stack {
            runtime_dir: root.path().join("run"),
            state_dir: root.path().join("state"),
            instance,
            bin_dir: bin_dir(),
            root,
            leashds: Vec::new(),
            docker_host: None,
        }
    }

    /// The stack's root temp dir.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A command with this stack's environment.
    /// Names of the workspace's binaries resolve to the built ones; anything
    /// else (`sh`) is looked up on PATH.
    pub fn command(&self, bin: &str) -> Command {
        let built = self.bin_dir.join(bin);
        let mut c = Command::new(if built.exists() { built } else { PathBuf::from(bin) });
        c.env("LEASH_RUNTIME_DIR", &self.runtime_dir)
            .env("LEASH_STATE_DIR", &self.state_dir)
            .env("LEASH_INSTANCE", &self.instance)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LEASH_LOG")
            .env_remove("LEASH_TARGET_IMAGE")
            .env_remove("TARGET_IMAGE")
            .env_remove("LEASH_POLICY_FILE")
            .env_remove("OPEN")
            .env_remove("DOCKER_HOST")
            .env_remove("XDG_CONFIG_HOME")
            // The invoking user's own leash config is not the test's.
            .env("LEASH_HOME", self.root().join("user-config"))
            // Each stack's Control UI on a port of its own (status tells which).
            .env("LEASH_LISTEN", "127.0.0.1:0");
        // The daemons' default filter unless the test run asks for another.
        if let Ok(filter) = std::env::var("LEASH_TEST_LOG") {
            c.env("LEASH_LOG", filter);
        }
        c
    }

    /// A project directory for sessions (outside the runtime and state
    /// dirs, which sessions may not mount).
    pub fn project(&self) -> PathBuf {
        // Named after the instance, so container names differ between stacks.
        let p = self.root().join(format!("proj-{}", self.instance.to_lowercase()));
        std::fs::create_dir_all(&p).expect("project dir");
        p
    }

    /// A user's configuration file holding `text`: the directory to give
    /// `leash` as `LEASH_HOME`.
    pub fn user_config(&self, text: &str) -> PathBuf {
        let dir = self.root().join("leash-home");
        std::fs::create_dir_all(&dir).expect("leash home");
        std::fs::write(dir.join("config.toml"), text).expect("config.toml");
        dir
    }

    /// `leash ARGS` in the project dir, with the static entry; stdin null.
    pub fn leash(&self, args: &[&str]) -> Command {
        let mut c = self.command("leash");
        c.args(args).current_dir(self.project()).stdin(Stdio::null());
        c
    }

    /// Waits until the stack's first session runs (released): its id and
    /// container name.
    pub fn running_session(&self, limit: Duration) -> (String, String) {
        eventually(limit, "the session running", || {
            let v: serde_json::Value = serde_json::from_slice(&self.leashctl(&["sessions", "--json"]).stdout).ok()?;
            let s = v.as_array()?.first()?.clone();
            let (id, container) = (s["id"].as_str()?.to_owned(), s["container"].as_str()?.to_owned());
            (s["state"] == "running").then_some((id, container))
        })
    }

    /// Starts leashd with the static leash-entry for sessions.
    pub fn start_leashd_for_sessions(&mut self) -> u32 {
        let entry = static_entry();
        self.start_leashd_with(|c| {
            c.env("LEASH_ENTRY_BIN", &entry);
        })
    }

    /// Starts leashd (stderr to `<root>/leashd-N.log`); returns its pid.
    pub fn start_leashd(&mut self) -> u32 {
        self.start_leashd_with(|_| {})
    }

    /// Starts leashd after letting `f` adjust the command.
    pub fn start_leashd_with(&mut self, f: impl FnOnce(&mut Command)) -> u32 {
        let log = self.root().join(format!("leashd-{}.log", self.leashds.len()));
        let mut c = self.command("leashd");
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        // Sessions on this test run's engine (a test may name another).
        if let Some(host) = engine().docker_host() {
            c.env("DOCKER_HOST", host);
        }
        // A run that wants the daemons' detail: `LEASH_TEST_LOG=leash_sensor=debug`.
        if let Some(filter) = std::env::var_os("LEASH_TEST_LOG") {
            c.env("LEASH_LOG", filter);
        }
        f(&mut c);
        // The machine's /etc/leash (config.toml, policy.d) is not the test's.
        if !c.get_args().any(|a| a == "--config") {
            let config = self.root().join("etc-leash").join("config.toml");
            std::fs::create_dir_all(config.parent().expect("a dir")).expect("config dir");
            std::fs::write(&config, "").expect("config file");
            c.arg("--config").arg(config);
        }
        self.docker_host = c.get_envs().find(|(k, _)| *k == "DOCKER_HOST").and_then(|(_, v)| v.map(Into::into));
        let child = c.spawn().expect("spawn leashd");
        let pid = child.id();
        self.leashds.push(child);
        pid
    }

    /// The Control UI of the stack's leashd: its address (`127.0.0.1:PORT`)
    /// and the API token.
    pub fn ui(&self) -> (String, String) {
        let status = self.status().expect("leashd answers");
        let url = status["ui"]["url"].as_str().expect("the UI is served");
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let token = std::fs::read_to_string(self.runtime_dir.join("api.token")).expect("api.token");
        (addr, token.trim().to_owned())
    }

    /// A session of `image` running `sleep 300` under `policy` that asks
    /// about denials (`[leash] ask = true`, waiting `timeout_s` seconds),
    /// started without a terminal: its `leash`, id and container.
    pub fn asking_session(&self, image: &str, policy: &Path, timeout_s: u32) -> (std::process::Child, String, String) {
        let home = self.user_config(&format!("[leash]\nask = true\nask_timeout = {timeout_s}\n"));
        let session = self
            .leash(&["--image", image, "--policy", &policy.display().to_string(), "--", "sleep", "300"])
            .env("LEASH_HOME", &home)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run leash");
        let (id, container) = self.running_session(Duration::from_secs(20));
        (session, id, container)
    }

    /// The questions open for sessions (`GET /api/asks`, with the token).
    pub fn open_asks(&self) -> Vec<serde_json::Value> {
        let (addr, token) = self.ui();
        let r = http::request(&addr, "GET", "/api/asks", &[("Authorization", &format!("Bearer {token}"))], b"");
        r.json()["asks"].as_array().cloned().unwrap_or_default()
    }

    /// Answers question `ask` of `session` as the Control UI does; the HTTP status.
    pub fn answer_ask(&self, session: &str, ask: &str, choice: &str) -> u16 {
        let (addr, token) = self.ui();
        let body = serde_json::json!({ "session": session, "choice": choice }).to_string();
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        http::request(&addr, "POST", &format!("/api/asks/{ask}"), &headers, body.as_bytes()).status
    }

    /// A `$BROWSER` that writes the address it is given to a file: the
    /// script and that file.
    pub fn capturing_browser(&self) -> (PathBuf, PathBuf) {
        let (script, out) = (self.root().join("browser.sh"), self.root().join("browser-url"));
        std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" > {}\n", out.display())).expect("browser script");
        set_mode(&script, 0o755);
        (script, out)
    }

    /// The single-use login address `leashctl ui` hands the browser.
    pub fn login_url(&self) -> String {
        let (script, out) = self.capturing_browser();
        let r = self.command("leashctl").arg("ui").env("BROWSER", &script).output().expect("run leashctl ui");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        std::fs::read_to_string(out).expect("the address").trim().to_owned()
    }

    /// Waits for the most recently started leashd to exit; its exit code.
    pub fn wait_leashd(&mut self, limit: Duration) -> Option<i32> {
        let child = self.leashds.last_mut().expect("a leashd was started");
        let status = eventually(limit, "leashd to exit", || child.try_wait().expect("try_wait"));
        status.code()
    }

    /// What the `n`th leashd (and the components it spawned) logged.
    pub fn leashd_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.root().join(format!("leashd-{n}.log"))).unwrap_or_default()
    }

    /// Runs `leashctl` with `args`.
    pub fn leashctl(&self, args: &[&str]) -> Output {
        self.command("leashctl").args(args).output().expect("run leashctl")
    }

    /// Every event leashd keeps (`leashctl events --json`), parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let out = self.leashctl(&["events", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json event")).collect()
    }

    /// `leashctl status --json`, parsed, when leashd answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.leashctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until leashd reports every component running; returns the status.
    pub fn wait_healthy(&self, limit: Duration) -> serde_json::Value {
        let status = eventually(limit, "all components running", || {
            self.status().filter(|s| {
                s["components"].as_array().is_some_and(|cs| cs.len() == 3 && cs.iter().all(|c| c["state"] == "running"))
            })
        });
        // On a run on Podman, a leashd started for it says it talks to
        // Podman: the run is seen to run there.
        let podman = Engine::Podman.docker_host();
        if engine() == Engine::Podman && self.docker_host.as_deref().and_then(|h| h.to_str()) == podman.as_deref() {
            let named = |s: &serde_json::Value| s["host"]["engine"].as_str()?.starts_with("Podman").then_some(());
            if named(&status).is_none() {
                eventually(limit, "leashd reporting Podman as its engine", || self.status().as_ref().and_then(named));
            }
        }
        status
    }

    /// The pid of a component by binary name, from a status value.
    pub fn component<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        status["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no component {name} in {status}"))
    }

    /// Live (non-zombie) processes of `bin` that belong to this stack.
    pub fn processes(&self, bin: &str) -> Vec<u32> {
        let exe = self.bin_dir.join(bin);
        let marker = format!("LEASH_RUNTIME_DIR={}", self.runtime_dir.display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let dir = entry.path();
            if std::fs::read_link(dir.join("exe")).ok().as_deref() != Some(exe.as_path()) || !alive(pid) {
                continue;
            }
            let env = std::fs::read(dir.join("environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// The `docker` CLI talking to the engine of the stack's latest leashd.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        match &self.docker_host {
            Some(host) => c.env("DOCKER_HOST", host),
            None => c.env_remove("DOCKER_HOST"),
        };
        c
    }

    /// Session containers of this stack's instance (any state), on the
    /// engine of its latest leashd.
    pub fn containers(&self) -> Vec<String> {
        let out = self
            .docker()
            .args(["ps", "-aq", "--filter", &format!("label=leash.instance={}", self.instance)])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }

    /// Removes the session containers of this stack's instance (best effort).
    fn remove_containers(&self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = self.docker().args(["rm", "-f"]).args(&ids).output();
        }
    }

    /// Every live process of this stack (leashd and components).
    pub fn all_processes(&self) -> Vec<u32> {
        ["leashd", "leash-policy", "leash-sensor", "leash-proxy"].iter().flat_map(|b| self.processes(b)).collect()
    }
}

impl Default for Stack {
    fn default() -> Stack {
        Stack::new()
    }
}

/// Lines of each leashd's log a failed test prints.
const LOG_TAIL: usize = 80;

impl Drop for Stack {
    fn drop(&mut self) {
        // A failed test shows what its daemons said last.
        #[allow(clippy::print_stderr, reason = "a failed test's output is where its reader looks")]
        if std::thread::panicking() {
            for n in 0..self.leashds.len() {
                let log = self.leashd_log(n);
                let lines: Vec<&str> = log.lines().collect();
                // All of it when the run asked for detail.
                let keep = if std::env::var_os("LEASH_TEST_LOG").is_some() { lines.len() } else { LOG_TAIL };
                let tail = lines[lines.len().saturating_sub(keep)..].join("\n");
                eprintln!("--- the last {keep} lines of leashd-{n}.log ---\n{tail}\n---");
            }
        }
        // Session containers of this instance, if a test left any; again once
        // leashd is gone (Podman refuses to remove a container that leashd is
        // stopping at that moment).
        self.remove_containers();
        for pid in self.all_processes() {
            kill(pid, rustix::process::Signal::KILL);
        }
        for mut c in self.leashds.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.remove_containers();
        // What the killed sensor left pinned and attached (a sensor stopped
        // gracefully with no sessions removes these itself).
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/leash/{}", self.instance));
        // The instance's cgroup parent in every hierarchy (v2, and each v1
        // one of a hybrid host, where the engine made it too).
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path());
        for root in hierarchies.chain([PathBuf::from("/sys/fs/cgroup")]) {
            remove_cgroup_tree(&root.join(format!("leash-{}", self.instance)));
        }
    }
}

/// Removes a cgroup directory and its (empty) children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
/// Files under `dir` whose bytes contain `needle` (a canary), but those
/// under `except`.
pub fn files_containing(dir: &Path, needle: &str, except: &[&Path]) -> Vec<String> {
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() && !except.contains(&p.as_path()) => stack.push(p),
                Ok(t)
                    if t.is_file() && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
                {
                    found.push(p.display().to_string());
                }
                _ => {}
            }
        }
    }
    found
}

/// The environment and command line of every process in a container (in
/// its pid namespace), read from the host.
pub fn container_environ(container: &str) -> String {
    let out = docker().args(["inspect", "-f", "{{.State.Pid}}", container]).output().expect("docker");
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else { return String::new() };
    let mut all = String::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let p = e.path();
        if std::fs::read_link(p.join("ns/pid")).is_ok_and(|n| n == ns) {
            let read = |f: &str| String::from_utf8_lossy(&std::fs::read(p.join(f)).unwrap_or_default()).into_owned();
            all.push_str(&read("environ").replace('\0', "\n"));
            all.push_str(&read("cmdline").replace('\0', " "));
        }
    }
    all
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Sends a signal; errors (already gone) are ignored.
pub fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Sets a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A path's permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A pseudo-terminal driving a child process, as a person at a terminal.
pub mod pty {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::process::{Child, Command};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{Winsize, tcsetwinsize};

    /// The terminal, its child, and everything the child wrote.
    #[derive(Debug)]
    pub struct Pty {
        master: OwnedFd,
        /// The terminal side the child has (for checking its modes).
        pub slave: File,
        /// The child.
        pub child: Child,
        seen: Arc<Mutex<String>>,
    }

    fn winsize(rows: u16, cols: u16) -> Winsize {
        Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
    }

    impl Pty {
        /// Spawns `cmd` with a `rows`×`cols` terminal as stdin, stdout and stderr.
        pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Pty {
            let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
            grantpt(&master).expect("grantpt");
            unlockpt(&master).expect("unlockpt");
            let name = ptsname(&master, Vec::new()).expect("ptsname");
            let slave = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(name.to_str().expect("utf-8 pty name"))
                .expect("open the pty");
            tcsetwinsize(&master, winsize(rows, cols)).expect("set the size");
            let child = cmd
                .stdin(slave.try_clone().expect("dup"))
                .stdout(slave.try_clone().expect("dup"))
                .stderr(slave.try_clone().expect("dup"))
                .spawn()
                .expect("spawn on the pty");
            let seen = Arc::new(Mutex::new(String::new()));
            let mut reader = File::from(master.try_clone().expect("dup"));
            let sink = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            Pty { master, slave, child, seen }
        }

        /// Everything written so far.
        pub fn seen(&self) -> String {
            self.seen.lock().expect("lock").clone()
        }

        /// Waits until the output contains `needle`.
        pub fn wait_for(&self, needle: &str, limit: Duration) {
            crate::eventually(limit, &format!("{needle:?} on the terminal (so far: {:?})", self.seen()), || {
                self.seen().contains(needle).then_some(())
            });
        }

        /// Types bytes.
        pub fn write(&self, bytes: &[u8]) {
            File::from(self.master.try_clone().expect("dup")).write_all(bytes).expect("write to the pty");
        }

        /// Resizes the terminal (the child learns by SIGWINCH, sent separately).
        pub fn resize(&self, rows: u16, cols: u16) {
            tcsetwinsize(&self.master, winsize(rows, cols)).expect("resize");
        }

        /// Waits for the child to exit; its code.
        pub fn wait(&mut self, limit: Duration) -> Option<i32> {
            let child = &mut self.child;
            crate::eventually(limit, "the child to exit", || child.try_wait().expect("try_wait")).code()
        }
    }
}
