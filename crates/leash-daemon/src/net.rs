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

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_has_its_loopback() {
        assert!(super::host_addresses().iter().any(|a| a.is_loopback()));
    }
}
