//! From what the client sent and who the caller is, to what the container
//! will be. Every input is checked here, before anything is created.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use leash_daemon::access::Peer;
use leash_proto::v1 as pb;

use super::engine::{self, Spec};
use super::mounts::{self, Bind};
use super::{Ctx, config};

/// Where leash-entry appears in the container.
pub const ENTRY_PATH: &str = "/leash/leash-entry";
/// Where the session dir appears in the container (read-only).
pub const SESSION_DIR: &str = "/leash/session";
/// The session CA's certificate, in the session dir.
pub const CA_FILE: &str = "ca.crt";
/// The host's roots and the session CA, in the session dir.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.crt";
/// The host's roots.
pub const HOST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The image when nothing names one.
pub const DEFAULT_IMAGE: &str = "leash-coder:latest";
/// Seconds a denial waits for the user's answer when `[leash] ask_timeout` does not say.
pub const DEFAULT_ASK_TIMEOUT_S: u32 = 30;
/// The container's copy of claude's global configuration, in the session
/// dir (what the session leaves there is kept for the user's next one).
pub const CLAUDE_GLOBAL_COPY: &str = "claude.json";

/// The agents' settings forwarded automatically from the caller's
/// environment.
const AGENT_ENV: [(&str, &[&str]); 1] = [("claude", &["IS_SANDBOX"])];

/// The agents' credentials taken automatically from the caller's
/// environment: each is a secret (the container gets a decoy).
pub const AGENT_KEYS: [(&str, &[&str]); 5] = [
    ("claude", &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]),
    ("codex", &["OPENAI_API_KEY", "CODEX_API_KEY"]),
    ("gemini", &["GEMINI_API_KEY"]),
    ("qwen", &["DASHSCOPE_API_KEY"]),
    ("opencode", &["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DASHSCOPE_API_KEY"]),
];

/// Daemon-wide settings a client may not change.
const DAEMON_WIDE: [&str; 6] =
    ["LEASH_RUNTIME_DIR", "LEASH_STATE_DIR", "LEASH_INSTANCE", "LEASH_LOG", "LEASH_LOG_FORMAT", "LEASH_LISTEN"];

/// A checked session plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The command.
    pub command: Vec<String>,
    /// Working directory (host and container).
    pub cwd: String,
    /// Image.
    pub image: String,
    /// KEY=VALUE.
    pub env: Vec<String>,
    /// Extra binds (after the cwd).
    pub binds: Vec<Bind>,
    /// Terminal.
    pub tty: bool,
    /// Initial terminal size (rows, cols).
    pub size: Option<(u32, u32)>,
    /// Target uid, gid.
    pub user: (u32, u32),
    /// Target supplementary groups (the caller's).
    pub groups: Vec<u32>,
    /// Target user name.
    pub user_name: String,
    /// Target HOME.
    pub home: String,
    /// Published ports.
    pub ports: HashMap<String, Vec<(String, String)>>,
    /// Limits.
    pub memory: Option<i64>,
    /// CPU limit.
    pub nano_cpus: Option<i64>,
    /// Process limit.
    pub pids_limit: Option<i64>,
    /// Printed to the user before the session starts.
    pub warnings: Vec<String>,
    /// The agent's host config dirs, when the command is an agent that has some.
    pub agent_mount: Option<AgentMount>,
    /// Prompts are allowed (a terminal, not -I).
    pub interactive: bool,
    /// Run even when an enforcement layer cannot be set up.
    pub degraded: bool,
    /// The protect-host layer is on (unless `--no-protect-host` or
    /// `[leash] protect_host = false` turned it off).
    pub protect_host: bool,
    /// Seconds a denial waits for the user's answer (`--ask`, `[leash] ask`); 0: not asked.
    pub ask_timeout_s: u32,
    /// protect-host's fixed locations bound onto themselves
    /// ([`Plan::pin_protected`]).
    pub pinned: Vec<Bind>,
    /// How the DNS relay answers a name the policy refuses (`[leash]
    /// dns_refusal`): `refused` or `nxdomain`.
    pub dns_refusal: String,
    /// The container's resolvers (`--dns`); empty: the engine's default.
    pub dns: Vec<String>,
    /// Entries of the container's `/etc/hosts` (`--add-host`), `NAME:IP`.
    pub extra_hosts: Vec<String>,
    /// The `--policy` file (name, contents) the client sent, if any.
    pub policy: Option<(String, String)>,
    /// The credentials the container holds only as decoys.
    pub secrets: Vec<super::secrets::Secret>,
    /// The project's MCP configuration files (relative path, text), as the client read them.
    pub mcp_configs: Vec<(String, String)>,
    /// The stdio MCP servers the relay governs (`.mcp.json: NAME`).
    pub mcp_servers: Vec<String>,
    /// The rewritten files: (as the client named it, where the container
    /// sees it, the copy in the session dir).
    pub mcp_views: Vec<(String, String, PathBuf)>,
}

/// An agent's host config to mount into the session.
#[derive(Clone, Debug)]
pub struct AgentMount {
    /// The agent, e.g. `claude`.
    pub agent: String,
    /// What to bind when mounted.
    pub binds: Vec<Bind>,
    /// What the config files decided, if anything.
    pub decision: Option<(bool, config::Scope)>,
    /// The caller's config file, where an answer is remembered.
    pub user_config: Option<PathBuf>,
}

