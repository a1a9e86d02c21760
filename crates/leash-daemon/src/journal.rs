//! Log lines to systemd's journal in its native protocol, with their fields.
//!
//! Under systemd a daemon's stderr is a stream into the journal, which keeps
//! each line as one text. Sent as a datagram instead, an entry keeps its
//! level (`PRIORITY`), where it was logged (`TARGET`, `CODE_FILE`,
//! `CODE_LINE`) and every field of the event as its own journal field,
//! prefixed `LEASH_` (`component = "leash-sensor"` is `LEASH_COMPONENT`), so
//! `journalctl -u leashd LEASH_COMPONENT=leash-sensor` or `-p warning`
//! selects by them. `MESSAGE` is the line as the plain format writes it (the
//! message, then `key=value` for each field), so the journal's usual view
//! reads as before.
//!
//! The protocol (systemd's "Native Journal Protocol"): one datagram per
//! entry to `/run/systemd/journal/socket`, each field `NAME=value\n`, or
//! `NAME\n`, the value's length as 64-bit little-endian, the value and `\n`
//! when the value holds a newline.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Where journald reads native entries.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// The prefix of every field an event carries.
const PREFIX: &str = "LEASH_";
/// An entry's longest message: a datagram this size is always accepted
/// (larger ones need a memfd, and a log line this long is a mistake).
const MAX_MESSAGE: usize = 48 * 1024;

/// Whether this process's stderr is the journal's stream: systemd sets
/// `JOURNAL_STREAM` to `DEV:INODE` of the stream it connects, which a
/// process started from such a service inherits with its stderr, and
/// which stays stale when stderr was redirected since.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr().as_fd()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// A layer sending each event to the journal; a line to stderr when the
/// journal does not take it.
#[derive(Debug)]
pub struct Layer {
    socket: UnixDatagram,
    identifier: String,
}

impl Layer {
    /// Connects to the journal, which must be there.
    pub fn new() -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(SOCKET)?;
        let identifier = std::env::args_os()
            .next()
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Layer { socket, identifier })
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let entry =
            entry(priority(*meta.level()), &self.identifier, meta.target(), meta.file().zip(meta.line()), &fields);
        if self.socket.send(&entry).is_err() {
            // The journal went away (restarting): stderr still reaches it.
            #[expect(clippy::print_stderr, reason = "the fallback of a failed journal send")]
            {
                eprintln!("{} {}", meta.level(), fields.line());
            }
        }
    }
}

/// syslog's priority of a level, which `journalctl -p` selects by.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event's message and fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Fields {
    /// The plain line: the message, then `key=value` for each field.
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for (k, v) in &self.fields {
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = write!(line, "{k}={v}");
        }
        if line.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [truncated]");
        }
        line
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

/// A field's name in the journal: upper case, letters, digits and `_`
/// only, not starting with a digit or `_`, at most 64 bytes.
fn journal_name(name: &str) -> String {
    let mut out: String = PREFIX.to_owned();
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }));
    out.truncate(64);
    out
}

/// One entry in the native protocol.
fn entry(priority: u8, identifier: &str, target: &str, code: Option<(&str, u32)>, fields: &Fields) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    put(&mut buf, "PRIORITY", &priority.to_string());
    put(&mut buf, "SYSLOG_IDENTIFIER", identifier);
    put(&mut buf, "TARGET", target);
    if let Some((file, line)) = code {
        put(&mut buf, "CODE_FILE", file);
        put(&mut buf, "CODE_LINE", &line.to_string());
    }
    put(&mut buf, "MESSAGE", &fields.line());
    for (k, v) in &fields.fields {
        let mut v = v.as_str();
        if v.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v = &v[..cut];
        }
        put(&mut buf, &journal_name(k), v);
    }
    buf
}

/// One field: `NAME=value\n`, or length-prefixed when the value holds a
/// newline.
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry's fields as journald would read them back.
    fn parse(mut buf: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let nl = buf.iter().position(|&b| b == b'\n').unwrap();
            let head = std::str::from_utf8(&buf[..nl]).unwrap();
            if let Some((k, v)) = head.split_once('=') {
                out.push((k.to_owned(), v.to_owned()));
                buf = &buf[nl + 1..];
            } else {
                let len = u64::from_le_bytes(buf[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let v = &buf[nl + 9..nl + 9 + len];
                assert_eq!(buf[nl + 9 + len], b'\n');
                out.push((head.to_owned(), String::from_utf8(v.to_vec()).unwrap()));
                buf = &buf[nl + 10 + len..];
            }
        }
        out
    }

    #[test]
    fn an_entry_keeps_its_fields_and_reads_as_the_plain_line() {
        let fields = Fields {
            message: "did not answer".to_owned(),
            fields: vec![("component", "leash-sensor".to_owned()), ("error.detail", "line one\nline two".to_owned())],
        };
        let got = parse(&entry(4, "leashd", "leashd::supervisor", Some(("src/supervisor.rs", 12)), &fields));
        let want = [
            ("PRIORITY", "4"),
            ("SYSLOG_IDENTIFIER", "leashd"),
            ("TARGET", "leashd::supervisor"),
            ("CODE_FILE", "src/supervisor.rs"),
            ("CODE_LINE", "12"),
            ("MESSAGE", "did not answer component=leash-sensor error.detail=line one\nline two"),
            ("LEASH_COMPONENT", "leash-sensor"),
            ("LEASH_ERROR_DETAIL", "line one\nline two"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    /// A value an agent chose (a file name, say) cannot add fields of its
    /// own: with a newline in it, it is length-prefixed, not split.
    #[test]
    fn a_hostile_value_stays_one_field() {
        let forged = "x.txt\nPRIORITY=0\nMESSAGE=all clear";
        let fields = Fields { message: "refused".to_owned(), fields: vec![("path", forged.to_owned())] };
        let got = parse(&entry(4, "leash-sensor", "t", None, &fields));
        assert_eq!(got.iter().filter(|(k, _)| k == "PRIORITY").count(), 1, "{got:?}");
        assert_eq!(got.iter().filter(|(k, _)| k == "MESSAGE").count(), 1, "{got:?}");
        assert!(got.contains(&("LEASH_PATH".to_owned(), forged.to_owned())), "{got:?}");
    }

    #[test]
    fn a_long_message_is_cut_on_a_character() {
        let fields = Fields { message: "é".repeat(MAX_MESSAGE), fields: vec![] };
        let line = fields.line();
        assert!(line.len() <= MAX_MESSAGE + " [truncated]".len(), "{}", line.len());
        assert!(line.ends_with(" [truncated]"));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!([Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG].map(priority), [3, 4, 6, 7]);
    }

    #[test]
    fn only_the_stream_named_is_the_journal() {
        let st = rustix::fs::fstat(std::io::stderr().as_fd()).unwrap();
        assert!(stderr_is_journal(Some(&format!("{}:{}", st.st_dev, st.st_ino))));
        assert!(!stderr_is_journal(Some(&format!("{}:{}", st.st_dev, st.st_ino + 1))));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(None));
    }
}
