//! Session configuration: `/etc/leash/config.toml`, then the caller's
//! `~/.config/leash/config.toml` (`$LEASH_HOME/config.toml`,
//! `$XDG_CONFIG_HOME/leash/config.toml`), each with global keys and
//! `[projects."<dir>"]` tables, in the Go leash's schema and precedence.
//!
//! Files are read by leashd (root) only when the caller owns them (or root
//! does), so a client cannot make leashd read someone else's file by naming
//! it; they are written only by a helper running as the caller
//! (`leashd --write-user-config`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};

/// The agents with host config dirs to mount.
pub const AGENTS: [&str; 5] = ["claude", "codex", "gemini", "qwen", "opencode"];

/// The longest `[leash] ask_timeout`, in seconds: an operation waits no longer.
pub const MAX_ASK_TIMEOUT: i128 = 600;

/// Where a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A global key.
    Global,
    /// The project's table.
    Project,
}

/// One file's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// `[leash] target_image`.
    pub target_image: Option<String>,
    /// `[leash] protect_host`: `false` turns the protect-host layer off.
    pub protect_host: Option<bool>,
    /// `[leash] dns_refusal`: how the DNS relay answers a name the policy
    /// refuses, `refused` or `nxdomain`.
    pub dns_refusal: Option<String>,
    /// `[leash] ask`: ask the user about denials.
    pub ask: Option<bool>,
    /// `[leash] ask_timeout`: seconds a denial waits for the user's answer.
    pub ask_timeout: Option<u32>,
    /// `[leash.envvars]`.
    pub envvars: BTreeMap<String, String>,
    /// `[volumes]`: agent toggles.
    pub toggles: BTreeMap<String, bool>,
    /// `[volumes]`: custom mounts, host key → `target[:mode]`; `None` disables.
    pub volumes: BTreeMap<String, Option<String>>,
    /// `[projects."<dir>"]`, keyed by the normalized directory.
    pub projects: BTreeMap<PathBuf, Project>,
    /// `[secrets]`: each name's reference, `env`, `env:VAR` or `file:PATH`.
    pub secrets: BTreeMap<String, SecretRef>,
}

/// Where a `[secrets]` entry's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// The caller's environment variable of that name.
    Env(String),
    /// A file (`~/` is the caller's home).
    File(PathBuf),
}

/// Reads `env`, `env:VAR` or `file:PATH` for the secret `name`.
fn secret_ref(name: &str, v: &str, home: Option<&Path>) -> Result<SecretRef, String> {
    if v == "env" {
        return Ok(SecretRef::Env(name.to_owned()));
    }
    if let Some(var) = v.strip_prefix("env:") {
        if !super::secrets::valid_name(var) {
            return Err(format!("{var:?} is not a variable name"));
        }
        return Ok(SecretRef::Env(var.to_owned()));
    }
    if let Some(path) = v.strip_prefix("file:") {
        let path = match (path.strip_prefix("~/"), home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(path),
        };
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        return Ok(SecretRef::File(path));
    }
    Err("expected \"env\", \"env:VAR\" or \"file:PATH\" (a secret's value never goes in this file)".into())
}

/// A project's table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Project {
    /// `target_image`.
    pub target_image: Option<String>,
    /// `envvars`.
    pub envvars: BTreeMap<String, String>,
    /// Agent toggles.
    pub toggles: BTreeMap<String, bool>,
    /// Custom mounts; `None` disables an inherited one.
    pub volumes: BTreeMap<String, Option<String>>,
}

/// What the files decide for one session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// Image, if a file names one.
    pub target_image: Option<String>,
    /// `protect_host`, if a file sets it.
    pub protect_host: Option<bool>,
    /// `dns_refusal`, if a file sets it.
    pub dns_refusal: Option<String>,
    /// `ask`, if a file sets it.
    pub ask: Option<bool>,
    /// `ask_timeout`, if a file sets it.
    pub ask_timeout: Option<u32>,
    /// Environment, lowest precedence first.
    pub envvars: BTreeMap<String, String>,
    /// The agent's mount toggle and where it came from.
    pub toggle: Option<(bool, Scope)>,
    /// Custom volumes as `host:target[:mode]`, hosts resolved.
    pub volumes: Vec<String>,
}

