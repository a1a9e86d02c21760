//! Resources as requests name them, and the entity hierarchy that makes
//! Cedar's `in` do the matching.
//!
//! - `File::"/a/b/c"` is in `Dir::"/a/b/"`, `Dir::"/a/"`, `Dir::"/"`; a
//!   directory is its own `Dir` (always with a trailing slash).
//! - `Host::"api.example.com:443"` is in `Host::"api.example.com"`, which is
//!   in `Host::"*.example.com"`, `Host::"*.com"` and `Host::"*"` (dot-boundary
//!   wildcards: the apex is not in its own wildcard) and in
//!   `Net::DnsZone::"example.com"` and `Net::DnsZone::"com"`.
//! - IP literals: `Host::"10.1.2.3:443"` in `Host::"10.1.2.3"` in every
//!   `Net::IpRange` the policy names that contains it, and in `Host::"*"`;
//!   IPv6 is written `Host::"[2001:db8::1]:443"`; IPv4-mapped IPv6 is IPv4.
//! - `MCP::Tool::"search"` is in the `MCP::Server` that offers it.

use std::collections::HashSet;
use std::net::IpAddr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

/// A resource of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A file, by absolute path.
    File(String),
    /// A directory, by absolute path with a trailing slash.
    Dir(String),
    /// A network destination.
    Host(Host),
    /// An MCP tool on a server.
    McpTool {
        /// The server's host.
        server: String,
        /// The tool's name (lower case).
        tool: String,
    },
    /// A secret, by name (as the session's environment names it).
    Secret(String),
}

/// A network destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name (lower case, no trailing dot), with an optional port.
    Name(String, Option<u16>),
    /// An IP address, with an optional port.
    Ip(IpAddr, Option<u16>),
}

/// A CIDR range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpRange {
    /// Parses `10.0.0.0/8` or `2001:db8::/32`.
    pub fn parse(s: &str) -> Option<IpRange> {
        let (a, p) = s.split_once('/')?;
        let addr = normalize_ip(a.trim_matches(|c| c == '[' || c == ']').parse().ok()?);
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpRange { addr, prefix })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize_ip(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

pub use leash_core::tables::normalize_ip;

impl Host {
    /// Parses `name`, `name:port`, `1.2.3.4[:port]`, `[v6][:port]` or a bare IPv6.
    pub fn parse(s: &str) -> Result<Host, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty host".into());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']'"))?;
            let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?}: not an IP address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(parse_port(s, p)?),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected {after:?} after ']'")),
            };
            return Ok(Host::Ip(normalize_ip(ip), port));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(normalize_ip(ip), None));
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(parse_port(s, p)?)),
            None => (s, None),
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Host::Ip(normalize_ip(ip), port));
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name.contains('/') {
            return Err(format!("{s:?}: not a host name"));
        }
        Ok(Host::Name(name, port))
    }

    /// The entity id: `name[:port]`, `1.2.3.4[:port]`, `[v6][:port]`.
    pub fn id(&self) -> String {
        let port = |p: &Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        match self {
            Host::Name(n, p) => format!("{n}{}", port(p)),
            Host::Ip(IpAddr::V4(a), p) => format!("{a}{}", port(p)),
            Host::Ip(IpAddr::V6(a), p) => format!("[{a}]{}", port(p)),
        }
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16, String> {
    p.parse::<u16>().map_err(|_| format!("{whole:?}: invalid port {p:?}"))
}

/// Reads a resource as people write it for `action`: a path for file
/// actions (a trailing `/` names the directory), `host[:port]` for network
/// actions, `tool@server` for MCP, or Cedar's `Type::"id"`.
pub fn parse_for(action: crate::action::Action, s: &str) -> Result<Resource, String> {
    use crate::action::Action;
    let s = s.trim();
    if let Some((ty, rest)) = s.split_once("::\"") {
        let id = rest.strip_suffix('"').ok_or_else(|| format!("{s:?}: missing closing quote"))?;
        return match ty {
            "File" => Ok(Resource::File(id.to_owned())),
            "Dir" => Ok(Resource::Dir(id.to_owned())),
            "Host" => Host::parse(id).map(Resource::Host),
            "MCP::Tool" => Ok(Resource::McpTool { server: String::new(), tool: id.to_ascii_lowercase() }),
            "Secret" => secret_name(id).map(Resource::Secret),
            other => Err(format!("{s:?}: requests name File, Dir, Host, MCP::Tool or Secret resources, not {other}")),
        };
    }
    match action {
        Action::FileOpen | Action::FileOpenReadOnly | Action::FileOpenReadWrite | Action::ProcessExec => {
            if !s.starts_with('/') {
                return Err(format!("{s:?}: a file is an absolute path"));
            }
            Ok(if s.ends_with('/') { Resource::Dir(s.to_owned()) } else { Resource::File(s.to_owned()) })
        }
        Action::NetworkConnect | Action::HttpRewrite => Host::parse(s).map(Resource::Host),
        Action::McpCall => {
            let (tool, server) = s.split_once('@').ok_or_else(|| format!("{s:?}: write an MCP tool as tool@server"))?;
            Ok(Resource::McpTool { server: server.to_ascii_lowercase(), tool: tool.to_ascii_lowercase() })
        }
        Action::SecretUse => secret_name(s).map(Resource::Secret),
    }
}

/// A secret's name: an environment variable's (letters, digits, `_`, not
/// starting with a digit).
pub fn secret_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: a secret is named as an environment variable (A-Z, 0-9, _)"))
    }
}

