//! `leashctl gc [--all] [--yes]`: what a crashed or killed stack left
//! behind, found and (with `--yes`) removed: this instance's, or with
//! `--all` every instance's. An instance is alive while any of its daemons
//! runs (a process named leashd, leash-sensor, leash-policy or leash-proxy
//! whose `LEASH_INSTANCE` names it); what belongs to a live instance is
//! never touched but for session dirs its leashd does not know (asked:
//! only it knows its sessions, whatever engine runs them). Found, in the
//! order of removal: the session containers of dead instances (by the
//! `leash.instance` label, through the `docker` command, which follows
//! `DOCKER_HOST`), their file deciders (`leash-sensor --hold`, which
//! outlive the sensor by design), their BPF pins (`/sys/fs/bpf/leash/NAME`)
//! and sessions' cgroup parents (`leash-NAME`, or `leash_NAME.slice` under
//! systemd); this instance's session dirs and, when it is dead, its
//! sockets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use leash_proto::v1::ListSessionsRequest;
use leash_proto::v1::manager_client::ManagerClient;
use serde::Serialize;

use super::Ctx;
use crate::output;

/// The flag of a session's file decider (`leash-sensor --hold`).
const HOLD_FLAG: &str = "--hold";
/// The daemons whose running marks their instance alive.
const DAEMONS: [&str; 4] = ["leashd", "leash-sensor", "leash-policy", "leash-proxy"];
/// Where instances pin their BPF objects.
const BPFFS: &str = "/sys/fs/bpf/leash";
/// A session dir younger than this may belong to a session being created.
const YOUNG: Duration = Duration::from_secs(60);

/// One thing left behind.
#[derive(Debug, Serialize)]
struct Leftover {
    /// pins | container | cgroup | session-dir | socket
    kind: &'static str,
    /// A path, or a container's id and name.
    what: String,
    /// Why it is left over.
    why: String,
    /// What removing it removes (a cgroup is one directory per hierarchy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    paths: Vec<PathBuf>,
    /// With `--yes`: removed, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
}

