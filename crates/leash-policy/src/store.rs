//! The policies the service holds: the default for new sessions and one per
//! session. Each is built from layers — the policy file's, the runtime layer
//! the API edits, the administrator's — combined with Cedar's semantics,
//! and carries a generation that grows with every change, a mode, and a
//! decision cache. Everything is saved under the state dir so a restart
//! restores it; every change is broadcast for watchers (the proxy's cache,
//! leashd's events).
//!
//! A policy file is watched (inotify) and reloaded when it changes, unless
//! it lies under any session's writable mount: an agent must not be able to
//! rewrite its own policy, so such a file is read once and never again. A
//! reloaded file must belong to the session's owner (checked on the open
//! file), so the root-run service never reads a file the user could not.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use leash_core::Mode;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::cache::DecisionCache;
use crate::engine::{Engine, LoadError, Source, statement_spans};
use crate::watch::Watcher;

/// The key of the default policy (for sessions opened without one).
pub const DEFAULT: &str = "";
/// The principal the default policy is checked for when none is named.
pub const DEFAULT_PRINCIPAL: &str = "claude";
/// Decisions a session's cache keeps.
const CACHE_CAPACITY: usize = 65_536;
/// A policy file larger than this is not read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// A policy's layers, in the order they are combined.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// The policy file's layer.
    pub file: Vec<Source>,
    /// The runtime layer: statements added through the API.
    pub runtime: String,
    /// The administrator's policies; never removable by users.
    pub admin: Vec<Source>,
    /// Without the protect-host layer, which every policy has unless its
    /// session's user turned it off explicitly.
    #[serde(default)]
    pub unprotected: bool,
}

/// The name of the runtime layer's source (its policies' ids start so).
pub const RUNTIME: &str = "runtime";
use leash_core::PROTECT_HOST_LAYER as PROTECT_HOST;

impl Layers {
    /// Every source, in order: the file layer, the runtime layer, the
    /// administrator's, then protect-host (unless turned off).
    pub fn sources(&self) -> Vec<Source> {
        let mut v = self.file.clone();
        if !self.runtime.trim().is_empty() {
            v.push(Source { name: RUNTIME.into(), text: self.runtime.clone() });
        }
        v.extend(self.admin.iter().cloned());
        if !self.unprotected {
            v.push(Source { name: PROTECT_HOST.into(), text: crate::PROTECT_HOST.into() });
        }
        v
    }
}

/// Which layer a change replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The policy file's.
    File,
    /// The API's.
    Runtime,
}

/// What is saved of a policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// The layers.
    #[serde(default)]
    pub layers: Layers,
    /// An older form: one list of sources (read as the file layer).
    #[serde(default, skip_serializing)]
    pub sources: Vec<Source>,
    /// "record", "shadow" or "enforce".
    #[serde(default)]
    pub mode: String,
    /// The generation in force.
    #[serde(default)]
    pub generation: u64,
    /// The session's agent.
    #[serde(default)]
    pub principal: String,
    /// The session's owner.
    #[serde(default)]
    pub owner: u32,
    /// The policy file the file layer came from.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Whether that file is watched.
    #[serde(default)]
    pub watched: bool,
    /// Why it is not.
    #[serde(default)]
    pub watch_note: String,
    /// The session's writable mounts (host paths).
    #[serde(default)]
    pub writable: Vec<PathBuf>,
}

/// One policy in force.
#[derive(Debug)]
struct Entry {
    saved: Saved,
    engine: Arc<Engine>,
    cache: Arc<Mutex<DecisionCache>>,
}

impl Entry {
    fn new(saved: Saved, engine: Engine) -> Entry {
        let engine = Arc::new(engine);
        let cache = DecisionCache::new(engine.clone(), saved.principal(), saved.generation, CACHE_CAPACITY);
        Entry { saved, engine, cache: Arc::new(Mutex::new(cache)) }
    }

    fn mode(&self) -> Mode {
        self.saved.mode()
    }
}

impl Saved {
    /// The mode in force (a missing or unknown one is enforce).
    fn mode(&self) -> Mode {
        Mode::from_name(&self.mode).unwrap_or(Mode::Enforce)
    }

    /// The session's agent, or the default principal.
    fn principal(&self) -> &str {
        if self.principal.is_empty() { DEFAULT_PRINCIPAL } else { &self.principal }
    }
}