/// protect-host's fixed locations, relative to a writable mount, and
/// whether each is bound read-only: what runs code later outside the
/// sandbox (policies/protect-host.cedar). `.git` itself is bound read-write
/// so that it cannot be renamed away and replaced.
pub const PINNED: [(&str, bool); 17] = [
    (".git", false),
    (".git/hooks", true),
    (".git/config", true),
    (".vscode/tasks.json", true),
    (".vscode/settings.json", true),
    (".claude/settings.json", true),
    (".claude/settings.local.json", true),
    (".claude/hooks", true),
    (".claude/plugins", true),
    (".claude/.claude.json", true),
    (".codex/config.toml", true),
    (".gemini/settings.json", true),
    (".gemini/extensions", true),
    (".qwen/settings.json", true),
    (".qwen/extensions", true),
    (".config/opencode", true),
    (".mcp.json", true),
];

/// The binds that pin [`PINNED`] locations existing under `roots` (host
/// source, container target of each writable mount).
fn pinned_binds(roots: &[(PathBuf, String)]) -> Vec<Bind> {
    let mut pinned: Vec<Bind> = Vec::new();
    for (source, target) in roots {
        // As the container names it (`CLAUDE_CONFIG_DIR=~/cc` is mounted
        // at `~/.claude`): protect-host's forbids name container paths.
        let base = Path::new(target).file_name().and_then(|n| n.to_str()).unwrap_or("");
        for (rel, read_only) in PINNED {
            // `.claude/settings.json` under a project, or `settings.json`
            // in a mounted `~/.claude`.
            let within = match rel.split_once('/') {
                Some((first, rest)) if first == base => [Some(rel), Some(rest)],
                _ => [Some(rel), None],
            };
            for rel in within.into_iter().flatten() {
                let host = source.join(rel);
                let is_real = std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir() || m.is_file());
                let container = format!("{}/{rel}", target.trim_end_matches('/'));
                // A `.git` file (a worktree's pointer to its git dir) is
                // pinned read-only: rewritten, it would name another.
                let read_only = read_only || (rel == ".git" && host.is_file());
                if is_real && !pinned.iter().any(|b| b.target == container) {
                    pinned.push(Bind { source: host, target: container, read_only });
                }
            }
        }
    }
    // Parents before children: Docker mounts in target order anyway.
    pinned.sort_by(|a, b| a.target.cmp(&b.target));
    pinned
}

impl Plan {
    /// Every bind as (host source, container target), for verification.
    pub fn mounts(&self, ctx: &Ctx, session_dir: &Path) -> Vec<(PathBuf, String)> {
        let mut v = vec![
            (PathBuf::from(&self.cwd), self.cwd.clone()),
            (ctx.entry_bin.clone(), ENTRY_PATH.to_owned()),
            (session_dir.to_owned(), SESSION_DIR.to_owned()),
        ];
        v.extend(self.binds.iter().chain(&self.pinned).map(|b| (b.source.clone(), b.target.clone())));
        v
    }

