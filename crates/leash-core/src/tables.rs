//! Compiled decision tables: what the kernel (or the user-space decider)
//! looks up instead of running Cedar. The policy service builds them so that
//! a lookup equals the authorizer's decision; a lookup that cannot be final
//! (a path matching a pattern the tables do not carve) says so, and the
//! decider asks the policy service instead.

use std::collections::BTreeMap;

/// An action the file tables decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileAction {
    /// Any open (`FileOpen`).
    Open,
    /// An open for reading (`FileOpen` and `FileOpenReadOnly`).
    Read,
    /// An open for writing (`FileOpen` and `FileOpenReadWrite`).
    Write,
    /// An exec (`ProcessExec`).
    Exec,
}

impl FileAction {
    /// Every file action.
    pub const ALL: [FileAction; 4] = [FileAction::Open, FileAction::Read, FileAction::Write, FileAction::Exec];
}

/// A decision with the reason set that explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Allowed.
    pub allow: bool,
    /// Index into [`Tables::reasons`].
    pub reason: u32,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The tables decide.
    Final(Verdict),
    /// The path matches a pattern condition: ask the policy service.
    Evaluate,
}

/// One action's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathTable {
    /// Exact files.
    pub exact: BTreeMap<String, Verdict>,
    /// Directory prefixes, each ending in `/`; the longest match decides.
    pub prefixes: BTreeMap<String, Verdict>,
    /// When nothing else matches.
    pub default: Option<Verdict>,
    /// `like` patterns (`*` wildcards) on the whole path: a match needs evaluation.
    pub path_patterns: Vec<String>,
    /// Exact last-segment names compared by a condition: a match needs evaluation.
    pub names: Vec<String>,
    /// A condition the tables cannot carve at all: every lookup needs evaluation.
    pub evaluate_all: bool,
}

/// The tables of one policy generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// Increases with every policy change.
    pub generation: u64,
    /// Per action.
    pub files: BTreeMap<FileAction, PathTable>,
    /// `NetworkConnect` by address.
    pub net: NetTable,
    /// `NetworkConnect` by host name (for the proxy; the kernel sees addresses).
    pub hosts: HostTable,
    /// Reason sets: the ids of the policies that decided.
    pub reasons: Vec<Vec<String>>,
}

impl Tables {
    /// Looks a path up.
    pub fn lookup(&self, action: FileAction, path: &str) -> Lookup {
        let Some(t) = self.files.get(&action) else { return Lookup::Evaluate };
        // A trailing slash names the same file: `/tmp/` is in `/`, not in itself.
        let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        if t.evaluate_all
            || t.path_patterns.iter().any(|p| glob_match(p, path))
            || t.names.iter().any(|n| trimmed.rsplit('/').next() == Some(n.as_str()))
        {
            return Lookup::Evaluate;
        }
        if let Some(v) = t.exact.get(path) {
            return Lookup::Final(*v);
        }
        // The longest prefix: walk the path's own ancestors, nearest first.
        let mut cur = trimmed;
        while let Some(i) = cur.rfind('/') {
            let prefix = &cur[..=i];
            if let Some(v) = t.prefixes.get(prefix) {
                return Lookup::Final(*v);
            }
            cur = &cur[..i];
        }
        t.default.map(Lookup::Final).unwrap_or(Lookup::Evaluate)
    }

