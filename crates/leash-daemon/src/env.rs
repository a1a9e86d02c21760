//! The environment every daemon reads, behind a trait so tests pass a map.

use std::collections::HashMap;
use std::path::PathBuf;

use leash_core::Layout;
use leash_core::layout::{self, DEFAULT_INSTANCE, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};

/// Runtime directory (sockets, locks).
pub const ENV_RUNTIME_DIR: &str = "LEASH_RUNTIME_DIR";
/// State directory (durable data).
pub const ENV_STATE_DIR: &str = "LEASH_STATE_DIR";
/// Instance name scoping host-global resources.
pub const ENV_INSTANCE: &str = "LEASH_INSTANCE";
/// Tracing filter (EnvFilter syntax).
pub const ENV_LOG: &str = "LEASH_LOG";
/// Log format: `plain` or `json`.
pub const ENV_LOG_FORMAT: &str = "LEASH_LOG_FORMAT";

/// Read access to environment variables.
pub trait Env {
    /// The variable's value; `None` when unset or not UTF-8.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// A configuration error: the daemon exits 64 before touching anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An instance name that cannot be used in paths.
    #[error("{ENV_INSTANCE}: {0}")]
    Instance(#[from] layout::InvalidInstance),
    /// A directory variable that is not absolute.
    #[error("{var}={value:?} must be an absolute path")]
    RelativeDir {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `LEASH_LOG` holding a file path, as the Go leash used it.
    #[error(
        "{ENV_LOG}={0:?} looks like a file path, but {ENV_LOG} is a log filter such as `info` or `leashd=debug`; \
         events are read with `leashctl events`, logs go to stderr (the journal under systemd)"
    )]
    LogIsPath(String),
    /// A filter that does not parse.
    #[error("{ENV_LOG}={value:?} is not a valid log filter: {reason}")]
    LogFilter {
        /// The value.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// An unknown log format.
    #[error("{ENV_LOG_FORMAT}={0:?} is not a log format: use `plain`, `json` or `journal`")]
    LogFormat(String),
}

/// Reads the layout (runtime dir, state dir, instance) from the environment.
pub fn layout(env: &dyn Env) -> Result<Layout, ConfigError> {
    let dir = |var: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
        let value = env.get(var).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned());
        let path = PathBuf::from(&value);
        if path.is_absolute() { Ok(path) } else { Err(ConfigError::RelativeDir { var, value }) }
    };
    let instance = env.get(ENV_INSTANCE).filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_INSTANCE.to_owned());
    layout::validate_instance(&instance)?;
    Ok(Layout {
        runtime_dir: dir(ENV_RUNTIME_DIR, DEFAULT_RUNTIME_DIR)?,
        state_dir: dir(ENV_STATE_DIR, DEFAULT_STATE_DIR)?,
        instance,
    })
}

/// An environment made of `pairs`, for tests.
#[cfg(test)]
pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let l = layout(&env(&[])).unwrap();
        assert_eq!(l.runtime_dir, PathBuf::from("/run/leash"));
        assert_eq!(l.state_dir, PathBuf::from("/var/lib/leash"));
        assert_eq!(l.instance, "default");
    }

    #[test]
    fn overrides_and_errors() {
        let l = layout(&env(&[(ENV_RUNTIME_DIR, "/tmp/r"), (ENV_INSTANCE, "t1")])).unwrap();
        assert_eq!(l.runtime_dir, PathBuf::from("/tmp/r"));
        assert_eq!(l.instance, "t1");
        let e = layout(&env(&[(ENV_RUNTIME_DIR, "run")])).unwrap_err();
        assert_eq!(e.to_string(), "LEASH_RUNTIME_DIR=\"run\" must be an absolute path");
        let e = layout(&env(&[(ENV_INSTANCE, "a/b")])).unwrap_err();
        assert!(e.to_string().starts_with("LEASH_INSTANCE: invalid instance name \"a/b\""), "{e}");
    }
}
