//! The DNS relay: the redirect sends a session's DNS (UDP and TCP 53) here.
//! A query for a name the policy refuses on every port is answered here
//! (REFUSED, or NXDOMAIN as the session asks) and goes no further, so the
//! name's labels never reach a resolver; any other goes on, from a marked
//! socket in the container's namespace, to the resolvers the container was
//! given (read before its first instruction), and each answer comes back
//! unchanged — after the names and addresses in it are recorded: an event
//! (the name behind each address) and, through [`crate::egress`], the
//! addresses of names a policy decides pushed to the kernel's tables for the
//! answer's lifetime. A forwarded name whose labels look like data is an
//! event too ([`dns::suspicious`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use leash_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dns;
use crate::netns;
use crate::serve::{Session, Shared};

/// How long a resolver has to answer.
const ANSWER: Duration = Duration::from_secs(3);
/// The largest DNS message (TCP's 16-bit length).
const MESSAGE: usize = 65_535;
/// What the relay's events name as their source.
const MECHANISM: &str = "leash-proxy (DNS relay)";

/// How the relay answers a name the policy refuses on every port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusal {
    /// `REFUSED` (rcode 5): the resolver will not answer.
    #[default]
    Refused,
    /// `NXDOMAIN` (rcode 3): the name does not exist.
    NxDomain,
}

impl Refusal {
    /// Reads the setting: `refused` (also when empty) or `nxdomain`.
    pub fn parse(s: &str) -> Result<Refusal, String> {
        match s {
            "" | "refused" => Ok(Refusal::Refused),
            "nxdomain" => Ok(Refusal::NxDomain),
            other => Err(format!("dns_refusal {other:?}: expected \"refused\" or \"nxdomain\"")),
        }
    }

    /// The setting as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Refused => "refused",
            Refusal::NxDomain => "nxdomain",
        }
    }

    fn rcode(self) -> u8 {
        match self {
            Refusal::Refused => dns::RCODE_REFUSED,
            Refusal::NxDomain => dns::RCODE_NXDOMAIN,
        }
    }

    fn answered(self) -> &'static str {
        match self {
            Refusal::Refused => "REFUSED",
            Refusal::NxDomain => "NXDOMAIN",
        }
    }
}

/// A session's relay: where queries go and how refusals are answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The container's resolvers, read before its command ran.
    pub resolvers: Vec<IpAddr>,
    /// How a refused name is answered.
    pub refusal: Refusal,
}

/// Serves one UDP relay socket until the session closes.
pub async fn udp(socket: std::net::UdpSocket, session: Arc<Session>, shared: Arc<Shared>, config: Arc<Config>) {
    let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else { return };
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MESSAGE];
    loop {
        let received = tokio::select! {
            () = session.stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = received else { continue };
        let query = buf[..n].to_vec();
        let (socket, session, shared, config) = (socket.clone(), session.clone(), shared.clone(), config.clone());
        tokio::spawn(async move {
            let answer = match admit(&query, &session, &shared, config.refusal).await {
                Admit::Forward => {
                    let Some(answer) = ask_udp(&query, &session, &config.resolvers).await else { return };
                    observe(&answer, &session, &shared).await;
                    answer
                }
                Admit::Answer(answer) => answer,
                Admit::Drop => return,
            };
            let _ = socket.send_to(&answer, from).await;
        });
    }
}

/// What the relay does with a query.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Ask the resolvers.
    Forward,
    /// Answer it here (a refusal).
    Answer(Vec<u8>),
    /// Neither: it is not one plain question.
    Drop,
}

/// Decides a query on its name: refused (answered here, and an event) when
/// the policy refuses the name on every port and the mode enforces;
/// otherwise forwarded, with an event when shadow mode would have refused
/// it and when its labels look like data.
async fn admit(query: &[u8], session: &Session, shared: &Shared, refusal: Refusal) -> Admit {
    let Ok(q) = dns::query(query) else { return Admit::Drop };
    let d = shared.decider.resolve(&session.id, &q.name).await;
    let qtype = dns::type_name(q.qtype);
    if !d.allow {
        let refused = !d.passes();
        let details = BTreeMap::from([
            ("qtype".to_owned(), qtype.clone()),
            (
                "answered".to_owned(),
                if refused { refusal.answered().to_owned() } else { "forwarded (shadow mode)".to_owned() },
            ),
        ]);
        let decision = if refused { pb::Decision::Deny } else { pb::Decision::Allow };
        publish(session, shared, "dns.refused", &q.name, decision, d.would_deny(), d.reasons.clone(), details);
        if refused {
            return dns::refusal(query, refusal.rcode()).map_or(Admit::Drop, Admit::Answer);
        }
    }
    if let Some(why) = dns::suspicious(&q.name) {
        let details = BTreeMap::from([("qtype".to_owned(), qtype), ("reason".to_owned(), why)]);
        publish(session, shared, "dns.suspicious", &q.name, pb::Decision::Unspecified, false, Vec::new(), details);
    }
    Admit::Forward
}

