//! Compiled decision tables: what the kernel (or the user-space decider)
//! looks up instead of running Cedar. The policy service builds them so that
//! a lookup equals the authorizer's decision; a lookup that cannot be final
//! (a path matching a pattern the tables do not carve) says so, and the
//! decider asks the policy service instead.

use std::collections::{BTreeMap, BTreeSet};

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
    /// One of the kernel's own network guards ([`NetGuards`]): it decides
    /// even where the table otherwise leaves the decision to user space.
    pub guard: bool,
}

impl Verdict {
    /// A policy's verdict.
    pub fn new(allow: bool, reason: u32) -> Verdict {
        Verdict { allow, reason, guard: false }
    }
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
    /// `HttpRewrite` injections the policy declares and allows.
    pub rewrites: Vec<Rewrite>,
}

/// A header the proxy sets on HTTPS requests to a host (`HttpRewrite`).
#[derive(Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The host, as the policy names it (`api.example.com` or `api.example.com:8443`).
    pub host: String,
    /// The header.
    pub header: String,
    /// Its value, or a reference to a secret on the host (`leash-secret:env:NAME`, `leash-secret:file:/path`).
    pub value: String,
    /// Index into [`Tables::reasons`]: the policies that declare and allow it.
    pub reason: u32,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is a secret: never in a debug print.
        f.debug_struct("Rewrite").field("host", &self.host).field("header", &self.header).finish_non_exhaustive()
    }
}

impl Rewrite {
    /// Whether it applies to a request for `name` on `port`.
    pub fn applies(&self, name: &str, port: u16) -> bool {
        match self.host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h.eq_ignore_ascii_case(name) && p.parse() == Ok(port),
            _ => self.host.eq_ignore_ascii_case(name),
        }
    }
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

    /// The files and directories (other than `/`) the tables deny some
    /// file action on, by name: what must stay denied under any other name
    /// the agent gives them (a hard link, a rename). Patterns are not here:
    /// they name no one file.
    pub fn guarded(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut files, mut dirs) = (BTreeSet::new(), BTreeSet::new());
        for t in self.files.values() {
            files.extend(t.exact.iter().filter(|(_, v)| !v.allow).map(|(p, _)| p.clone()));
            dirs.extend(t.prefixes.iter().filter(|(p, v)| !v.allow && p.as_str() != "/").map(|(p, _)| p.clone()));
        }
        (files, dirs)
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
        let v = Verdict::new;
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
    /// A policy that may match an address reads the request (its method,
    /// path, query or scheme, or the name the proxy saw): the entries
    /// decide what the kernel sees, connections without any of these, and
    /// an HTTP request the proxy decides by address needs evaluation
    /// (but for the guards).
    pub evaluate_requests: bool,
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
        let found = self.entry(ip, port);
        if self.evaluate_all {
            // Only the kernel's guards decide what user space evaluates.
            return match found {
                Some(v) if v.guard => Lookup::Final(v),
                _ => Lookup::Evaluate,
            };
        }
        if let Some(v) = found {
            return Lookup::Final(v);
        }
        let default = if ip.is_ipv4() { self.default_v4 } else { self.default_v6 };
        default.map(Lookup::Final).unwrap_or(Lookup::Evaluate)
    }

    /// Looks up a destination for an HTTP request the proxy decides by
    /// address: as [`NetTable::lookup`], but where a policy on addresses
    /// reads the request, only the guards are final.
    pub fn lookup_request(&self, ip: std::net::IpAddr, port: u16) -> Lookup {
        match self.lookup(ip, port) {
            Lookup::Final(v) if self.evaluate_requests && !v.guard => Lookup::Evaluate,
            found => found,
        }
    }
}

impl NetTable {
    /// The entry that names a destination (exact address and port, exact
    /// address, then the smallest range), without the default.
    pub fn entry(&self, ip: std::net::IpAddr, port: u16) -> Option<Verdict> {
        self.exact_port.get(&(ip, port)).or_else(|| self.exact.get(&ip)).copied().or_else(|| {
            let smallest = self.ranges.iter().filter(|(a, p, _)| in_range(*a, *p, ip)).max_by_key(|(_, p, _)| *p);
            smallest.map(|(_, _, v)| *v)
        })
    }
}

/// Destinations the kernel decides itself, beside the policy: a broad
/// permit (`Host::"*"`, `0.0.0.0/0`) does not open them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetGuards {
    /// Refused unless the policy names the range itself or something
    /// inside it (loopback, link-local, the host's own addresses).
    pub refused: Vec<(std::net::IpAddr, u8)>,
    /// The session's DNS resolvers: port 53 allowed unless the policy names
    /// the resolver's address.
    pub resolvers: Vec<std::net::IpAddr>,
    /// leashd's Control UI (address, port): always refused, whatever the
    /// policy says — an agent must never reach the API that governs it.
    pub control: Vec<(std::net::IpAddr, u16)>,
}

