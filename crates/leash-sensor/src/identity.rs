//! File identity on the fallback tier: a file or directory the policy
//! forbids by name stays forbidden under any other name the agent gives it
//! (a hard link, a rename or move of it or of a directory above it).
//!
//! Policies name paths; the kernel's fanotify event names the opened file by
//! the path it was opened through. So the decider also knows the files the
//! tables deny something on, and everything below the directories they deny
//! something on, by identity (device and inode, read through the session's
//! own root, `/proc/<tid>/root`). An opened file whose identity, or whose
//! ancestor directory's identity, is one of those but under another name is
//! decided under the name it has there too, and the stricter answer wins.
//!
//! The set is read again when the tables change and at most every
//! [`REFRESH`] otherwise, so files that appear in a forbidden directory
//! later are known from then on (and what was known keeps its name while
//! the tables still forbid something there, though it was renamed since); a file created and linked out within that
//! window is not traced (its content is the agent's own: nothing existed to
//! read). At most [`MAX_ENTRIES`] entries are read below forbidden
//! directories; past that, the rest are not traced, and the decider says so.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leash_core::tables::Tables;

/// Entries read below the forbidden directories at most.
pub const MAX_ENTRIES: usize = 100_000;
/// How long a set serves before it is read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A file's identity: device and inode.
pub type Id = (u64, u64);

/// The identity of what `meta` describes.
pub fn id_of(meta: &std::fs::Metadata) -> Id {
    (meta.dev(), meta.ino())
}

/// The forbidden files and directories of one table generation, by identity.
#[derive(Debug, Default)]
pub struct Identities {
    tables: Option<Arc<Tables>>,
    taken: Option<Instant>,
    /// Identity → the path it has under its forbidden name (directories
    /// with a trailing `/`).
    names: HashMap<Id, String>,
    /// The scan stopped at [`MAX_ENTRIES`].
    pub truncated: bool,
}

impl Identities {
    /// Reads the set again through `root` (the session's root, as one of
    /// its threads sees it) when the tables changed, or when it is older
    /// than [`REFRESH`].
    pub fn refresh(&mut self, tables: &Arc<Tables>, root: &Path) {
        let fresh = self.tables.as_ref().is_some_and(|t| Arc::ptr_eq(t, tables))
            && self.taken.is_some_and(|t| t.elapsed() < REFRESH);
        if fresh {
            return;
        }
        let (files, dirs) = tables.guarded();
        let mut names = HashMap::new();
        let mut budget = MAX_ENTRIES;
        for f in &files {
            if let Ok(m) = std::fs::metadata(within(root, f)) {
                names.insert(id_of(&m), f.clone());
            }
        }
        let mut truncated = false;
        for d in &dirs {
            truncated |= !walk(root, d, &mut names, &mut budget);
        }
        // What was known and is gone from its forbidden name now (renamed,
        // or moved out with a directory) stays known while the tables still
        // forbid something at that name: the next read of the set would
        // otherwise forget a forbidden file the agent renamed a moment ago.
        // (A forbidden file deleted, and its inode number reused for a new
        // file, makes that file forbidden too: the safe side.)
        let guarded = |name: &str| {
            files.contains(name.trim_end_matches('/'))
                || dirs.iter().any(|d| name.starts_with(d.as_str()) || format!("{}/", name.trim_end_matches('/')) == *d)
        };
        for (id, name) in std::mem::take(&mut self.names) {
            if budget == 0 {
                truncated = true;
                break;
            }
            if !names.contains_key(&id) && guarded(&name) {
                names.insert(id, name);
                budget -= 1;
            }
        }
        if truncated && !self.truncated {
            tracing::warn!(
                entries = MAX_ENTRIES,
                "more entries below forbidden directories than the decider traces; the rest are decided by name only"
            );
        }
        *self = Identities { tables: Some(tables.clone()), taken: Some(Instant::now()), names, truncated };
    }

    /// Every file and directory known, by identity, with the name it has
    /// where the policy forbids something (directories end in `/`).
    pub fn names(&self) -> &HashMap<Id, String> {
        &self.names
    }

    /// Whether nothing is traced (no forbidden file or directory exists).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name the file opened as `path` (identity `id`) has where the
    /// policy forbids something, when that is another name: the file
    /// itself is a forbidden file (or one below a forbidden directory)
    /// under another name, or one of its ancestors is a forbidden
    /// directory (or one below one) under another name. Ancestors are
    /// looked up through `root`.
    pub fn other_name(&self, root: &Path, path: &str, id: Id) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        if let Some(known) = self.names.get(&id) {
            return (known.trim_end_matches('/') != path.trim_end_matches('/')).then(|| known.clone());
        }
        // The nearest ancestor that is known decides: at its own name, the
        // path is already where the policy looks.
        let mut cur = path.trim_end_matches('/');
        while let Some(i) = cur.rfind('/') {
            let dir = &cur[..i];
            if dir.is_empty() {
                break;
            }
            if let Ok(m) = std::fs::metadata(within(root, dir))
                && let Some(known) = self.names.get(&id_of(&m))
            {
                let known = known.trim_end_matches('/');
                return (known != dir).then(|| format!("{known}{}", &path[dir.len()..]));
            }
            cur = dir;
        }
        None
    }
}