/// The resource as Cedar names it: `File::"/etc/hosts"`.
pub fn display(r: &Resource) -> String {
    match r {
        Resource::File(p) => format!("File::{p:?}"),
        Resource::Dir(p) => format!("Dir::{p:?}"),
        Resource::Host(h) => format!("Host::{:?}", h.id()),
        Resource::McpTool { server, tool } => format!("MCP::Tool::{tool:?} in MCP::Server::{server:?}"),
        Resource::Secret(name) => format!("Secret::{name:?}"),
    }
}

/// Entity type names of the vocabulary.
pub mod types {
    /// `User`.
    pub const USER: &str = "User";
    /// `File`.
    pub const FILE: &str = "File";
    /// `Dir`.
    pub const DIR: &str = "Dir";
    /// `Host`.
    pub const HOST: &str = "Host";
    /// `Net::IpRange`.
    pub const IP_RANGE: &str = "Net::IpRange";
    /// `Net::DnsZone`.
    pub const DNS_ZONE: &str = "Net::DnsZone";
    /// `MCP::Server`.
    pub const MCP_SERVER: &str = "MCP::Server";
    /// `MCP::Tool`.
    pub const MCP_TOOL: &str = "MCP::Tool";
    /// `Secret`.
    pub const SECRET: &str = "Secret";
}

/// An entity uid of the vocabulary.
pub fn uid(ty: &str, id: &str) -> EntityUid {
    let ty: EntityTypeName = ty.parse().expect("the vocabulary's type names parse");
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

/// The directories above a path, nearest first, each with a trailing slash:
/// `/a/b/c` → `/a/b/`, `/a/`, `/`.
pub fn dir_ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let trimmed = path.trim_end_matches('/');
    let mut cur = trimmed;
    while let Some(i) = cur.rfind('/') {
        cur = &cur[..i];
        out.push(format!("{cur}/"));
    }
    if out.last().map(String::as_str) != Some("/") {
        out.push("/".to_owned());
    }
    out.dedup();
    out
}

/// The dot-boundary wildcards above a name, nearest first:
/// `api.example.com` → `*.example.com`, `*.com`, `*`.
pub fn host_wildcards(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = name;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if !rest.is_empty() {
            out.push(format!("*.{rest}"));
        }
    }
    out.push("*".to_owned());
    out
}

/// The DNS zones strictly above a name: `api.example.com` → `example.com`, `com`.
pub fn dns_zones(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = name;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if !rest.is_empty() {
            out.push(rest.to_owned());
        }
    }
    out
}

fn dir_entity(path: &str, parent: Option<&str>) -> Entity {
    let parents: HashSet<EntityUid> = parent.map(|p| uid(types::DIR, p)).into_iter().collect();
    let attrs = [("path".to_owned(), RestrictedExpression::new_string(path.to_owned()))].into_iter().collect();
    Entity::new(uid(types::DIR, path), attrs, parents).expect("a Dir entity is well formed")
}

fn plain(ty: &str, id: &str, parents: impl IntoIterator<Item = EntityUid>) -> Entity {
    Entity::new_no_attrs(uid(ty, id), parents.into_iter().collect())
}