async fn ask_udp(query: &[u8], session: &Session, resolvers: &[IpAddr]) -> Option<Vec<u8>> {
    for r in resolvers {
        let v4 = r.is_ipv4();
        let Ok(Ok(fd)) = session.netns.run(move || netns::upstream_udp_socket(v4)).await else { continue };
        let Ok(socket) = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)) else { continue };
        if socket.connect(SocketAddr::new(*r, 53)).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MESSAGE];
        if let Ok(Ok(n)) = tokio::time::timeout(ANSWER, socket.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Serves one TCP relay listener until the session closes.
pub async fn tcp(listener: std::net::TcpListener, session: Arc<Session>, shared: Arc<Shared>, config: Arc<Config>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let accepted = tokio::select! {
            () = session.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let (session, shared, config) = (session.clone(), shared.clone(), config.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), tcp_client(client, &session, &shared, &config)).await;
        });
    }
}

async fn read_message(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let len = s.read_u16().await.ok()? as usize;
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).await.ok()?;
    Some(m)
}

async fn tcp_client(mut client: tokio::net::TcpStream, session: &Session, shared: &Shared, config: &Config) {
    while let Some(query) = read_message(&mut client).await {
        let mut answered = None;
        let forward: &[IpAddr] = match admit(&query, session, shared, config.refusal).await {
            Admit::Forward => config.resolvers.as_slice(),
            Admit::Answer(answer) => {
                answered = Some(answer);
                &[]
            }
            Admit::Drop => return,
        };
        for r in forward {
            let v4 = r.is_ipv4();
            let Ok(Ok(fd)) = session.netns.run(move || netns::upstream_socket(v4)).await else { continue };
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let Ok(Ok(mut up)) = tokio::time::timeout(ANSWER, socket.connect(SocketAddr::new(*r, 53))).await else {
                continue;
            };
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            if up.write_all(&framed).await.is_err() {
                continue;
            }
            if let Ok(Some(a)) = tokio::time::timeout(ANSWER, read_message(&mut up)).await {
                answered = Some(a);
                break;
            }
        }
        let Some(answer) = answered else { return };
        if !forward.is_empty() {
            observe(&answer, session, shared).await;
        }
        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if client.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Records an answer: an event naming the addresses behind the name, and
/// the name's decided addresses for the kernel.
async fn observe(answer: &[u8], session: &Session, shared: &Shared) {
    let Ok(a) = dns::answer(answer) else { return };
    if a.addresses.is_empty() {
        return;
    }
    let pushed = crate::egress::learn(&a, session, shared).await;
    let mut details = BTreeMap::new();
    details.insert(
        "addresses".to_owned(),
        a.addresses.iter().map(|(ip, ttl)| format!("{ip} ({ttl} s)")).collect::<Vec<_>>().join(", "),
    );
    if !pushed.is_empty() {
        details.insert("kernel_entries".to_owned(), pushed.join(", "));
    }
    publish(session, shared, "dns.answer", &a.name, pb::Decision::Unspecified, false, Vec::new(), details);
}

/// One event of the relay's (kind `connect`, on a name).
#[allow(clippy::too_many_arguments, reason = "an event's fields, passed once")]
fn publish(
    session: &Session,
    shared: &Shared,
    action: &str,
    name: &str,
    decision: pb::Decision,
    would_deny: bool,
    policy_ids: Vec<String>,
    mut details: BTreeMap<String, String>,
) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    details.insert("mechanism".to_owned(), MECHANISM.to_owned());
    shared.events.publish(pb::Event {
        seq: 0,
        time_unix_nanos: now.as_nanos() as i64,
        session: session.id.clone(),
        pid: 0,
        executable: String::new(),
        kind: pb::EventKind::Connect as i32,
        action: action.to_owned(),
        resource: name.to_owned(),
        mode: leash_proto::event::mode(shared.decider.mode(&session.id)) as i32,
        decision: decision as i32,
        would_deny,
        policy_ids,
        details,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decider, Held};
    use leash_core::Mode;
    use leash_core::tables::{HostTable, Tables, Verdict};

    /// A decider holding, for session `s`, `hosts` (reasons: 0 none, 1
    /// `allowed`, 2 `no-bad`) in `mode`; its policy service is unreachable.
    fn decider(hosts: HostTable, mode: Mode) -> Decider {
        let d = Decider::new("/nonexistent/policy.sock".into());
        let reasons = vec![Vec::new(), vec!["allowed".to_owned()], vec!["no-bad".to_owned()]];
        d.hold("s", Held { tables: Tables { hosts, reasons, ..Default::default() }, mode: Some(mode) });
        d
    }

    fn allow_list() -> HostTable {
        let mut t = HostTable { default: Some(Verdict::new(false, 0)), ..Default::default() };
        t.exact.insert("allowed.test".into(), Verdict::new(true, 1));
        t.exact_port.insert(("allowed.test".into(), 0), Verdict::new(true, 1));
        t.exact_port.insert(("git.test".into(), 22), Verdict::new(true, 1));
        t.exact_port.insert(("git.test".into(), 0), Verdict::new(false, 0));
        t.wildcards.insert("allowed.test".into(), Verdict::new(true, 1));
        t
    }

    #[tokio::test]
    async fn names_refused_on_every_port_are_refused() {
        let d = decider(allow_list(), Mode::Enforce);
        for name in ["allowed.test", "api.allowed.test", "git.test"] {
            let r = d.resolve("s", name).await;
            assert!(r.allow, "{name}: {r:?}");
        }
        let r = d.resolve("s", "exfil.attacker.example").await;
        assert!(!r.allow && !r.passes(), "{r:?}");
        let r = d.resolve("s", "4.3.2.1.in-addr.arpa").await;
        assert!(!r.allow, "a PTR name is decided as written: {r:?}");
        // A forbid on the name refuses it; one on a port of it does not.
        let mut t = HostTable { default: Some(Verdict::new(true, 0)), ..Default::default() };
        t.exact.insert("bad.test".into(), Verdict::new(false, 2));
        t.exact_port.insert(("bad.test".into(), 0), Verdict::new(false, 2));
        t.exact_port.insert(("ssh.test".into(), 22), Verdict::new(false, 2));
        let d = decider(t, Mode::Enforce);
        let r = d.resolve("s", "bad.test").await;
        assert_eq!((r.allow, r.reasons), (false, vec!["no-bad".to_owned()]));
        assert!(d.resolve("s", "ssh.test").await.allow);
        assert!(d.resolve("s", "other.test").await.allow);
    }

    #[tokio::test]
    async fn modes_and_missing_policies() {
        let d = decider(allow_list(), Mode::Shadow);
        let r = d.resolve("s", "attacker.example").await;
        assert!(!r.allow && r.passes() && r.would_deny(), "{r:?}");
        let d = decider(allow_list(), Mode::Record);
        assert!(d.resolve("s", "attacker.example").await.allow, "record mode decides nothing");
        let r = d.resolve("unknown", "allowed.test").await;
        assert!(!r.passes() && r.reasons == ["leash:no-policy"], "no policy held: refused, {r:?}");
    }

    #[tokio::test]
    async fn what_the_table_cannot_decide_is_asked_and_refused_without_an_answer() {
        // A name a policy reading the request limits itself to resolves.
        let mut t = allow_list();
        t.evaluate.insert(("api.example".into(), None));
        t.evaluate_below.insert("corp.example".into());
        let d = decider(t, Mode::Enforce);
        assert!(d.resolve("s", "api.example").await.allow);
        assert!(d.resolve("s", "git.corp.example").await.allow);
        assert!(!d.resolve("s", "attacker.example").await.allow);
        // Everything evaluates, and leash-policy does not answer: refused.
        let t = HostTable { evaluate_all: true, ..allow_list() };
        let r = decider(t, Mode::Enforce).resolve("s", "allowed.test").await;
        assert_eq!((r.allow, r.reasons), (false, vec!["leash:policy-unavailable".to_owned()]));
    }

    #[test]
    fn the_setting_reads_refused_or_nxdomain() {
        assert_eq!(Refusal::parse(""), Ok(Refusal::Refused));
        assert_eq!(Refusal::parse("refused"), Ok(Refusal::Refused));
        assert_eq!(Refusal::parse("nxdomain"), Ok(Refusal::NxDomain));
        assert_eq!(Refusal::parse("nxdomain").map(Refusal::rcode), Ok(3));
        assert_eq!(Refusal::Refused.rcode(), 5);
        assert!(Refusal::parse("NXDOMAIN").unwrap_err().contains("expected \"refused\" or \"nxdomain\""));
        for r in [Refusal::Refused, Refusal::NxDomain] {
            assert_eq!(Refusal::parse(r.as_str()), Ok(r));
        }
    }
}
