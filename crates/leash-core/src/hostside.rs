//! The host as a session's container sees it: the address the container's
//! default route points to (Docker's and Podman's bridges put the host's
//! bridge interface there).
//!
//! This is read from the container's own routing table, never from what an
//! engine reports about its networks: an engine may leave a network's
//! gateway field empty (Docker 20.10 has been seen answering
//! `[{"Subnet":"172.17.0.0/16"}]` for the default bridge while `docker0`
//! carried `172.17.0.1/16`), and a policy built from an empty field names
//! nothing. The product (leashd, for each session) and every test and bench
//! use this one parser; the IO (reading `/proc/<pid>/net/route`, or running
//! a probe container) is the caller's.

use std::net::Ipv4Addr;

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;
/// `RTF_GATEWAY`: the destination is reached through a gateway.
const RTF_GATEWAY: u32 = 0x2;

/// The gateway of the default route in a `/proc/net/route` table (the
/// kernel's IPv4 routing table, addresses as hex in host byte order), or an
/// error naming what the table held instead. `source` names where the text
/// came from, for that error.
pub fn default_gateway(route: &str, source: &str) -> Result<Ipv4Addr, String> {
    let mut seen = 0;
    for line in route.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_iface, destination, gateway, flags, _refcnt, _use, _metric, mask, ..] = fields[..] else {
            continue;
        };
        seen += 1;
        let (Some(destination), Some(gateway), Some(flags), Some(mask)) =
            (hex(destination), hex(gateway), hex(flags), hex(mask))
        else {
            return Err(format!("{source}: cannot read the route {line:?}"));
        };
        if destination == 0 && mask == 0 && flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0 && gateway != 0 {
            // The table holds the address as the machine's u32 in host order.
            return Ok(Ipv4Addr::from(gateway.to_le_bytes()));
        }
    }
    Err(if seen == 0 {
        format!("{source}: no IPv4 routes (a container without a network has no host side)")
    } else {
        format!(
            "{source}: no default route through a gateway among {seen} routes (the network does not reach the host)"
        )
    })
}

/// The engine CLI arguments that start a throwaway container of `image` on
/// the default network and print its routing table, for tools that need
/// the host side before any session exists (tests, benches, CI's facts).
/// The image must be present: nothing is pulled.
pub fn probe_args(image: &str) -> [&str; 10] {
    ["run", "--rm", "--pull", "never", "--network", "bridge", "--entrypoint", "cat", image, "/proc/net/route"]
}

fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container on Docker's default bridge, as `/proc/net/route` shows it.
    const BRIDGE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn the_bridge_address_comes_from_the_default_route() {
        assert_eq!(default_gateway(BRIDGE, "route"), Ok(Ipv4Addr::new(172, 17, 0, 1)));
    }

    #[test]
    fn an_engine_that_reports_no_gateway_changes_nothing() {
        // What Docker 20.10 answered for `docker network inspect bridge
        // --format '{{json .IPAM.Config}}'` on a fresh machine: the subnet
        // and no gateway. The route table still names the host.
        let engine_said = r#"[{"Subnet":"172.17.0.0/16"}]"#;
        assert!(!engine_said.contains("Gateway"));
        assert_eq!(default_gateway(BRIDGE, "route").map(|a| a.to_string()), Ok("172.17.0.1".to_owned()));
    }

    #[test]
    fn without_a_default_route_the_error_names_what_was_read() {
        let link_only = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                         eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let e = default_gateway(link_only, "/proc/42/net/route").unwrap_err();
        assert!(e.starts_with("/proc/42/net/route: no default route"), "{e}");
        let e = default_gateway("Iface\tDestination\n", "/proc/42/net/route").unwrap_err();
        assert!(e.contains("no IPv4 routes"), "{e}");
        assert!(default_gateway("", "x").is_err());
    }

    #[test]
    fn a_garbled_route_is_an_error_not_an_address() {
        let bad = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                   eth0\t00000000\tZZZZ\t0003\t0\t0\t0\t00000000\n";
        assert!(default_gateway(bad, "route").unwrap_err().contains("cannot read the route"));
    }
}
