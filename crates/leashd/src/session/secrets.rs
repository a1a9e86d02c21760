//! A session's credentials: the container holds a decoy of each, the proxy
//! puts the real value back where `SecretUse` allows it.
//!
//! A decoy has the real value's shape: the same vendor prefix
//! (`sk-ant-api03-`, `ghp_`, ...), the same length, separators where they
//! were, and random characters from the alphabet the rest uses (hex stays
//! hex). It is new for every session, and it must carry enough randomness
//! that nobody guesses one ([`MIN_BITS`]): a shorter secret is refused.

use std::collections::BTreeMap;

/// The randomness a decoy must carry.
pub const MIN_BITS: f64 = 64.0;
/// The longest secret accepted.
pub const MAX_LEN: usize = 16 << 10;

/// Vendor prefixes kept as they are (longest first where one extends another).
const PREFIXES: [&str; 22] = [
    "sk-ant-api03-",
    "sk-ant-oat01-",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-or-v1-",
    "sk-",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xapp-",
    "hf_",
    "npm_",
    "AIza",
    "AKIA",
    "ASIA",
];

/// One credential of a session.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// Its name: the environment variable the container sees.
    pub name: String,
    /// The real value.
    pub value: String,
    /// What the container gets instead.
    pub decoy: String,
    /// Where it came from, for messages (`--secret`, `[secrets] in FILE`, ...).
    pub origin: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value never reaches a log.
        f.debug_struct("Secret").field("name", &self.name).field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// The part of `value` kept as it is.
fn prefix(value: &str) -> &str {
    if let Some(p) = PREFIXES.iter().find(|p| value.starts_with(**p)) {
        return &value[..p.len()];
    }
    // Otherwise a short leading word and its separator (`tok_`, `key-v2-`).
    let head: String = value.chars().take(12).collect();
    match head.rfind(['-', '_']) {
        Some(i) if i + 1 < value.len() => &value[..i + 1],
        _ => "",
    }
}

/// The alphabet a decoy's random characters come from: the classes the
/// value's own characters use.
fn alphabet(rest: &str) -> Vec<u8> {
    let alnum: Vec<u8> = rest.bytes().filter(u8::is_ascii_alphanumeric).collect();
    let hex_lower = alnum.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let hex_upper = alnum.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    if !alnum.is_empty() && hex_lower {
        return b"0123456789abcdef".to_vec();
    }
    if !alnum.is_empty() && hex_upper {
        return b"0123456789ABCDEF".to_vec();
    }
    let mut out = Vec::new();
    if alnum.iter().any(u8::is_ascii_digit) {
        out.extend(b'0'..=b'9');
    }
    if alnum.iter().any(u8::is_ascii_lowercase) {
        out.extend(b'a'..=b'z');
    }
    if alnum.iter().any(u8::is_ascii_uppercase) {
        out.extend(b'A'..=b'Z');
    }
    out
}

