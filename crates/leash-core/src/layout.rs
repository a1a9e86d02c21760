//! Where each daemon keeps its sockets, locks and state.

use std::path::{Path, PathBuf};

use crate::Component;

/// Default runtime directory (sockets, locks): cleared at boot.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/leash";
/// Default state directory (durable data, logs of a detached leashd).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/leash";
/// Default instance name.
pub const DEFAULT_INSTANCE: &str = "default";

/// The file-system layout of one leash instance.
///
/// `instance` scopes everything that is global to the host rather than to a
/// directory (bpffs pins, the cgroup parent, ports), so test stacks with their
/// own runtime dirs and instances never collide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Sockets and lock files.
    pub runtime_dir: PathBuf,
    /// Durable state.
    pub state_dir: PathBuf,
    /// Instance name: `[A-Za-z0-9_-]{1,32}`.
    pub instance: String,
}

/// Why an instance name was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidInstance(pub String);

impl std::fmt::Display for InvalidInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid instance name {:?}: use 1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'", self.0)
    }
}

impl std::error::Error for InvalidInstance {}

/// Checks an instance name; it becomes part of paths and cgroup names.
pub fn validate_instance(name: &str) -> Result<(), InvalidInstance> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(InvalidInstance(name.to_owned())) }
}

impl Layout {
    /// leashd's client socket.
    pub fn manager_socket(&self) -> PathBuf {
        self.runtime_dir.join("leashd.sock")
    }

    /// A component's socket.
    pub fn component_socket(&self, c: Component) -> PathBuf {
        self.runtime_dir.join(format!("{}.sock", c.short()))
    }

    /// The lock file a daemon holds while it owns `socket`.
    pub fn lock_for(socket: &Path) -> PathBuf {
        socket.with_extension("lock")
    }

    /// Where leashd keeps what it must remember across its own restarts
    /// (restart counters); in the runtime dir, so a reboot forgets it.
    pub fn supervisor_state(&self) -> PathBuf {
        self.runtime_dir.join("leashd.state")
    }

    /// The log file of a leashd started detached by `leash`.
    pub fn detached_log(&self) -> PathBuf {
        self.state_dir.join("leashd.log")
    }

    /// Where BPF objects of this instance are pinned.
    pub fn bpffs_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/leash").join(&self.instance)
    }

    /// The cgroup (v2) that parents this instance's session containers.
    pub fn cgroup_parent(&self) -> String {
        format!("leash-{}", self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert!(validate_instance("default").is_ok());
        assert!(validate_instance("ci_1-a").is_ok());
        assert!(validate_instance("").is_err());
        assert!(validate_instance("../x").is_err());
        assert!(validate_instance(&"a".repeat(33)).is_err());
    }

    #[test]
    fn paths() {
        let l = Layout { runtime_dir: "/run/leash".into(), state_dir: "/var/lib/leash".into(), instance: "t1".into() };
        assert_eq!(l.manager_socket(), Path::new("/run/leash/leashd.sock"));
        assert_eq!(l.component_socket(Component::Sensor), Path::new("/run/leash/sensor.sock"));
        assert_eq!(Layout::lock_for(&l.manager_socket()), Path::new("/run/leash/leashd.lock"));
        assert_eq!(l.bpffs_dir(), Path::new("/sys/fs/bpf/leash/t1"));
        assert_eq!(l.cgroup_parent(), "leash-t1");
    }
}
