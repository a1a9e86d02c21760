//! The release channel's answer: leashd writes `go` (and a newline) once
//! the session may start; an empty answer is the channel closed, anything
//! else a refusal, whose text is shown on the terminal escaped (it comes
//! off a socket: no control character reaches the terminal as such).

/// The most of an answer read: `go` and then some.
pub const MAX_ANSWER: u64 = 4096;

/// The most of a refusal's text shown, in characters.
const SHOWN: usize = 200;

/// What an answer means: released when it is exactly `go` around ASCII
/// whitespace; else why not.
pub fn decide(answer: &[u8]) -> Result<(), String> {
    match answer.trim_ascii() {
        b"go" => Ok(()),
        b"" => Err("leashd closed the release channel without releasing the session".into()),
        other => {
            let text = String::from_utf8_lossy(other);
            let mut shown: String = text.chars().take(SHOWN).collect();
            let cut = shown.len() < text.len();
            shown = format!("{shown:?}");
            if cut {
                shown.push_str(" (cut short)");
            }
            Err(format!("leashd refused to release the session: {shown}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_go_releases() {
        assert_eq!(decide(b"go"), Ok(()));
        assert_eq!(decide(b"go\n"), Ok(()));
        assert_eq!(decide(b" \tgo\r\n"), Ok(()));
        assert!(decide(b"").unwrap_err().contains("closed the release channel"));
        assert!(decide(b" \n").unwrap_err().contains("closed the release channel"));
        for no in [&b"GO"[..], b"gone", b"g o", b"go\0", b"go\ngo", b"no: admission failed", b"\xffgo"] {
            assert!(decide(no).is_err(), "{no:?} released");
        }
        assert_eq!(
            decide(b"no: admission failed\n").unwrap_err(),
            "leashd refused to release the session: \"no: admission failed\""
        );
    }

    #[test]
    fn a_refusal_reaches_the_terminal_escaped() {
        let e = decide(b"no\x1b]0;owned\x07\x1b[2J\r\xc2\x9b\xe2\x80\xae").unwrap_err();
        assert!(!e.chars().any(|c| c.is_control() || c == '\u{202e}'), "{e:?}");
        assert!(e.contains("\\u{1b}]0;owned\\u{7}"), "{e}");
        let long = decide(&[b'x'; 5000]).unwrap_err();
        assert!(long.ends_with("\" (cut short)") && long.len() < 300, "{long}");
    }
}
