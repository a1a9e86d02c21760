//! Policy files watched with inotify (never polled): the directory of each
//! watched file is watched for a file closed after writing or renamed into
//! place, which covers editors that write in place and those that write a
//! temporary file and rename it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Watches files and reports the ones that changed.
pub struct Watcher {
    inotify: Inotify,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Watched files and how many policies watch each.
    files: HashMap<PathBuf, usize>,
    /// Watched directories.
    dirs: HashMap<PathBuf, WatchDescriptor>,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: BTreeSet<PathBuf> = self.lock().files.keys().cloned().collect();
        f.debug_struct("Watcher").field("files", &files).finish()
    }
}

impl Watcher {
    /// Starts the watcher's thread; `changed` is called with the watched
    /// files that changed, once per batch of events.
    pub fn start(changed: impl Fn(Vec<PathBuf>) + Send + 'static) -> std::io::Result<Arc<Watcher>> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        let w = Arc::new(Watcher { inotify, state: Mutex::default() });
        let reader = w.clone();
        std::thread::Builder::new().name("policy-watch".into()).spawn(move || {
            loop {
                let events = match reader.inotify.read_events() {
                    Ok(e) => e,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "the policy file watcher stopped");
                        return;
                    }
                };
                let mut paths = BTreeSet::new();
                {
                    let state = reader.lock();
                    for e in events {
                        let (Some(dir), Some(name)) = (state.by_wd.get(&e.wd), e.name) else { continue };
                        let path = dir.join(name);
                        if state.files.contains_key(&path) {
                            paths.insert(path);
                        }
                    }
                }
                if !paths.is_empty() {
                    changed(paths.into_iter().collect());
                }
            }
        })?;
        Ok(w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `file` (an absolute path) for changes.
    pub fn watch(&self, file: &Path) -> std::io::Result<()> {
        let dir = file.parent().ok_or_else(|| std::io::Error::other("a file path has a directory"))?.to_path_buf();
        let mut state = self.lock();
        if !state.dirs.contains_key(&dir) {
            let wd = self.inotify.add_watch(&dir, AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)?;
            state.dirs.insert(dir.clone(), wd);
            state.by_wd.insert(wd, dir);
        }
        *state.files.entry(file.to_path_buf()).or_default() += 1;
        Ok(())
    }

    /// Stops one policy's watch of `file`.
    pub fn unwatch(&self, file: &Path) {
        let mut state = self.lock();
        let Some(n) = state.files.get_mut(file) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        state.files.remove(file);
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        if !state.files.keys().any(|f| f.parent() == Some(dir.as_path()))
            && let Some(wd) = state.dirs.remove(&dir)
        {
            state.by_wd.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// The files watched now.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.lock().files.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_writes_and_renames_of_watched_files_only() {
        let dir = std::env::temp_dir().join(format!("leash-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Watcher::start(move |paths| {
            let _ = tx.send(paths);
        })
        .unwrap();
        let file = dir.join("policy.cedar");
        std::fs::write(&file, "a").unwrap();
        w.watch(&file).unwrap();
        let wait = || rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        std::fs::write(dir.join("other"), "x").unwrap();
        std::fs::write(&file, "b").unwrap();
        assert_eq!(wait(), vec![file.clone()], "the other file is not reported");
        std::fs::write(dir.join("tmp"), "c").unwrap();
        std::fs::rename(dir.join("tmp"), &file).unwrap();
        assert_eq!(wait(), vec![file.clone()]);
        w.unwatch(&file);
        assert!(w.files().is_empty());
        std::fs::write(&file, "d").unwrap();
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
