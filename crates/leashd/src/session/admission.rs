//! Admission: the ordered steps that must pass between the container's
//! start and leash-entry's release. A failure ends the session before the
//! command runs (exit 125, naming the component); only `--degraded` lets a
//! session run without a layer, and then its events say so.
//!
//! leashd's own step verifies the mounts. The policy service, the sensor and
//! the proxy add theirs (open the session's policy, attach the cgroup, start
//! the listener) as they gain session methods; the sensor's step first
//! checks that the engine placed the container below its cgroup parent.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// One step.
pub struct Step<'a> {
    /// The component that performs it (`leashd`, `leash-policy`, …).
    pub component: &'static str,
    /// What it does, for messages.
    pub what: &'static str,
    /// How long it may take.
    pub timeout: Duration,
    /// The work.
    pub run: Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>,
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step").field("component", &self.component).field("what", &self.what).finish()
    }
}

/// Runs the steps in order. Returns the layers skipped under `degraded`.
pub async fn admit(steps: Vec<Step<'_>>, degraded: bool) -> Result<Vec<String>, String> {
    let mut skipped = Vec::new();
    for step in steps {
        let outcome = match tokio::time::timeout(step.timeout, step.run).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", step.timeout)),
        };
        if let Err(e) = outcome {
            // leashd's own checks protect the host; they are never skipped.
            if degraded && step.component != "leashd" {
                skipped.push(format!("{} ({})", step.component, step.what));
                continue;
            }
            return Err(format!("admission failed at {} ({}): {e}", step.component, step.what));
        }
    }
    Ok(skipped)
}

/// Checks that each mount shows the container the same file as the one
/// checked on the host: (device, inode) of the source against the target
/// as seen through `/proc/<pid>/root`. Catches a source swapped (say, for a
/// symlink to somewhere forbidden) between the check and the mount.
pub fn verify_mounts(pid: i64, mounts: &[(std::path::PathBuf, String)]) -> Result<(), String> {
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    for (source, target) in mounts {
        let host = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
        let seen_path = root.join(target.trim_start_matches('/'));
        let seen = std::fs::metadata(&seen_path).map_err(|e| format!("{target} in the container: {e}"))?;
        if (host.dev(), host.ino()) != (seen.dev(), seen.ino()) {
            return Err(format!("{target} in the container is not {} as checked", source.display()));
        }
    }
    Ok(())
}

/// Checks that the engine placed the container (`pid`, its PID 1) below
/// the session's cgroup parent in the cgroup v2 hierarchy (`below_root`,
/// relative to its root): leash-sensor's programs are attached above it, so
/// a container anywhere else would run with none of them. Read from the
/// host's view of `/proc/<pid>/cgroup`, before leash-entry is released.
pub fn verify_cgroup(pid: i64, below_root: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the container's cgroup (process {pid}): {e}"))?;
    let expected = format!("/{}/", below_root.trim_matches('/'));
    match placed_below(&text, &expected) {
        Ok(()) => Ok(()),
        Err(None) => Err(format!(
            "the container has no cgroup v2 membership (/proc/{pid}/cgroup has no `0::` line): leash-sensor \
             governs containers through cgroup v2 (alone, or beside v1 in hybrid mode)"
        )),
        Err(Some(actual)) => Err(format!(
            "the container engine placed the container in the cgroup {actual}, not below {expected}, the \
             cgroup parent it was given, where leash-sensor governs it; the command did not run"
        )),
    }
}

/// Whether the `0::` line of a `/proc/<pid>/cgroup` text names a cgroup
/// below `expected` (`/a/b/`): `Err(None)` when there is no such line,
/// `Err(Some(path))` with the path when it is elsewhere.
fn placed_below(text: &str, expected: &str) -> Result<(), Option<String>> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or(None)?;
    let inside = path.starts_with(expected) && !path[expected.len()..].split('/').any(|c| c == "..");
    if inside { Ok(()) } else { Err(Some(path.to_owned())) }
}

