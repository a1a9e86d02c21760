//! The container engine, through bollard: Docker, or Podman's
//! Docker-compatible API (`DOCKER_HOST=unix:///run/podman/podman.sock`).

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, ResizeContainerTTYOptionsBuilder,
};

pub use bollard::container::{AttachContainerResults, LogOutput};

/// Labels every session container carries.
pub const LABEL_SESSION: &str = "leash.session";
/// The leashd instance that owns the container.
pub const LABEL_INSTANCE: &str = "leash.instance";
/// The owner's uid.
pub const LABEL_OWNER: &str = "leash.owner";
/// The leash version that created it.
pub const LABEL_VERSION: &str = "leash.version";
/// The project directory.
pub const LABEL_PROJECT: &str = "leash.project";
/// The command, as JSON.
pub const LABEL_COMMAND: &str = "leash.command";
/// `true` when the session runs without the protect-host layer.
pub const LABEL_UNPROTECTED: &str = "leash.unprotected";
/// Seconds a denial waits for the user's answer (`leash --ask`); absent: not asked.
pub const LABEL_ASK: &str = "leash.ask";
/// The stdio MCP servers the session's relay governs (a JSON list).
pub const LABEL_MCP: &str = "leash.mcp";

/// An engine error, in one line.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached.
    #[error("the container engine is not reachable ({0}); start it (e.g. `systemctl start docker`)")]
    Unreachable(String),
    /// The image is not present locally.
    #[error("image {image} not found locally; {hint}")]
    ImageMissing {
        /// The image.
        image: String,
        /// How to get it.
        hint: String,
    },
    /// Anything the engine refused.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
}

/// The detach keys of leashd's own attachment to a container. The engine
/// watches the input it relays for them and, seeing them, cuts leashd off
/// from the session (the default, Ctrl-P Ctrl-Q, is what users type to
/// detach from `leash`, which leash handles itself). It cannot be turned
/// off, so it is a sequence nobody types.
const ENGINE_DETACH_KEYS: &str = "ctrl-^,ctrl-@,ctrl-_,ctrl-],ctrl-^,ctrl-@,ctrl-_,ctrl-],ctrl-^,ctrl-@,ctrl-_,ctrl-]";

impl EngineError {
    /// The engine refused because a name is taken: Docker answers 409;
    /// Podman's Docker-compatible API (4.x) answers 500, saying so.
    pub fn is_conflict(&self) -> bool {
        match self {
            EngineError::Api {
                source: bollard::errors::Error::DockerResponseServerError { status_code, message },
                ..
            } => *status_code == 409 || (*status_code == 500 && message.contains("is already in use")),
            _ => false,
        }
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Api { what, source }
}

/// What a session's container is made of.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Entrypoint and its arguments (leash-entry, then the command).
    pub entrypoint: Vec<String>,
    /// Environment, KEY=VALUE.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// Binds, docker syntax.
    pub binds: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Close stdin after the first attach ends (delivers EOF without a terminal).
    pub stdin_once: bool,
    /// The cgroup parent.
    pub cgroup_parent: Option<String>,
    /// Published ports: container port/proto → host bindings.
    pub ports: HashMap<String, Vec<(String, String)>>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in nano CPUs.
    pub nano_cpus: Option<i64>,
    /// Process limit.
    pub pids_limit: Option<i64>,
    /// Resolvers for the container's `resolv.conf`; empty: the engine's.
    pub dns: Vec<String>,
    /// Entries of the container's `/etc/hosts`, `NAME:IP`.
    pub extra_hosts: Vec<String>,
}

/// A container found by label.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Container id.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Running now.
    pub running: bool,
    /// Its image.
    pub image: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
}

/// A connected engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    systemd_cgroups: bool,
}

/// How long a connection (its negotiated API version and the engine's
/// cgroup driver) is reused: Podman takes about a second to answer
/// `/version` and half of one to answer `/info`, on every session's start.
const REUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// The last connection, and when it was made.
static CONNECTED: tokio::sync::Mutex<Option<(std::time::Instant, Engine)>> = tokio::sync::Mutex::const_new(None);

