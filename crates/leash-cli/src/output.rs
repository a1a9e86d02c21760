//! What the CLI prints: tables for people, JSON for programs.
#![allow(clippy::print_stdout, reason = "this module is the CLI's output")]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leash_proto::v1 as pb;
use serde::Serialize;

pub use leash_core::time::{parse_rfc3339, rfc3339};

/// A duration as `1h02m03s`, `2m03s` or `4s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub use leash_proto::state_name;

/// A session in `leashctl status`: how the sensor governs it.
#[derive(Debug, Serialize)]
pub struct GovernedJson {
    /// Session id.
    pub id: String,
    /// created | running | exited.
    pub state: String,
    /// Per action, the mechanism: `file-read=fanotify … connect=cgroup-sock`.
    pub enforcement: String,
}

/// `leashctl status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// leashd itself.
    pub leashd: DaemonJson,
    /// Supervised components.
    pub components: Vec<ComponentJson>,
    /// Sessions managed.
    pub sessions: u32,
    /// The caller's sessions and how each is governed.
    pub governed: Vec<GovernedJson>,
    /// Event hub counters.
    pub events: EventsJson,
    /// Host facts (container engine).
    pub host: BTreeMap<String, String>,
    /// The Control UI.
    pub ui: UiJson,
}

/// The Control UI in `status --json`.
#[derive(Debug, Default, Serialize)]
pub struct UiJson {
    /// Its address ("" when not served).
    pub url: String,
    /// The configured listen address ("" when disabled).
    pub listen: String,
    /// Why it is not served.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl UiJson {
    /// One line for people.
    pub fn render(&self) -> String {
        match (self.url.as_str(), self.error.as_str(), self.listen.as_str()) {
            (_, e, _) if !e.is_empty() => format!("failed: {e}"),
            ("", _, "") => "disabled (listen is empty)".to_owned(),
            ("", _, l) => format!("starting on {l}"),
            (u, _, _) => format!("{u}  (leash --open, or leashctl ui)"),
        }
    }
}

/// leashd in `status --json`.
#[derive(Debug, Serialize)]
pub struct DaemonJson {
    /// Version.
    pub version: String,
    /// Protocol.
    pub protocol: u32,
    /// Pid.
    pub pid: u32,
    /// Uptime.
    pub uptime_secs: u64,
    /// Instance.
    pub instance: String,
    /// Socket.
    pub socket: String,
    /// Runtime dir.
    pub runtime_dir: String,
    /// State dir.
    pub state_dir: String,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Proportional share of memory (shared pages divided), bytes.
    pub pss_bytes: u64,
}

/// A component in `status --json`.
#[derive(Debug, Serialize)]
pub struct ComponentJson {
    /// Name.
    pub name: String,
    /// running | starting | restarting | down | unhealthy.
    pub state: &'static str,
    /// Pid (null when not running).
    pub pid: Option<u32>,
    /// Version.
    pub version: String,
    /// Uptime.
    pub uptime_secs: u64,
    /// Restarts.
    pub restarts: u32,
    /// Socket.
    pub socket: String,
    /// Spawned by this leashd (else adopted).
    pub spawned: bool,
    /// Why it is not running.
    pub detail: String,
    /// What it reports about itself.
    pub facts: BTreeMap<String, String>,
    /// Resident memory, bytes (0 when not running).
    pub rss_bytes: u64,
    /// Proportional share of memory, bytes (0 when not running).
    pub pss_bytes: u64,
}

/// Hub counters in `status --json`.
#[derive(Debug, Serialize)]
pub struct EventsJson {
    /// Published.
    pub published: u64,
    /// Dropped at full queues.
    pub dropped: u64,
    /// Live followers.
    pub subscribers: u32,
    /// Per-follower queue capacity.
    pub queue_capacity: u32,
    /// Written to the audit store.
    pub stored: u64,
    /// The audit store could not write.
    pub store_failed: u64,
}

fn facts(f: &[pb::Fact]) -> BTreeMap<String, String> {
    f.iter().map(|f| (f.name.clone(), f.value.clone())).collect()
}

