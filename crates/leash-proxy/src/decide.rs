//! Decisions on names: each session's compiled tables (fed by the policy
//! service's watch stream, by generation) decide what they can; what they
//! cannot is asked of the policy service, and denied when it cannot answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use leash_core::Mode;
use leash_core::tables::{Lookup, Tables, Verdict};
use leash_proto::v1 as pb;

/// A session's policy as the proxy holds it.
#[derive(Debug, Default)]
pub struct Held {
    /// Its tables, with the kernel's guards added (for upstream addresses).
    pub tables: Tables,
    /// Its mode.
    pub mode: Option<Mode>,
}

/// What was decided about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The policy allows it.
    pub allow: bool,
    /// The policies (or guards) that decided.
    pub reasons: Vec<String>,
    /// The mode in force.
    pub mode: Mode,
}

impl Decision {
    /// Whether the request goes through: allowed, or not enforced.
    pub fn passes(&self) -> bool {
        self.allow || self.mode != Mode::Enforce
    }

    /// Shadow mode let through what the policy denies.
    pub fn would_deny(&self) -> bool {
        !self.allow && self.mode == Mode::Shadow
    }
}

/// Every intercepted session's policy.
#[derive(Debug)]
pub struct Decider {
    policy_socket: PathBuf,
    sessions: RwLock<HashMap<String, Arc<Held>>>,
    /// One channel to leash-policy, made on first use (it redials by itself).
    policy: tokio::sync::OnceCell<pb::policy_client::PolicyClient<tonic::transport::Channel>>,
    /// The policy's answers that hold until it changes: `SecretUse`s (by
    /// request: Cedar decides on exactly these), and tool calls of a policy
    /// that reads no context (by tool).
    answers: Answers,
}

/// The policy's answers kept, by a key that starts with the session and
/// the generation of its policy (so an answer holds until the policy
/// changes); at most [`ANSWERS`], then forgotten all at once.
#[derive(Debug, Default)]
struct Answers(std::sync::Mutex<HashMap<String, (bool, Vec<String>)>>);

/// The most answers kept.
const ANSWERS: usize = 4096;

impl Answers {
    fn key(session: &str, generation: u64, what: &[&str]) -> String {
        let mut key = format!("{session}\0{generation}");
        for w in what {
            key.push('\0');
            key.push_str(w);
        }
        key
    }

    fn get(&self, key: &str) -> Option<(bool, Vec<String>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn keep(&self, key: String, answer: (bool, Vec<String>)) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= ANSWERS {
            kept.clear();
        }
        kept.insert(key, answer);
    }

    fn forget(&self, session: &str) {
        let ours = format!("{session}\0");
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| !k.starts_with(&ours));
    }
}

/// Where a decoy was found in a request, and the request (`SecretUse`'s context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    /// The name decided (the TLS connection's).
    pub host: &'a str,
    /// The destination port.
    pub port: u16,
    /// `https` (a secret never goes over plain HTTP).
    pub scheme: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// Its path, without the query.
    pub path: &'a str,
    /// `header`, `query` or `body`.
    pub location: &'a str,
}

impl Decider {
    /// Decides through the policy service at `policy_socket`.
    pub fn new(policy_socket: PathBuf) -> Decider {
        Decider {
            policy_socket,
            sessions: RwLock::new(HashMap::new()),
            policy: tokio::sync::OnceCell::new(),
            answers: Answers::default(),
        }
    }

    async fn client(&self) -> Result<pb::policy_client::PolicyClient<tonic::transport::Channel>, String> {
        self.policy.get_or_try_init(|| leash_daemon::policy::client(&self.policy_socket, "leash-proxy")).await.cloned()
    }

