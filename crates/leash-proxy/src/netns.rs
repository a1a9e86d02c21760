//! A session container's network namespace, from the proxy's side: the
//! listener the redirect rules send TCP 80/443 to, the rules themselves, and
//! the marked sockets of the proxy's own upstream connections, all created
//! inside the namespace by a thread that lives there.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, sockopt};

/// The listener's port inside every session's namespace.
pub const LISTEN_PORT: u16 = 15_080;
/// The DNS relay's port (UDP and TCP) inside every session's namespace.
pub const DNS_PORT: u16 = 15_053;
/// The mark of the proxy's own upstream sockets: the redirect skips them.
pub const MARK: u32 = 0x1ea5;
/// The chain the rules live in (nat and filter tables).
const CHAIN: &str = "LEASH";

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside a container's network namespace.
pub struct Netns {
    jobs: std::sync::mpsc::Sender<Job>,
    /// The container's init process.
    pub pid: u32,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netns").field("pid", &self.pid).finish()
    }
}

impl Netns {
    /// Enters the network namespace of `pid` on a thread of its own.
    pub fn enter(pid: u32) -> anyhow::Result<Netns> {
        let path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new().name(format!("netns-{pid}")).spawn(move || {
            let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                while let Ok(job) = rx.recv() {
                    job();
                }
            }
        })?;
        ready.recv().context("the namespace thread died")?.with_context(|| format!("entering {path}"))?;
        Ok(Netns { jobs, pid })
    }

    /// A namespace with no thread in it, for `pid`: everything run in it
    /// fails, as when its thread is gone (for driving the data path with no
    /// network to reach).
    #[doc(hidden)]
    pub fn detached(pid: u32) -> Netns {
        let (jobs, _) = std::sync::mpsc::channel::<Job>();
        Netns { jobs, pid }
    }

    /// Runs `f` inside the namespace.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("the namespace thread of {} is gone", self.pid))?;
        rx.await.map_err(|_| anyhow::anyhow!("the namespace thread of {} is gone", self.pid))
    }
}

/// The listeners: IPv4 always, IPv6 where the namespace has it.
#[derive(Debug)]
pub struct Listeners {
    /// On 0.0.0.0.
    pub v4: std::net::TcpListener,
    /// On [::], IPv6 only.
    pub v6: Option<std::net::TcpListener>,
    /// The DNS relay: UDP and TCP on the loopback address the redirect
    /// leads to (127.0.0.1, and ::1 with IPv6), so answers leave from it.
    pub dns_udp: Vec<std::net::UdpSocket>,
    /// See `dns_udp`.
    pub dns_tcp: Vec<std::net::TcpListener>,
}

fn listen(addr: SocketAddr) -> nix::Result<std::net::TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(a))?
        }
    }
    socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

/// Opens the listeners (run inside the namespace).
pub fn open_listeners() -> anyhow::Result<Listeners> {
    let v4 = listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), LISTEN_PORT))
        .with_context(|| format!("listening on 0.0.0.0:{LISTEN_PORT} in the container"))?;
    let v6 = if ipv6_enabled() {
        Some(
            listen(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), LISTEN_PORT))
                .with_context(|| format!("listening on [::]:{LISTEN_PORT} in the container"))?,
        )
    } else {
        None
    };
    let mut loopbacks = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if v6.is_some() {
        loopbacks.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    let (mut dns_udp, mut dns_tcp) = (Vec::new(), Vec::new());
    for ip in loopbacks {
        let addr = SocketAddr::new(ip, DNS_PORT);
        let udp = std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr} in the container"))?;
        udp.set_nonblocking(true)?;
        dns_udp.push(udp);
        dns_tcp.push(listen(addr).with_context(|| format!("listening on TCP {addr} in the container"))?);
    }
    Ok(Listeners { v4, v6, dns_udp, dns_tcp })
}

/// Whether the namespace has IPv6 (run inside it; /proc/sys/net follows the
/// reading thread's namespace).
fn ipv6_enabled() -> bool {
    let tid = nix::unistd::gettid();
    std::fs::read_to_string(format!("/proc/self/task/{tid}/net/if_inet6")).is_ok_and(|s| !s.trim().is_empty())
}

/// An upstream TCP socket, marked so the redirect lets it through (run
/// inside the namespace); connect it with tokio.
pub fn upstream_socket(v4: bool) -> nix::Result<OwnedFd> {
    marked(v4, SockType::Stream)
}