    /// Points the container's TLS clients at the session CA (after the
    /// host's roots), unless the user set the variable.
    pub fn trust_session_ca(&mut self) {
        let bundle = format!("{SESSION_DIR}/{CA_BUNDLE_FILE}");
        let ca = format!("{SESSION_DIR}/{CA_FILE}");
        let vars = [
            ("SSL_CERT_FILE", &bundle),
            ("CURL_CA_BUNDLE", &bundle),
            ("REQUESTS_CA_BUNDLE", &bundle),
            ("GIT_SSL_CAINFO", &bundle),
            ("NODE_EXTRA_CA_CERTS", &ca),
            ("DENO_CERT", &ca),
        ];
        for (name, value) in vars {
            if !self.env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == name)) {
                self.env.push(format!("{name}={value}"));
            }
        }
    }

    /// Pins protect-host's fixed locations that exist in the session's
    /// writable mounts (see [`PINNED`]), so the kernel refuses what a
    /// file-open decision never sees: renames and links into them, renames
    /// over them, chmod, and files created there. Each is bound onto itself
    /// (a mount point cannot be renamed or removed), read-only but for the
    /// `.git` directory itself. Symlinks are left alone (binding one would
    /// mount whatever it points to).
    pub fn pin_protected(&mut self) {
        if !self.protect_host {
            return;
        }
        let mut roots: Vec<(PathBuf, String)> = vec![(PathBuf::from(&self.cwd), self.cwd.clone())];
        roots.extend(self.binds.iter().filter(|b| !b.read_only).map(|b| (b.source.clone(), b.target.clone())));
        self.pinned = pinned_binds(&roots);
    }

    /// Shows the container the project's MCP configuration files with
    /// their stdio servers wrapped in leash's relay: a rewritten copy of
    /// each in the session dir, bound read-only over it (in place of
    /// protect-host's pin of the same file, which it does the work of).
    /// The servers wrapped; what could not be read as an MCP configuration.
    /// The home's files ([`super::mcp::HOME_FILES`]) likewise, where the
    /// directory holding one is mounted.
    pub fn relay_mcp(&mut self, session_dir: &Path) -> Vec<String> {
        let mut said = Vec::new();
        for (n, (path, text)) in std::mem::take(&mut self.mcp_configs).into_iter().enumerate() {
            // Where the container sees it, and how to name it to the user.
            let (target, named) = match path.strip_prefix("~/") {
                None => (format!("{}/{path}", self.cwd), format!("{}/{path}", self.cwd)),
                Some(_) if path == super::mcp::CLAUDE_GLOBAL => continue,
                Some(rel) => {
                    let dir = format!("{}/{}", self.home, rel.split('/').next().unwrap_or(rel));
                    if !self.binds.iter().any(|b| b.target == dir) {
                        continue;
                    }
                    (format!("{}/{rel}", self.home), path.clone())
                }
            };
            let (out, names) = match super::mcp::rewrite(&path, &text) {
                Ok(r) => r,
                Err(e) => {
                    said.push(format!("{named}: {e}; its stdio MCP servers are not governed"));
                    continue;
                }
            };
            if names.is_empty() {
                continue;
            }
            let file = session_dir.join(format!("mcp-{n}-{}", path.rsplit('/').next().unwrap_or("config")));
            if let Err(e) = std::fs::write(&file, out) {
                said.push(format!(
                    "cannot write {}: {e}; the stdio MCP servers of {path} are not governed",
                    file.display()
                ));
                continue;
            }
            self.pinned.retain(|p| p.target != target);
            self.mcp_views.push((path.clone(), target.clone(), file.clone()));
            self.binds.push(Bind { source: file, target, read_only: true });
            self.mcp_servers.extend(names.iter().map(|name| format!("{path}: {name}")));
        }
        said
    }

    /// Where claude's settings are mounted, gives the container a writable
    /// copy of claude's global configuration in place of the user's file
    /// (see [`super::mcp::claude_global`]): `saved` is what the user's last
    /// session left in its copy. The copy is [`CLAUDE_GLOBAL_COPY`] in the
    /// session dir. What went wrong, to tell the user.
    pub fn share_claude_global(&mut self, session_dir: &Path, saved: Option<&str>) -> Vec<String> {
        let global = format!("{}/.claude.json", self.home);
        let config_dir = format!("{}/.claude", self.home);
        let host = self.mcp_configs.iter().position(|(k, _)| k == super::mcp::CLAUDE_GLOBAL);
        let host = host.map(|i| self.mcp_configs.remove(i).1);
        let claude = self.agent_mount.as_ref().is_some_and(|m| m.agent == "claude");
        if !claude || !self.binds.iter().any(|b| b.target == global || b.target == config_dir) {
            return Vec::new();
        }
        // Never the user's file itself: what the container writes there,
        // claude would run on the host.
        let Some(mounted) = self.binds.iter().position(|b| b.target == global) else {
            return Vec::new();
        };
        let source = self.binds.remove(mounted).source;
        let copy = session_dir.join(CLAUDE_GLOBAL_COPY);
        let made = host
            .ok_or_else(|| "larger than 2 MiB or unreadable by you".to_owned())
            .and_then(|host| super::mcp::claude_global(Some(&host), saved))
            .and_then(|(text, names)| {
                write_owned(&copy, text.as_bytes(), self.user).map_err(|e| format!("cannot write its copy: {e}"))?;
                Ok(names)
            });
        match made {
            Ok(names) => {
                let path = super::mcp::CLAUDE_GLOBAL;
                self.mcp_views.push((path.to_owned(), global.clone(), copy.clone()));
                self.binds.push(Bind { source: copy, target: global, read_only: false });
                self.mcp_servers.extend(names.iter().map(|name| format!("{path}: {name}")));
                Vec::new()
            }
            Err(e) => vec![format!("{} (claude's settings) is not mounted: {e}", source.display())],
        }
    }

    /// Adds the agent's mounts (after a yes).
    pub fn mount_agent(&mut self) {
        if let Some(m) = &self.agent_mount {
            let taken: Vec<String> = self.binds.iter().map(|b| b.target.clone()).collect();
            for b in &m.binds {
                if taken.contains(&b.target) {
                    self.warnings.push(format!(
                        "Mount {} -> {} already configured; skipping duplicate.",
                        b.source.display(),
                        b.target
                    ));
                } else {
                    self.binds.insert(0, b.clone());
                }
            }
        }
    }
}