/// The caller's config file path: `$LEASH_HOME/config.toml`, else
/// `$XDG_CONFIG_HOME/leash/config.toml`, else `<home>/.config/leash/config.toml`.
pub fn user_config_path(home: Option<&Path>, client_env: &BTreeMap<String, String>) -> Option<PathBuf> {
    let get = |k: &str| client_env.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(h) = get("LEASH_HOME") {
        return Some(if h.is_absolute() { h } else { home?.join(h) }.join("config.toml"));
    }
    if let Some(x) = get("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Some(x.join("leash/config.toml"));
    }
    Some(home?.join(".config/leash/config.toml"))
}

/// Reads a config file. A missing file is empty; with `owner`, a file not
/// owned by exactly that uid is refused (so a caller cannot make leashd read
/// someone else's file), and the ownership is checked on the descriptor
/// that is read (no swap in between). `~` in project keys is `home`. Errors
/// name the file, the line and the key.
pub fn load(path: &Path, owner: Option<u32>, home: Option<&Path>) -> Result<File, String> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(uid) = owner
        && meta.uid() != uid
    {
        return Err(format!(
            "{}: owned by uid {}, not by you (uid {uid}); leash does not read it",
            path.display(),
            meta.uid()
        ));
    }
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dict: Dict = Figment::from(Toml::string(&text))
        .extract()
        .map_err(|e| e.into_iter().map(|e| format!("{}: {e}", path.display())).collect::<Vec<_>>().join("; "))?;
    parse(&dict, home).map_err(|(key, msg)| {
        let line = line_of(&text, &key).map(|l| format!(":{l}")).unwrap_or_default();
        format!("{}{line}: {}: {msg}", path.display(), key.join("."))
    })
}

type KeyError = (Vec<String>, String);

fn parse(dict: &Dict, home: Option<&Path>) -> Result<File, KeyError> {
    let mut f = File::default();
    if let Some(v) = dict.get("volumes") {
        let d = table(v, &["volumes"])?;
        parse_volumes(d, &["volumes"], &mut f.toggles, &mut f.volumes, false)?;
    }
    if let Some(v) = dict.get("leash") {
        let d = table(v, &["leash"])?;
        for (k, v) in d {
            match k.as_str() {
                "target_image" => f.target_image = Some(string(v, &["leash", "target_image"])?),
                "protect_host" => {
                    f.protect_host =
                        Some(v.to_bool().ok_or_else(|| key_err(&["leash", "protect_host"], "expected true or false"))?)
                }
                "ask" => f.ask = Some(v.to_bool().ok_or_else(|| key_err(&["leash", "ask"], "expected true or false"))?),
                "ask_timeout" => {
                    let kp = ["leash", "ask_timeout"];
                    let n = v.to_i128().filter(|n| (1..=MAX_ASK_TIMEOUT).contains(n));
                    let n = n.ok_or_else(|| key_err(&kp, &format!("expected seconds, 1 to {MAX_ASK_TIMEOUT}")))?;
                    f.ask_timeout = Some(n as u32);
                }
                "envvars" => f.envvars = envvars(v, &["leash", "envvars"])?,
                "dns_refusal" => {
                    let kp = ["leash", "dns_refusal"];
                    let s = string(v, &kp)?;
                    if !matches!(s.as_str(), "refused" | "nxdomain") {
                        return Err(key_err(&kp, &format!("{s:?}: expected \"refused\" or \"nxdomain\"")));
                    }
                    f.dns_refusal = Some(s);
                }
                // The Go leash ignores other keys here too (toggles live in [volumes]).
                _ => {}
            }
        }
    }
    if let Some(v) = dict.get("secrets") {
        for (name, v) in table(v, &["secrets"])? {
            let kp = ["secrets", name.as_str()];
            if !super::secrets::valid_name(name) {
                return Err(key_err(&kp, "a secret is named as an environment variable (A-Z, 0-9, _)"));
            }
            let r = secret_ref(name, &string(v, &kp)?, home).map_err(|e| key_err(&kp, &e))?;
            f.secrets.insert(name.clone(), r);
        }
    }
    if let Some(v) = dict.get("projects") {
        let d = table(v, &["projects"])?;
        for (dir, v) in d {
            // Non-table values under [projects] are ignored, as in the Go leash.
            let Some(pd) = v.as_dict() else { continue };
            let path = ["projects".to_owned(), format!("\"{dir}\"")];
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let mut proj = Project::default();
            for (k, v) in pd {
                let kp: Vec<&str> = p.iter().copied().chain([k.as_str()]).collect();
                match k.as_str() {
                    "target_image" => proj.target_image = Some(string(v, &kp)?),
                    "envvars" => proj.envvars = envvars(v, &kp)?,
                    "volumes" => parse_volumes(table(v, &kp)?, &kp, &mut proj.toggles, &mut proj.volumes, true)?,
                    "mounts" => return Err(key_err(&kp, "legacy table is no longer supported; use 'volumes'")),
                    _ => {
                        let single = Dict::from([(k.clone(), v.clone())]);
                        parse_volumes(&single, &p, &mut proj.toggles, &mut proj.volumes, true)?;
                    }
                }
            }
            f.projects.insert(normalize_dir(dir, home), proj);
        }
    }
    Ok(f)
}