/// A change to a policy, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The session ([`DEFAULT`] for the default policy).
    pub session: String,
    /// The generation after the change.
    pub generation: u64,
    /// What happened: "current", "open", "set", "edit", "persist", "reload",
    /// "invalid", "unwatched", "mode", "close".
    pub kind: &'static str,
    /// The mode in force.
    pub mode: Mode,
    /// Policies in force.
    pub policies: u32,
    /// For "invalid": the errors; for "unwatched": why.
    pub errors: Vec<String>,
    /// The file involved.
    pub path: String,
}

/// A policy in force, for callers.
#[derive(Clone, Debug)]
pub struct Current {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The mode.
    pub mode: Mode,
    /// The generation.
    pub generation: u64,
    /// The session's principal.
    pub principal: String,
    /// The decision cache.
    pub cache: Arc<Mutex<DecisionCache>>,
    /// The layers' sources, in order.
    pub sources: Vec<Source>,
    /// The policy file, when one is watched.
    pub watched: Option<PathBuf>,
}

/// What a session opens with.
#[derive(Clone, Debug, Default)]
pub struct Opening {
    /// The agent.
    pub principal: String,
    /// The session's own policy; empty for the default's layers.
    pub sources: Vec<Source>,
    /// The administrator's policies.
    pub admin: Vec<Source>,
    /// The policy file to watch (absolute host path), if any.
    pub file: Option<PathBuf>,
    /// The session's owner.
    pub owner: u32,
    /// The session's writable mounts.
    pub writable: Vec<PathBuf>,
    /// Without the protect-host layer (its user asked explicitly).
    pub unprotected: bool,
}

/// The outcome of a change that loaded.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The engine now in force.
    pub engine: Arc<Engine>,
    /// Its generation.
    pub generation: u64,
    /// Statements added and removed.
    pub added: u32,
    /// See `added`.
    pub removed: u32,
    /// The file is watched.
    pub watched: bool,
    /// Why not.
    pub watch_note: String,
}

/// The policies, saved under `<state>/policy`.
pub struct Store {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    changes: broadcast::Sender<Change>,
    watcher: Mutex<Option<Arc<Watcher>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Loads on a blocking-safe path (the engine loads on its own thread).
fn load(layers: &Layers) -> Result<Engine, Vec<LoadError>> {
    Engine::load(&layers.sources())
}

fn policies(e: &Engine) -> u32 {
    e.policies().policies().count() as u32
}

fn error(message: String, suggestion: &str) -> Vec<LoadError> {
    vec![LoadError {
        file: String::new(),
        line: 0,
        column: 0,
        snippet: String::new(),
        message,
        suggestion: suggestion.into(),
    }]
}

impl Store {
    /// Opens the store at `dir`, restoring what an earlier run saved; the
    /// default starts from `defaults` when nothing was saved.
    pub fn open(dir: PathBuf, defaults: Vec<Source>) -> anyhow::Result<Arc<Store>> {
        let (changes, _) = broadcast::channel(1024);
        let store = Arc::new(Store { dir, entries: Mutex::default(), changes, watcher: Mutex::default() });
        let saved_default = store.read_saved(&store.file_of(DEFAULT));
        let default = match saved_default.and_then(|s| load(&s.layers).ok().map(|e| (s, e))) {
            Some((s, e)) => Entry::new(s, e),
            None => {
                // The built-in default's copy of protect-host is the layer.
                let file = defaults.into_iter().filter(|s| s.name != PROTECT_HOST).collect();
                let layers = Layers { file, ..Default::default() };
                let engine = load(&layers).map_err(|e| {
                    anyhow::anyhow!(
                        "the built-in default policy does not load: {}",
                        e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                    )
                })?;
                Entry::new(Saved { layers, mode: "enforce".into(), generation: 1, ..Default::default() }, engine)
            }
        };
        store.lock().insert(DEFAULT.to_owned(), default);
        store.restore_sessions();
        Ok(store)
    }

