//! A question leashd asks while the session runs (`leash --ask`): the
//! policy denied an operation, which waits for the user's answer. It is
//! shown on the user's own terminal — nothing of it goes through the
//! container — and answered by one key typed there: the session's output
//! cannot answer it (it is never read as input) and the agent cannot type
//! into this terminal.
//!
//! How it is shown without spoiling the agent's screen: an agent drawing
//! on the main screen (most do) keeps it whole while the question takes
//! the alternate screen, and gets it back unchanged after; an agent that
//! is itself on the alternate screen has the question on its bottom line,
//! and is asked to redraw after (two resizes: its SIGWINCH). The session's
//! output meanwhile is held and printed after.

use std::io::Write;
use std::sync::{Arc, Mutex};

use leash_proto::v1 as pb;

use crate::output::printable;

/// The question being shown, shared with the thread that reads the keys.
pub type Showing = Arc<Mutex<Option<Question>>>;

/// An open question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Its id.
    pub id: String,
    /// The answers it takes.
    pub choices: Vec<String>,
}

/// The answer one read of the user's keys gives: a key typed on its own
/// — a choice's first letter, its number, or Ctrl-C / Escape for "deny".
/// None for anything else: a paste, an arrow or function key (which start
/// with Escape), any other key (ignored while the question shows, so that
/// keys meant for the agent answer nothing).
pub fn answer_for_read(read: &[u8], choices: &[String]) -> Option<String> {
    match read {
        [0x1b] => choices.iter().find(|c| *c == "deny").cloned(),
        [key] => answer_for(*key, choices),
        _ => None,
    }
}

/// The answer one typed key gives (see [`answer_for_read`]).
fn answer_for(key: u8, choices: &[String]) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    if key == 0x03 {
        return choices.iter().find(|c| *c == "deny").cloned();
    }
    if (b'1'..=b'9').contains(&key) {
        return choices.get(usize::from(key - b'1')).cloned();
    }
    choices.iter().find(|c| c.as_bytes().first() == Some(&lower)).cloned()
}

/// The answers with their keys: `[o]nce [d]eny`.
pub fn keys(p: &pb::Prompt) -> String {
    let answers: Vec<String> = p
        .choices
        .iter()
        .map(|c| {
            let (first, rest) = c.split_at(c.chars().next().map_or(0, char::len_utf8));
            format!("[{first}]{rest}")
        })
        .collect();
    answers.join(" ")
}

/// The question and its answers on one line.
pub fn line(p: &pb::Prompt) -> String {
    format!("leash: {}  {}", printable(&p.question), keys(p))
}

/// Whether the session's program is on the alternate screen, from what it
/// printed (a switch split across two writes is seen too).
#[derive(Debug, Default)]
pub struct AltScreen {
    on: bool,
    tail: Vec<u8>,
}

impl AltScreen {
    /// Output of the session.
    pub fn feed(&mut self, bytes: &[u8]) {
        const SWITCHES: [(&[u8], bool); 6] = [
            (b"\x1b[?1049h", true),
            (b"\x1b[?1049l", false),
            (b"\x1b[?1047h", true),
            (b"\x1b[?1047l", false),
            (b"\x1b[?47h", true),
            (b"\x1b[?47l", false),
        ];
        let mut hay = std::mem::take(&mut self.tail);
        hay.extend_from_slice(bytes);
        // The last switch in the output decides.
        let mut last: Option<(usize, bool)> = None;
        for (seq, on) in SWITCHES {
            if let Some(at) = hay.windows(seq.len()).rposition(|w| w == seq)
                && last.is_none_or(|(l, _)| at > l)
            {
                last = Some((at, on));
            }
        }
        if let Some((_, on)) = last {
            self.on = on;
        }
        let keep = hay.len().saturating_sub(7);
        self.tail = hay.split_off(keep);
    }

    /// The program is on the alternate screen.
    pub fn on(&self) -> bool {
        self.on
    }
}

/// What shows a question on a terminal and takes it down again.
#[derive(Debug)]
pub struct Shown {
    /// Its id.
    pub id: String,
    /// Whether it took the bottom line of the program's alternate screen
    /// (else the alternate screen is its own).
    bottom_line: bool,
}