fn key_err(path: &[&str], msg: &str) -> KeyError {
    (path.iter().map(|s| s.to_string()).collect(), msg.to_owned())
}

fn table<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Dict, KeyError> {
    v.as_dict().ok_or_else(|| key_err(path, "expected a table"))
}

fn string(v: &Value, path: &[&str]) -> Result<String, KeyError> {
    v.as_str().map(str::to_owned).ok_or_else(|| key_err(path, "expected a string"))
}

fn envvars(v: &Value, path: &[&str]) -> Result<BTreeMap<String, String>, KeyError> {
    let mut out = BTreeMap::new();
    for (k, v) in table(v, path)? {
        let kp: Vec<&str> = path.iter().copied().chain([k.as_str()]).collect();
        out.insert(k.clone(), string(v, &kp).map_err(|_| key_err(&kp, "values must be strings"))?);
    }
    Ok(out)
}

fn parse_volumes(
    d: &Dict,
    path: &[&str],
    toggles: &mut BTreeMap<String, bool>,
    volumes: &mut BTreeMap<String, Option<String>>,
    in_project: bool,
) -> Result<(), KeyError> {
    for (k, v) in d {
        let kp: Vec<&str> = path.iter().copied().chain([k.as_str()]).collect();
        if AGENTS.contains(&k.as_str()) {
            let b = v.to_bool().ok_or_else(|| key_err(&kp, "expected true or false"))?;
            toggles.insert(k.clone(), b);
        } else if let Some(s) = v.as_str() {
            if s.is_empty() {
                return Err(key_err(&kp, "custom volume target must be a non-empty string"));
            }
            let target = s.split(':').next().unwrap_or("");
            if !target.starts_with('/') {
                return Err(key_err(&kp, &format!("custom volume {k:?} target must be an absolute container path")));
            }
            if s.chars().any(char::is_whitespace) {
                return Err(key_err(&kp, "custom volume mode may not contain whitespace"));
            }
            volumes.insert(k.clone(), Some(s.to_owned()));
        } else if in_project && v.to_bool() == Some(false) {
            volumes.insert(k.clone(), None);
        } else {
            return Err(key_err(&kp, "expected a container path such as \"/workspace/x:ro\"".trim()));
        }
    }
    Ok(())
}

/// A project key as an absolute path: `~` is the caller's home; symlinks
/// are resolved when it exists.
pub fn normalize_dir(dir: &str, home: Option<&Path>) -> PathBuf {
    let p = match (dir.strip_prefix("~/").or((dir == "~").then_some("")), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(dir),
    };
    std::fs::canonicalize(&p).unwrap_or_else(|_| super::mounts::normalize(&p))
}

/// The 1-based line where `key` (a dotted path) is set, best effort.
fn line_of(text: &str, key: &[String]) -> Option<usize> {
    let last = key.last()?.trim_matches('"');
    let table_hint = key.get(key.len().saturating_sub(2)).map(|t| t.trim_matches('"').to_owned());
    let mut in_table = table_hint.is_none();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            in_table = table_hint.as_ref().is_some_and(|t| l.contains(t.as_str()));
            continue;
        }
        let name = l.split('=').next().unwrap_or("").trim().trim_matches('"').trim_matches('\'');
        if in_table && l.contains('=') && name == last {
            return Some(i + 1);
        }
    }
    None
}

