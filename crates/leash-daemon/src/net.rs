//! The host's network facts the sensor and the proxy both guard.

use std::net::IpAddr;

/// The host's own addresses (every interface's): a session reaches them only
/// where its policy names them.
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    interfaces
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// The host as the container of `pid` sees it: the gateway of its default
/// route, read from its network namespace's routing table (never from what
/// the engine reports about its networks, which may leave the gateway out).
/// The error names the file read and what it held instead.
pub fn host_side_of(pid: u32) -> Result<std::net::Ipv4Addr, String> {
    let path = format!("/proc/{pid}/net/route");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    leash_core::hostside::default_gateway(&text, &path)
}

/// The `nameserver`s of the container's /etc/resolv.conf.
pub fn resolvers_of(pid: u32) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap_or_default();
    parse_resolvers(&text)
}

/// The `nameserver` lines of a resolv.conf.
pub fn parse_resolvers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_the_nameserver_lines() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.11\nnameserver fe80::1%eth0\n nameserver 8.8.8.8 \nnameserver bogus\noptions ndots:0\n";
        let want: Vec<IpAddr> =
            vec!["127.0.0.11".parse().unwrap(), "fe80::1".parse().unwrap(), "8.8.8.8".parse().unwrap()];
        assert_eq!(parse_resolvers(text), want);
    }

    #[test]
    fn a_process_without_such_a_pid_has_no_host_side() {
        let e = host_side_of(u32::MAX).unwrap_err();
        assert!(e.starts_with(&format!("/proc/{}/net/route: ", u32::MAX)), "{e}");
    }

    #[test]
    fn the_host_has_its_loopback() {
        assert!(super::host_addresses().iter().any(|a| a.is_loopback()));
    }
}