impl Engine {
    /// Connects (DOCKER_HOST or the local socket) and negotiates the API
    /// version; a connection made less than [`REUSE`] ago is reused once the
    /// engine answers a ping.
    pub async fn connect() -> Result<Engine, EngineError> {
        let mut last = CONNECTED.lock().await;
        if let Some((at, engine)) = last.as_ref()
            && at.elapsed() < REUSE
        {
            match engine.docker.ping().await {
                Ok(_) => return Ok(engine.clone()),
                Err(e) => {
                    *last = None;
                    return Err(EngineError::Unreachable(e.to_string()));
                }
            }
        }
        let docker = Docker::connect_with_local_defaults().map_err(|e| EngineError::Unreachable(e.to_string()))?;
        let docker = docker.negotiate_version().await.map_err(|e| EngineError::Unreachable(e.to_string()))?;
        let info = docker.info().await.map_err(|e| EngineError::Unreachable(e.to_string()))?;
        let systemd_cgroups =
            info.cgroup_driver.is_some_and(|d| d == bollard::models::SystemInfoCgroupDriverEnum::SYSTEMD);
        let engine = Engine { docker, systemd_cgroups };
        *last = Some((std::time::Instant::now(), engine.clone()));
        Ok(engine)
    }

    /// Why leash-sensor cannot govern this engine's containers, if it
    /// cannot: the sensor's programs are attached to the instance's cgroup
    /// parent, `<cgroup2>/leash-<instance>`, which an engine honours only
    /// with the cgroupfs driver (the systemd driver puts every container
    /// below a systemd slice instead).
    pub fn ungovernable(&self, layout: &leash_core::Layout) -> Option<String> {
        self.systemd_cgroups.then(|| {
            format!(
                "the container engine places containers with the systemd cgroup driver, below systemd slices, and \
                 leash-sensor governs only containers below the cgroup {} (the cgroupfs driver: Docker's \
                 `exec-opts: [\"native.cgroupdriver=cgroupfs\"]`, Podman's `cgroup_manager = \"cgroupfs\"`)",
                layout.cgroup_parent()
            )
        })
    }

    /// The cgroup parent of a session's container: one per session, below
    /// one per instance, so programs can be attached to it before the
    /// container's first instruction. Returns (engine spelling, path below
    /// each cgroup hierarchy root).
    pub fn cgroup_parent(&self, layout: &leash_core::Layout, session: &str) -> (String, String) {
        let parent = layout.cgroup_parent();
        if self.systemd_cgroups {
            // A `-` in a slice name means nesting; keep the instance one level.
            let parent = parent.replace('-', "_");
            let slice = format!("{parent}-{session}.slice");
            (slice.clone(), format!("{parent}.slice/{slice}"))
        } else {
            let path = format!("/{parent}/{session}");
            (path.clone(), path.trim_start_matches('/').to_owned())
        }
    }

