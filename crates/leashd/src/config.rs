//! leashd's own configuration: built-in defaults < `/etc/leash/config.toml`
//! (`[leashd]` table) < flags. Daemon-wide keys never come from a client.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/leash/config.toml";

/// leashd's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Recent events kept in memory for `leashctl events` when the audit
    /// store cannot be opened (Go leash: `--history-size`); with the store,
    /// at most [`crate::hub::HISTORY_WITH_STORE`].
    pub history_size: usize,
    /// Capacity of each follower's event queue; a full queue drops and counts.
    pub event_queue: usize,
    /// Where the component binaries are; defaults to leashd's own directory.
    pub bin_dir: Option<PathBuf>,
    /// The file this came from; its session tables apply to every session.
    pub path: PathBuf,
    /// The static leash-entry to mount into sessions; defaults to
    /// `LEASH_ENTRY_BIN`, else `leash-entry` beside leashd.
    pub entry_bin: Option<PathBuf>,
    /// What the audit store keeps (`audit_retention_days`, `audit_max_events`).
    pub retention: crate::audit::Retention,
    /// The Control UI's address (`listen`, `LEASH_LISTEN`, `--listen`); `None` disables it.
    pub listen: Option<std::net::SocketAddr>,
    /// A non-loopback `listen` address is refused unless this is set (`listen_public`).
    pub listen_public: bool,
    /// An OTLP/gRPC collector to export events to (`otlp_endpoint`); none by default.
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            history_size: 25_000,
            event_queue: 4096,
            bin_dir: None,
            entry_bin: None,
            path: PathBuf::from(SYSTEM_CONFIG),
            retention: crate::audit::Retention::default(),
            listen: Some(leash_core::listen::DEFAULT),
            listen_public: false,
            otlp_endpoint: None,
        }
    }
}

/// The file's shape as leashd reads it: only `[leashd]`; the session tables
/// (`[leash]`, `[projects]`, `[volumes]`) belong to session configuration.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    leashd: Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    history_size: Option<usize>,
    event_queue: Option<usize>,
    bin_dir: Option<PathBuf>,
    entry_bin: Option<PathBuf>,
    audit_retention_days: Option<u64>,
    audit_max_events: Option<u64>,
    listen: Option<String>,
    listen_public: Option<bool>,
    otlp_endpoint: Option<String>,
}

/// A configuration error, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named on the command line that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A file that does not parse or has unknown keys.
    #[error("{0}")]
    Invalid(String),
}

/// Loads the file at `path` (required when `explicit`, optional otherwise).
pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
    if !path.exists() {
        return if explicit {
            Err(ConfigError::Missing(path.to_owned()))
        } else {
            Ok(Config { path: path.to_owned(), ..Config::default() })
        };
    }
    // file_exact: a daemon must not search parent directories.
    let file: File = Figment::from(Toml::file_exact(path)).extract().map_err(|e| {
        let mut msg = String::new();
        for err in e {
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(&format!("{}: {err}", path.display()));
        }
        ConfigError::Invalid(msg)
    })?;
    let d = Config::default();
    let listen = match &file.leashd.listen {
        None => d.listen,
        Some(v) => leash_core::listen::parse(v)
            .map_err(|e| ConfigError::Invalid(format!("{}: listen: {e}", path.display())))?,
    };
    Ok(Config {
        listen,
        listen_public: file.leashd.listen_public.unwrap_or(false),
        otlp_endpoint: match file.leashd.otlp_endpoint {
            Some(e) if !e.trim().is_empty() => {
                crate::otlp::parse_endpoint(&e)
                    .map_err(|m| ConfigError::Invalid(format!("{}: {m}", path.display())))?;
                Some(e)
            }
            _ => None,
        },
        history_size: file.leashd.history_size.unwrap_or(d.history_size),
        event_queue: file.leashd.event_queue.unwrap_or(d.event_queue).max(1),
        bin_dir: file.leashd.bin_dir,
        entry_bin: file.leashd.entry_bin,
        path: path.to_owned(),
        retention: crate::audit::Retention {
            max_age: file
                .leashd
                .audit_retention_days
                .map_or(d.retention.max_age, |days| std::time::Duration::from_secs(days * 24 * 3600)),
            max_events: file.leashd.audit_max_events.unwrap_or(d.retention.max_events),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_optional_is_default_and_missing_explicit_is_an_error() {
        let p = Path::new("/nonexistent/leash.toml");
        assert_eq!(load(p, false).unwrap(), Config { path: p.to_owned(), ..Config::default() });
        assert!(matches!(load(p, true), Err(ConfigError::Missing(_))));
    }

    #[test]
    fn reads_the_leashd_table_and_names_bad_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        std::fs::write(&p, "[leash]\ntarget_image = \"x\"\n[leashd]\nhistory_size = 10\n").unwrap();
        assert_eq!(load(&p, true).unwrap().history_size, 10);
        std::fs::write(&p, "[leashd]\nhistory = 10\n").unwrap();
        let e = load(&p, true).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("history"), "{e}");
        std::fs::write(&p, "[leashd]\nhistory_size = \"many\"\n").unwrap();
        let e = load(&p, true).unwrap_err().to_string();
        assert!(e.contains("history_size"), "{e}");
    }
}
