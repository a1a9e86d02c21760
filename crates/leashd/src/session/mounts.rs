//! Bind mounts: parsing `-v` specs and refusing sources that expose leash or
//! the host's control.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// One bind mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path (absolute, normalized).
    pub source: PathBuf,
    /// Container path (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Bind {
    /// The `src:dst[:ro]` form Docker takes.
    pub fn spec(&self) -> String {
        format!("{}:{}{}", self.source.display(), self.target, if self.read_only { ":ro" } else { "" })
    }
}

/// Parses `SRC:DST[:ro|rw]`; a relative or `~` source is resolved against
/// `cwd` and `home`.
pub fn parse_volume(spec: &str, cwd: &Path, home: Option<&Path>) -> Result<Bind, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, None),
        [s, d, m] => (*s, *d, Some(*m)),
        _ => return Err(format!("invalid volume mount {spec:?}; expected src:dst[:ro|rw]")),
    };
    if src.is_empty() || dst.is_empty() {
        return Err(format!("invalid volume mount {spec:?}; expected src:dst[:ro|rw]"));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(format!("invalid volume mount {spec:?}: mode {m:?} is not ro or rw")),
    };
    if !dst.starts_with('/') {
        return Err(format!("invalid volume mount {spec:?}: the container path must be absolute"));
    }
    let source = if let Some(rest) = src.strip_prefix("~/").or((src == "~").then_some("")) {
        home.ok_or_else(|| format!("volume {spec:?}: the caller has no home directory"))?.join(rest)
    } else {
        cwd.join(src)
    };
    Ok(Bind { source: normalize(&source), target: normalize(Path::new(dst)).display().to_string(), read_only })
}

/// Removes `.` and `..` lexically.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Host paths no session may mount, nor anything above or below them.
pub fn forbidden_sources(runtime_dir: &Path, state_dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![
        runtime_dir.to_owned(),
        state_dir.to_owned(),
        PathBuf::from("/sys/fs/bpf"),
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/proc"),
        PathBuf::from("/run/docker.sock"),
        PathBuf::from("/var/run/docker.sock"),
        PathBuf::from("/run/containerd"),
        PathBuf::from("/run/podman"),
        PathBuf::from("/var/lib/docker"),
        PathBuf::from("/var/lib/containerd"),
        PathBuf::from("/var/lib/containers"),
        PathBuf::from("/etc/leash"),
    ];
    // The engine leashd talks to, wherever DOCKER_HOST puts its socket.
    if let Some(sock) = std::env::var("DOCKER_HOST").ok().and_then(|h| h.strip_prefix("unix://").map(PathBuf::from)) {
        v.push(sock);
    }
    // Rootless engines' sockets live in each user's runtime dir.
    for entry in std::fs::read_dir("/run/user").into_iter().flatten().flatten() {
        for sock in ["docker.sock", "podman/podman.sock"] {
            let p = entry.path().join(sock);
            if p.exists() {
                v.push(p);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Why a source may not be mounted, if it may not. The source must exist;
/// `/` and any ancestor of a forbidden path are refused, as is anything
/// inside one. Symlinks are resolved first.
pub fn check_source(source: &Path, forbidden: &[PathBuf]) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if real == Path::new("/") {
        return Err(format!("{} is the host's root directory; leash does not mount it", source.display()));
    }
    for f in forbidden {
        let f_real = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        if real.starts_with(&f_real) || f_real.starts_with(&real) {
            return Err(format!(
                "{} exposes {} (leash's or the container engine's control); leash does not mount it",
                source.display(),
                f_real.display()
            ));
        }
    }
    Ok(real)
}

/// Whether user `uid` (with groups `gids`) may read and search `path` and
/// every directory above it, judged from permission bits (root may always).
pub fn caller_may_read(path: &Path, uid: u32, gids: &[u32]) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    let mut cur = PathBuf::from("/");
    let mut components: Vec<_> = path.components().skip(1).collect();
    components.insert(0, Component::RootDir);
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            cur.push(c);
        }
        let meta = std::fs::metadata(&cur).map_err(|e| format!("{}: {e}", cur.display()))?;
        let last = i == components.len() - 1;
        let need = if last { if meta.is_dir() { 0o5 } else { 0o4 } } else { 0o1 };
        let mode = meta.mode();
        let bits = if meta.uid() == uid {
            (mode >> 6) & 7
        } else if gids.contains(&meta.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if bits & need != need {
            return Err(format!("{}: permission denied for uid {uid}", cur.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let cwd = Path::new("/work/p");
        let home = Some(Path::new("/home/a"));
        assert_eq!(
            parse_volume("data:/data:ro", cwd, home).unwrap(),
            Bind { source: "/work/p/data".into(), target: "/data".into(), read_only: true }
        );
        assert_eq!(parse_volume("~/x:/x", cwd, home).unwrap().source, PathBuf::from("/home/a/x"));
        assert_eq!(parse_volume("../q:/q:rw", cwd, home).unwrap().source, PathBuf::from("/work/q"));
        assert!(parse_volume("nocolon", cwd, home).unwrap_err().contains("expected src:dst"));
        assert!(parse_volume("a:b", cwd, home).unwrap_err().contains("must be absolute"));
        assert!(parse_volume("a:/b:rx", cwd, home).unwrap_err().contains("not ro or rw"));
    }

    #[test]
    fn refuses_control_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("x")).unwrap();
        let forbidden = forbidden_sources(&run, Path::new("/nonexistent/state"));
        assert!(check_source(Path::new("/"), &forbidden).unwrap_err().contains("root directory"));
        assert!(check_source(&run, &forbidden).unwrap_err().contains("exposes"));
        assert!(check_source(&run.join("x"), &forbidden).is_err());
        assert!(check_source(tmp.path(), &forbidden).is_err(), "an ancestor of the runtime dir");
        let ok = tmp.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        assert!(check_source(&ok, &forbidden).is_ok());
        assert!(check_source(&tmp.path().join("missing"), &forbidden).is_err());
    }
}