    /// Checks the image exists locally.
    pub async fn require_image(&self, image: &str) -> Result<(), EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                let hint = match image.strip_prefix("leash-").and_then(|r| r.split(':').next()) {
                    Some(name) => format!("build it with `cargo xtask image {name}`, or pass --image"),
                    None => format!("leash never pulls: `docker pull {image}` or build it, or pass --image"),
                };
                Err(EngineError::ImageMissing { image: image.to_owned(), hint })
            }
            Err(e) => Err(api(format!("inspecting image {image}"))(e)),
        }
    }

    /// Whether a container of this name exists (in any state).
    pub async fn name_taken(&self, name: &str) -> Result<bool, EngineError> {
        // Docker matches the filter against `/NAME`, Podman against `NAME`.
        let filters = HashMap::from([("name".to_owned(), vec![format!("^/?{name}$")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        Ok(!self.docker.list_containers(Some(opts)).await.map_err(api("listing containers"))?.is_empty())
    }

    /// Containers carrying `label=value`.
    pub async fn list_labelled(&self, label: &str, value: &str) -> Result<Vec<Labelled>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(api("listing containers"))?;
        Ok(list
            .into_iter()
            .map(|c| Labelled {
                running: c.state.is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING),
                id: c.id.unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                created: c.created.unwrap_or(0),
            })
            .collect())
    }

    /// Creates the container; returns its id.
    pub async fn create(&self, spec: &Spec) -> Result<String, EngineError> {
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|(k, v)| {
                let b = v
                    .iter()
                    .map(|(ip, port)| PortBinding { host_ip: Some(ip.clone()), host_port: Some(port.clone()) })
                    .collect();
                (k.clone(), Some(b))
            })
            .collect();
        let host = HostConfig {
            binds: Some(spec.binds.clone()),
            cap_drop: Some(vec!["NET_RAW".into(), "NET_ADMIN".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cgroup_parent: spec.cgroup_parent.clone(),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            memory: spec.memory,
            nano_cpus: spec.nano_cpus,
            pids_limit: spec.pids_limit,
            dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(Vec::new()),
            env: Some(spec.env.clone()),
            working_dir: Some(spec.workdir.clone()),
            labels: Some(spec.labels.clone()),
            tty: Some(spec.tty),
            open_stdin: Some(true),
            stdin_once: Some(spec.stdin_once),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: (!spec.ports.is_empty()).then(|| spec.ports.keys().cloned().collect()),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let r = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(api(format!("creating container {}", spec.name)))?;
        Ok(r.id)
    }

    /// Attaches to stdin, stdout and stderr (before start, to miss nothing).
    pub async fn attach(&self, id: &str) -> Result<AttachContainerResults, EngineError> {
        let opts = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(true)
            .detach_keys(ENGINE_DETACH_KEYS)
            .build();
        self.docker.attach_container(id, Some(opts)).await.map_err(api("attaching to the container"))
    }

    /// Starts it.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker.start_container(id, None).await.map_err(api("starting the container"))
    }

    /// The container's main process pid on the host, and its exit code once exited.
    pub async fn inspect(&self, id: &str) -> Result<(Option<i64>, Option<i64>, bool), EngineError> {
        let c = self.docker.inspect_container(id, None).await.map_err(api("inspecting the container"))?;
        let state = c.state.unwrap_or_default();
        Ok((state.pid, state.exit_code, state.running.unwrap_or(false)))
    }

    /// Whether it was created with a terminal.
    pub async fn has_tty(&self, id: &str) -> bool {
        let c = self.docker.inspect_container(id, None).await;
        c.ok().and_then(|c| c.config).and_then(|c| c.tty).unwrap_or(false)
    }

    /// Waits for it to exit; its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        use futures_util::StreamExt;
        let mut s = self.docker.wait_container(id, None);
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // Non-zero exits arrive as this error variant.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(api("waiting for the container")(e)),
            None => self.inspect(id).await.map(|(_, code, _)| code.unwrap_or(125)),
        }
    }

    /// Resizes its terminal.
    pub async fn resize(&self, id: &str, rows: u32, cols: u32) -> Result<(), EngineError> {
        let opts = ResizeContainerTTYOptionsBuilder::new().h(rows as i32).w(cols as i32).build();
        self.docker.resize_container_tty(id, opts).await.map_err(api("resizing the terminal"))
    }

    /// Sends a signal to its PID 1 (leash-entry forwards it to the command).
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let opts = KillContainerOptionsBuilder::new().signal(signal).build();
        self.docker.kill_container(id, Some(opts)).await.map_err(api(format!("sending {signal}")))
    }

    /// Removes it, running or not. Podman refuses a forced removal of a
    /// container that stops while it kills it ("could not be stopped …
    /// container state improper": leash-entry exits by itself when its
    /// session is refused); the container is stopped by then, so the removal
    /// is tried again, a few times.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let mut attempts = 0;
        loop {
            let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            match self.docker.remove_container(id, Some(opts)).await {
                Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    return Ok(());
                }
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 409 | 500, .. })
                    if attempts < 4 =>
                {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempts)).await;
                }
                Err(e) => return Err(api("removing the container")(e)),
            }
        }
    }
}