/// A decoy for `value`, drawing randomness from `random`.
pub fn decoy_with(name: &str, value: &str, random: &mut dyn FnMut(&mut [u8])) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("secret {name}: its value is empty"));
    }
    if value.len() > MAX_LEN {
        return Err(format!("secret {name}: its value is over {MAX_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("secret {name}: its value has control characters (a trailing newline from a file?)"));
    }
    let keep = prefix(value);
    let rest = &value[keep.len()..];
    let alphabet = alphabet(rest);
    let positions = rest.bytes().filter(u8::is_ascii_alphanumeric).count();
    let bits = positions as f64 * (alphabet.len().max(1) as f64).log2();
    if bits < MIN_BITS {
        return Err(format!(
            "secret {name}: too short for a decoy ({positions} random characters after {keep:?} give {bits:.0} bits; \
             a decoy needs {MIN_BITS:.0})"
        ));
    }
    let mut out = String::with_capacity(value.len());
    out.push_str(keep);
    let mut byte = [0u8; 1];
    for c in rest.chars() {
        if !c.is_ascii_alphanumeric() {
            out.push(c);
            continue;
        }
        // Rejection sampling: every character of the alphabet equally likely.
        let limit = 256 - 256 % alphabet.len();
        loop {
            random(&mut byte);
            if usize::from(byte[0]) < limit {
                out.push(char::from(alphabet[usize::from(byte[0]) % alphabet.len()]));
                break;
            }
        }
    }
    Ok(out)
}

/// Decoys for every `(name, value, origin)`: each new, none equal to or
/// inside another's value or decoy (a collision, which a few draws cannot
/// avoid only for pathological values, is an error naming the secret).
pub fn with_decoys(
    wanted: BTreeMap<String, (String, String)>,
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Vec<Secret>, String> {
    let mut out: Vec<Secret> = Vec::new();
    for (name, (value, origin)) in &wanted {
        let clashes = |d: &str, out: &[Secret]| {
            wanted.values().any(|(v, _)| v.contains(d) || d.contains(v.as_str()))
                || out.iter().any(|s| s.decoy.contains(d) || d.contains(s.decoy.as_str()))
        };
        let mut drawn = None;
        for _ in 0..8 {
            let d = decoy_with(name, value, random)?;
            if !clashes(&d, &out) {
                drawn = Some(d);
                break;
            }
        }
        let decoy = drawn.ok_or_else(|| {
            format!("secret {name}: every decoy drawn collides with a secret's value or another decoy")
        })?;
        out.push(Secret { name: name.clone(), value: value.clone(), decoy, origin: origin.clone() });
    }
    Ok(out)
}

/// Decoys from the system's randomness.
pub fn decoys(wanted: BTreeMap<String, (String, String)>) -> Result<Vec<Secret>, String> {
    with_decoys(wanted, &mut crate::api::auth::random)
}

/// Whether `name` can name a secret (an environment variable's name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |b: &mut [u8]| {
            for x in b {
                n = n.wrapping_mul(151).wrapping_add(17);
                *x = n;
            }
        }
    }

    #[test]
    fn a_decoy_keeps_the_shape_and_nothing_else() {
        let real = "sk-ant-api03-Xy7_k2Lm9Qp4Rs8Tu1Vw3Yz5Ab6Cd0Ef-Gh2Ij4Kl6Mn8Op0Qr2St4Uv6Wx8Yz0Ab2Cd4Ef6Gh8Ij0Kl2Mn4Op6Qr8-AA";
        let d = decoys(BTreeMap::from([("ANTHROPIC_API_KEY".into(), (real.into(), "test".into()))])).unwrap();
        let d = &d[0].decoy;
        assert_eq!(d.len(), real.len());
        assert!(d.starts_with("sk-ant-api03-"));
        assert_ne!(d, real);
        // Separators where they were.
        let seps = |s: &str| s.char_indices().filter(|(_, c)| !c.is_ascii_alphanumeric()).collect::<Vec<_>>();
        assert_eq!(seps(d), seps(real));
        // Two sessions, two decoys.
        let again = decoys(BTreeMap::from([("K".into(), (real.into(), "test".into()))])).unwrap();
        assert_ne!(&again[0].decoy, d);
    }

    #[test]
    fn hex_stays_hex_and_prefixes_stay() {
        let mut r = counter();
        let hex = "0123456789abcdef0123456789abcdef";
        let d = decoy_with("T", hex, &mut r).unwrap();
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{d}");
        let gh = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
        let d = decoy_with("GITHUB_TOKEN", gh, &mut r).unwrap();
        assert!(d.starts_with("ghp_") && d.len() == gh.len(), "{d}");
        let google = "AIzaSyA1234567890abcdefghijklmnopqrstuv";
        assert!(decoy_with("GEMINI_API_KEY", google, &mut r).unwrap().starts_with("AIza"));
        // No known prefix: a short leading word and its separator.
        assert!(decoy_with("X", "tok_9f8e7d6c5b4a39281706f5e4d3c2b1a0", &mut r).unwrap().starts_with("tok_"));
    }

    #[test]
    fn short_or_odd_secrets_are_refused_by_name() {
        let mut r = counter();
        let e = decoy_with("PIN", "123456", &mut r).unwrap_err();
        assert!(e.contains("PIN") && e.contains("too short"), "{e}");
        let e = decoy_with("WORD", "sk-abcdefghij", &mut r).unwrap_err();
        assert!(e.contains("WORD") && e.contains("too short"), "{e}");
        assert!(decoy_with("E", "", &mut r).unwrap_err().contains("empty"));
        assert!(decoy_with("N", "abcdefghijklmnopqrstuvwxyz\n", &mut r).unwrap_err().contains("control"));
    }

    #[test]
    fn a_decoy_that_keeps_colliding_is_an_error_naming_the_secret() {
        // A randomness source that always draws the same bytes: the second
        // secret's decoy equals the first's.
        let mut same = |b: &mut [u8]| b.iter_mut().for_each(|x| *x = 7);
        let value = "abcdefghijklmnopqrstuvwxyz0123456789";
        let wanted = BTreeMap::from([
            ("A".to_owned(), (value.to_owned(), "t".to_owned())),
            ("B".to_owned(), (format!("{value}x"), "t".to_owned())),
        ]);
        let e = with_decoys(wanted, &mut same).unwrap_err();
        assert!(e.starts_with("secret B:") && e.contains("collides"), "{e}");
    }

    #[test]
    fn debug_never_prints_the_value() {
        let s = Secret { name: "K".into(), value: "real-value".into(), decoy: "decoy".into(), origin: "o".into() };
        assert!(!format!("{s:?}").contains("real-value"));
    }
}