/// Checks and resolves a start request.
pub fn plan(ctx: &Ctx, caller: &Peer, start: &pb::SessionStart) -> Result<Plan, String> {
    if start.command.is_empty() || start.command[0].is_empty() {
        return Err("a command is required; provide one after '--'".into());
    }
    let mut warnings = Vec::new();
    check_static(&ctx.entry_bin)?;
    let gids = caller_groups(caller);
    let (user_name, host_home) = passwd_entry(caller.uid);

    // The working directory: absolute, existing, readable by the caller, and
    // nothing that exposes leash.
    let cwd = Path::new(&start.cwd);
    if !cwd.is_absolute() {
        return Err(format!("working directory {:?} is not absolute", start.cwd));
    }
    if !cwd.is_dir() {
        return Err(format!("working directory {} does not exist", cwd.display()));
    }
    let forbidden = mounts::forbidden_sources(&ctx.layout.runtime_dir, &ctx.layout.state_dir);
    let cwd = mounts::check_source(cwd, &forbidden).map_err(|e| format!("cannot mount the working directory: {e}"))?;
    mounts::caller_may_read(&cwd, caller.uid, &gids).map_err(|e| format!("cannot mount the working directory: {e}"))?;
    let cwd_s = cwd.display().to_string();

    // Configuration files: the system's, then the caller's (own files only).
    let home = host_home.as_deref().map(Path::new);
    let system = config::load(&ctx.system_config, None, None)?;
    let client_env: std::collections::BTreeMap<String, String> = start.client_env.clone().into_iter().collect();
    let user_path = config::user_config_path(home, &client_env);
    let user_file = match &user_path {
        Some(p) => config::load(p, Some(caller.uid), home)?,
        None => config::File::default(),
    };
    let agent = Path::new(&start.command[0]).file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
    let agent_name = config::AGENTS.contains(&agent.as_str()).then_some(agent.as_str());
    let resolved = config::resolve(&[(&system, Path::new("/")), (&user_file, Path::new("/"))], &cwd, agent_name);

    let mut binds = Vec::new();
    for spec in resolved.volumes.iter().chain(&start.volumes) {
        let mut b = mounts::parse_volume(spec, &cwd, host_home.as_deref().map(Path::new))?;
        b.source = mounts::check_source(&b.source, &forbidden).map_err(|e| format!("volume {spec:?}: {e}"))?;
        mounts::caller_may_read(&b.source, caller.uid, &gids).map_err(|e| format!("volume {spec:?}: {e}"))?;
        if b.target.starts_with("/leash/") || b.target == "/leash" {
            return Err(format!("volume {spec:?}: /leash is reserved for leash"));
        }
        binds.push(b);
    }

    for key in start.client_env.keys() {
        if DAEMON_WIDE.contains(&key.as_str()) {
            warnings.push(format!(
                "ignored: {key} from the client; it is a daemon-wide setting (set it in leashd's environment)"
            ));
        }
    }
    let client = |k: &str| start.client_env.get(k).filter(|v| !v.is_empty()).cloned();
    let image = [
        Some(start.image.clone()).filter(|s| !s.is_empty()),
        client("LEASH_TARGET_IMAGE"),
        client("TARGET_IMAGE"),
        resolved.target_image.clone(),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());

    // Environment: the agent's settings from the caller's environment, then
    // the config files' envvars, then -e (which wins).
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some((_, keys)) = AGENT_ENV.iter().find(|(a, _)| *a == agent) {
        for k in *keys {
            if let Some(v) = client(k) {
                env.push(((*k).to_owned(), v));
            }
        }
    }
    for (k, v) in &resolved.envvars {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    for spec in &start.env {
        let (k, v) = parse_env(spec)?;
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    // Credentials: the container gets a decoy of each, never the value.
    let files = [
        (&system, &ctx.system_config, None),
        (&user_file, user_path.as_ref().unwrap_or(&ctx.system_config), Some(caller.uid)),
    ];
    let secrets = gather_secrets(&agent, &files, &start.secrets, &env, &start.client_env)?;
    for s in &secrets {
        env.retain(|(k, _)| *k != s.name);
        env.push((s.name.clone(), s.decoy.clone()));
    }
    // With a terminal, TERM is the caller's unless -e set it.
    if start.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), client("TERM").unwrap_or_else(|| "xterm".to_owned())));
    }

    let user = if start.root {
        if caller.uid != 0 {
            return Err("--root is only for callers who are root".into());
        }
        (0, 0)
    } else {
        (caller.uid, caller.gid)
    };
    // HOME as given with -e wins.
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| home_in_container(user, &host_home, &user_name));
    let groups: Vec<u32> =
        if user == (caller.uid, caller.gid) { gids.iter().skip(1).copied().collect() } else { Vec::new() };

    let mut ports = HashMap::new();
    for p in &start.publish {
        let (key, binding) = parse_publish(p)?;
        ports.entry(key).or_insert_with(Vec::new).push(binding);
    }
    if start.publish_all {
        warnings.push("ignored: --publish-all (publish the ports you need with -p)".into());
    }
    let memory = (!start.memory.is_empty()).then(|| parse_bytes(&start.memory)).transpose()?;
    let nano_cpus = (!start.cpus.is_empty())
        .then(|| {
            start
                .cpus
                .parse::<f64>()
                .ok()
                .filter(|c| *c > 0.0)
                .map(|c| (c * 1e9) as i64)
                .ok_or_else(|| format!("--cpus {:?}: expected a positive number", start.cpus))
        })
        .transpose()?;
    let dns = parse_dns(&start.dns)?;
    let extra_hosts = start.add_hosts.iter().map(|h| parse_add_host(h)).collect::<Result<Vec<_>, _>>()?;
    let pids_limit = (start.pids_limit != 0).then_some(start.pids_limit);
    if start.pids_limit < 0 {
        return Err(format!("--pids-limit {}: expected a positive number", start.pids_limit));
    }
    let size = start.size.filter(|s| start.tty && s.rows > 0 && s.cols > 0).map(|s| (s.rows, s.cols));
    let agent_mount = agent_name.and_then(|a| {
        let container_home = home.clone();
        let binds = agent_binds(
            a,
            host_home.as_deref().map(Path::new),
            &start.client_env,
            &forbidden,
            caller.uid,
            &gids,
            &container_home,
        );
        (!binds.is_empty()).then(|| AgentMount {
            agent: a.to_owned(),
            binds,
            decision: resolved.toggle,
            user_config: user_path.clone(),
        })
    });
    let mut plan = Plan {
        command: start.command.clone(),
        cwd: cwd_s,
        image,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        binds,
        tty: start.tty,
        size,
        user,
        groups,
        user_name,
        home,
        ports,
        memory,
        nano_cpus,
        pids_limit,
        warnings,
        agent_mount,
        interactive: start.tty && !start.no_interactive,
        degraded: start.degraded,
        protect_host: !start.no_protect_host && resolved.protect_host.unwrap_or(true),
        ask_timeout_s: if start.ask || resolved.ask == Some(true) {
            resolved.ask_timeout.unwrap_or(DEFAULT_ASK_TIMEOUT_S)
        } else {
            0
        },
        pinned: Vec::new(),
        dns_refusal: resolved.dns_refusal.clone().unwrap_or_else(|| "refused".to_owned()),
        dns,
        extra_hosts,
        mcp_configs: super::mcp::PROJECT_FILES
            .iter()
            .chain(&super::mcp::HOME_FILES)
            .chain([&super::mcp::CLAUDE_GLOBAL])
            .filter_map(|f| Some(((*f).to_owned(), start.mcp_configs.get(*f)?.clone())))
            .collect(),
        mcp_servers: Vec::new(),
        mcp_views: Vec::new(),
        policy: (!start.policy.is_empty()).then(|| {
            (
                if start.policy_path.is_empty() { "policy".to_owned() } else { start.policy_path.clone() },
                start.policy.clone(),
            )
        }),
        secrets,
    };
    if plan.agent_mount.as_ref().is_some_and(|m| m.decision.is_some_and(|(yes, _)| yes)) {
        plan.mount_agent();
    }
    Ok(plan)
}

