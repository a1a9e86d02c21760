//! Events from the kernel (`struct leash_event` in `bpf/include/leash/common.h`),
//! read with safe byte parsing, and the decisions the fanotify decider makes.

use std::net::IpAddr;

/// The size of `struct leash_event`.
pub const RAW_EVENT_BYTES: usize = 344;

/// Kinds, as `LEASH_EV_*`.
pub const KIND_CONNECT: u32 = 1;
/// See [`KIND_CONNECT`].
pub const KIND_SENDMSG: u32 = 2;
/// See [`KIND_CONNECT`].
pub const KIND_OPEN: u32 = 3;
/// See [`KIND_CONNECT`].
pub const KIND_EXEC: u32 = 4;
/// An open or exec event's flags: decided by the LSM tier (the file
/// action's number in the low byte: 1 read, 2 write, 3 exec).
pub const FLAG_LSM: u32 = 0x200;
/// With [`FLAG_LSM`]: the path is the entry's name alone (the path hooks
/// have no path).
pub const FLAG_NAME_ONLY: u32 = 0x100;
/// With [`FLAG_LSM`]: denied by identity, traced to [`RawEvent::traced`].
pub const FLAG_TRACED: u32 = 0x400;
/// With [`FLAG_LSM`]: the record carries the whole path after the event
/// (`struct leash_event_long`).
pub const FLAG_LONG_PATH: u32 = 0x800;
/// `LEASH_FULL_PATH`: the longest path a long record carries.
pub const FULL_PATH: usize = 4096;
/// An ICMP socket (`ping`), refused in enforce mode.
pub const KIND_ICMP: u32 = 5;
/// A new process (`pid`) and its parent (`ppid`).
pub const KIND_FORK: u32 = 6;
/// A process's end; `flags` is its exit code as `wait()` reports it.
pub const KIND_EXIT: u32 = 7;

/// One kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// Monotonic nanoseconds.
    pub time_ns: u64,
    /// The actor's cgroup.
    pub cgroup_id: u64,
    /// Process id (host namespace).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// User id.
    pub uid: u32,
    /// `KIND_*`.
    pub kind: u32,
    /// The kernel's verdict word.
    pub verdict: u32,
    /// Kernel mode number.
    pub mode: u32,
    /// Open flags, or the socket type.
    pub flags: u32,
    /// The destination (connect, sendmsg).
    pub addr: Option<IpAddr>,
    /// The destination port.
    pub port: u16,
    /// The task's command name.
    pub comm: String,
    /// The path (exec).
    pub path: String,
    /// An LSM denial by identity: the file or directory the tables forbid
    /// by another name (its device as the kernel numbers it, its inode),
    /// and how many levels below it the file is.
    pub traced: Option<(u64, u64, u16)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl RawEvent {
    /// Parses one ring-buffer record; None when it is too short.
    pub fn parse(b: &[u8]) -> Option<RawEvent> {
        if b.len() < RAW_EVENT_BYTES {
            return None;
        }
        let (kind, flags) = (u32_at(b, 32), u32_at(b, 44));
        let file = matches!(kind, KIND_EXEC | KIND_OPEN);
        let family = u32_at(b, 48);
        let octets: [u8; 16] = b[56..72].try_into().ok()?;
        let v6 = std::net::Ipv6Addr::from(octets);
        let addr = match family {
            2 => Some(IpAddr::V4(v6.to_ipv4_mapped()?)),
            10 => Some(IpAddr::V6(v6)),
            _ => None,
        };
        Some(RawEvent {
            time_ns: u64_at(b, 0),
            cgroup_id: u64_at(b, 8),
            pid: u32_at(b, 16),
            tid: u32_at(b, 20),
            ppid: u32_at(b, 24),
            uid: u32_at(b, 28),
            kind,
            verdict: u32_at(b, 36),
            mode: u32_at(b, 40),
            flags,
            addr,
            port: u16::from_ne_bytes(b[52..54].try_into().ok()?),
            comm: c_string(&b[72..88]),
            // Only execs and the LSM tier's file decisions carry a path.
            path: match () {
                () if file && flags & FLAG_LONG_PATH != 0 && b.len() >= RAW_EVENT_BYTES + FULL_PATH => {
                    c_string(&b[RAW_EVENT_BYTES..RAW_EVENT_BYTES + FULL_PATH])
                }
                () if file => c_string(&b[88..344]),
                () => String::new(),
            },
            traced: (file && flags & FLAG_TRACED != 0).then(|| (u64_at(b, 56), u64_at(b, 64), u16_at(b, 52))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_layout() {
        let mut b = vec![0u8; RAW_EVENT_BYTES];
        b[16..20].copy_from_slice(&42u32.to_ne_bytes());
        b[32..36].copy_from_slice(&KIND_CONNECT.to_ne_bytes());
        b[48..52].copy_from_slice(&2u32.to_ne_bytes());
        b[52..54].copy_from_slice(&443u16.to_ne_bytes());
        b[56..72].copy_from_slice(&std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets());
        b[72..76].copy_from_slice(b"curl");
        let e = RawEvent::parse(&b).unwrap();
        assert_eq!((e.pid, e.kind, e.port, e.comm.as_str()), (42, KIND_CONNECT, 443, "curl"));
        assert_eq!(e.addr, Some("10.1.2.3".parse().unwrap()));
        assert!(RawEvent::parse(&b[..100]).is_none());
    }

    #[test]
    fn a_long_path_and_a_traced_denial_parse() {
        let mut b = vec![0u8; RAW_EVENT_BYTES + FULL_PATH];
        let long = format!("/w/{}", "d/".repeat(200));
        b[32..36].copy_from_slice(&KIND_OPEN.to_ne_bytes());
        b[44..48].copy_from_slice(&(FLAG_LSM | FLAG_LONG_PATH | FLAG_TRACED | 1).to_ne_bytes());
        b[52..54].copy_from_slice(&3u16.to_ne_bytes());
        b[56..64].copy_from_slice(&7u64.to_ne_bytes());
        b[64..72].copy_from_slice(&99u64.to_ne_bytes());
        b[88..88 + 255].copy_from_slice(&long.as_bytes()[..255]);
        b[RAW_EVENT_BYTES..RAW_EVENT_BYTES + long.len()].copy_from_slice(long.as_bytes());
        let e = RawEvent::parse(&b).unwrap();
        assert_eq!((e.path.as_str(), e.traced, e.addr), (long.as_str(), Some((7, 99, 3)), None));
        // A record of the short size keeps the first 255 bytes.
        let e = RawEvent::parse(&b[..RAW_EVENT_BYTES]).unwrap();
        assert_eq!(e.path, long[..255]);
    }
}