/// Makes the session's memfds non-executable: `vm.memfd_noexec=2` in the
/// container's pid namespace (the sysctl is per pid namespace, and a child
/// namespace cannot loosen it). fanotify never sees an exec of a memfd (it
/// lives on an internal mount), so this is what refuses one. Set through
/// `nsenter`, whose child joins the namespace. Kernels before 6.3 have no
/// such sysctl: the step then passes and says so.
pub async fn seal_memfds(pid: i64) -> Result<Option<String>, String> {
    if !Path::new("/proc/sys/vm/memfd_noexec").exists() {
        return Ok(Some("this kernel has no vm.memfd_noexec: memfd execs are not refused".into()));
    }
    let out = tokio::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--pid", "--", "/bin/sh", "-c"])
        .arg("echo 2 > /proc/sys/vm/memfd_noexec && cat /proc/sys/vm/memfd_noexec")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || got != "2" {
        return Err(format!(
            "cannot set vm.memfd_noexec in the session's pid namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(component: &'static str, r: Result<(), String>) -> Step<'static> {
        Step { component, what: "test", timeout: Duration::from_secs(1), run: Box::pin(async move { r }) }
    }

    #[tokio::test]
    async fn a_failure_names_the_component_unless_degraded() {
        let e =
            admit(vec![step("leashd", Ok(())), step("leash-sensor", Err("no BPF".into()))], false).await.unwrap_err();
        assert_eq!(e, "admission failed at leash-sensor (test): no BPF");
        let skipped = admit(vec![step("leash-sensor", Err("no BPF".into()))], true).await.unwrap();
        assert_eq!(skipped, ["leash-sensor (test)"]);
        assert!(admit(vec![step("leashd", Err("mount moved".into()))], true).await.is_err());
    }

    #[tokio::test]
    async fn a_slow_step_times_out() {
        let slow = Step {
            component: "leash-proxy",
            what: "listener",
            timeout: Duration::from_millis(20),
            run: Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }),
        };
        let e = admit(vec![slow], false).await.unwrap_err();
        assert!(e.contains("leash-proxy (listener): no answer within"), "{e}");
    }

    #[test]
    fn a_container_is_placed_below_its_cgroup_parent_or_refused() {
        let below = "/leash-t/s1/";
        // Docker's and Podman's cgroupfs placement, on a hybrid host.
        assert_eq!(placed_below("4:memory:/leash-t/s1/abc\n0::/leash-t/s1/abc\n", below), Ok(()));
        assert_eq!(placed_below("0::/leash-t/s1/libpod-abc\n", below), Ok(()));
        // The systemd driver's slices, the engine's own cgroup, a sibling
        // session, a climb out, and a v1-only host.
        for elsewhere in [
            "0::/leash_t.slice/leash_t-s1.slice/docker-abc.scope",
            "0::/",
            "0::/leash-t/s12/abc",
            "0::/leash-t/s1/../s2/abc",
        ] {
            assert!(matches!(placed_below(elsewhere, below), Err(Some(_))), "{elsewhere}");
        }
        assert_eq!(placed_below("1:name=systemd:/x\n4:memory:/leash-t/s1/abc\n", below), Err(None));
        // Our own process is not in a session's cgroup.
        let e = verify_cgroup(std::process::id() as i64, "leash-t/s1").unwrap_err();
        assert!(e.contains("not below /leash-t/s1/") || e.contains("no cgroup v2"), "{e}");
    }

    #[test]
    fn mounts_are_compared_by_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let me = std::process::id() as i64;
        // Our own root is the host's: a path is itself...
        verify_mounts(me, &[(a.clone(), a.display().to_string())]).unwrap();
        // ...and not another directory.
        let e = verify_mounts(me, &[(a.clone(), tmp.path().display().to_string())]).unwrap_err();
        assert!(e.contains("is not"), "{e}");
    }
}