/// A config file, its path, and the uid that must own the files its
/// `[secrets]` name (`None`: root, and unreadable by others).
type SecretsFile<'a> = (&'a config::File, &'a PathBuf, Option<u32>);

/// The session's credentials with their decoys, lowest precedence first:
/// the agent's keys from the caller's environment, the config files'
/// `[secrets]`, a `-e` value of a secret's name, `--secret`.
fn gather_secrets(
    agent: &str,
    files: &[SecretsFile<'_>],
    flags: &[String],
    env: &[(String, String)],
    client_env: &HashMap<String, String>,
) -> Result<Vec<super::secrets::Secret>, String> {
    let mut wanted: std::collections::BTreeMap<String, (String, String)> = Default::default();
    if let Some((_, keys)) = AGENT_KEYS.iter().find(|(a, _)| *a == agent) {
        for k in *keys {
            if let Some(v) = client_env.get(*k).filter(|v| !v.is_empty()) {
                wanted.insert((*k).to_owned(), (v.clone(), format!("{k} from your environment")));
            }
        }
    }
    for (file, path, owner) in files {
        for (name, r) in &file.secrets {
            let origin = format!("[secrets] {name} in {}", path.display());
            let value = match r {
                config::SecretRef::Env(var) => client_env
                    .get(var)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| format!("{origin}: the variable {var} is not set in your environment"))?,
                config::SecretRef::File(p) => read_secret_file(p, *owner).map_err(|e| format!("{origin}: {e}"))?,
            };
            wanted.insert(name.clone(), (value, origin));
        }
    }
    for (k, v) in env {
        if let Some(w) = wanted.get_mut(k) {
            *w = (v.clone(), format!("-e {k}"));
        }
    }
    for spec in flags {
        let (name, value) = spec.split_once('=').ok_or_else(|| format!("--secret {spec:?}: expected NAME=VALUE"))?;
        if !super::secrets::valid_name(name) {
            return Err(format!("--secret {name:?}: a secret is named as an environment variable (A-Z, 0-9, _)"));
        }
        wanted.insert(name.to_owned(), (value.to_owned(), format!("--secret {name}")));
    }
    super::secrets::decoys(wanted)
}

/// A secret's file, read on the descriptor that is checked: a regular
/// file owned by `owner` (the caller's config names it), or by root and
/// unreadable by others (the system's). One trailing newline is dropped.
fn read_secret_file(path: &Path, owner: Option<u32>) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    match owner {
        Some(uid) if meta.uid() != uid => {
            return Err(format!("{}: owned by uid {}, not by you (uid {uid})", path.display(), meta.uid()));
        }
        None if meta.uid() != 0 || meta.mode() & 0o077 != 0 => {
            return Err(format!("{}: must be root's and unreadable by others (0600)", path.display()));
        }
        _ => {}
    }
    let mut text = String::new();
    f.take(super::secrets::MAX_LEN as u64 + 2)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

/// Writes a new file `path` (mode 0600) owned by `user`.
fn write_owned(path: &Path, bytes: &[u8], user: (u32, u32)) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    std::os::unix::fs::fchown(&f, Some(user.0), Some(user.1))
}