    /// A session's policy and mode for a decision, or the decision itself
    /// when there is nothing to evaluate (no policy: denied; record mode:
    /// allowed without evaluation).
    fn evaluating(&self, session: &str) -> Result<(Arc<Held>, Mode), Decision> {
        let Some(held) = self.held(session) else {
            return Err(Decision { allow: false, reasons: vec!["leash:no-policy".into()], mode: Mode::Enforce });
        };
        let mode = held.mode.unwrap_or(Mode::Enforce);
        if mode == Mode::Record {
            return Err(Decision { allow: true, reasons: Vec::new(), mode });
        }
        Ok((held, mode))
    }

    /// Loads (or reloads) a session's tables.
    pub async fn refresh(&self, session: &str) -> Result<u64, String> {
        let (tables, mode) =
            leash_daemon::policy::session_tables(&self.policy_socket, "leash-proxy", session, &[]).await?;
        let generation = tables.generation;
        self.hold(session, Held { tables, mode: Some(mode) });
        Ok(generation)
    }

    /// Holds `held` as a session's policy, as a refresh does with what the
    /// policy service answers (for deciding without one).
    #[doc(hidden)]
    pub fn hold(&self, session: &str, held: Held) {
        self.sessions.write().unwrap_or_else(|p| p.into_inner()).insert(session.to_owned(), Arc::new(held));
    }

    /// Forgets a session.
    pub fn forget(&self, session: &str) {
        self.sessions.write().unwrap_or_else(|p| p.into_inner()).remove(session);
        self.answers.forget(session);
    }

