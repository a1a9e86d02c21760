//! The detach keys: the sequence that leaves a session's terminal with the
//! session running (Docker's `--detach-keys`, `ctrl-p,ctrl-q` by default).

/// Docker's default.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// The bytes of a `--detach-keys` value: comma-separated keys, each a
/// single character, `ctrl-X` (X one of `@`, `a`-`z`, `[`, `\`, `]`, `^`,
/// `_`) or `DEL`, as Docker reads them.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    const CTRL: &[u8] = b"@abcdefghijklmnopqrstuvwxyz[\\]^_";
    let mut out = Vec::new();
    for key in spec.split(',') {
        let code = match key.as_bytes() {
            [c] if c.is_ascii() => *c,
            _ if key == "DEL" => 127,
            _ => match key.strip_prefix("ctrl-").map(str::as_bytes) {
                Some([c]) if CTRL.contains(c) => CTRL.iter().position(|x| x == c).expect("in the list") as u8,
                _ => {
                    return Err(format!(
                        "--detach-keys: {key:?} is not a key (a character, ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_ or DEL)"
                    ));
                }
            },
        };
        out.push(code);
    }
    Ok(out)
}

/// Watches what the user types for the detach keys. A key counts only when
/// it arrives on its own, as typed (a paste that contains the sequence is
/// passed on, as Docker does); keys held while they match so far are
/// passed on as typed as soon as the next read does not continue them.
#[derive(Debug)]
pub struct Detacher {
    keys: Vec<u8>,
    matched: usize,
}

/// What to do with one read of the user's input.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Send these bytes to the session (possibly none: keys held).
    Send(Vec<u8>),
    /// The user typed the detach keys.
    Detach,
}

impl Detacher {
    /// A watcher for `keys` (none: nothing ever detaches).
    pub fn new(keys: Vec<u8>) -> Detacher {
        Detacher { keys, matched: 0 }
    }

    /// One read of the user's input.
    pub fn feed(&mut self, read: &[u8]) -> Typed {
        if let [b] = read
            && self.keys.get(self.matched) == Some(b)
        {
            self.matched += 1;
            if self.matched == self.keys.len() {
                self.matched = 0;
                return Typed::Detach;
            }
            return Typed::Send(Vec::new());
        }
        let mut out = self.keys[..self.matched].to_vec();
        self.matched = 0;
        out.extend_from_slice(read);
        Typed::Send(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_docker_reads_them() {
        assert_eq!(parse_detach_keys(DEFAULT_DETACH_KEYS).unwrap(), vec![0x10, 0x11]);
        assert_eq!(
            parse_detach_keys("ctrl-@,ctrl-a,ctrl-z,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_").unwrap(),
            vec![0, 1, 26, 27, 28, 29, 30, 31]
        );
        assert_eq!(parse_detach_keys("a,DEL,Q").unwrap(), vec![b'a', 127, b'Q']);
        for bad in ["", "ctrl-", "ctrl-1", "ctrl-A", "alt-x", "ab", "ctrl-p,,ctrl-q", "é"] {
            let e = parse_detach_keys(bad).unwrap_err();
            assert!(e.starts_with("--detach-keys: "), "{bad}: {e}");
        }
    }

    #[test]
    fn typed_keys_detach_and_anything_else_passes_as_typed() {
        let keys = parse_detach_keys(DEFAULT_DETACH_KEYS).unwrap();
        let mut d = Detacher::new(keys.clone());
        assert_eq!(d.feed(b"ls\r"), Typed::Send(b"ls\r".to_vec()));
        assert_eq!(d.feed(b"\x10"), Typed::Send(vec![]));
        assert_eq!(d.feed(b"\x11"), Typed::Detach);
        // Ctrl-P then another key: both reach the session, in order.
        assert_eq!(d.feed(b"\x10"), Typed::Send(vec![]));
        assert_eq!(d.feed(b"a"), Typed::Send(b"\x10a".to_vec()));
        // Ctrl-P twice: both go on (as Docker does).
        assert_eq!(d.feed(b"\x10"), Typed::Send(vec![]));
        assert_eq!(d.feed(b"\x10"), Typed::Send(b"\x10\x10".to_vec()));
        // A paste holding the sequence is not the user detaching.
        assert_eq!(d.feed(b"x\x10\x11y"), Typed::Send(b"x\x10\x11y".to_vec()));
        // A held key followed by a paste.
        assert_eq!(d.feed(b"\x10"), Typed::Send(vec![]));
        assert_eq!(d.feed(b"\x11\x11"), Typed::Send(b"\x10\x11\x11".to_vec()));
        // No keys: nothing detaches.
        let mut none = Detacher::new(Vec::new());
        assert_eq!(none.feed(b"\x10"), Typed::Send(b"\x10".to_vec()));
        // Custom keys.
        let mut x = Detacher::new(parse_detach_keys("ctrl-x").unwrap());
        assert_eq!(x.feed(b"\x18"), Typed::Detach);
    }
}