    /// Starts watching policy files (inotify); without it nothing reloads.
    pub fn start_watching(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        let watcher = Watcher::start(move |paths| {
            if let Some(store) = weak.upgrade() {
                for p in paths {
                    store.reload(&p);
                }
            }
        })?;
        let files: Vec<PathBuf> =
            self.lock().values().filter(|e| e.saved.watched).filter_map(|e| e.saved.file.clone()).collect();
        for f in files {
            if let Err(e) = watcher.watch(&f) {
                tracing::warn!(path = %f.display(), error = %e, "cannot watch a policy file");
            }
        }
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        Ok(())
    }

    fn watcher(&self) -> Option<Arc<Watcher>> {
        self.watcher.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_of(&self, key: &str) -> PathBuf {
        if key == DEFAULT {
            self.dir.join("default.json")
        } else {
            self.dir.join("sessions").join(format!("{key}.json"))
        }
    }

    fn read_saved(&self, path: &Path) -> Option<Saved> {
        let mut s: Saved = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        if s.layers.file.is_empty() && !s.sources.is_empty() {
            s.layers.file = std::mem::take(&mut s.sources);
        }
        // An older form carried protect-host in the file layer; it is a
        // layer of its own now.
        s.layers.file.retain(|x| x.name != PROTECT_HOST);
        Some(s)
    }

    fn restore_sessions(&self) {
        for entry in std::fs::read_dir(self.dir.join("sessions")).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(session) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
            match self.read_saved(&path).map(|s| load(&s.layers).map(|e| (s, e))) {
                Some(Ok((mut s, e))) => {
                    s.generation = s.generation.max(1);
                    tracing::info!(session_id = %session, generation = s.generation, "restored the session's policy");
                    self.lock().insert(session, Entry::new(s, e));
                }
                _ => tracing::warn!(path = %path.display(), "cannot restore a session's policy"),
            }
        }
    }

    fn save(&self, key: &str, saved: &Saved) {
        let path = self.file_of(key);
        let write = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(saved).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = write {
            tracing::warn!(path = %path.display(), error = %e, "cannot save a policy");
        }
    }

    fn publish(&self, key: &str, e: &Entry, kind: &'static str, errors: Vec<String>, path: String) {
        let _ = self.changes.send(Change {
            session: key.to_owned(),
            generation: e.saved.generation,
            kind,
            mode: e.mode(),
            policies: policies(&e.engine),
            errors,
            path,
        });
    }

    /// Follows changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Every policy's state now, as "current" changes.
    pub fn snapshot(&self, session: Option<&str>) -> Vec<Change> {
        let mut v: Vec<Change> = self
            .lock()
            .iter()
            .filter(|(k, _)| session.is_none_or(|s| s == k.as_str()))
            .map(|(k, e)| Change {
                session: k.clone(),
                generation: e.saved.generation,
                kind: "current",
                mode: e.mode(),
                policies: policies(&e.engine),
                errors: Vec::new(),
                path: e.saved.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            })
            .collect();
        v.sort_by(|a, b| a.session.cmp(&b.session));
        v
    }

    /// How many sessions have a policy.
    pub fn sessions(&self) -> usize {
        self.lock().len().saturating_sub(1)
    }

    /// The policy in force for `key`.
    pub fn get(&self, key: &str) -> Option<Current> {
        self.lock().get(key).map(|e| Current {
            engine: e.engine.clone(),
            mode: e.mode(),
            generation: e.saved.generation,
            principal: e.saved.principal().to_owned(),
            cache: e.cache.clone(),
            sources: e.saved.layers.sources(),
            watched: e.saved.watched.then(|| e.saved.file.clone()).flatten(),
        })
    }

    /// Every session's writable mounts, with the session.
    fn mounts(&self) -> Vec<(String, PathBuf)> {
        self.lock().iter().flat_map(|(k, e)| e.saved.writable.iter().map(|m| (k.clone(), m.clone()))).collect()
    }