/// The container HOME of the target user.
fn home_in_container(user: (u32, u32), host_home: &Option<String>, name: &str) -> String {
    if user.0 == 0 { "/root".to_owned() } else { host_home.clone().unwrap_or_else(|| format!("/home/{name}")) }
}

/// The agent's host config dirs that exist and may be mounted, each at the
/// same place under the container HOME.
fn agent_binds(
    agent: &str,
    home: Option<&Path>,
    client_env: &HashMap<String, String>,
    forbidden: &[PathBuf],
    uid: u32,
    gids: &[u32],
    container_home: &str,
) -> Vec<Bind> {
    let env_dir = |k: &str| client_env.get(k).filter(|v| v.starts_with('/')).map(PathBuf::from);
    let in_home = |rel: &str| home.map(|h| h.join(rel));
    let mut candidates: Vec<(Option<PathBuf>, String)> = Vec::new();
    match agent {
        "claude" => {
            let dir = env_dir("CLAUDE_CONFIG_DIR").or_else(|| in_home(".claude"));
            candidates.push((dir, format!("{container_home}/.claude")));
            // Where claude keeps its global configuration; the container
            // gets a copy of it (`Plan::share_claude_global`).
            let global =
                env_dir("CLAUDE_CONFIG_DIR").map(|d| d.join(".claude.json")).or_else(|| in_home(".claude.json"));
            candidates.push((global, format!("{container_home}/.claude.json")));
        }
        "opencode" => {
            let config = env_dir("XDG_CONFIG_HOME").or_else(|| in_home(".config")).map(|c| c.join("opencode"));
            candidates.push((config, format!("{container_home}/.config/opencode")));
            candidates.push((in_home(".opencode"), format!("{container_home}/.opencode")));
        }
        other => candidates.push((in_home(&format!(".{other}")), format!("{container_home}/.{other}"))),
    }
    let candidates = candidates.into_iter().filter_map(|(src, target)| Some((src?, target)));
    candidates
        .filter(|(src, _)| src.exists())
        .filter_map(|(src, target)| {
            let source = mounts::check_source(&src, forbidden).ok()?;
            mounts::caller_may_read(&source, uid, gids).ok()?;
            Some(Bind { source, target, read_only: false })
        })
        .collect()
}

impl Plan {
    /// The container spec for this plan.
    pub fn spec(&self, ctx: &Ctx, id: &str, name: &str, session_dir: &Path, cgroup_parent: String) -> Spec {
        let mut binds = vec![
            format!("{}:{}", self.cwd, self.cwd),
            format!("{}:{ENTRY_PATH}:ro", ctx.entry_bin.display()),
            format!("{}:{SESSION_DIR}:ro", session_dir.display()),
        ];
        binds.extend(self.binds.iter().chain(&self.pinned).map(Bind::spec));
        let mut entrypoint = vec![
            ENTRY_PATH.to_owned(),
            "--user".into(),
            format!("{}:{}", self.user.0, self.user.1),
            "--groups".into(),
            self.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            "--name".into(),
            self.user_name.clone(),
            "--home".into(),
            self.home.clone(),
            "--release".into(),
            format!("{SESSION_DIR}/release.sock"),
            "--supervise".into(),
            "--".into(),
        ];
        entrypoint.extend(self.command.iter().cloned());
        let labels = HashMap::from([
            (engine::LABEL_SESSION.to_owned(), id.to_owned()),
            (engine::LABEL_INSTANCE.to_owned(), ctx.layout.instance.clone()),
            (engine::LABEL_OWNER.to_owned(), self.user.0.to_string()),
            (engine::LABEL_VERSION.to_owned(), leash_core::VERSION.to_owned()),
            (engine::LABEL_PROJECT.to_owned(), self.cwd.clone()),
            (engine::LABEL_COMMAND.to_owned(), serde_json::to_string(&self.command).unwrap_or_default()),
            ("leash.name".to_owned(), name.to_owned()),
            (engine::LABEL_UNPROTECTED.to_owned(), (!self.protect_host).to_string()),
            (engine::LABEL_ASK.to_owned(), self.ask_timeout_s.to_string()),
            (engine::LABEL_MCP.to_owned(), serde_json::to_string(&self.mcp_servers).unwrap_or_default()),
        ]);
        Spec {
            name: name.to_owned(),
            image: self.image.clone(),
            entrypoint,
            env: self.env.clone(),
            workdir: self.cwd.clone(),
            binds,
            labels,
            tty: self.tty,
            // Without a terminal, the client's EOF must reach the command.
            stdin_once: !self.tty,
            cgroup_parent: Some(cgroup_parent),
            ports: self.ports.clone(),
            memory: self.memory,
            nano_cpus: self.nano_cpus,
            pids_limit: self.pids_limit,
            dns: self.dns.clone(),
            extra_hosts: self.extra_hosts.clone(),
        }
    }
}