/// The reason a guard gives, as the events show it.
pub const GUARD_LOCAL: &str = "leash:local-address";
/// See [`GUARD_LOCAL`].
pub const GUARD_DNS: &str = "leash:dns-resolver";
/// See [`GUARD_LOCAL`].
pub const GUARD_CONTROL: &str = "leash:control-api";

impl NetGuards {
    /// Loopback and link-local (IPv4 and IPv6), and `host`'s addresses.
    pub fn standard(host: &[std::net::IpAddr], resolvers: &[std::net::IpAddr]) -> NetGuards {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let mut refused = vec![
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
        ];
        for ip in host {
            let ip = normalize_ip(*ip);
            if !refused.iter().any(|(a, p)| in_range(*a, *p, ip)) {
                refused.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            }
        }
        NetGuards { refused, resolvers: resolvers.iter().map(|r| normalize_ip(*r)).collect(), control: Vec::new() }
    }

    /// Adds leashd's Control UI address: a wildcard bind (`0.0.0.0`, `::`)
    /// is every one of `host`'s addresses. A loopback bind needs nothing: a
    /// session's loopback is its own.
    pub fn with_control(mut self, api: std::net::SocketAddr, host: &[std::net::IpAddr]) -> NetGuards {
        let ip = normalize_ip(api.ip());
        if ip.is_loopback() {
            return self;
        }
        if ip.is_unspecified() {
            self.control.extend(host.iter().map(|h| (normalize_ip(*h), api.port())));
        } else {
            self.control.push((ip, api.port()));
        }
        self
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn normalize_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

impl Tables {
    /// Adds the kernel's network guards to the address table: each refused
    /// range is denied unless the policy has an entry for that very range
    /// (entries inside it are more specific and still decide), and each
    /// resolver's port 53 is allowed unless the policy names that address.
    pub fn guard_net(&mut self, g: &NetGuards) {
        let mut reason = |name: &str| {
            let set = vec![name.to_owned()];
            match self.reasons.iter().position(|r| *r == set) {
                Some(i) => i as u32,
                None => {
                    self.reasons.push(set);
                    (self.reasons.len() - 1) as u32
                }
            }
        };
        let local = Verdict { allow: false, reason: reason(GUARD_LOCAL), guard: true };
        let dns = Verdict { allow: true, reason: reason(GUARD_DNS), guard: true };
        let control = Verdict { allow: false, reason: reason(GUARD_CONTROL), guard: true };
        let t = &mut self.net;
        for (addr, prefix) in &g.refused {
            let full = if addr.is_ipv4() { 32 } else { 128 };
            let named = t.ranges.iter().any(|(a, p, _)| a == addr && p == prefix)
                || (*prefix == full && t.exact.contains_key(addr));
            if named {
                continue;
            }
            if *prefix == full {
                t.exact.insert(*addr, local);
            } else {
                t.ranges.push((*addr, *prefix, local));
            }
        }
        for c in &g.control {
            t.exact_port.insert(*c, control);
        }
        for r in &g.resolvers {
            let named = t.exact.get(r).is_some_and(|v| !v.guard) || t.exact_port.contains_key(&(*r, 53));
            if !named {
                t.exact_port.insert((*r, 53), dns);
            }
        }
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
    /// Names a policy that reads the request (its method, path, query,
    /// scheme, or the name seen) limits itself to: `(name, None)` every
    /// port, `(name, Some(port))` that port (0: a request without a port,
    /// as in `exact_port`). Their lookups need evaluation;
    /// their entries still say what a request without any of these gets.
    pub evaluate: BTreeSet<(String, Option<u16>)>,
    /// The same for dot-boundary wildcards and zones, by suffix: every name
    /// strictly below one needs evaluation (the apex does not).
    pub evaluate_below: BTreeSet<String>,
}

impl HostTable {
    /// Looks a host name up (lower case, no trailing dot).
    pub fn lookup(&self, name: &str, port: Option<u16>) -> Lookup {
        if self.evaluate_all || self.evaluates(name, port) {
            return Lookup::Evaluate;
        }
        match self.entry(name, port) {
            Some(v) => Lookup::Final(v),
            None => self.default.map(Lookup::Final).unwrap_or(Lookup::Evaluate),
        }
    }

    /// The entry that names `name` (with `port`, then any port, then the
    /// longest wildcard above it), without the default.
    pub fn entry(&self, name: &str, port: Option<u16>) -> Option<Verdict> {
        let exact = self.exact_port.get(&(name.to_owned(), port.unwrap_or(0))).or_else(|| self.exact.get(name));
        if let Some(v) = exact {
            return Some(*v);
        }
        let mut rest = name;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(v) = self.wildcards.get(rest) {
                return Some(*v);
            }
        }
        None
    }

    /// Whether a policy that reads the request may match `name` on `port`
    /// (not counting `evaluate_all`).
    pub fn evaluates(&self, name: &str, port: Option<u16>) -> bool {
        if self.evaluate.is_empty() && self.evaluate_below.is_empty() {
            return false;
        }
        let named = |p: Option<u16>| self.evaluate.contains(&(name.to_owned(), p));
        if named(None) || named(Some(port.unwrap_or(0))) {
            return true;
        }
        let mut rest = name;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if self.evaluate_below.contains(rest) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let v = Verdict::new;
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

    #[test]
    fn names_a_request_rule_covers_evaluate_and_keep_their_entries() {
        let v = Verdict::new;
        let mut t = HostTable { default: Some(v(true, 0)), ..Default::default() };
        t.exact.insert("api.example.com".into(), v(true, 1));
        t.evaluate.insert(("api.example.com".into(), None));
        t.evaluate.insert(("git.example.com".into(), Some(443)));
        t.evaluate.insert(("bare.example.com".into(), Some(0)));
        t.evaluate_below.insert("corp.example".into());
        assert_eq!(t.lookup("bare.example.com", None), Lookup::Evaluate);
        assert_eq!(t.lookup("bare.example.com", Some(443)), Lookup::Final(v(true, 0)));
        assert_eq!(t.lookup("api.example.com", Some(443)), Lookup::Evaluate);
        assert_eq!(t.lookup("api.example.com", None), Lookup::Evaluate);
        assert_eq!(t.entry("api.example.com", Some(22)), Some(v(true, 1)), "what a request without one gets");
        assert_eq!(t.lookup("git.example.com", Some(443)), Lookup::Evaluate);
        assert_eq!(t.lookup("git.example.com", Some(22)), Lookup::Final(v(true, 0)));
        assert_eq!(t.lookup("git.example.com", None), Lookup::Final(v(true, 0)));
        assert_eq!(t.lookup("a.b.corp.example", Some(443)), Lookup::Evaluate);
        assert_eq!(t.lookup("corp.example", Some(443)), Lookup::Final(v(true, 0)), "the apex is not below");
        assert_eq!(t.lookup("badcorp.example", Some(443)), Lookup::Final(v(true, 0)));
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn allowed(t: &Tables, addr: &str, port: u16) -> (bool, Vec<String>) {
        match t.net.lookup(ip(addr), port) {
            Lookup::Final(v) => (v.allow, t.reasons[v.reason as usize].clone()),
            Lookup::Evaluate => panic!("{addr}:{port} left to user space"),
        }
    }

    #[test]
    fn the_control_ui_is_refused_even_where_the_policy_names_it() {
        let mut t = Tables { reasons: vec![vec!["named".into()]], ..Default::default() };
        t.net.exact_port.insert((ip("172.17.0.1"), 18080), Verdict::new(true, 0));
        t.net.exact.insert(ip("172.17.0.1"), Verdict::new(true, 0));
        let host = [ip("172.17.0.1"), ip("10.0.0.5")];
        let g = NetGuards::standard(&host, &[]).with_control("0.0.0.0:18080".parse().unwrap(), &host);
        t.guard_net(&g);
        assert_eq!(allowed(&t, "172.17.0.1", 18080), (false, vec![GUARD_CONTROL.to_owned()]));
        assert_eq!(allowed(&t, "10.0.0.5", 18080), (false, vec![GUARD_CONTROL.to_owned()]));
        assert_eq!(allowed(&t, "172.17.0.1", 22), (true, vec!["named".to_owned()]), "other ports as the policy says");
        // A loopback bind is out of every session's reach already.
        let g = NetGuards::standard(&host, &[]).with_control("127.0.0.1:18080".parse().unwrap(), &host);
        assert!(g.control.is_empty());
    }

    #[test]
    fn a_broad_permit_does_not_open_local_addresses() {
        let mut t = Tables { reasons: vec![vec!["permit-all".into()]], ..Default::default() };
        t.net.default_v4 = Some(Verdict::new(true, 0));
        t.net.default_v6 = Some(Verdict::new(true, 0));
        t.net.ranges.push((ip("0.0.0.0"), 0, Verdict::new(true, 0)));
        t.guard_net(&NetGuards::standard(&[ip("172.17.0.1"), ip("::ffff:10.0.0.5"), ip("127.0.0.1")], &[]));
        for (a, p) in [("127.0.0.1", 80), ("127.1.2.3", 3000), ("169.254.169.254", 80), ("::1", 22)] {
            assert_eq!(allowed(&t, a, p), (false, vec![GUARD_LOCAL.to_owned()]), "{a}");
        }
        assert!(!allowed(&t, "fe80::1", 22).0);
        assert!(!allowed(&t, "172.17.0.1", 18080).0, "the host's own address");
        assert!(!allowed(&t, "10.0.0.5", 22).0, "an IPv4-mapped host address, as IPv4");
        assert_eq!(allowed(&t, "172.17.0.2", 80), (true, vec!["permit-all".to_owned()]));
        assert!(allowed(&t, "1.1.1.1", 443).0);
        // Applying twice adds no second reason.
        let reasons = t.reasons.len();
        t.guard_net(&NetGuards::standard(&[], &[]));
        assert_eq!(t.reasons.len(), reasons);
    }

    #[test]
    fn a_policy_that_names_a_local_address_decides_it() {
        let mut t = Tables { reasons: vec![vec!["p".into()], vec!["f".into()]], ..Default::default() };
        t.net.default_v4 = Some(Verdict::new(true, 0));
        t.net.ranges.push((ip("127.0.0.0"), 8, Verdict::new(true, 0)));
        t.net.exact.insert(ip("169.254.169.254"), Verdict::new(true, 0));
        t.net.exact_port.insert((ip("169.254.1.1"), 80), Verdict::new(true, 0));
        t.net.exact.insert(ip("172.17.0.1"), Verdict::new(false, 1));
        t.guard_net(&NetGuards::standard(&[ip("172.17.0.1")], &[]));
        assert!(allowed(&t, "127.0.0.1", 3000).0, "the range itself is named");
        assert!(allowed(&t, "169.254.169.254", 80).0, "an address inside the guarded range");
        assert!(allowed(&t, "169.254.1.1", 80).0);
        assert!(!allowed(&t, "169.254.1.1", 81).0);
        assert_eq!(allowed(&t, "172.17.0.1", 1), (false, vec!["f".to_owned()]), "the policy's own forbid");
    }

    #[test]
    fn resolvers_answer_on_port_53_unless_the_policy_names_them() {
        let mut t = Tables { reasons: vec![vec!["deny-all".into()], vec!["no-dns".into()]], ..Default::default() };
        t.net.default_v4 = Some(Verdict::new(false, 0));
        t.net.exact.insert(ip("8.8.4.4"), Verdict::new(false, 1));
        t.guard_net(&NetGuards::standard(&[], &[ip("127.0.0.11"), ip("8.8.8.8"), ip("8.8.4.4")]));
        assert_eq!(allowed(&t, "127.0.0.11", 53), (true, vec![GUARD_DNS.to_owned()]), "Docker's embedded DNS");
        assert!(!allowed(&t, "127.0.0.11", 80).0);
        assert!(allowed(&t, "8.8.8.8", 53).0);
        assert!(!allowed(&t, "8.8.8.8", 443).0);
        assert_eq!(allowed(&t, "8.8.4.4", 53), (false, vec!["no-dns".to_owned()]));
    }

    #[test]
    fn requests_by_address_evaluate_where_a_policy_reads_them() {
        let mut t = Tables { reasons: vec![vec!["lan".into()]], ..Default::default() };
        t.net.ranges.push((ip("10.0.0.0"), 8, Verdict::new(true, 0)));
        t.net.default_v4 = Some(Verdict::new(false, 0));
        t.net.evaluate_requests = true;
        t.guard_net(&NetGuards::standard(&[], &[]));
        // The kernel's connections carry no request: the entries decide.
        assert!(matches!(t.net.lookup(ip("10.1.2.3"), 443), Lookup::Final(v) if v.allow));
        assert!(matches!(t.net.lookup(ip("11.0.0.1"), 443), Lookup::Final(v) if !v.allow));
        assert_eq!(t.net.lookup_request(ip("10.1.2.3"), 443), Lookup::Evaluate);
        assert_eq!(t.net.lookup_request(ip("11.0.0.1"), 443), Lookup::Evaluate);
        assert!(matches!(t.net.lookup_request(ip("127.0.0.1"), 80), Lookup::Final(v) if v.guard && !v.allow));
        t.net.evaluate_requests = false;
        assert_eq!(t.net.lookup_request(ip("10.1.2.3"), 443), t.net.lookup(ip("10.1.2.3"), 443));
    }

    #[test]
    fn guards_decide_even_when_the_table_evaluates() {
        let mut t = Tables::default();
        t.net.evaluate_all = true;
        t.guard_net(&NetGuards::standard(&[], &[ip("10.0.0.2")]));
        assert!(matches!(t.net.lookup(ip("127.0.0.1"), 80), Lookup::Final(v) if !v.allow));
        assert!(matches!(t.net.lookup(ip("10.0.0.2"), 53), Lookup::Final(v) if v.allow));
        assert_eq!(t.net.lookup(ip("1.1.1.1"), 443), Lookup::Evaluate);
    }
}