    /// The policy ids behind a verdict.
    pub fn reasons(&self, v: Verdict) -> &[String] {
        self.reasons.get(v.reason as usize).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Cedar's `like`: `*` matches any run of characters (`\*` a literal star).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts: Vec<String> = vec![String::new()];
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'*') => {
                chars.next();
                parts.last_mut().expect("one part").push('*');
            }
            '*' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    if parts.len() == 1 {
        return text == parts[0];
    }
    let (first, last) = (&parts[0], &parts[parts.len() - 1]);
    if !text.starts_with(first.as_str()) || text.len() < first.len() + last.len() || !text.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*/.git/hooks/*", "/w/p/.git/hooks/pre-commit"));
        assert!(!glob_match("*/.git/hooks/*", "/w/p/.git/config"));
        assert!(glob_match("*/.git/config", "/w/.git/config"));
        assert!(!glob_match("*/.git/config", "/w/.git/config.bak"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn longest_prefix_then_default() {
        let v = |allow, reason| Verdict { allow, reason };
        let mut t = PathTable { default: Some(v(true, 0)), ..Default::default() };
        t.prefixes.insert("/tmp/".into(), v(false, 1));
        t.prefixes.insert("/tmp/ok/".into(), v(true, 2));
        t.exact.insert("/tmp/ok/no".into(), v(false, 3));
        t.names.push(".envrc".into());
        let tables = Tables { files: [(FileAction::Read, t)].into_iter().collect(), ..Default::default() };
        assert_eq!(tables.lookup(FileAction::Read, "/tmp/x"), Lookup::Final(v(false, 1)));
        assert_eq!(tables.lookup(FileAction::Read, "/tmp/ok/x"), Lookup::Final(v(true, 2)));
        assert_eq!(tables.lookup(FileAction::Read, "/tmp/ok/no"), Lookup::Final(v(false, 3)));
        assert_eq!(tables.lookup(FileAction::Read, "/tmpfoo"), Lookup::Final(v(true, 0)));
        assert_eq!(tables.lookup(FileAction::Read, "/p/.envrc"), Lookup::Evaluate);
        assert_eq!(tables.lookup(FileAction::Write, "/x"), Lookup::Evaluate);
    }
}

/// The network table of `NetworkConnect` for the kernel: destinations by
/// IP address (and port), never by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetTable {
    /// `(address, port)` named exactly by the policy.
    pub exact_port: BTreeMap<(std::net::IpAddr, u16), Verdict>,
    /// Addresses named exactly, any port.
    pub exact: BTreeMap<std::net::IpAddr, Verdict>,
    /// CIDR ranges (network address, prefix length); the smallest containing one decides.
    pub ranges: Vec<(std::net::IpAddr, u8, Verdict)>,
    /// When nothing else matches: IPv4, IPv6.
    pub default_v4: Option<Verdict>,
    /// See `default_v4`.
    pub default_v6: Option<Verdict>,
    /// A condition the table cannot carve: every lookup needs evaluation.
    pub evaluate_all: bool,
}

/// Whether `ip` is in `addr/prefix`.
pub fn in_range(addr: std::net::IpAddr, prefix: u8, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match (addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl NetTable {
    /// Looks a destination up (an IPv4-mapped address must be given as IPv4).
    pub fn lookup(&self, ip: std::net::IpAddr, port: u16) -> Lookup {
        if self.evaluate_all {
            return Lookup::Evaluate;
        }
        if let Some(v) = self.exact_port.get(&(ip, port)).or_else(|| self.exact.get(&ip)) {
            return Lookup::Final(*v);
        }
        let smallest = self.ranges.iter().filter(|(a, p, _)| in_range(*a, *p, ip)).max_by_key(|(_, p, _)| *p);
        if let Some((_, _, v)) = smallest {
            return Lookup::Final(*v);
        }
        let default = if ip.is_ipv4() { self.default_v4 } else { self.default_v6 };
        default.map(Lookup::Final).unwrap_or(Lookup::Evaluate)
    }
}

/// The `NetworkConnect` table by host name: what the proxy decides on the
/// name a client asked for (SNI, `Host:`), where the kernel only sees an
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTable {
    /// `(name, port)` named exactly by the policy; port 0 is a request
    /// without a port (which `resource == Host::"name"` matches, and
    /// `name:443` does not).
    pub exact_port: BTreeMap<(String, u16), Verdict>,
    /// Names named exactly, any other port.
    pub exact: BTreeMap<String, Verdict>,
    /// Dot-boundary wildcards by suffix (`*.example.com` under `example.com`):
    /// the longest suffix strictly above the name decides. The apex is not
    /// in its own wildcard.
    pub wildcards: BTreeMap<String, Verdict>,
    /// When nothing else matches.
    pub default: Option<Verdict>,
    /// A condition the table cannot carve: every lookup needs evaluation.
    pub evaluate_all: bool,
}

impl HostTable {
    /// Looks a host name up (lower case, no trailing dot).
    pub fn lookup(&self, name: &str, port: Option<u16>) -> Lookup {
        if self.evaluate_all {
            return Lookup::Evaluate;
        }
        let exact = self.exact_port.get(&(name.to_owned(), port.unwrap_or(0))).or_else(|| self.exact.get(name));
        if let Some(v) = exact {
            return Lookup::Final(*v);
        }
        let mut rest = name;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(v) = self.wildcards.get(rest) {
                return Lookup::Final(*v);
            }
        }
        self.default.map(Lookup::Final).unwrap_or(Lookup::Evaluate)
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let v = |allow, reason| Verdict { allow, reason };
        let mut t = HostTable { default: Some(v(false, 0)), ..Default::default() };
        t.wildcards.insert("example.com".into(), v(true, 1));
        t.wildcards.insert("com".into(), v(false, 2));
        t.exact.insert("bad.example.com".into(), v(false, 3));
        t.exact_port.insert(("api.example.com".into(), 8443), v(false, 4));
        assert_eq!(t.lookup("api.example.com", Some(443)), Lookup::Final(v(true, 1)));
        assert_eq!(t.lookup("api.example.com", Some(8443)), Lookup::Final(v(false, 4)));
        assert_eq!(t.lookup("bad.example.com", None), Lookup::Final(v(false, 3)));
        assert_eq!(t.lookup("example.com", Some(443)), Lookup::Final(v(false, 2)), "the apex is not in *.example.com");
        assert_eq!(t.lookup("badexample.com", Some(443)), Lookup::Final(v(false, 2)));
        assert_eq!(t.lookup("localhost", None), Lookup::Final(v(false, 0)));
    }
}