/// An upstream UDP socket (the DNS relay's), marked likewise.
pub fn upstream_udp_socket(v4: bool) -> nix::Result<OwnedFd> {
    marked(v4, SockType::Datagram)
}

fn marked(v4: bool, kind: SockType) -> nix::Result<OwnedFd> {
    let family = if v4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, kind, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    socket::setsockopt(&fd, sockopt::Mark, &MARK)?;
    Ok(fd)
}

/// Where a redirected connection was going.
pub fn original_destination(stream: &tokio::net::TcpStream) -> anyhow::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let a = socket::getsockopt(stream, sockopt::OriginalDst).context("SO_ORIGINAL_DST")?;
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
    } else {
        let a = socket::getsockopt(stream, sockopt::Ip6tOriginalDst).context("IP6T_SO_ORIGINAL_DST")?;
        let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
        Ok(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
    }
}

/// The rules, as `iptables-restore --noflush` reads them: DNS (UDP and
/// TCP 53) to the relay, TCP 80 and 443 to the listener (but the proxy's
/// own marked sockets, and for HTTP the container's own loopback); QUIC
/// (UDP 443) refused so clients fall back to TCP.
pub fn rules(v6: bool) -> String {
    let lo = if v6 { "::1/128" } else { "127.0.0.0/8" };
    let reject = if v6 { "icmp6-port-unreachable" } else { "icmp-port-unreachable" };
    format!(
        "*nat\n\
         :{CHAIN} - [0:0]\n\
         -A OUTPUT -j {CHAIN}\n\
         -A {CHAIN} -m mark --mark {MARK:#x} -j RETURN\n\
         -A {CHAIN} -p udp --dport 53 -j REDIRECT --to-ports {DNS_PORT}\n\
         -A {CHAIN} -p tcp --dport 53 -j REDIRECT --to-ports {DNS_PORT}\n\
         -A {CHAIN} -d {lo} -j RETURN\n\
         -A {CHAIN} -p tcp --dport 80 -j REDIRECT --to-ports {LISTEN_PORT}\n\
         -A {CHAIN} -p tcp --dport 443 -j REDIRECT --to-ports {LISTEN_PORT}\n\
         COMMIT\n\
         *filter\n\
         :{CHAIN} - [0:0]\n\
         -A OUTPUT -j {CHAIN}\n\
         -A {CHAIN} -m mark --mark {MARK:#x} -j RETURN\n\
         -A {CHAIN} -p udp --dport 443 -j REJECT --reject-with {reject}\n\
         COMMIT\n"
    )
}

fn iptables(pid: u32, tool: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg(tool).args(args);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running nsenter {tool} (util-linux and iptables)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Installs the rules in the namespace of `pid` unless they are there
/// already (a restarted proxy finds them); returns them.
pub fn install_rules(pid: u32, v6: bool) -> anyhow::Result<Vec<String>> {
    let mut installed = Vec::new();
    let families: &[(&str, &str, bool)] =
        &[("iptables", "iptables-restore", false), ("ip6tables", "ip6tables-restore", true)];
    for (check, restore, is_v6) in families {
        if *is_v6 && !v6 {
            continue;
        }
        let present = iptables(pid, check, &["-t", "nat", "-C", "OUTPUT", "-j", CHAIN], None)?.status.success();
        let text = rules(*is_v6);
        if !present {
            let out = iptables(pid, restore, &["--noflush"], Some(&text))?;
            if !out.status.success() {
                bail!("{restore} in the container failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        installed.extend(text.lines().filter(|l| l.starts_with("-A")).map(|l| format!("{check} {l}")));
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_redirect_80_and_443_and_spare_marked_and_loopback() {
        let r = super::rules(false);
        let redirect = r.lines().position(|l| l.contains("--dport 443 -j REDIRECT")).unwrap();
        let mark = r.lines().position(|l| l.contains("--mark 0x1ea5 -j RETURN")).unwrap();
        let lo = r.lines().position(|l| l.contains("-d 127.0.0.0/8 -j RETURN")).unwrap();
        assert!(mark < redirect && lo < redirect, "{r}");
        assert!(r.contains("--dport 80 -j REDIRECT --to-ports 15080"));
        assert!(r.contains("-p udp --dport 443 -j REJECT"));
        assert!(super::rules(true).contains("-d ::1/128"));
    }
}