/// The resource's uid and every entity it needs, ancestors included.
/// `ranges` are the IP ranges the policy names.
pub fn entities(resource: &Resource, ranges: &[(String, IpRange)]) -> (EntityUid, Vec<Entity>) {
    let mut out = Vec::new();
    let dirs = |path: &str, out: &mut Vec<Entity>| {
        let ancestors = dir_ancestors(path);
        for (i, d) in ancestors.iter().enumerate() {
            out.push(dir_entity(d, ancestors.get(i + 1).map(String::as_str)));
        }
        ancestors
    };
    match resource {
        Resource::File(path) => {
            let ancestors = dirs(path, &mut out);
            let name = path.rsplit('/').next().unwrap_or("").to_owned();
            let attrs = [
                ("path".to_owned(), RestrictedExpression::new_string(path.clone())),
                ("name".to_owned(), RestrictedExpression::new_string(name)),
            ]
            .into_iter()
            .collect();
            let parents = [uid(types::DIR, &ancestors[0])].into_iter().collect();
            out.push(Entity::new(uid(types::FILE, path), attrs, parents).expect("a File entity is well formed"));
            (uid(types::FILE, path), out)
        }
        Resource::Dir(path) => {
            let path = if path.ends_with('/') { path.clone() } else { format!("{path}/") };
            let ancestors = if path == "/" { Vec::new() } else { dirs(&path, &mut out) };
            out.push(dir_entity(&path, ancestors.first().map(String::as_str)));
            (uid(types::DIR, &path), out)
        }
        Resource::Host(host) => {
            let star = uid(types::HOST, "*");
            out.push(plain(types::HOST, "*", []));
            let bare = match host {
                Host::Name(n, _) => Host::Name(n.clone(), None),
                Host::Ip(a, _) => Host::Ip(*a, None),
            };
            let bare_id = bare.id();
            match host {
                Host::Name(name, _) => {
                    let wild = host_wildcards(name);
                    for (i, w) in wild.iter().enumerate() {
                        if w != "*" {
                            out.push(plain(types::HOST, w, [uid(types::HOST, &wild[i + 1])]));
                        }
                    }
                    let zones = dns_zones(name);
                    for z in &zones {
                        out.push(plain(types::DNS_ZONE, z, []));
                    }
                    let parents = std::iter::once(uid(types::HOST, &wild[0]))
                        .chain(zones.iter().map(|z| uid(types::DNS_ZONE, z)));
                    out.push(plain(types::HOST, &bare_id, parents));
                }
                Host::Ip(addr, _) => {
                    let mut parents = vec![star.clone()];
                    for (id, r) in ranges {
                        if r.contains(*addr) {
                            // Ranges nest: each is in the wider ones that contain it.
                            let wider = ranges
                                .iter()
                                .filter(|(oid, o)| oid != id && o.prefix < r.prefix && o.contains(r.addr))
                                .map(|(oid, _)| uid(types::IP_RANGE, oid));
                            out.push(plain(types::IP_RANGE, id, wider));
                            parents.push(uid(types::IP_RANGE, id));
                        }
                    }
                    out.push(plain(types::HOST, &bare_id, parents));
                }
            }
            let id = host.id();
            if id != bare_id {
                out.push(plain(types::HOST, &id, [uid(types::HOST, &bare_id)]));
            }
            (uid(types::HOST, &id), out)
        }
        Resource::McpTool { server, tool } => {
            out.push(plain(types::MCP_SERVER, server, []));
            out.push(plain(types::MCP_TOOL, tool, [uid(types::MCP_SERVER, server)]));
            (uid(types::MCP_TOOL, tool), out)
        }
        Resource::Secret(name) => {
            out.push(plain(types::SECRET, name, []));
            (uid(types::SECRET, name), out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ancestors() {
        assert_eq!(dir_ancestors("/a/b/c"), ["/a/b/", "/a/", "/"]);
        assert_eq!(dir_ancestors("/a/b/"), ["/a/", "/"]);
        assert_eq!(dir_ancestors("/a"), ["/"]);
    }

    #[test]
    fn wildcards_and_zones_stop_at_dot_boundaries() {
        assert_eq!(host_wildcards("api.example.com"), ["*.example.com", "*.com", "*"]);
        assert_eq!(host_wildcards("localhost"), ["*"]);
        assert_eq!(dns_zones("api.example.com"), ["example.com", "com"]);
        assert!(!host_wildcards("badfacebook.com").contains(&"*.facebook.com".to_owned()));
    }

    #[test]
    fn hosts_parse_and_normalize() {
        assert_eq!(Host::parse("API.Example.com.:443").unwrap(), Host::Name("api.example.com".into(), Some(443)));
        assert_eq!(Host::parse("10.1.2.3:80").unwrap().id(), "10.1.2.3:80");
        assert_eq!(Host::parse("[2001:db8::1]:443").unwrap().id(), "[2001:db8::1]:443");
        assert_eq!(Host::parse("2001:db8::1").unwrap().id(), "[2001:db8::1]");
        assert_eq!(Host::parse("[::ffff:10.0.0.1]:22").unwrap().id(), "10.0.0.1:22");
        assert!(Host::parse("host:99999").unwrap_err().contains("invalid port"));
    }

    #[test]
    fn ranges() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.200.1.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let v6 = IpRange::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(IpRange::parse("10.0.0.0/33").is_none());
    }
}
