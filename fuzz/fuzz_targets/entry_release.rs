//! leash-entry's release channel: any answer leashd's socket could carry
//! releases the session only when it is exactly `go` (around ASCII
//! whitespace: leashd writes `go\n`); every other answer is refused with a
//! message in which no control or bidirectional-override character reaches
//! the terminal unescaped, and that stays short however long the answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "leash-entry's reader uses the rest")]
#[path = "../../crates/leash-entry/src/release.rs"]
mod release;

/// What may surround `go`.
const AROUND: &[u8] = b" \t\n\r\x0c";

/// Characters that would act on a terminal or reorder what it shows.
fn acts(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fuzz_target!(|data: &[u8]| {
    let start = data.iter().position(|b| !AROUND.contains(b)).unwrap_or(data.len());
    let end = data.iter().rposition(|b| !AROUND.contains(b)).map_or(start, |i| i + 1);
    let go = &data[start..end] == b"go";
    match release::decide(data) {
        Ok(()) => assert!(go, "{data:?} released the session"),
        Err(message) => {
            assert!(!go, "{data:?} did not release the session: {message}");
            assert!(!message.chars().any(acts), "unescaped: {message:?}");
            assert!(message.len() < 2400, "{} bytes of message", message.len());
        }
    }
});
