//! Ask on deny (`leash --ask`, `[leash] ask = true`): when the policy
//! denies an operation of a session in enforce mode, the sensor parks it
//! and publishes the denial as a question (an event with `ask_id` and no
//! decision yet). Here leashd decides whether it may be offered at all —
//! never what the administrator's `policy.d` or the protect-host layer
//! forbids — and with which answers: "once", "session" (a permit added
//! to the session's runtime layer), "always" (that permit, and the same
//! statement appended to the session's policy file, written as its owner)
//! or "deny". It shows the question to the session's writing client (the
//! `leash` that started it, or the first attached one), which shows it on
//! the user's own terminal — never through anything the container can read
//! or write — and to the Control UI (`/api/asks`, answered by an
//! authenticated POST). The answer goes to the sensor, which lets the
//! operation through or refuses it; no answer within the session's
//! `ask_timeout` refuses it (the sensor's deadline, which holds even when
//! leashd is gone). Every outcome is an `ask.answer` event.
//!
//! A permit cannot overrule a `forbid` (Cedar: forbid wins): a denial by a
//! forbid of the user's own policy is offered "once" and "deny" only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use leash_core::{Event, EventKind};
use leash_proto::v1 as pb;

use super::{Info, Sessions};

/// The answers, in the order they are offered.
pub const CHOICES: [&str; 4] = ["once", "session", "always", "deny"];

/// One question open for a session's user.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pending {
    /// Its id, as clients answer it (`ask-<sensor's id>`).
    pub id: String,
    /// The session.
    pub session: String,
    /// The id of the held operation, in the component that holds it.
    #[serde(skip)]
    pub ask_id: u64,
    /// That component: leash-sensor (files, execs) or leash-proxy (HTTP requests).
    #[serde(skip)]
    pub held_by: leash_core::Component,
    /// The Cedar action denied.
    pub action: String,
    /// What it was denied on.
    pub resource: String,
    /// The program that tried.
    pub executable: String,
    /// The policies that denied it.
    pub policies: Vec<String>,
    /// The answers it may be given.
    pub choices: Vec<String>,
    /// The permit "session" and "always" add.
    pub statement: String,
    /// The policy file "always" appends it to.
    #[serde(skip)]
    pub policy_file: Option<String>,
    /// The question, on one line.
    pub question: String,
    /// When it stops waiting, milliseconds since the Unix epoch.
    pub deadline_unix_ms: i64,
    /// Its owner's uid.
    #[serde(skip)]
    pub owner: u32,
}

/// Who answered.
#[derive(Clone, Debug)]
pub enum Answerer {
    /// The user's terminal, through a client with this uid and pid.
    Terminal {
        /// The client's uid.
        uid: u32,
        /// The client's pid.
        pid: u32,
    },
    /// The Control UI.
    Ui,
}

impl Answerer {
    /// The terminal of the client `caller` is.
    pub fn terminal(caller: &leash_daemon::access::Peer) -> Answerer {
        Answerer::Terminal { uid: caller.uid, pid: caller.pid.unwrap_or_default() as u32 }
    }

    fn describe(&self) -> String {
        match self {
            Answerer::Terminal { uid, pid } => format!("terminal (uid {uid}, pid {pid})"),
            Answerer::Ui => "control-ui".to_owned(),
        }
    }
}

/// A Cedar string literal.
fn cedar_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The permit that lets exactly this action on this resource through: a
/// file by its path; a host by its name and port (a request to an address
/// with no name gets none: "once" and "deny" only).
pub fn permit_for(action: &str, resource: &str, id: &str) -> Option<String> {
    let head = |what: &str| {
        format!("@id({}) permit (principal, action == Action::{}, {what})", cedar_string(id), cedar_string(action))
    };
    match action {
        "FileOpen" | "FileOpenReadOnly" | "FileOpenReadWrite" | "ProcessExec" => {
            Some(format!("{};", head(&format!("resource == File::{}", cedar_string(resource)))))
        }
        "NetworkConnect" => {
            let host = resource.rsplit_once(':').map_or(resource, |(h, _)| h).trim_matches(['[', ']']);
            if host.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            Some(format!("{} when {{ resource in Host::{} }};", head("resource"), cedar_string(resource)))
        }
        _ => None,
    }
}

/// How a denial may be overruled, from the policies that made it.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Not at all: the administrator's or protect-host's (why).
    Never(String),
    /// Once, or not (a forbid of the user's: a permit would not overrule it).
    OnceOnly,
    /// By any answer.
    Any,
}

/// One policy in force: its effect and where it came from.
#[derive(Debug)]
pub struct Origin {
    /// "permit" or "forbid".
    pub effect: String,
    /// Its source: a file, "runtime", protect-host or an administrator's file.
    pub origin: String,
}

