//! Session ids and container names.

use std::io::Read;

/// A new random session id: 16 hex digits.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The container base name for a project directory, as the Go leash makes
/// it: lowercase; `[a-z0-9]` kept; every run of other characters becomes
/// one `-`; trimmed of `-`; at most 63 characters; `agent` when empty.
pub fn sanitize_project(dir: &str) -> String {
    let base = dir.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let mut out = String::new();
    let mut dash = false;
    for c in base.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    if trimmed.is_empty() { "agent".to_owned() } else { trimmed }
}

/// The first of `base`, `base1`, `base2`, … that `taken` does not contain.
pub fn unique_name(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_owned();
    }
    (1..).map(|n| format!("{base}{n}")).find(|c| !taken(c)).expect("an unused name exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_like_the_go_leash() {
        assert_eq!(sanitize_project("/home/a/My Project"), "my-project");
        assert_eq!(sanitize_project("/x/__foo..bar__/"), "foo-bar");
        assert_eq!(sanitize_project("/"), "agent");
        assert_eq!(sanitize_project("/x/---"), "agent");
        assert_eq!(sanitize_project("/x/Ünïcode"), "n-code");
        assert_eq!(sanitize_project(&format!("/x/{}", "a".repeat(70))).len(), 63);
        assert_eq!(sanitize_project(&format!("/x/{}-b", "a".repeat(62))), "a".repeat(62));
    }

    #[test]
    fn suffixes_on_collision() {
        assert_eq!(unique_name("p", |n| n == "p" || n == "p1"), "p2");
        assert_eq!(unique_name("p", |_| false), "p");
    }

    #[test]
    fn ids_are_hex() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_id().unwrap());
    }
}