/// Resolves the files (lowest first) for a session in `cwd` running `agent`.
pub fn resolve(files: &[(&File, &Path)], cwd: &Path, agent: Option<&str>) -> Resolved {
    let mut r = Resolved::default();
    let mut volumes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (f, _) in files {
        if f.protect_host.is_some() {
            r.protect_host = f.protect_host;
        }
        if f.dns_refusal.is_some() {
            r.dns_refusal = f.dns_refusal.clone();
        }
        r.ask = f.ask.or(r.ask);
        r.ask_timeout = f.ask_timeout.or(r.ask_timeout);
        for (scope, image, env, toggles, vols) in [(Scope::Global, &f.target_image, &f.envvars, &f.toggles, &f.volumes)]
            .into_iter()
            .chain(f.projects.get(cwd).map(|p| (Scope::Project, &p.target_image, &p.envvars, &p.toggles, &p.volumes)))
        {
            if image.is_some() {
                r.target_image = image.clone();
            }
            r.envvars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
            if let Some(a) = agent
                && let Some(b) = toggles.get(a)
            {
                r.toggle = Some((*b, scope));
            }
            for (k, v) in vols {
                volumes.insert(k.clone(), v.clone());
            }
        }
    }
    r.volumes = volumes.into_iter().filter_map(|(k, v)| v.map(|t| format!("{k}:{t}"))).collect();
    r
}

/// Sets an agent toggle in a config file's text, keeping everything else.
pub fn set_toggle(text: &str, agent: &str, project: Option<&str>, value: bool) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    match project {
        None => {
            let vols = doc.entry("volumes").or_insert(toml_edit::table());
            let t = vols.as_table_mut().ok_or("[volumes] is not a table")?;
            t[agent] = toml_edit::value(value);
        }
        Some(dir) => {
            let projects = doc.entry("projects").or_insert(toml_edit::table());
            let pt = projects.as_table_mut().ok_or("[projects] is not a table")?;
            pt.set_implicit(true);
            let p = pt.entry(dir).or_insert(toml_edit::table());
            let p = p.as_table_mut().ok_or("the project entry is not a table")?;
            p[agent] = toml_edit::value(value);
        }
    }
    Ok(doc.to_string())
}