/// What a denial by `reasons` may be answered with.
pub fn offer(reasons: &[String], policies: &BTreeMap<String, Origin>, admin_dir: &std::path::Path) -> Offer {
    let mut forbid = false;
    for r in reasons {
        if r == leash_core::PROTECT_HOST_LAYER {
            return Offer::Never(format!("policy {r} is the protect-host layer"));
        }
        // A policy not in force any more (changed since) may have been the
        // administrator's: not offered.
        let Some(found) = policies.get(r) else {
            return Offer::Never(format!("policy {r} is not in force any more"));
        };
        let origin = found.origin.as_str();
        let file = origin.rsplit_once(':').map_or(origin, |(f, _)| f);
        if file == leash_core::PROTECT_HOST_LAYER {
            return Offer::Never(format!("policy {r} is the protect-host layer"));
        }
        if !file.is_empty() && std::path::Path::new(file).starts_with(admin_dir) {
            return Offer::Never(format!("policy {r} is the administrator's ({file})"));
        }
        forbid |= found.effect == "forbid";
    }
    if forbid { Offer::OnceOnly } else { Offer::Any }
}

impl Sessions {
    fn asks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Pending>> {
        self.asks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The questions open for every session (the Control UI's, whose
    /// signed-in user acts as root).
    pub fn open_asks(&self) -> Vec<Pending> {
        self.asks().values().cloned().collect()
    }

    /// Follows the hub for the sensor's questions until leashd stops.
    pub async fn watch_asks(self) {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut rx = self.ctx.hub.subscribe_with(1024, dropped);
        loop {
            let stamped = tokio::select! {
                () = self.ctx.shutdown.cancelled() => return,
                s = rx.recv() => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let e = &stamped.event;
            if e.decision.is_none()
                && e.session.is_some()
                && let Some(ask_id) = e.details.get("ask_id").and_then(|a| a.parse::<u64>().ok())
            {
                let (me, e) = (self.clone(), e.clone());
                tokio::spawn(async move { me.offer_ask(ask_id, e).await });
            }
        }
    }

    async fn offer_ask(&self, ask_id: u64, e: Event) {
        let session = e.session.clone().unwrap_or_default();
        let info = self.lock().get(&session).cloned();
        let held_by = if e.details.get("ask_via").is_some_and(|v| v == leash_core::Component::Proxy.binary()) {
            leash_core::Component::Proxy
        } else {
            leash_core::Component::Sensor
        };
        let Some(info) = info.filter(|i| i.ask_timeout_s > 0) else {
            self.tell_holder(held_by, &session, ask_id, false, "deny").await;
            return;
        };
        let admin_dir = self.ctx.system_config.parent().map(|d| d.join("policy.d")).unwrap_or_default();
        let id = format!("ask-{ask_id}");
        let statement = permit_for(&e.action, &e.resource, &format!("asked-{ask_id}"));
        // What decided it must be known to be offered: fail closed.
        let (offered, policy_file) = match self.policy_origins(&session).await {
            Ok((policies, file)) => (offer(&e.policy_ids, &policies, &admin_dir), file),
            Err(why) => (Offer::Never(format!("the policy's origins cannot be read: {why}")), None),
        };
        let choices: Vec<String> = match (offered, &statement) {
            (Offer::Never(why), _) => {
                self.tell_holder(held_by, &session, ask_id, false, "deny").await;
                self.publish_answer(&info, &e, &id, "refused", &format!("leash ({why}: never offered)"), None);
                return;
            }
            (Offer::OnceOnly, _) | (Offer::Any, None) => vec!["once".into(), "deny".into()],
            (Offer::Any, Some(_)) => {
                CHOICES.iter().filter(|c| **c != "always" || policy_file.is_some()).map(|c| (*c).to_owned()).collect()
            }
        };
        let by = if e.policy_ids.is_empty() {
            "no permit".to_owned()
        } else {
            format!("policy {}", e.policy_ids.join(", "))
        };
        let program = e.executable.rsplit('/').next().unwrap_or(&e.executable);
        let question = format!(
            "denied {} {} by {program} ({by}); allow? (no answer in {}s: denied)",
            e.action, e.resource, info.ask_timeout_s
        );
        let timeout = Duration::from_secs(info.ask_timeout_s.into());
        let deadline = SystemTime::now() + timeout;
        let pending = Pending {
            id: id.clone(),
            session: session.clone(),
            ask_id,
            held_by,
            action: e.action.clone(),
            resource: e.resource.clone(),
            executable: e.executable.clone(),
            policies: e.policy_ids.clone(),
            choices: choices.clone(),
            statement: statement.unwrap_or_default(),
            policy_file,
            question: question.clone(),
            deadline_unix_ms: leash_daemon::unix_ms(deadline),
            owner: info.owner,
        };
        self.asks().insert(id.clone(), pending);
        let prompt = pb::Prompt { id: id.clone(), question, choices, default_choice: 0 };
        let shown = self.terminals.lock().unwrap_or_else(|p| p.into_inner()).get(&session).cloned();
        let shown = shown.is_some_and(|t| t.lock().unwrap_or_else(|p| p.into_inner()).ask(prompt));
        tracing::info!(session_id = %session, ask = %id, shown, "asking the user about a denial");
        tokio::time::sleep(timeout).await;
        if self.asks().remove(&id).is_some() {
            self.close_ask(&session, &id);
            self.publish_answer(&info, &e, &id, "timeout", "nobody", None);
        }
    }

    /// The policies in force for `session` with their origin, and its policy file.
    async fn policy_origins(&self, session: &str) -> Result<(BTreeMap<String, Origin>, Option<String>), String> {
        let channel = self.component(leash_core::Component::Policy).await?;
        let shown = pb::policy_client::PolicyClient::new(channel)
            .show(pb::ShowRequest { session: session.to_owned() })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        let admin_dir = self.ctx.system_config.parent().map(|d| d.join("policy.d")).unwrap_or_default();
        let file = shown
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .find(|n| n.starts_with('/') && !std::path::Path::new(n).starts_with(&admin_dir))
            .map(str::to_owned);
        let policies =
            shown.policies.into_iter().map(|p| (p.id, Origin { effect: p.effect, origin: p.origin })).collect();
        Ok((policies, file))
    }

    /// Answers the open question `id` of session `session` (full ids):
    /// lets the operation through or refuses it, and for "session" and
    /// "always" adds the permit.
    pub async fn answer_ask(&self, session: &str, id: &str, choice: &str, by: Answerer) -> Result<(), String> {
        let pending = {
            let mut asks = self.asks();
            match asks.get(id) {
                Some(p) if p.session == session => {}
                _ => return Err(format!("no open question {id} in session {session} (answered, or timed out)")),
            }
            let p = asks.remove(id).expect("present");
            if !p.choices.iter().any(|c| c == choice) {
                let choices = p.choices.join(", ");
                asks.insert(id.to_owned(), p);
                return Err(format!("{choice:?} is not an answer to {id}; one of {choices}"));
            }
            p
        };
        let mut added = None;
        if matches!(choice, "session" | "always") {
            match self.add_permit(&pending, choice == "always").await {
                Ok(note) => added = Some(Ok(note)),
                // The operation still goes through once: that is what was
                // answered first; the event says what could not be done.
                Err(why) => {
                    tracing::warn!(session_id = %session, ask = %id, "cannot add the permit: {why}");
                    added = Some(Err(why));
                }
            }
        }
        self.tell_holder(pending.held_by, session, pending.ask_id, choice != "deny", choice).await;
        self.close_ask(session, id);
        let info = self.lock().get(session).cloned();
        if let Some(info) = info {
            let mut e = Event::daemon(&pending.action, "", 0);
            e.resource = pending.resource.clone();
            e.executable = pending.executable.clone();
            e.policy_ids = pending.policies.clone();
            self.publish_answer(&info, &e, id, choice, &by.describe(), added);
        }
        Ok(())
    }

    /// Adds the question's permit to the session's runtime layer and, for
    /// "always", appends it to the policy file as the session's owner.
    async fn add_permit(&self, p: &Pending, always: bool) -> Result<String, String> {
        let channel = self.component(leash_core::Component::Policy).await?;
        let r = pb::policy_client::PolicyClient::new(channel)
            .edit(pb::EditRequest { session: p.session.clone(), add: vec![p.statement.clone()], remove: Vec::new() })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        if !r.valid {
            return Err(r.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; "));
        }
        if !always {
            return Ok("the session's runtime layer".to_owned());
        }
        let file = p.policy_file.as_deref().ok_or("the session's policy came from no file")?;
        // Its own id: the file's layer and the runtime layer both hold it
        // once the file is reloaded, and ids are unique across layers.
        let statement = permit_for(&p.action, &p.resource, &format!("always-{}", p.ask_id)).unwrap_or_default();
        append_policy(p.owner, std::path::Path::new(file), &statement)
            .await
            .map_err(|e| format!("added to the session's runtime layer, but not to {file}: {e}"))?;
        Ok(format!("the session's runtime layer and {file}"))
    }

    /// Answers the component that holds the operation.
    async fn tell_holder(&self, holder: leash_core::Component, session: &str, ask_id: u64, allow: bool, how: &str) {
        let req = pb::AnswerRequest { session: session.to_owned(), ask_id, allow, how: how.to_owned() };
        let r = match self.component(holder).await {
            Ok(channel) if holder == leash_core::Component::Proxy => {
                pb::proxy_client::ProxyClient::new(channel).answer(req).await.map(|_| ())
            }
            Ok(channel) => pb::sensor_client::SensorClient::new(channel).answer(req).await.map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e)),
        };
        if let Err(e) = r {
            // Its own deadline refuses the operation.
            tracing::warn!(session_id = %session, ask_id, "cannot answer {}: {}", holder.binary(), e.message());
        }
    }

    /// The question is closed: the clients that show it take it down.
    fn close_ask(&self, session: &str, id: &str) {
        let term = self.terminals.lock().unwrap_or_else(|p| p.into_inner()).get(session).cloned();
        if let Some(t) = term {
            t.lock().unwrap_or_else(|p| p.into_inner()).asked(id);
        }
    }

    fn publish_answer(
        &self,
        info: &Info,
        e: &Event,
        id: &str,
        answer: &str,
        by: &str,
        added: Option<Result<String, String>>,
    ) {
        let mut a = Event::daemon("ask.answer", &info.container, 0);
        a.kind = EventKind::Session;
        a.session = Some(info.id.clone());
        a.resource = e.resource.clone();
        a.executable = e.executable.clone();
        a.policy_ids = e.policy_ids.clone();
        a.details.insert("ask".to_owned(), id.to_owned());
        a.details.insert("answer".to_owned(), answer.to_owned());
        a.details.insert("by".to_owned(), by.to_owned());
        a.details.insert("denied_action".to_owned(), e.action.clone());
        match added {
            Some(Ok(to)) => {
                a.details.insert("permit_added_to".to_owned(), to);
            }
            Some(Err(why)) => {
                a.details.insert("permit_error".to_owned(), why);
            }
            None => {}
        }
        self.ctx.hub.publish(a);
    }
}

/// Appends a statement to a policy file through a helper process running
/// as the file's session owner: root never writes through a user's path.
async fn append_policy(owner: u32, path: &std::path::Path, statement: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let gid = super::plan::primary_gid(owner).unwrap_or(owner);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--append-policy")
        .arg(path)
        .env_clear()
        .uid(owner)
        .gid(gid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(statement.as_bytes()).await.map_err(|e| e.to_string())?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "the policy writer did not finish".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

/// The helper's side (`leashd --append-policy FILE`, as the file's owner):
/// appends the statement on stdin to an existing regular file, on a line of
/// its own, without following a symbolic link.
pub fn append_to_policy_file(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut statement = String::new();
    std::io::stdin().read_to_string(&mut statement).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    let line = format!("{sep}\n// Allowed when leash asked.\n{}\n", statement.trim());
    f.write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[(&str, &str, &str)]) -> BTreeMap<String, Origin> {
        list.iter()
            .map(|(id, effect, origin)| {
                ((*id).to_owned(), Origin { effect: (*effect).to_owned(), origin: (*origin).to_owned() })
            })
            .collect()
    }

    #[test]
    fn the_floor_is_never_offered_and_a_forbid_only_once() {
        let admin = std::path::Path::new("/etc/leash/policy.d");
        let p = origins(&[
            ("site", "forbid", "/etc/leash/policy.d/10-site.cedar:3"),
            ("mine", "forbid", "/home/u/p/leash.cedar:7"),
            ("protect-host", "forbid", "protect-host:1"),
        ]);
        assert!(matches!(offer(&["site".into()], &p, admin), Offer::Never(_)));
        assert!(matches!(offer(&["protect-host".into()], &p, admin), Offer::Never(_)));
        assert!(matches!(offer(&["mine".into(), "site".into()], &p, admin), Offer::Never(_)));
        assert_eq!(offer(&["mine".into()], &p, admin), Offer::OnceOnly);
        assert_eq!(offer(&[], &p, admin), Offer::Any, "no permit: any answer");
        assert!(matches!(offer(&["gone".into()], &p, admin), Offer::Never(_)), "a policy not in force any more");
    }

    #[test]
    fn the_permit_names_exactly_what_was_denied() {
        let s = permit_for("ProcessExec", "/usr/bin/we\"ird\\", "asked-1").unwrap();
        assert_eq!(
            s,
            r#"@id("asked-1") permit (principal, action == Action::"ProcessExec", resource == File::"/usr/bin/we\"ird\\");"#
        );
        assert_eq!(permit_for("NetworkConnect", "1.2.3.4:443", "x"), None);
    }
}