    /// Loads a session's policy; a session starts in enforce.
    pub fn open_session(&self, session: &str, o: Opening) -> Result<Applied, Vec<LoadError>> {
        let default_layers = self.lock().get(DEFAULT).map(|e| e.saved.layers.clone()).unwrap_or_default();
        let layers = if o.sources.is_empty() {
            Layers { admin: o.admin, unprotected: o.unprotected, ..default_layers }
        } else {
            Layers { file: o.sources, runtime: String::new(), admin: o.admin, unprotected: o.unprotected }
        };
        let engine = load(&layers)?;
        let _ = crate::compile::tables(
            &engine,
            if o.principal.is_empty() { DEFAULT_PRINCIPAL } else { o.principal.as_str() },
        );
        let writable: Vec<PathBuf> =
            o.writable.iter().map(|m| m.canonicalize().unwrap_or_else(|_| m.clone())).collect();
        let generation = self.lock().get(session).map_or(0, |e| e.saved.generation) + 1;
        let mut saved = Saved {
            layers,
            mode: "enforce".into(),
            generation,
            principal: o.principal,
            owner: o.owner,
            file: o.file.clone(),
            writable,
            ..Default::default()
        };
        let mut mounts = self.mounts();
        mounts.retain(|(k, _)| k != session);
        mounts.extend(saved.writable.iter().map(|m| (session.to_owned(), m.clone())));
        if let Some(f) = &o.file {
            match holder(&mounts, f) {
                Some((s, m)) => {
                    saved.watch_note = format!(
                        "{} is under {}'s writable mount {}: read once, never watched",
                        f.display(),
                        if s == session { "this session" } else { "another session" },
                        m.display()
                    );
                }
                None => saved.watched = true,
            }
        }
        let entry = Entry::new(saved.clone(), engine);
        let applied = Applied {
            engine: entry.engine.clone(),
            generation,
            added: 0,
            removed: 0,
            watched: saved.watched,
            watch_note: saved.watch_note.clone(),
        };
        self.publish(session, &entry, "open", Vec::new(), String::new());
        let old = self.lock().insert(session.to_owned(), entry);
        let unwatch = old.filter(|o| o.saved.watched).and_then(|o| o.saved.file);
        self.save(session, &saved);
        if let Some(w) = self.watcher() {
            if let Some(f) = unwatch {
                w.unwatch(&f);
            }
            if saved.watched
                && let Some(f) = &saved.file
                && let Err(e) = w.watch(f)
            {
                tracing::warn!(path = %f.display(), error = %e, "cannot watch the policy file");
            }
        }
        self.unwatch_under(&saved.writable, session);
        Ok(applied)
    }

    /// Stops watching every other policy's file that lies under `mounts`.
    fn unwatch_under(&self, mounts: &[PathBuf], by: &str) {
        let mut stopped = Vec::new();
        {
            let mut entries = self.lock();
            for (k, e) in entries.iter_mut() {
                if k == by || !e.saved.watched {
                    continue;
                }
                let Some(f) = e.saved.file.clone() else { continue };
                let canonical = f.canonicalize().unwrap_or_else(|_| f.clone());
                if let Some(m) = mounts.iter().find(|m| canonical.starts_with(m)) {
                    e.saved.watched = false;
                    e.saved.watch_note = format!(
                        "{} is under session {by}'s writable mount {}: no longer watched",
                        f.display(),
                        m.display()
                    );
                    self.publish(k, e, "unwatched", vec![e.saved.watch_note.clone()], f.display().to_string());
                    stopped.push((k.clone(), e.saved.clone(), f));
                }
            }
        }
        for (k, saved, f) in stopped {
            tracing::warn!(session_id = %k, path = %f.display(), "{}", saved.watch_note);
            self.save(&k, &saved);
            if let Some(w) = self.watcher() {
                w.unwatch(&f);
            }
        }
    }

    /// Forgets a session's policy.
    pub fn close(&self, session: &str) {
        let Some(e) = self.lock().remove(session) else { return };
        if e.saved.watched
            && let (Some(f), Some(w)) = (&e.saved.file, self.watcher())
        {
            w.unwatch(f);
        }
        let _ = std::fs::remove_file(self.file_of(session));
        self.publish(session, &e, "close", Vec::new(), String::new());
    }

