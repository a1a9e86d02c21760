//! Tracing for binaries: `LEASH_LOG` filter (falling back to `RUST_LOG`),
//! `LEASH_LOG_FORMAT=plain|json|journal`: lines to stderr, or entries to
//! systemd's journal with their fields (by default when stderr is the
//! journal's stream, as under the unit).

use tracing_subscriber::EnvFilter;

use crate::env::{ConfigError, ENV_LOG, ENV_LOG_FORMAT, Env};

/// The filter when neither `LEASH_LOG` nor `RUST_LOG` is set. Target
/// matching is by prefix, so `leash` covers every leash crate.
pub const DEFAULT_FILTER: &str = "warn,leash=info,tonic::transport::server=debug,h2::server=debug";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
    /// Entries in the journal's native protocol (see [`crate::journal`]).
    Journal,
}

/// The settings read from the environment, checked before anything starts.
#[derive(Debug)]
pub struct Settings {
    filter: EnvFilter,
    format: Format,
}

/// True for values that the Go leash would have taken as a file path.
fn looks_like_path(value: &str) -> bool {
    let v = value.trim();
    v.starts_with('/')
        || v.starts_with("./")
        || v.starts_with("../")
        || v.starts_with('~')
        || v.contains('/')
        || [".log", ".txt", ".json", ".jsonl"].iter().any(|ext| v.ends_with(ext))
}

/// Reads and checks the logging settings.
pub fn settings(env: &dyn Env) -> Result<Settings, ConfigError> {
    let (var, value) = match env.get(ENV_LOG).filter(|v| !v.trim().is_empty()) {
        Some(v) => (ENV_LOG, v),
        None => (
            "RUST_LOG",
            env.get("RUST_LOG").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_FILTER.to_owned()),
        ),
    };
    if var == ENV_LOG && looks_like_path(&value) {
        return Err(ConfigError::LogIsPath(value));
    }
    let filter = EnvFilter::builder()
        .parse(&value)
        .map_err(|e| ConfigError::LogFilter { value: value.clone(), reason: e.to_string() })?;
    let format = match env.get(ENV_LOG_FORMAT).as_deref().map(str::trim) {
        None | Some("") if crate::journal::stderr_is_journal(env.get("JOURNAL_STREAM").as_deref()) => Format::Journal,
        None | Some("") | Some("plain") => Format::Plain,
        Some("json") => Format::Json,
        Some("journal") => Format::Journal,
        Some(other) => return Err(ConfigError::LogFormat(other.to_owned())),
    };
    Ok(Settings { filter, format })
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: Settings) {
    let format = match settings.format {
        Format::Journal => match crate::journal::Layer::new() {
            Ok(layer) => {
                use tracing_subscriber::layer::SubscriberExt as _;
                use tracing_subscriber::util::SubscriberInitExt as _;
                tracing_subscriber::registry().with(settings.filter).with(layer).init();
                return;
            }
            Err(e) => {
                #[expect(clippy::print_stderr, reason = "logging is not up yet")]
                {
                    eprintln!(
                        "{ENV_LOG_FORMAT}=journal: cannot reach the journal at {}: {e}; logging plain lines to stderr",
                        crate::journal::SOCKET
                    );
                }
                Format::Plain
            }
        },
        other => other,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(settings.filter).with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().flatten_event(true).init(),
        Format::Plain | Format::Journal => builder.with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::env;

    #[test]
    fn paths_are_refused() {
        for v in ["/log/events.log", "events.log", "./x", "~/leash", "logs/out"] {
            let e = settings(&env(&[(ENV_LOG, v)])).unwrap_err();
            assert!(matches!(e, ConfigError::LogIsPath(_)), "{v}: {e}");
            assert!(e.to_string().contains("looks like a file path"), "{e}");
        }
    }

    #[test]
    fn filters_and_formats() {
        assert_eq!(settings(&env(&[])).unwrap().format, Format::Plain);
        assert_eq!(settings(&env(&[(ENV_LOG, "leashd=debug,info")])).unwrap().format, Format::Plain);
        assert_eq!(settings(&env(&[(ENV_LOG_FORMAT, "json")])).unwrap().format, Format::Json);
        assert_eq!(settings(&env(&[(ENV_LOG_FORMAT, "journal")])).unwrap().format, Format::Journal);
        // Unset, the journal only when stderr is its stream; asked for, plain stays plain.
        assert_eq!(settings(&env(&[("JOURNAL_STREAM", "1:2")])).unwrap().format, Format::Plain);
        let st = rustix::fs::fstat(std::os::fd::AsFd::as_fd(&std::io::stderr())).unwrap();
        let stream = format!("{}:{}", st.st_dev, st.st_ino);
        assert_eq!(settings(&env(&[("JOURNAL_STREAM", &stream)])).unwrap().format, Format::Journal);
        let plain = settings(&env(&[("JOURNAL_STREAM", &stream), (ENV_LOG_FORMAT, "plain")])).unwrap();
        assert_eq!(plain.format, Format::Plain);
        assert!(matches!(settings(&env(&[(ENV_LOG_FORMAT, "xml")])), Err(ConfigError::LogFormat(_))));
        assert!(matches!(settings(&env(&[(ENV_LOG, "leashd=loud")])), Err(ConfigError::LogFilter { .. })));
    }
}