/// Looks at this instance's leftovers (`LEASH_INSTANCE`, else `default`),
/// or with `all` at every instance's; removes them with `yes`.
pub async fn run(ctx: &Ctx, all: bool, yes: bool) -> anyhow::Result<ExitCode> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("leashctl gc removes BPF pins, cgroups and containers: run it as root");
    }
    let processes = processes();
    let live: BTreeSet<String> = processes.iter().filter(|p| !p.holder).map(|p| p.instance.clone()).collect();
    let mine = ctx.layout.instance.clone();
    let (containers, engine_error) = match containers() {
        Ok(c) => (c, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut found = Vec::new();
    let dead = |instance: &str| !live.contains(instance) && (all || instance == mine);
    // In the order of removal: a session's container before its decider.
    for c in &containers {
        if dead(&c.instance) {
            let why = format!("a session container of instance {}, which runs no daemon", c.instance);
            found.push(leftover("container", format!("{} ({})", c.id, c.name), why));
        }
    }
    for p in processes.iter().filter(|p| p.holder && dead(&p.instance)) {
        let why = format!("a session's file decider of instance {}, which runs no daemon", p.instance);
        found.push(leftover("holder", format!("pid {}", p.pid), why));
    }
    for dir in children(Path::new(BPFFS)) {
        let name = file_name(&dir);
        if dead(&name) {
            found.push(leftover("pins", dir.display().to_string(), format!("instance {name} runs no daemon")));
        }
    }
    let mut parents: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for dir in cgroup_parents() {
        parents.entry(file_name(&dir)).or_default().push(dir);
    }
    for (name, dirs) in parents {
        let looked_at = all || cgroup_names(&mine).contains(&name);
        if looked_at && !live.iter().any(|i| cgroup_names(i).contains(&name)) {
            let why = "the sessions' cgroup parent of an instance that runs no daemon".to_owned();
            let what = match dirs.as_slice() {
                [one] => one.display().to_string(),
                many => format!("{name} (in {} hierarchies)", many.len()),
            };
            found.push(Leftover { paths: dirs, ..leftover("cgroup", what, why) });
        }
    }
    // This instance's session dirs: leashd removes each with its session.
    let alive = live.contains(&mine);
    let dirs = children(&ctx.layout.state_dir.join("sessions"));
    if !alive && engine_error.is_none() {
        for dir in dirs {
            let why = format!("a session of instance {mine}, which runs no daemon");
            found.push(leftover("session-dir", dir.display().to_string(), why));
        }
    } else if alive && let Some(known) = known_sessions(ctx).await {
        // Only leashd knows its sessions, whatever engine runs them; one it
        // does not know, whose dir is a minute old, is over. (leashd out of
        // reach: its dirs are left alone.)
        for dir in dirs.into_iter().filter(|d| !known.contains(&file_name(d))) {
            let young = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < YOUNG);
            if !young {
                found.push(leftover("session-dir", dir.display().to_string(), "leashd has no such session".into()));
            }
        }
    }
    if !alive {
        for f in children(&ctx.layout.runtime_dir) {
            let name = file_name(&f);
            if name.ends_with(".sock") || name.ends_with(".lock") {
                found.push(leftover("socket", f.display().to_string(), format!("instance {mine} runs no daemon")));
            }
        }
    }
    let mut failed = 0;
    if yes {
        for l in &mut found {
            let r = remove(l);
            failed += usize::from(r.is_err());
            l.outcome = Some(r.map_or_else(|e| format!("not removed: {e}"), |()| "removed".to_owned()));
        }
    }
    if ctx.json {
        output::json(&found);
    } else {
        let mut out = String::new();
        for l in &found {
            let outcome = l.outcome.as_deref().map(|o| format!(" — {o}")).unwrap_or_default();
            out.push_str(&format!("{:<12} {}  ({}){outcome}\n", l.kind, l.what, l.why));
        }
        out.push_str(&match (found.len(), yes) {
            (0, _) => "nothing left behind\n".to_owned(),
            (n, false) => format!("{n} left behind; `leashctl gc --yes` removes them\n"),
            (n, true) => format!("{} of {n} removed\n", n - failed),
        });
        output::text(&out);
    }
    if let Some(e) = engine_error {
        #[allow(clippy::print_stderr, reason = "a warning beside the report")]
        {
            eprintln!("leashctl gc: containers and session dirs not looked at: {e}");
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The sessions this instance's leashd has, when it answers.
async fn known_sessions(ctx: &Ctx) -> Option<BTreeSet<String>> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await.ok()?;
    let list = ManagerClient::new(conn.channel).list_sessions(ListSessionsRequest::default()).await.ok()?;
    Some(list.into_inner().sessions.into_iter().map(|s| s.id).collect())
}

fn leftover(kind: &'static str, what: String, why: String) -> Leftover {
    Leftover { kind, what, why, paths: Vec::new(), outcome: None }
}

fn remove(l: &Leftover) -> Result<(), String> {
    let path = Path::new(&l.what);
    match l.kind {
        "pins" | "session-dir" => std::fs::remove_dir_all(path).map_err(|e| e.to_string()),
        "socket" => std::fs::remove_file(path).map_err(|e| e.to_string()),
        // (It exits by itself once its session's cgroup is gone.)
        "holder" => {
            let pid = l.what.trim_start_matches("pid ").parse::<i32>().map_err(|e| e.to_string())?;
            let pid = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
            match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        // Sessions' cgroups below it, then it.
        "cgroup" => l
            .paths
            .iter()
            .try_for_each(|p| leash_daemon::cgroup::remove_tree(p, 4).map_err(|e| format!("{}: {e}", p.display()))),
        _ => {
            let id = l.what.split_whitespace().next().unwrap_or_default();
            let out = Command::new("docker").args(["rm", "--force", id]).output().map_err(|e| e.to_string())?;
            out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

/// The entries of `dir`, sorted; none when it is missing.
fn children(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A running process of leash's: a daemon, or a session's file decider
/// (`leash-sensor --hold`, which outlives the sensor by design and exits
/// once its session's cgroup is gone).
#[derive(Debug)]
struct Process {
    pid: u32,
    instance: String,
    holder: bool,
}

/// leash's running processes (zombies are not).
fn processes() -> Vec<Process> {
    let mut found = Vec::new();
    for proc_dir in children(Path::new("/proc")) {
        let Ok(pid) = file_name(&proc_dir).parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'));
        if !DAEMONS.contains(&comm.trim()) || zombie {
            continue;
        }
        let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
        let instance = environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(b"LEASH_INSTANCE="));
        let instance = instance.map_or_else(
            || leash_core::layout::DEFAULT_INSTANCE.to_owned(),
            |v| String::from_utf8_lossy(v).into_owned(),
        );
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let holder = cmdline.split(|b| *b == 0).any(|a| a == HOLD_FLAG.as_bytes());
        found.push(Process { pid, instance, holder });
    }
    found
}

/// The cgroup parents of sessions, in every hierarchy.
fn cgroup_parents() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut roots = vec![root.to_owned()];
    roots.extend(children(root).into_iter().filter(|p| p.is_dir()));
    roots.iter().flat_map(|r| children(r)).filter(|p| p.is_dir() && is_cgroup_parent(&file_name(p))).collect()
}

/// Whether a cgroup is the sessions' parent of some instance: `leash-NAME`
/// (cgroupfs) or `leash_NAME.slice` (systemd, a `-` in NAME as `_`; a
/// session's own slice has a `-`).
fn is_cgroup_parent(name: &str) -> bool {
    match name.strip_prefix("leash_").and_then(|n| n.strip_suffix(".slice")) {
        Some(slice) => !slice.is_empty() && !slice.contains('-'),
        None => name.strip_prefix("leash-").is_some_and(|n| !n.is_empty()),
    }
}

/// The names an instance's sessions' cgroup parent may have (as leashd's
/// engine makes them).
fn cgroup_names(instance: &str) -> [String; 2] {
    let parent = format!("leash-{instance}");
    let slice = format!("{}.slice", parent.replace('-', "_"));
    [parent, slice]
}

/// A session container, from its labels.
#[derive(Debug)]
struct Container {
    id: String,
    name: String,
    instance: String,
}

/// Every container with leash's instance label, through `docker`.
fn containers() -> Result<Vec<Container>, String> {
    let format = "{{.ID}}\t{{.Names}}\t{{.Label \"leash.instance\"}}";
    let out = Command::new("docker")
        .args(["ps", "--all", "--no-trunc", "--filter", "label=leash.instance", "--format", format])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !out.status.success() {
        return Err(format!("docker ps: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Container {
                id: f.next()?.chars().take(12).collect(),
                name: f.next()?.to_owned(),
                instance: f.next()?.to_owned(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_are_told_by_name() {
        for parent in ["leash-default", "leash-t-1a2b", "leash_t_1a2b.slice"] {
            assert!(is_cgroup_parent(parent), "{parent}");
        }
        for other in ["leash_default-abc.slice", "leash-", "leash_.slice", "system.slice"] {
            assert!(!is_cgroup_parent(other), "{other}");
        }
        assert_eq!(cgroup_names("t-1a2b"), ["leash-t-1a2b".to_owned(), "leash_t_1a2b.slice".to_owned()]);
    }
}