    /// Replaces `key`'s policy by `change(layers)` when it loads; the
    /// previous stays in force otherwise.
    fn apply(
        &self,
        key: &str,
        kind: &'static str,
        change: impl FnOnce(&Saved) -> Result<(Saved, u32, u32), Vec<LoadError>>,
    ) -> Result<Applied, Vec<LoadError>> {
        let before = self.lock().get(key).map(|e| e.saved.clone()).ok_or_else(|| not_found(key))?;
        let (mut saved, added, removed) = change(&before)?;
        let engine = load(&saved.layers)?;
        // Compile before publishing: a published generation's tables are ready.
        let _ = crate::compile::tables(&engine, saved.principal());
        let applied = {
            let mut entries = self.lock();
            let current = entries.get(key).ok_or_else(|| not_found(key))?;
            saved.generation = current.saved.generation + 1;
            saved.mode = current.saved.mode.clone();
            let entry = Entry::new(saved.clone(), engine);
            self.publish(key, &entry, kind, Vec::new(), String::new());
            let applied = Applied {
                engine: entry.engine.clone(),
                generation: saved.generation,
                added,
                removed,
                watched: saved.watched,
                watch_note: saved.watch_note.clone(),
            };
            entries.insert(key.to_owned(), entry);
            applied
        };
        self.save(key, &saved);
        Ok(applied)
    }

    /// Replaces one layer. A new file layer from `file` is watched from now on
    /// (unless under a writable mount).
    pub fn set_layer(
        &self,
        key: &str,
        layer: Layer,
        sources: Vec<Source>,
        file: Option<PathBuf>,
    ) -> Result<Applied, Vec<LoadError>> {
        if sources.is_empty() {
            return Err(error("no policy given".into(), "name a policy file"));
        }
        let mut old_watch = None;
        let mounts = self.mounts();
        let applied = self.apply(key, "set", |s| {
            let mut s = s.clone();
            match layer {
                Layer::Runtime => {
                    s.layers.runtime = sources.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join("\n");
                    // As for edits: a statement the API brings may not contradict another.
                    for (b, e) in statement_spans(&s.layers.runtime) {
                        let stmt = s.layers.runtime[b..e].trim();
                        if let Some(other) = conflicting(&s.layers, stmt) {
                            return Err(conflict_error(stmt, &other));
                        }
                    }
                }
                Layer::File => {
                    s.layers.file = sources;
                    if let Some(f) = file {
                        if s.watched {
                            old_watch = s.file.clone();
                        }
                        match holder(&mounts, &f) {
                            Some((_, m)) => {
                                s.watched = false;
                                s.watch_note = format!(
                                    "{} is under a session's writable mount {}: read once, never watched",
                                    f.display(),
                                    m.display()
                                );
                            }
                            None => {
                                s.watched = true;
                                s.watch_note.clear();
                            }
                        }
                        s.file = Some(f);
                    }
                }
            }
            Ok((s, 0, 0))
        })?;
        if let Some(w) = self.watcher() {
            if let Some(f) = old_watch {
                w.unwatch(&f);
            }
            if applied.watched
                && let Some(f) = self.get(key).and_then(|c| c.watched)
                && !w.files().contains(&f)
            {
                let _ = w.watch(&f);
            }
        }
        Ok(applied)
    }

    /// Adds statements to the runtime layer and removes statements (by id or
    /// text) from whichever user layer holds them.
    pub fn edit(&self, key: &str, add: &[String], remove: &[String]) -> Result<Applied, Vec<LoadError>> {
        if add.is_empty() && remove.is_empty() {
            return Err(error("no changes given".into(), "add or remove at least one statement"));
        }
        let engine = self.get(key).ok_or_else(|| not_found(key))?.engine;
        self.apply(key, "edit", |s| {
            let mut s = s.clone();
            let mut removed = 0;
            for r in remove {
                remove_statement(&mut s.layers, &engine, r)?;
                removed += 1;
            }
            let mut added = 0;
            for a in add {
                let mut stmt = a.trim().to_owned();
                if stmt.is_empty() {
                    continue;
                }
                if !stmt.ends_with(';') {
                    stmt.push(';');
                }
                let present =
                    statement_spans(&s.layers.runtime).iter().any(|(b, e)| s.layers.runtime[*b..*e].trim() == stmt);
                if present {
                    continue;
                }
                if let Some(other) = conflicting(&s.layers, &stmt) {
                    return Err(conflict_error(&stmt, &other));
                }
                if !s.layers.runtime.is_empty() && !s.layers.runtime.ends_with('\n') {
                    s.layers.runtime.push('\n');
                }
                s.layers.runtime.push_str(&stmt);
                s.layers.runtime.push('\n');
                added += 1;
            }
            if s.layers.sources().is_empty() {
                return Err(error(
                    "the resulting policy is empty".into(),
                    "an empty policy denies everything; keep at least one statement",
                ));
            }
            Ok((s, added, removed))
        })
    }