/// The bytes that show question `p` on a terminal of `rows` rows and
/// `cols` columns whose program is (or not) on the alternate screen.
pub fn show(p: &pb::Prompt, alt: bool, rows: u16, cols: u16) -> (Shown, Vec<u8>) {
    let bytes = if alt {
        // One line, the answers first: save the cursor, the bottom line, reverse video.
        let text = format!("leash: {} · {}", keys(p), printable(&p.question));
        let text: String = text.chars().take(usize::from(cols.max(20)) - 1).collect();
        format!("\x1b7\x1b[{rows};1H\x1b[2K\x1b[7m{text}\x1b[0m")
    } else {
        // Our own screen (the program's stays as it was): the question as
        // long as it is, the answers below.
        let question = printable(&p.question);
        format!("\x1b[?1049h\x1b[H\x1b[2J\x1b[7mleash:\x1b[0m {question}\r\n\r\n  {}\r\n", keys(p))
    };
    (Shown { id: p.id.clone(), bottom_line: alt }, bytes.into_bytes())
}

impl Shown {
    /// The bytes that take it down; whether the program should redraw.
    pub fn take_down(&self, rows: u16) -> (Vec<u8>, bool) {
        if self.bottom_line {
            (format!("\x1b[{rows};1H\x1b[2K\x1b8").into_bytes(), true)
        } else {
            (b"\x1b[?1049l".to_vec(), false)
        }
    }
}

/// The questions of one session on this terminal: the one shown, those
/// waiting their turn, the session's output held meanwhile, and whether
/// its program is on the alternate screen.
#[derive(Debug)]
pub struct Questions {
    showing: Showing,
    shown: Option<Shown>,
    queued: std::collections::VecDeque<pb::Prompt>,
    held: Vec<u8>,
    alt: AltScreen,
}

impl Questions {
    /// None yet; `showing` is shared with the thread that reads the keys.
    pub fn new(showing: Showing) -> Questions {
        Questions { showing, shown: None, queued: Default::default(), held: Vec::new(), alt: AltScreen::default() }
    }

    /// Output of the session (`tty`: through a terminal); true when it is
    /// held while a question shows.
    pub fn hold(&mut self, bytes: &[u8], tty: bool) -> bool {
        if tty {
            self.alt.feed(bytes);
        }
        if self.shown.is_some() {
            self.held.extend_from_slice(bytes);
        }
        self.shown.is_some()
    }

    /// A question: shown now on a terminal of `size`, or when those before it are closed.
    pub fn ask(&mut self, p: pb::Prompt, size: pb::TerminalSize, out: &mut impl Write) {
        self.queued.push_back(p);
        self.show_next(size, out);
    }

    /// Question `id` is closed (answered here or elsewhere, or timed out):
    /// taken down if it shows, with the output held meanwhile printed, and
    /// the next shown. The terminal's size when the program should redraw.
    pub fn close(&mut self, id: &str, size: pb::TerminalSize, out: &mut impl Write) -> Option<pb::TerminalSize> {
        self.queued.retain(|p| p.id != id);
        if self.shown.as_ref().is_none_or(|s| s.id != id) {
            return None;
        }
        *self.showing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let redraw = self.take_down(size, out);
        self.show_next(size, out);
        redraw
    }

    /// Every question is gone (the session ended, this client left it, or
    /// its leashd went away): the terminal as the program left it, with the
    /// output held meanwhile.
    pub fn abandon(&mut self, size: pb::TerminalSize, out: &mut impl Write) {
        self.queued.clear();
        *self.showing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.take_down(size, out);
    }

