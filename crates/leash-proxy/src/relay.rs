//! The DNS relay: the redirect sends a session's DNS (UDP and TCP 53) here;
//! each query goes on, from a marked socket in the container's namespace,
//! to the resolvers the container was given (read before its first
//! instruction), and each answer comes back unchanged — after the names and
//! addresses in it are recorded: an event (the name behind each address)
//! and, through [`crate::egress`], the addresses of names a policy decides
//! pushed to the kernel's tables for the answer's lifetime.

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

/// Serves one UDP relay socket until the session closes.
pub async fn udp(socket: std::net::UdpSocket, session: Arc<Session>, shared: Arc<Shared>, resolvers: Arc<Vec<IpAddr>>) {
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
        let (socket, session, shared, resolvers) = (socket.clone(), session.clone(), shared.clone(), resolvers.clone());
        tokio::spawn(async move {
            if let Some(answer) = ask_udp(&query, &session, &resolvers).await {
                observe(&answer, &session, &shared).await;
                let _ = socket.send_to(&answer, from).await;
            }
        });
    }
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
pub async fn tcp(
    listener: std::net::TcpListener,
    session: Arc<Session>,
    shared: Arc<Shared>,
    resolvers: Arc<Vec<IpAddr>>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let accepted = tokio::select! {
            () = session.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let (session, shared, resolvers) = (session.clone(), shared.clone(), resolvers.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(30), tcp_client(client, &session, &shared, &resolvers)).await;
        });
    }
}

async fn read_message(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let len = s.read_u16().await.ok()? as usize;
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).await.ok()?;
    Some(m)
}

async fn tcp_client(mut client: tokio::net::TcpStream, session: &Session, shared: &Shared, resolvers: &[IpAddr]) {
    while let Some(query) = read_message(&mut client).await {
        let mut answered = None;
        for r in resolvers {
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
        observe(&answer, session, shared).await;
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
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut details = std::collections::BTreeMap::new();
    details.insert(
        "addresses".to_owned(),
        a.addresses.iter().map(|(ip, ttl)| format!("{ip} ({ttl} s)")).collect::<Vec<_>>().join(", "),
    );
    details.insert("mechanism".to_owned(), "leash-proxy (DNS relay)".to_owned());
    if !pushed.is_empty() {
        details.insert("kernel_entries".to_owned(), pushed.join(", "));
    }
    shared.events.publish(pb::Event {
        seq: 0,
        time_unix_nanos: now.as_nanos() as i64,
        session: session.id.clone(),
        pid: 0,
        executable: String::new(),
        kind: pb::EventKind::Connect as i32,
        action: "dns.answer".to_owned(),
        resource: a.name.clone(),
        mode: leash_proto::event::mode(shared.decider.mode(&session.id)) as i32,
        decision: pb::Decision::Unspecified as i32,
        would_deny: false,
        policy_ids: Vec::new(),
        details,
    });
}
