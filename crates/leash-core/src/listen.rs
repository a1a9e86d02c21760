//! The Control UI's listen address: the Go leash's `--listen` / `LEASH_LISTEN`
//! grammar, shared by leashd and `leash`.
//!
//! `""` disables the UI; `19080` or `:19080` is a port (on loopback: leash
//! never listens on every interface unless an address says so); `127.0.0.1`,
//! `[::1]` or `localhost` alone take port 18080; `0.0.0.0:20000`, `[::]:21000`
//! name both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The default address: loopback, port 18080.
pub const DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT);
/// The default port.
pub const DEFAULT_PORT: u16 = 18080;

/// Parses a listen value: `None` when it disables the UI.
pub fn parse(value: &str) -> Result<Option<SocketAddr>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| format!("invalid listen address {v:?}: missing ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("invalid listen address {v:?}")),
        }
    } else if v.bytes().all(|b| b.is_ascii_digit()) {
        ("", Some(v))
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (v, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => n as u16,
            // Port 0 asks the kernel for a free port (tests); never a default.
            Ok(0) if p == "0" => 0,
            _ => return Err(format!("invalid listen port {p:?}")),
        },
    };
    let ip = match host {
        "" | "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h.parse::<IpAddr>().map_err(|_| format!("invalid listen host {h:?}: give an IP address"))?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// True for addresses only this machine can reach.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The address for people and browsers: `http://127.0.0.1:18080/`;
/// an unspecified address (every interface) is shown as loopback.
pub fn url(addr: &SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_grammar() {
        let a = |s: &str| parse(s).unwrap().map(|a| a.to_string());
        assert_eq!(a(""), None);
        assert_eq!(a("  "), None);
        assert_eq!(a("19080").as_deref(), Some("127.0.0.1:19080"));
        assert_eq!(a(":19080").as_deref(), Some("127.0.0.1:19080"));
        assert_eq!(a("127.0.0.1").as_deref(), Some("127.0.0.1:18080"));
        assert_eq!(a("localhost:9").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(a("0.0.0.0:20000").as_deref(), Some("0.0.0.0:20000"));
        assert_eq!(a("[::1]").as_deref(), Some("[::1]:18080"));
        assert_eq!(a("[::]:21000").as_deref(), Some("[::]:21000"));
        for bad in ["abc:x", ":70000", "127.0.0.1:-1", "[::1", "example.com:80"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse(":x").unwrap_err(), "invalid listen port \"x\"");
        assert!(!is_loopback(&parse("0.0.0.0:1").unwrap().unwrap()));
        assert_eq!(url(&parse("0.0.0.0:20000").unwrap().unwrap()), "http://127.0.0.1:20000/");
        assert_eq!(url(&parse("[::1]:18081").unwrap().unwrap()), "http://[::1]:18081/");
    }
}