    fn held(&self, session: &str) -> Option<Arc<Held>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).get(session).cloned()
    }

    /// The mode held for a session.
    pub fn mode(&self, session: &str) -> Option<Mode> {
        self.held(session).and_then(|h| h.mode)
    }

    /// The generation held for a session.
    pub fn generation(&self, session: &str) -> Option<u64> {
        self.held(session).map(|h| h.tables.generation)
    }

    /// The sessions held.
    pub fn sessions(&self) -> Vec<String> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// `NetworkConnect` to `name` (when the client named one) at `ip:port`.
    ///
    /// An entry of the address table that names the IP (a policy's range or
    /// address, or one of the guards: loopback, link-local, the host's own)
    /// and denies wins; otherwise the name decides, with Cedar's semantics
    /// (the compiled name table, else the policy service). Without a name
    /// the address table decides, default included.
    pub async fn connect(&self, session: &str, name: Option<&str>, ip: IpAddr, port: u16) -> Decision {
        let (held, mode) = match self.evaluating(session) {
            Ok(e) => e,
            Err(d) => return d,
        };
        let t = &held.tables;
        let reasons = |v: Verdict| t.reasons.get(v.reason as usize).cloned().unwrap_or_default();
        let ip = leash_core::tables::normalize_ip(ip);
        if let Some(v) = t.net.entry(ip, port).filter(|v| !v.allow) {
            return Decision { allow: false, reasons: reasons(v), mode };
        }
        let found = match name {
            Some(n) => t.hosts.lookup(n, Some(port)),
            None => t.net.lookup(ip, port),
        };
        match found {
            Lookup::Final(v) => Decision { allow: v.allow, reasons: reasons(v), mode },
            Lookup::Evaluate => {
                let resource = match (name, ip) {
                    (Some(n), _) => format!("{n}:{port}"),
                    (None, IpAddr::V4(a)) => format!("{a}:{port}"),
                    (None, IpAddr::V6(a)) => format!("[{a}]:{port}"),
                };
                match self.check(session, "NetworkConnect", &resource, HashMap::new()).await {
                    Ok((allow, reasons)) => Decision { allow, reasons, mode },
                    Err(e) => {
                        tracing::warn!(session_id = %session, %resource, error = %e, "cannot ask leash-policy: denied");
                        Decision { allow: false, reasons: vec!["leash:policy-unavailable".into()], mode }
                    }
                }
            }
        }
    }

    /// `NetworkConnect` of one HTTP request to `name` (when the client named
    /// one) at `ip:port`, with the request's scheme, method, path and query
    /// (and the name, as `hostname`) in the context: as [`Decider::connect`],
    /// but where a policy that reads the request can match, the policy
    /// service decides with it. An address entry that denies wins as there,
    /// re-decided with the request where a policy on addresses reads it (the
    /// guards always stand).
    pub async fn request(
        &self,
        session: &str,
        name: Option<&str>,
        ip: IpAddr,
        port: u16,
        req: &crate::request::RequestFacts,
    ) -> Decision {
        let (held, mode) = match self.evaluating(session) {
            Ok(e) => e,
            Err(d) => return d,
        };
        let t = &held.tables;
        let reasons = |v: Verdict| t.reasons.get(v.reason as usize).cloned().unwrap_or_default();
        let ip = leash_core::tables::normalize_ip(ip);
        let address = match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        let ask = |resource: String| async move {
            match self.check(session, "NetworkConnect", &resource, req.context(name)).await {
                Ok((allow, reasons)) => Decision { allow, reasons, mode },
                Err(e) => {
                    tracing::warn!(session_id = %session, %resource, error = %e, "cannot ask leash-policy: denied");
                    Decision { allow: false, reasons: vec!["leash:policy-unavailable".into()], mode }
                }
            }
        };
        let Some(n) = name else {
            return match t.net.lookup_request(ip, port) {
                Lookup::Final(v) => Decision { allow: v.allow, reasons: reasons(v), mode },
                Lookup::Evaluate => ask(address).await,
            };
        };
        // (entry, whether it stands whatever the request: a guard, or no
        // policy on addresses reads the request)
        match t.net.entry(ip, port).map(|v| (v, v.guard || !t.net.evaluate_requests)) {
            Some((v, true)) if !v.allow => return Decision { allow: false, reasons: reasons(v), mode },
            Some((_, false)) => {
                let by_address = ask(address).await;
                if !by_address.allow {
                    return by_address;
                }
            }
            _ => {}
        }
        match t.hosts.lookup(n, Some(port)) {
            Lookup::Final(v) => Decision { allow: v.allow, reasons: reasons(v), mode },
            Lookup::Evaluate => ask(format!("{n}:{port}")).await,
        }
    }

    /// `McpCall` on `tool` of `server`, with the call's arguments (JSON) as
    /// context when given (record mode decides nothing).
    pub async fn mcp_call(&self, session: &str, server: &str, tool: &str, arguments: Option<&str>) -> Decision {
        let (held, mode) = match self.evaluating(session) {
            Ok(e) => e,
            Err(d) => return d,
        };
        let resource = format!("{tool}@{server}");
        // A policy that reads no context decides a tool alike whatever its
        // arguments: its answer is kept, and asked again only when it changes.
        let generation = held.tables.generation;
        let key = Answers::key(session, generation, &["McpCall", mode.name(), &resource]);
        if let Some((allow, reasons)) = self.answers.get(&key) {
            return Decision { allow, reasons, mode };
        }
        let context: HashMap<String, String> =
            arguments.map(|a| HashMap::from([("arguments".to_owned(), a.to_owned())])).unwrap_or_default();
        match self.check_answer(session, "McpCall", &resource, context).await {
            Ok(r) => {
                if r.context_free && r.generation == generation {
                    self.answers.keep(key, (r.allow, r.reasons.clone()));
                }
                Decision { allow: r.allow, reasons: r.reasons, mode }
            }
            Err(e) => {
                tracing::warn!(session_id = %session, %server, %tool, error = %e, "cannot ask leash-policy: denied");
                Decision { allow: false, reasons: vec!["leash:policy-unavailable".into()], mode }
            }
        }
    }

    /// `SecretUse` of `secret` in a request: whether its real value may
    /// replace the decoy. Decided by the policy in every mode (record and
    /// shadow never send a secret where the policy does not), and denied
    /// when there is no policy or no answer.
    pub async fn secret_use(&self, session: &str, secret: &str, u: &SecretUse<'_>) -> Decision {
        let deny = |why: &str| Decision { allow: false, reasons: vec![why.to_owned()], mode: Mode::Enforce };
        let Some(generation) = self.generation(session) else { return deny("leash:no-policy") };
        let port = u.port.to_string();
        let key = Answers::key(
            session,
            generation,
            &["SecretUse", secret, u.host, &port, u.scheme, u.method, u.path, u.location],
        );
        if let Some((allow, reasons)) = self.answers.get(&key) {
            return Decision { allow, reasons, mode: Mode::Enforce };
        }
        let context: HashMap<String, String> = [
            ("host", u.host),
            ("port", port.as_str()),
            ("scheme", u.scheme),
            ("method", u.method),
            ("path", u.path),
            ("location", u.location),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        match self.check(session, "SecretUse", secret, context).await {
            Ok((allow, reasons)) => {
                self.answers.keep(key, (allow, reasons.clone()));
                Decision { allow, reasons, mode: Mode::Enforce }
            }
            Err(e) => {
                tracing::warn!(session_id = %session, %secret, error = %e, "cannot ask leash-policy: the decoy stays");
                deny("leash:policy-unavailable")
            }
        }
    }

    /// What the policy decides for a name on ports other than 80 and 443:
    /// `(port, allow, policies)`, port 0 for every other port; empty when
    /// only the default decides (the kernel then decides by address).
    pub fn name_entries(&self, session: &str, name: &str) -> Vec<(u16, bool, Vec<String>)> {
        let Some(held) = self.held(session) else { return Vec::new() };
        let t = &held.tables;
        let reasons = |v: Verdict| t.reasons.get(v.reason as usize).cloned().unwrap_or_default();
        let mut out: Vec<(u16, bool, Vec<String>)> = t
            .hosts
            .exact_port
            .iter()
            .filter(|((n, p), _)| n == name && !matches!(*p, 0 | 80 | 443))
            .map(|((_, p), v)| (*p, v.allow, reasons(*v)))
            .collect();
        if let Some(v) = t.hosts.entry(name, None) {
            out.push((0, v.allow, reasons(v)));
        }
        out
    }

    /// Whether the session's DNS may ask for `name`: allowed unless the
    /// policy refuses `NetworkConnect` to it on every port — the name
    /// without a port, any port no policy names, and each port one names
    /// for it. A name a policy reading the request limits itself to is
    /// allowed (each request to it is decided on its own). What else the
    /// compiled table cannot decide is asked of the policy service, without
    /// a request (denied when it cannot answer). No policy held: denied.
    pub async fn resolve(&self, session: &str, name: &str) -> Decision {
        let (held, mode) = match self.evaluating(session) {
            Ok(e) => e,
            Err(d) => return d,
        };
        let t = &held.tables;
        let reasons = |v: Verdict| t.reasons.get(v.reason as usize).cloned().unwrap_or_default();
        let mut named: Vec<u16> = t.hosts.exact_port.keys().filter(|(n, _)| n == name).map(|(_, p)| *p).collect();
        named.extend(t.hosts.evaluate.iter().filter(|(n, _)| n == name).filter_map(|(_, p)| *p));
        named.retain(|p| *p != 0);
        named.sort_unstable();
        named.dedup();
        let other = (1..=u16::MAX).rev().find(|p| !named.contains(p)).unwrap_or(1);
        // 0: the name without a port (`Host::"name"`).
        let ports: Vec<u16> = [0, other].into_iter().chain(named).collect();
        if ports.iter().any(|p| t.hosts.evaluates(name, Some(*p))) {
            return Decision { allow: true, reasons: Vec::new(), mode };
        }
        let mut denied_by: Vec<String> = Vec::new();
        let mut evaluate = false;
        for port in &ports {
            match t.hosts.lookup(name, Some(*port)) {
                Lookup::Final(v) if v.allow => return Decision { allow: true, reasons: reasons(v), mode },
                Lookup::Final(v) => {
                    for r in reasons(v) {
                        if !denied_by.contains(&r) {
                            denied_by.push(r);
                        }
                    }
                }
                Lookup::Evaluate => evaluate = true,
            }
        }
        if !evaluate {
            return Decision { allow: false, reasons: denied_by, mode };
        }
        for port in ports {
            let resource = if port == 0 { name.to_owned() } else { format!("{name}:{port}") };
            match self.check(session, "NetworkConnect", &resource, HashMap::new()).await {
                Ok((true, reasons)) => return Decision { allow: true, reasons, mode },
                Ok((false, reasons)) => {
                    for r in reasons {
                        if !denied_by.contains(&r) {
                            denied_by.push(r);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(session_id = %session, %resource, error = %e, "cannot ask leash-policy: denied");
                    return Decision { allow: false, reasons: vec!["leash:policy-unavailable".into()], mode };
                }
            }
        }
        Decision { allow: false, reasons: denied_by, mode }
    }

    /// Whether an entry of the address table (a policy's, or a guard)
    /// refuses `ip` (on `port`, 0 for any).
    pub fn address_denied(&self, session: &str, ip: IpAddr, port: u16) -> bool {
        let Some(held) = self.held(session) else { return true };
        held.tables.net.entry(leash_core::tables::normalize_ip(ip), port).is_some_and(|v| !v.allow)
    }

    /// The headers to set on an HTTPS request to `name` on `port`, each
    /// with its value (secret references resolved) and the policies that
    /// declare it; a reference that does not resolve is an error for it.
    pub fn rewrites(&self, session: &str, name: &str, port: u16) -> Vec<(String, Result<String, String>, Vec<String>)> {
        let Some(held) = self.held(session) else { return Vec::new() };
        let t = &held.tables;
        t.rewrites
            .iter()
            .filter(|r| r.applies(name, port))
            .map(|r| {
                (
                    r.header.clone(),
                    leash_daemon::secrets::resolve(&r.value),
                    t.reasons.get(r.reason as usize).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn check(
        &self,
        session: &str,
        action: &str,
        resource: &str,
        context: HashMap<String, String>,
    ) -> Result<(bool, Vec<String>), String> {
        self.check_answer(session, action, resource, context).await.map(|r| (r.allow, r.reasons))
    }

    /// leash-policy's whole answer.
    async fn check_answer(
        &self,
        session: &str,
        action: &str,
        resource: &str,
        context: HashMap<String, String>,
    ) -> Result<pb::CheckResponse, String> {
        let ask = async {
            let r = self
                .client()
                .await?
                .check(pb::CheckRequest {
                    principal: String::new(),
                    action: action.to_owned(),
                    resource: resource.to_owned(),
                    context,
                    session: session.to_owned(),
                })
                .await
                .map_err(|s| format!("leash-policy: {}", s.message()))?
                .into_inner();
            Ok(r)
        };
        tokio::time::timeout(Duration::from_secs(2), ask).await.map_err(|_| "leash-policy: timed out".to_owned())?
    }
}

/// Follows the policy service's changes into the held sessions; after a
/// reconnection every session is reloaded (changes may have been missed).
pub async fn follow(decider: Arc<Decider>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let run = async {
            let Ok(mut client) = decider.client().await else { return };
            let Ok(stream) = client.watch(pb::WatchRequest { session: String::new() }).await else { return };
            let mut stream = stream.into_inner();
            for id in decider.sessions() {
                if let Err(e) = decider.refresh(&id).await {
                    tracing::warn!(session_id = %id, error = %e, "cannot reload the session's policy; the last stays");
                }
            }
            while let Ok(Some(c)) = stream.message().await {
                if matches!(c.kind.as_str(), "current" | "close" | "invalid" | "unwatched") {
                    continue;
                }
                if decider.generation(&c.session).is_some_and(|g| g < c.generation)
                    && let Err(e) = decider.refresh(&c.session).await
                {
                    tracing::warn!(session_id = %c.session, error = %e, "cannot reload the session's policy; the last stays");
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = run => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