    /// Folds the runtime layer into the file layer and writes a copy of the
    /// file layer to the state dir. Returns the text, the policy file and the
    /// copy's path.
    pub fn persist(
        &self,
        key: &str,
        replace: Option<String>,
    ) -> Result<(Applied, String, Option<PathBuf>, PathBuf), Vec<LoadError>> {
        let mut text = String::new();
        let applied = self.apply(key, "persist", |s| {
            let mut s = s.clone();
            if let Some(r) = &replace {
                text = r.trim_end().to_owned();
            } else {
                let mut parts: Vec<&str> = s.layers.file.iter().map(|x| x.text.trim_end()).collect();
                if !s.layers.runtime.trim().is_empty() {
                    parts.push(s.layers.runtime.trim_end());
                }
                text = parts.join("\n\n");
            }
            text.push('\n');
            let name = s.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "persisted".into());
            s.layers.file = vec![Source { name, text: text.clone() }];
            s.layers.runtime.clear();
            Ok((s, 0, 0))
        })?;
        let copy = self.dir.join("persisted").join(format!("{}.cedar", if key == DEFAULT { "default" } else { key }));
        let write = copy.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&copy, &text));
        if let Err(e) = write {
            tracing::warn!(path = %copy.display(), error = %e, "cannot write the persisted copy");
        }
        let file = self.lock().get(key).and_then(|e| e.saved.file.clone());
        Ok((applied, text, file, copy))
    }

    /// Switches a mode; returns the previous.
    pub fn set_mode(&self, key: &str, mode: Mode) -> Option<Mode> {
        let (previous, saved) = {
            let mut entries = self.lock();
            let e = entries.get_mut(key)?;
            let previous = e.mode();
            e.saved.mode = mode.name().to_owned();
            e.saved.generation += 1;
            self.publish(key, e, "mode", Vec::new(), String::new());
            (previous, e.saved.clone())
        };
        self.save(key, &saved);
        Some(previous)
    }

    /// Reloads every policy whose file is `path`.
    pub fn reload(&self, path: &Path) {
        let keys: Vec<(String, u32)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.saved.watched && e.saved.file.as_deref() == Some(path))
            .map(|(k, e)| (k.clone(), e.saved.owner))
            .collect();
        for (key, owner) in keys {
            let text = match read_owned(path, owner) {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(session_id = %key, path = %path.display(), "policy file not reloaded: {why}");
                    if let Some(e) = self.lock().get(&key) {
                        self.publish(&key, e, "invalid", vec![why], path.display().to_string());
                    }
                    continue;
                }
            };
            let name = path.display().to_string();
            let unchanged = self
                .lock()
                .get(&key)
                .is_some_and(|e| e.saved.layers.file == [Source { name: name.clone(), text: text.clone() }]);
            if unchanged {
                continue;
            }
            let started = std::time::Instant::now();
            let r = self.apply(&key, "reload", |s| {
                let mut s = s.clone();
                s.layers.file = vec![Source { name: name.clone(), text }];
                Ok((s, 0, 0))
            });
            match r {
                Ok(a) => {
                    tracing::info!(session_id = %key, path = %path.display(), generation = a.generation,
                        ms = started.elapsed().as_secs_f64() * 1e3, "policy file reloaded");
                }
                Err(errors) => {
                    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    tracing::warn!(session_id = %key, path = %path.display(), errors = %errors.join("; "),
                        "policy file not reloaded: invalid; the previous policy stays in force");
                    if let Some(e) = self.lock().get(&key) {
                        self.publish(&key, e, "invalid", errors, path.display().to_string());
                    }
                }
            }
        }
    }
}

/// The session and writable mount that hold `path`, if any.
fn holder<'a>(mounts: &'a [(String, PathBuf)], path: &Path) -> Option<&'a (String, PathBuf)> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts.iter().find(|(_, m)| path.starts_with(m))
}

fn not_found(key: &str) -> Vec<LoadError> {
    error(format!("no policy for session {key:?}"), "see `leashctl sessions`")
}