impl StatusJson {
    /// From the wire form.
    pub fn from_proto(s: &pb::StatusResponse) -> StatusJson {
        let hello = s.leashd.clone().unwrap_or_default();
        let started = UNIX_EPOCH + Duration::from_millis(hello.started_unix_ms.max(0) as u64);
        let hub = s.events.unwrap_or_default();
        StatusJson {
            leashd: DaemonJson {
                version: hello.version,
                protocol: hello.protocol,
                pid: hello.pid,
                uptime_secs: SystemTime::now().duration_since(started).map(|d| d.as_secs()).unwrap_or(0),
                instance: hello.instance,
                socket: s.socket.clone(),
                runtime_dir: s.runtime_dir.clone(),
                state_dir: s.state_dir.clone(),
                rss_bytes: s.rss_bytes,
                pss_bytes: s.pss_bytes,
            },
            components: s
                .components
                .iter()
                .map(|c| ComponentJson {
                    name: c.name.clone(),
                    state: state_name(c.state),
                    pid: (c.pid != 0).then_some(c.pid),
                    version: c.version.clone(),
                    uptime_secs: c.uptime_secs,
                    restarts: c.restarts,
                    socket: c.socket.clone(),
                    spawned: c.spawned,
                    detail: c.detail.clone(),
                    facts: facts(&c.facts),
                    rss_bytes: c.rss_bytes,
                    pss_bytes: c.pss_bytes,
                })
                .collect(),
            sessions: s.sessions,
            governed: Vec::new(),
            events: EventsJson {
                published: hub.published,
                dropped: hub.dropped,
                subscribers: hub.subscribers,
                queue_capacity: hub.queue_capacity,
                stored: hub.stored,
                store_failed: hub.store_failed,
            },
            host: facts(&s.facts),
            ui: s
                .api
                .as_ref()
                .map(|a| UiJson { url: a.url.clone(), listen: a.listen.clone(), error: a.error.clone() })
                .unwrap_or_default(),
        }
    }

    /// True when every component is running.
    pub fn all_running(&self) -> bool {
        self.components.iter().all(|c| c.state == "running")
    }

    /// The human form.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let d = &self.leashd;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "leashd {}  pid {}  up {}  instance {}  rss {}",
            d.version,
            d.pid,
            duration(d.uptime_secs),
            d.instance,
            mib(d.rss_bytes)
        );
        let _ = writeln!(out, "socket   {}", d.socket);
        let _ = writeln!(out, "ui       {}", self.ui.render());
        for (k, v) in &self.host {
            let _ = writeln!(out, "{k:<8} {v}");
        }
        let _ = writeln!(out);
        let rows: Vec<[String; 8]> = self
            .components
            .iter()
            .map(|c| {
                [
                    c.name.clone(),
                    c.state.to_owned(),
                    c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".to_owned()),
                    if c.version.is_empty() { "-".to_owned() } else { c.version.clone() },
                    if c.pid.is_some() { duration(c.uptime_secs) } else { "-".to_owned() },
                    c.restarts.to_string(),
                    if c.pid.is_some() { mib(c.rss_bytes) } else { "-".to_owned() },
                    c.socket.clone(),
                ]
            })
            .collect();
        let header = ["COMPONENT", "STATE", "PID", "VERSION", "UPTIME", "RESTARTS", "RSS", "SOCKET"].map(str::to_owned);
        out.push_str(&table(&std::iter::once(header).chain(rows).collect::<Vec<_>>()));
        for c in &self.components {
            if !c.detail.is_empty() {
                let _ = writeln!(out, "  {}: {}", c.name, c.detail);
            }
            if !c.facts.is_empty() {
                let f: Vec<String> = c.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "  {}: {}", c.name, f.join(", "));
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "sessions {}", self.sessions);
        for g in &self.governed {
            let how = if g.enforcement.is_empty() { "not governed".to_owned() } else { g.enforcement.clone() };
            let _ = writeln!(out, "  {} {:<8} {how}", &g.id[..g.id.len().min(12)], g.state);
        }
        let e = &self.events;
        let _ = writeln!(
            out,
            "events   {} published, {} dropped, {} follower{} (queue {}), {} stored",
            e.published,
            e.dropped,
            e.subscribers,
            if e.subscribers == 1 { "" } else { "s" },
            e.queue_capacity,
            e.stored
        );
        out
    }
}

