//! Cgroup directories: what leashd removes after a session and `leashctl
//! gc` after a stack that died.

use std::path::Path;

/// Removes a cgroup and the cgroups below it (down to `depth` levels),
/// deepest first. Only directories are followed: a cgroup's files cannot be
/// removed, and `rmdir` removes a cgroup with them. The error of the
/// top one's removal (EBUSY while a process is in it); a missing one is
/// removed already.
pub fn remove_tree(dir: &Path, depth: u32) -> std::io::Result<()> {
    if depth > 0
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_tree(&e.path(), depth - 1);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