    fn show_next(&mut self, size: pb::TerminalSize, out: &mut impl Write) {
        if self.shown.is_some() {
            return;
        }
        let Some(p) = self.queued.pop_front() else { return };
        let (s, bytes) = show(&p, self.alt.on(), size.rows as u16, size.cols as u16);
        // Keys answer it from the moment it can be seen.
        *self.showing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Question { id: p.id, choices: p.choices });
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
        self.shown = Some(s);
    }

    fn take_down(&mut self, size: pb::TerminalSize, out: &mut impl Write) -> Option<pb::TerminalSize> {
        let s = self.shown.take()?;
        let (bytes, redraw) = s.take_down(size.rows as u16);
        let _ = out.write_all(&bytes);
        let _ = out.write_all(&std::mem::take(&mut self.held));
        let _ = out.flush();
        redraw.then_some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices() -> Vec<String> {
        ["once", "session", "always", "deny"].map(String::from).to_vec()
    }

    #[test]
    fn one_key_answers_and_others_do_not() {
        let c = choices();
        assert_eq!(answer_for(b'o', &c).as_deref(), Some("once"));
        assert_eq!(answer_for(b'S', &c).as_deref(), Some("session"));
        assert_eq!(answer_for(b'3', &c).as_deref(), Some("always"));
        assert_eq!(answer_for(0x03, &c).as_deref(), Some("deny"), "Ctrl-C denies");
        assert_eq!(answer_for_read(&[0x1b], &c).as_deref(), Some("deny"), "Escape alone denies");
        assert_eq!(answer_for_read(b"\x1b[A", &c), None, "an arrow key answers nothing");
        assert_eq!(answer_for_read(b"docs", &c), None, "a paste answers nothing");
        assert_eq!(answer_for_read(b"a", &c).as_deref(), Some("always"));
        assert_eq!(answer_for(b'x', &c), None);
        assert_eq!(answer_for(b'\r', &c), None, "Enter is no answer: it may have been meant for the agent");
        assert_eq!(answer_for(b'9', &c), None);
        let once_only = ["once", "deny"].map(String::from).to_vec();
        assert_eq!(answer_for(b'a', &once_only), None, "an answer not offered");
    }

    #[test]
    fn the_alternate_screen_is_followed_across_writes() {
        let mut a = AltScreen::default();
        a.feed(b"hello \x1b[?10");
        assert!(!a.on());
        a.feed(b"49h drawing");
        assert!(a.on(), "a switch split across two writes");
        a.feed(b"\x1b[?1049l\x1b[?1049h\x1b[?1049l bye");
        assert!(!a.on(), "the last switch decides");
    }

    #[test]
    fn what_the_agent_named_cannot_drive_the_terminal() {
        assert_eq!(printable("/w/a\x1b[2Jb"), "/w/a\\u{1b}[2Jb");
        assert_eq!(printable("/w/x\u{202e}hs.live"), "/w/x\\u{202e}hs.live");
        assert_eq!(printable("/w/\u{9b}31m\r\n"), "/w/\\u{9b}31m\\u{d}\\u{a}");
        assert_eq!(printable("/w/ünïcode ok"), "/w/ünïcode ok");
    }

    #[test]
    fn output_waits_behind_a_question_and_comes_after_it() {
        let showing = Showing::default();
        let mut q = Questions::new(showing.clone());
        let size = pb::TerminalSize { rows: 24, cols: 80 };
        let prompt =
            |id: &str| pb::Prompt { id: id.into(), question: "q?".into(), choices: choices(), default_choice: 0 };
        let mut out = Vec::new();
        assert!(!q.hold(b"before", true));
        q.ask(prompt("a"), size, &mut out);
        q.ask(prompt("b"), size, &mut out);
        assert_eq!(showing.lock().unwrap().as_ref().map(|s| s.id.clone()), Some("a".into()));
        assert!(q.hold(b"meanwhile", true));
        out.clear();
        assert_eq!(q.close("a", size, &mut out), None, "its own screen: nothing to redraw");
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.starts_with("\x1b[?1049lmeanwhile\x1b[?1049h"), "{text:?}");
        assert_eq!(showing.lock().unwrap().as_ref().map(|s| s.id.clone()), Some("b".into()), "the next shows");
        out.clear();
        q.abandon(size, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "\x1b[?1049l");
        assert!(showing.lock().unwrap().is_none());
    }

    #[test]
    fn the_line_names_the_keys() {
        let p = pb::Prompt { id: "a".into(), question: "q?".into(), choices: choices(), default_choice: 0 };
        assert_eq!(line(&p), "leash: q?  [o]nce [s]ession [a]lways [d]eny");
    }
}