/// Left-aligned columns separated by two spaces, trailing blanks trimmed.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One event as JSON (`leashctl events --json`, one object per line).
#[derive(Debug, Serialize)]
pub struct EventJson {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Session id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Actor pid.
    pub pid: u32,
    /// Actor executable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub executable: String,
    /// file | exec | connect | http | mcp | policy | session | daemon.
    pub kind: &'static str,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// record | shadow | enforce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// allow | deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// The policy would deny.
    pub would_deny: bool,
    /// Deciding policies.
    pub policy_ids: Vec<String>,
    /// Details.
    pub details: BTreeMap<String, String>,
}

impl EventJson {
    /// From the wire form.
    pub fn from_proto(e: &pb::Event) -> EventJson {
        let time = UNIX_EPOCH + Duration::from_nanos(e.time_unix_nanos.max(0) as u64);
        EventJson {
            seq: e.seq,
            time: rfc3339(time),
            session: e.session.clone(),
            pid: e.pid,
            executable: e.executable.clone(),
            kind: leash_proto::event::kind_name(e.kind),
            action: e.action.clone(),
            resource: e.resource.clone(),
            mode: leash_proto::event::mode_name(e.mode),
            decision: leash_proto::event::decision_name(e.decision),
            would_deny: e.would_deny,
            policy_ids: e.policy_ids.clone(),
            details: e.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The human form: one line.
    pub fn render(&self) -> String {
        let mut line = format!("{}  {:<7} {:<20} {}", self.time, self.kind, self.action, self.resource);
        if !self.session.is_empty() {
            line.push_str(&format!(" session={}", self.session));
        }
        if self.pid != 0 {
            line.push_str(&format!(" pid={}", self.pid));
        }
        if let Some(d) = self.decision {
            line.push_str(&format!(" decision={d}"));
        }
        if self.would_deny {
            line.push_str(" would_deny");
        }
        if !self.policy_ids.is_empty() {
            line.push_str(&format!(" policies={}", self.policy_ids.join(",")));
        }
        for (k, v) in &self.details {
            line.push_str(&format!(" {k}={v:?}"));
        }
        line
    }
}

/// An error and its causes on one line, without repeating a cause that the
/// message already contains.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// Text an agent may have chosen (a file's name, a question, what a
/// container wrote) made safe to print on the user's terminal: control
/// characters (an escape sequence could move the cursor, rewrite or hide a
/// line, retitle the window or set the clipboard) and the invisible ones
/// that reorder or hide text (bidirectional overrides, zero-width
/// characters) are shown escaped (`\u{1b}`), but for `keep`.
fn escaped<'a>(s: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    let unsafe_char = |c: char| {
        let hidden =
            matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
        (c.is_control() || hidden) && !keep.contains(&c)
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One line of text an agent may have chosen, made safe to print (see
/// [`escaped`]; a newline is escaped too).
pub fn printable(s: &str) -> String {
    escaped(s, &[]).into_owned()
}

/// Writes to stdout, every control character but newlines and tabs escaped
/// (what leashctl prints holds names the agent chose). A reader that has
/// gone (`leashctl sessions | head`) ends the command quietly, as a closed
/// pipe ends `ls`; any other failure to write is not worth a panic either.
fn put(s: &str) {
    use std::io::Write;
    let s = escaped(s, &['\n', '\t']);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Prints one line to stdout.
pub fn line(s: &str) {
    put(&format!("{s}\n"));
}

/// Prints text as is to stdout.
pub fn text(s: &str) {
    put(s);
}

/// Prints a value as one line of JSON.
pub fn json<T: Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => line(&s),
        Err(e) => line(&format!("{{\"error\":{:?}}}", e.to_string())),
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_text_keeps_lines_and_tabs_and_escapes_every_other_control() {
        assert_eq!(escaped("a\tb\nc", &['\n', '\t']), "a\tb\nc");
        assert_eq!(
            escaped("x\x1b]0;t\x07\r\u{9b}2J\u{202e}y\n", &['\n', '\t']),
            "x\\u{1b}]0;t\\u{7}\\u{d}\\u{9b}2J\\u{202e}y\n"
        );
        assert!(matches!(escaped("plain ünïcode", &[]), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_739_536_789)), "2026-11-27T00:32:16.789Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(duration(4), "4s");
        assert_eq!(duration(123), "2m03s");
        assert_eq!(duration(3723), "1h02m03s");
    }
}