/// The name a file opened as `path` has where the policy forbids it: the
/// file or directory known as `known` is `depth` levels above it (0: the
/// file itself), so the rest of the path follows the known name.
pub fn traced_name(known: &str, path: &str, depth: usize) -> String {
    let known = known.trim_end_matches('/');
    if depth == 0 {
        return known.to_owned();
    }
    let path = path.trim_end_matches('/');
    let cut = path.rmatch_indices('/').nth(depth - 1).map_or(0, |(i, _)| i);
    format!("{known}{}", &path[cut..])
}

/// `path` (absolute, in the container) under `root`.
fn within(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Adds `dir` and everything below it (symlinks not followed); false when
/// the budget ran out.
pub(crate) fn walk(root: &Path, dir: &str, names: &mut HashMap<Id, String>, budget: &mut usize) -> bool {
    let mut stack = vec![dir.trim_end_matches('/').to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(within(root, &d)) else { continue };
        if !m.is_dir() {
            continue;
        }
        names.insert(id_of(&m), format!("{d}/"));
        let Ok(entries) = std::fs::read_dir(within(root, &d)) else { continue };
        for e in entries.flatten() {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
            let path = format!("{d}/{name}");
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() => {
                    names.insert(id_of(&m), path);
                }
                _ => {}
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use leash_core::tables::{FileAction, PathTable, Verdict};

    fn tables(deny_file: &str, deny_dir: &str) -> Arc<Tables> {
        let mut t = PathTable { default: Some(Verdict::new(true, 0)), ..Default::default() };
        t.exact.insert(deny_file.to_owned(), Verdict::new(false, 1));
        t.prefixes.insert(deny_dir.to_owned(), Verdict::new(false, 1));
        t.prefixes.insert("/".to_owned(), Verdict::new(true, 0));
        let mut tables = Tables::default();
        tables.files.insert(FileAction::Read, t);
        Arc::new(tables)
    }

    #[test]
    fn links_and_renames_are_traced_to_the_forbidden_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let w = root.join("w");
        std::fs::create_dir_all(w.join("private/sub")).unwrap();
        std::fs::write(w.join("secret.txt"), "s").unwrap();
        std::fs::write(w.join("private/sub/key"), "k").unwrap();
        std::fs::write(w.join("open.txt"), "o").unwrap();
        let mut ids = Identities::default();
        ids.refresh(&tables("/w/secret.txt", "/w/private/"), root);
        let id = |p: &str| id_of(&std::fs::metadata(within(root, p)).unwrap());

        // A hard link of the forbidden file, and one of a file below the
        // forbidden directory.
        std::fs::hard_link(w.join("secret.txt"), w.join("hard")).unwrap();
        std::fs::hard_link(w.join("private/sub/key"), w.join("key-link")).unwrap();
        assert_eq!(ids.other_name(root, "/w/hard", id("/w/hard")).as_deref(), Some("/w/secret.txt"));
        assert_eq!(ids.other_name(root, "/w/key-link", id("/w/key-link")).as_deref(), Some("/w/private/sub/key"));
        // At its own name, there is no other.
        assert_eq!(ids.other_name(root, "/w/secret.txt", id("/w/secret.txt")), None);
        assert_eq!(ids.other_name(root, "/w/private/sub/key", id("/w/private/sub/key")), None);
        // The forbidden directory renamed, and a directory below it moved out.
        std::fs::rename(w.join("private"), w.join("stolen")).unwrap();
        std::fs::write(w.join("stolen/new"), "n").unwrap();
        assert_eq!(ids.other_name(root, "/w/stolen/new", id("/w/stolen/new")).as_deref(), Some("/w/private/new"));
        std::fs::rename(w.join("stolen/sub"), w.join("moved")).unwrap();
        std::fs::write(w.join("moved/other"), "n").unwrap();
        assert_eq!(
            ids.other_name(root, "/w/moved/other", id("/w/moved/other")).as_deref(),
            Some("/w/private/sub/other")
        );
        // Anything else has no other name.
        assert_eq!(ids.other_name(root, "/w/open.txt", id("/w/open.txt")), None);
        // Read again after the forbidden file was renamed away: still known.
        std::fs::rename(w.join("secret.txt"), w.join("renamed")).unwrap();
        ids.refresh(&tables("/w/secret.txt", "/w/private/"), root);
        assert_eq!(ids.other_name(root, "/w/renamed", id("/w/renamed")).as_deref(), Some("/w/secret.txt"));
        assert_eq!(
            ids.other_name(root, "/w/moved/other", id("/w/moved/other")).as_deref(),
            Some("/w/private/sub/other")
        );
        // Tables that no longer forbid it forget it.
        ids.refresh(&tables("/w/other.txt", "/w/elsewhere/"), root);
        assert_eq!(ids.other_name(root, "/w/renamed", id("/w/renamed")), None);
    }

    #[test]
    fn a_traced_name_keeps_the_path_below_the_known_directory() {
        assert_eq!(traced_name("/w/secret.txt", "/w/hard", 0), "/w/secret.txt");
        assert_eq!(traced_name("/w/secret/", "/w/a/b/key", 1), "/w/secret/key");
        assert_eq!(traced_name("/w/outer/", "/w/outer2/private/key", 2), "/w/outer/private/key");
    }

    #[test]
    fn the_scan_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("big");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..5 {
            std::fs::write(d.join(i.to_string()), "").unwrap();
        }
        let mut names = HashMap::new();
        let mut budget = 3;
        assert!(!walk(tmp.path(), "/big/", &mut names, &mut budget));
        let mut budget = 10;
        assert!(walk(tmp.path(), "/big/", &mut HashMap::new(), &mut budget));
    }
}