/// The values of environment entries whose names say they are secrets
/// (KEY, TOKEN, SECRET, PASSWORD, in any case): the session's redaction set.
pub fn secret_values(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| {
            let k = k.to_ascii_uppercase();
            ["KEY", "TOKEN", "SECRET", "PASSWORD"].iter().any(|w| k.contains(w))
        })
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// `KEY=VALUE` as the CLI sends it.
pub fn parse_env(spec: &str) -> Result<(String, String), String> {
    if spec.is_empty() {
        return Err("environment variable specification cannot be empty".into());
    }
    if spec.starts_with('-') {
        return Err(format!("environment variable {spec:?} must not start with '-'; did you forget the value?"));
    }
    match spec.split_once('=') {
        Some(("", _)) => Err(format!("environment variable name is required in {spec:?}")),
        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
        None => Err(format!("environment variable {spec:?} has no value")),
    }
}

/// `[ip:][host:]container[/tcp|udp]` → ("container/proto", (ip, host port)).
pub fn parse_publish(spec: &str) -> Result<(String, (String, String)), String> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, p @ ("tcp" | "udp"))) => (a, p),
        Some((_, p)) => return Err(format!("--publish {spec:?}: unknown protocol {p:?}")),
        None => (spec, "tcp"),
    };
    let parts: Vec<&str> = addr.split(':').collect();
    let (ip, host, ctr) = match parts.as_slice() {
        [c] => ("127.0.0.1", "", *c),
        [h, c] => ("127.0.0.1", *h, *c),
        [i, h, c] => (*i, *h, *c),
        _ => return Err(format!("--publish {spec:?}: invalid publish format")),
    };
    let port = |s: &str| {
        s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("--publish {spec:?}: invalid port {s:?}"))
    };
    port(ctr)?;
    if !host.is_empty() {
        port(host)?;
    }
    let ip = if ip.is_empty() { "127.0.0.1" } else { ip };
    Ok((format!("{ctr}/{proto}"), (ip.to_owned(), host.to_owned())))
}

/// `--dns` values: IP addresses, written as the engine reads them.
pub fn parse_dns(values: &[String]) -> Result<Vec<String>, String> {
    let parse = |a: &String| a.parse::<std::net::IpAddr>().map_err(|_| format!("--dns {a:?}: expected an IP address"));
    values.iter().map(|a| parse(a).map(|ip| ip.to_string())).collect()
}

/// An `--add-host` value, `NAME:IP` (an IPv6 address may be bracketed), as
/// the engine reads it: `NAME:IP`.
pub fn parse_add_host(spec: &str) -> Result<String, String> {
    let (name, ip) = spec.split_once(':').ok_or_else(|| format!("--add-host {spec:?}: expected NAME:IP"))?;
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "--add-host {spec:?}: {name:?} is not a host name (dot-separated labels of letters, digits, '-' and '_')"
        ));
    }
    let bare = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
    let ip =
        bare.parse::<std::net::IpAddr>().map_err(|_| format!("--add-host {spec:?}: {ip:?} is not an IP address"))?;
    Ok(format!("{name}:{ip}"))
}

/// `512m`, `2g`, `1048576` → bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1i64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        Some((i, 'b')) => (&lower[..i], 1),
        _ => (lower.as_str(), 1),
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .map(|n| (n * mult as f64) as i64)
        .ok_or_else(|| format!("--memory {s:?}: expected a size such as 512m or 2g"))
}

/// Refuses a leash-entry that needs a dynamic loader: it must run in any image.
pub fn check_static(bin: &Path) -> Result<(), String> {
    let data = std::fs::read(bin).map_err(|e| format!("cannot read leash-entry at {}: {e}", bin.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    if data.get(..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) {
        return Err(format!("{} is not a 64-bit ELF executable", bin.display()));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err(format!("{} has a truncated ELF header", bin.display()));
    };
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if data.get(off..off + 4) == Some(&3u32.to_le_bytes()) {
            return Err(format!(
                "leash-entry at {} is dynamically linked, so it cannot run in every image; \
                 install a static one (`cargo xtask install`, or `cargo xtask entry` for LEASH_ENTRY_BIN)",
                bin.display()
            ));
        }
    }
    Ok(())
}

/// The caller's supplementary groups, from /proc (the kernel's view).
fn caller_groups(caller: &Peer) -> Vec<u32> {
    let mut gids = vec![caller.gid];
    if let Some(pid) = caller.pid
        && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:"))
    {
        gids.extend(line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
    }
    gids
}

/// The caller's user name and home directory from the host's passwd.
fn passwd_entry(uid: u32) -> (String, Option<String>) {
    match passwd_fields(uid) {
        Some(f) => (f[0].clone(), Some(f[5].clone()).filter(|h| !h.is_empty())),
        None => (format!("user{uid}"), None),
    }
}

/// A user's primary group from the host's passwd.
pub fn primary_gid(uid: u32) -> Option<u32> {
    passwd_fields(uid).and_then(|f| f[3].parse().ok())
}

/// The fields of a user's line of the host's passwd (at least six).
fn passwd_fields(uid: u32) -> Option<Vec<String>> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2] == uid.to_string())
}