/// Reads a policy file as the session's owner could: a regular file that
/// belongs to `owner` (checked on the opened file, so a swapped symlink does
/// not count), at most 4 MiB.
fn read_owned(path: &Path, owner: u32) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.uid() != owner {
        return Err(format!("it belongs to uid {}, not to the session's owner (uid {owner})", meta.uid()));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("it is larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    Ok(text)
}

/// Removes one statement, named by policy id or by its text, from the file or
/// runtime layer.
/// The phrase a conflict's message carries (the API answers 409 for it).
pub const CONFLICTS: &str = "conflicts with:";

/// A statement of `layers` with the same scope as `stmt` and the opposite
/// effect: the Go leash refuses such a pair, and with Cedar one of them is
/// dead (a forbid always wins), so it is refused here too.
fn conflicting(layers: &Layers, stmt: &str) -> Option<String> {
    let (effect, scope) = effect_and_scope(stmt)?;
    layers.sources().iter().find_map(|src| {
        statement_spans(&src.text).into_iter().find_map(|(b, e)| {
            let other = src.text[b..e].trim();
            let (e2, s2) = effect_and_scope(other)?;
            (e2 != effect && s2 == scope).then(|| other.to_owned())
        })
    })
}

/// A statement's effect and the rest of it with whitespace collapsed
/// (annotations and comments make statements differ).
fn effect_and_scope(stmt: &str) -> Option<(&'static str, String)> {
    let code: String = stmt.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join(" ");
    let t = code.trim_start();
    let (effect, rest) = if let Some(r) = t.strip_prefix("permit") {
        ("permit", r)
    } else if let Some(r) = t.strip_prefix("forbid") {
        ("forbid", r)
    } else {
        return None;
    };
    let scope: String = rest.trim().trim_end_matches(';').split_whitespace().collect::<Vec<_>>().join(" ");
    Some((effect, scope.replace("( ", "(").replace(" )", ")")))
}

/// The error for two statements that conflict.
fn conflict_error(stmt: &str, other: &str) -> Vec<LoadError> {
    error(
        format!("{} {CONFLICTS} {}", one_line(stmt), one_line(other)),
        "the two have the same scope and opposite effects (a forbid always wins); remove one",
    )
}

/// A statement on one line, for messages.
fn one_line(stmt: &str) -> String {
    stmt.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn remove_statement(layers: &mut Layers, engine: &Engine, what: &str) -> Result<(), Vec<LoadError>> {
    let what_trimmed = what.trim().trim_end_matches(';').trim();
    // Policy id → "source:line", from the engine now in force.
    let origins: BTreeMap<String, String> = engine
        .policies()
        .policies()
        .filter_map(|p| engine.origin(p.id().as_ref()).map(|o| (o.to_owned(), p.id().to_string())))
        .collect();
    if engine.origin(what).and_then(|o| o.rsplit_once(':')).is_some_and(|(f, _)| f == PROTECT_HOST) {
        return Err(error(
            format!("policy {what:?} is the protect-host layer, which every session has"),
            "start a session with `leash --no-protect-host` (or `[leash] protect_host = false`) to run it without",
        ));
    }
    let admin_names: Vec<&str> = layers.admin.iter().map(|s| s.name.as_str()).collect();
    if let Some(origin) = engine.origin(what)
        && admin_names.iter().any(|n| origin.rsplit_once(':').is_some_and(|(f, _)| f == *n))
    {
        return Err(error(
            format!("policy {what:?} comes from the administrator's policy.d and cannot be removed"),
            "ask the administrator",
        ));
    }
    let mut texts: Vec<(String, &mut String)> = layers.file.iter_mut().map(|s| (s.name.clone(), &mut s.text)).collect();
    texts.push((RUNTIME.to_owned(), &mut layers.runtime));
    for (name, text) in texts {
        let spans = statement_spans(text);
        let found = spans.iter().find(|(b, e)| {
            let stmt = &text[*b..*e];
            let line = crate::engine::line_col(text, *b).0;
            let id = origins.get(&format!("{name}:{line}"));
            id.is_some_and(|id| id == what.trim()) || stmt.trim().trim_end_matches(';').trim() == what_trimmed
        });
        if let Some((b, e)) = found.copied() {
            let end = text[e..].find('\n').map_or(text.len(), |n| e + n + 1);
            text.replace_range(b..end, "");
            return Ok(());
        }
    }
    Err(error(format!("policy {what:?} not found"), "`leashctl policy lines` lists the ids"))
}

#[cfg(test)]
mod tests;