/// Writes an agent toggle into the config file at `path`, atomically, with
/// mode 0600 (the directory 0700 when created). Runs in a helper process
/// with the caller's uid and gid, so it can only write what the caller can.
pub fn write_toggle(path: &Path, agent: &str, project: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let out = set_toggle(&text, agent, project, true).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!("config-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<File, String> {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        load(&p, None, None).map_err(|e| e.replace(&tmp.path().display().to_string(), "DIR"))
    }

    const SAMPLE: &str = r#"
[volumes]
codex = true
"~/devtools" = "/workspace/devtools:ro"

[leash]
target_image = "global:1"
[leash.envvars]
A = "global"
B = "global"

[projects."/work/p"]
target_image = "proj:1"
codex = false
claude = true
"./dev" = "/workspace/dev:rw"
[projects."/work/p".volumes]
"~/devtools" = false
[projects."/work/p".envvars]
B = "project"
"#;

    #[test]
    fn reads_the_go_schema() {
        let f = load_str(SAMPLE).unwrap();
        assert_eq!(f.target_image.as_deref(), Some("global:1"));
        assert_eq!(f.toggles.get("codex"), Some(&true));
        let p = &f.projects[Path::new("/work/p")];
        assert_eq!(p.toggles.get("claude"), Some(&true));
        assert_eq!(p.volumes.get("~/devtools"), Some(&None));
        assert_eq!(p.volumes.get("./dev"), Some(&Some("/workspace/dev:rw".to_owned())));
    }

    #[test]
    fn project_beats_global_and_user_beats_system() {
        let f = load_str(SAMPLE).unwrap();
        let system =
            load_str("[leash]\ntarget_image = \"system:1\"\n[leash.envvars]\nA = \"system\"\nS = \"system\"\n")
                .unwrap();
        let here = Path::new("/");
        let r = resolve(&[(&system, here), (&f, here)], Path::new("/work/p"), Some("codex"));
        assert_eq!(r.target_image.as_deref(), Some("proj:1"));
        assert_eq!(r.envvars["A"], "global");
        assert_eq!(r.envvars["B"], "project");
        assert_eq!(r.envvars["S"], "system");
        assert_eq!(r.toggle, Some((false, Scope::Project)), "a remembered false is honoured");
        assert_eq!(r.volumes, ["./dev:/workspace/dev:rw"], "the project disabled the global volume");
        let r = resolve(&[(&f, here)], Path::new("/elsewhere"), Some("codex"));
        assert_eq!(r.toggle, Some((true, Scope::Global)));
        assert_eq!(r.target_image.as_deref(), Some("global:1"));
        assert_eq!(r.volumes, ["~/devtools:/workspace/devtools:ro"]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = load_str("[volumes]\ncodex = \"yes\"\n").unwrap_err();
        assert_eq!(e, "DIR/config.toml:2: volumes.codex: expected true or false");
        let e = load_str("[leash.envvars]\nK = 3\n").unwrap_err();
        assert_eq!(e, "DIR/config.toml:2: leash.envvars.K: values must be strings");
        let e = load_str("[volumes]\n\"~/x\" = \"relative\"\n").unwrap_err();
        assert!(e.starts_with("DIR/config.toml:2: volumes.~/x: custom volume"), "{e}");
        let e = load_str("[projects.\"/p\".mounts]\nx = 1\n").unwrap_err();
        assert!(e.contains("legacy table is no longer supported"), "{e}");
        let e = load_str("[volumes\ncodex = true\n").unwrap_err();
        assert!(e.contains("DIR/config.toml") && e.contains("line 1"), "{e}");
        let e = load_str("[leash]\ntarget_image = \"x\"\ndns_refusal = \"drop\"\n").unwrap_err();
        assert_eq!(e, "DIR/config.toml:3: leash.dns_refusal: \"drop\": expected \"refused\" or \"nxdomain\"");
        let e = load_str("[leash]\ndns_refusal = 3\n").unwrap_err();
        assert_eq!(e, "DIR/config.toml:2: leash.dns_refusal: expected a string");
    }

    #[test]
    fn dns_refusal_is_read_and_the_last_file_wins() {
        let system = load_str("[leash]\ndns_refusal = \"nxdomain\"\n").unwrap();
        let user = load_str("[leash]\ndns_refusal = \"refused\"\n").unwrap();
        let (here, cwd) = (Path::new("/"), Path::new("/work/p"));
        assert_eq!(resolve(&[(&system, here)], cwd, None).dns_refusal.as_deref(), Some("nxdomain"));
        assert_eq!(resolve(&[(&system, here), (&user, here)], cwd, None).dns_refusal.as_deref(), Some("refused"));
        assert_eq!(resolve(&[], cwd, None).dns_refusal, None);
    }

    #[test]
    fn foreign_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        std::fs::write(&p, "").unwrap();
        std::os::unix::fs::chown(&p, Some(4242), None).unwrap_or(());
        if std::fs::metadata(&p).unwrap().uid() == 4242 {
            assert!(load(&p, Some(1000), None).unwrap_err().contains("not by you"));
            assert!(load(&p, Some(0), None).unwrap_err().contains("not by you"), "root's uid is not enough");
            assert!(load(&p, Some(4242), None).is_ok());
        }
    }

    #[test]
    fn write_toggle_is_atomic_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("new/leash/config.toml");
        write_toggle(&p, "codex", None).unwrap();
        write_toggle(&p, "claude", Some("/work/p")).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(p.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let f = load(&p, None, None).unwrap();
        assert_eq!(f.toggles.get("codex"), Some(&true));
        assert_eq!(f.projects[Path::new("/work/p")].toggles.get("claude"), Some(&true));
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "no temp files left: {names:?}");
    }

    #[test]
    fn toggles_are_written_without_losing_anything() {
        let out = set_toggle("# mine\n[leash]\ntarget_image = \"x\"\n", "codex", None, true).unwrap();
        assert!(out.contains("# mine") && out.contains("target_image = \"x\""), "{out}");
        let f = load_str(&out).unwrap();
        assert_eq!(f.toggles.get("codex"), Some(&true));
        let out = set_toggle(&out, "claude", Some("/work/p"), true).unwrap();
        let f = load_str(&out).unwrap();
        assert_eq!(f.projects[Path::new("/work/p")].toggles.get("claude"), Some(&true));
    }
}