/// The static leash-entry leashd mounts: `LEASH_ENTRY_BIN`, else beside leashd.
pub fn entry_bin(bin_dir: &Path) -> PathBuf {
    std::env::var_os("LEASH_ENTRY_BIN").map(PathBuf::from).unwrap_or_else(|| bin_dir.join("leash-entry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_hosts_fixed_locations_that_exist_are_pinned() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("proj");
        for d in [".git/hooks", ".vscode", ".claude"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::write(p.join(".git/config"), "[core]\n").unwrap();
        std::fs::write(p.join(".vscode/tasks.json"), "{}").unwrap();
        // A symlink is not followed into a mount.
        std::os::unix::fs::symlink("/etc/passwd", p.join(".claude/settings.json")).unwrap();
        // An agent's settings dir mounted on its own, named as the
        // container sees it (`CLAUDE_CONFIG_DIR=~/cc`), with its global
        // configuration inside and plugins.
        let claude = tmp.path().join("home/cc");
        std::fs::create_dir_all(claude.join("hooks")).unwrap();
        std::fs::create_dir_all(claude.join("plugins")).unwrap();
        std::fs::write(claude.join("settings.json"), "{}").unwrap();
        std::fs::write(claude.join(".claude.json"), "{}").unwrap();
        let roots = [(p.clone(), "/w".to_owned()), (claude.clone(), "/home/u/.claude".to_owned())];
        let got: Vec<(String, bool)> = pinned_binds(&roots).into_iter().map(|b| (b.target, b.read_only)).collect();
        assert_eq!(
            got,
            [
                ("/home/u/.claude/.claude.json".to_owned(), true),
                ("/home/u/.claude/hooks".to_owned(), true),
                ("/home/u/.claude/plugins".to_owned(), true),
                ("/home/u/.claude/settings.json".to_owned(), true),
                ("/w/.git".to_owned(), false),
                ("/w/.git/config".to_owned(), true),
                ("/w/.git/hooks".to_owned(), true),
                ("/w/.vscode/tasks.json".to_owned(), true),
            ]
        );
        // A worktree's `.git` file is pinned read-only.
        let wt = tmp.path().join("wt");
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(wt.join(".git"), "gitdir: /elsewhere\n").unwrap();
        let got = pinned_binds(&[(wt, "/wt".to_owned())]);
        assert_eq!((got[0].target.as_str(), got[0].read_only), ("/wt/.git", true));
    }

    #[test]
    fn env_specs() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("").unwrap_err().contains("cannot be empty"));
        assert!(parse_env("-x").unwrap_err().contains("did you forget"));
        assert!(parse_env("=v").unwrap_err().contains("name is required"));
    }

    #[test]
    fn publish_specs() {
        assert_eq!(parse_publish("3000").unwrap(), ("3000/tcp".into(), ("127.0.0.1".into(), "".into())));
        assert_eq!(parse_publish("8080:80").unwrap(), ("80/tcp".into(), ("127.0.0.1".into(), "8080".into())));
        assert_eq!(parse_publish("0.0.0.0::53/udp").unwrap(), ("53/udp".into(), ("0.0.0.0".into(), "".into())));
        assert!(parse_publish("80/sctp").unwrap_err().contains("unknown protocol"));
        assert!(parse_publish("1:2:3:4").unwrap_err().contains("invalid publish format"));
        assert!(parse_publish("99999").unwrap_err().contains("invalid port"));
    }

    #[test]
    fn dns_values_are_addresses() {
        let v = |s: &[&str]| s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_dns(&v(&["172.17.0.1", "2001:DB8::1"])).unwrap(), ["172.17.0.1", "2001:db8::1"]);
        assert_eq!(parse_dns(&[]).unwrap(), Vec::<String>::new());
        let e = parse_dns(&v(&["1.1.1.1", "dns.example"])).unwrap_err();
        assert_eq!(e, "--dns \"dns.example\": expected an IP address");
    }

    #[test]
    fn add_host_values_are_a_name_and_an_address() {
        assert_eq!(parse_add_host("api.anthropic.com:172.17.0.1").unwrap(), "api.anthropic.com:172.17.0.1");
        assert_eq!(parse_add_host("db:2001:DB8::1").unwrap(), "db:2001:db8::1");
        assert_eq!(parse_add_host("db:[::1]").unwrap(), "db:::1");
        assert_eq!(parse_add_host("my_host.local:10.0.0.2").unwrap(), "my_host.local:10.0.0.2");
        assert_eq!(parse_add_host("api.test").unwrap_err(), "--add-host \"api.test\": expected NAME:IP");
        for bad in [":10.0.0.1", "a..b:10.0.0.1", "-a:10.0.0.1", "a b:10.0.0.1", "a.b.:10.0.0.1"] {
            let e = parse_add_host(bad).unwrap_err();
            assert!(e.starts_with(&format!("--add-host {bad:?}: ")) && e.contains("is not a host name"), "{e}");
        }
        let long = format!("{}:10.0.0.1", "a".repeat(64));
        assert!(parse_add_host(&long).unwrap_err().contains("is not a host name"));
        assert_eq!(
            parse_add_host("api.test:host-gateway").unwrap_err(),
            "--add-host \"api.test:host-gateway\": \"host-gateway\" is not an IP address"
        );
        assert!(parse_add_host("api.test:10.0.0.300").unwrap_err().contains("is not an IP address"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn dynamic_entry_is_refused() {
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(check_static(&me).unwrap_err().contains("dynamically linked"));
        assert!(check_static(Path::new("/nonexistent")).unwrap_err().contains("cannot read"));
    }
}
