//! The runtime directory: root:leash 0750 when a `leash` group exists, else
//! 0700, owned by the daemon's user.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The group whose members may run sessions (as powerful as `docker`).
pub const LEASH_GROUP: &str = "leash";

/// Finds a group's id in `/etc/group`.
pub fn group_id(name: &str) -> Option<u32> {
    group_id_in(&fs::read_to_string("/etc/group").ok()?, name)
}

fn group_id_in(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Creates (or checks) the runtime dir and sets its owner and mode.
///
/// Returns the `leash` group id when the group exists and the daemon runs as
/// root, so the manager socket can be handed to that group.
pub fn prepare(dir: &Path) -> io::Result<Option<u32>> {
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("runtime dir {} is not a directory", dir.display())));
    }
    let euid = rustix::process::geteuid();
    if meta.uid() != euid.as_raw() {
        return Err(io::Error::other(format!(
            "runtime dir {} is owned by uid {}, not by this daemon's uid {}: refusing to use it",
            dir.display(),
            meta.uid(),
            euid.as_raw()
        )));
    }
    let group = if euid.is_root() { group_id(LEASH_GROUP) } else { None };
    if let Some(gid) = group {
        rustix::fs::chown(dir, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_groups() {
        let f = "root:x:0:\nleash:x:998:alice,bob\ndocker:x:999:\n";
        assert_eq!(group_id_in(f, "leash"), Some(998));
        assert_eq!(group_id_in(f, "root"), Some(0));
        assert_eq!(group_id_in(f, "leas"), None);
    }

    #[test]
    fn private_mode_without_group() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let group = prepare(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, if group.is_some() { 0o750 } else { 0o700 });
    }
}
