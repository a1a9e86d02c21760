//! Replay: a candidate policy against a recorded session. Every decided
//! event records its request as it was authorized (principal, action,
//! resource, context), so leash-policy can decide it again with the
//! candidate — before anyone enforces it.

use leash_daemon::access::Peer;
use leash_proto::v1 as pb;
use tonic::Status;

/// leash-policy, reached when the replay gets that far.
type Policy = pb::policy_client::PolicyClient<tonic::transport::Channel>;

/// The actions a policy decides.
const DECIDED: [&str; 6] =
    ["FileOpen", "FileOpenReadOnly", "FileOpenReadWrite", "ProcessExec", "NetworkConnect", "McpCall"];

/// Why an event cannot be replayed exactly, if so.
fn inexact(e: &pb::Event) -> Option<String> {
    let file = e.action.starts_with("FileOpen") || e.action == "ProcessExec";
    if file && !e.resource.starts_with('/') {
        return Some(format!("the path was not resolved ({:?}): the kernel decided it by its tables", e.resource));
    }
    if let Some(guard) = e.policy_ids.iter().find(|p| p.starts_with("leash:")) {
        return Some(format!("decided by leash itself ({guard}), not by the policy; a candidate cannot change it"));
    }
    if e.action == "NetworkConnect"
        && leash_proto::event::kind_name(e.kind) == "connect"
        && e.details.contains_key("name")
    {
        return Some("the kernel saw an address; the name behind it decided through the DNS relay".into());
    }
    None
}

/// The request an event records.
fn request_of(e: &pb::Event, principal: &str) -> pb::CheckRequest {
    let context = e
        .details
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("context.").map(|k| (k.to_owned(), v.clone())))
        .chain(e.details.get("arguments").map(|a| ("arguments".to_owned(), a.clone())))
        .collect();
    pb::CheckRequest {
        principal: principal.to_owned(),
        action: e.action.clone(),
        resource: e.resource.clone(),
        context,
        session: String::new(),
    }
}

/// Replays the recorded session `req.session` (id or prefix; its owner or
/// root) against `req.sources`: `stored` gives the store's events of the
/// sessions whose id starts so (none when the store is not open), `policy`
/// leash-policy.
pub async fn run<E, P>(
    caller: Peer,
    req: pb::PolicyReplayRequest,
    stored: E,
    policy: P,
) -> Result<pb::PolicyReplayResponse, Status>
where
    E: std::future::Future<Output = Result<Option<Vec<pb::Event>>, Status>>,
    P: std::future::Future<Output = Result<Policy, Status>>,
{
    if req.session.is_empty() {
        return Err(Status::invalid_argument("name the recorded session to replay (--session ID)"));
    }
    let Some(events) = stored.await? else {
        return Err(Status::failed_precondition("the audit store is not open: nothing is recorded to replay"));
    };
    let sessions: std::collections::BTreeSet<&str> = events.iter().map(|e| e.session.as_str()).collect();
    let session = match sessions.len() {
        0 => return Err(Status::not_found(format!("no recorded session {:?}", req.session))),
        1 => sessions.into_iter().next().unwrap_or_default().to_owned(),
        n => {
            return Err(Status::invalid_argument(format!(
                "{:?} names {n} recorded sessions; give more of the id",
                req.session
            )));
        }
    };
    let created = events.iter().find(|e| e.action == "session.create");
    let owner = created.and_then(|e| e.details.get("owner")).and_then(|o| o.parse::<u32>().ok());
    if !caller.is_privileged() && owner != Some(caller.uid) {
        return Err(Status::permission_denied(format!("session {session} is not yours (uid {})", caller.uid)));
    }
    let principal = created.and_then(|e| e.details.get("principal")).cloned().unwrap_or_else(|| "agent".into());
    let mut decided: Vec<pb::Event> = events
        .into_iter()
        .filter(|e| DECIDED.contains(&e.action.as_str()) && leash_proto::event::decision_name(e.decision).is_some())
        .collect();
    if req.limit > 0 && decided.len() > req.limit as usize {
        decided.drain(..decided.len() - req.limit as usize);
    }
    let requests = decided.iter().map(|e| request_of(e, &principal)).collect();
    let mut policy = policy.await?;
    let r = policy.replay(pb::ReplayRequest { sources: req.sources, requests }).await?.into_inner();
    let mut out = pb::PolicyReplayResponse { valid: r.valid, errors: r.errors, session, ..Default::default() };
    if !r.valid {
        return Ok(out);
    }
    out.replayed = decided.len() as u32;
    for (e, d) in decided.into_iter().zip(r.results) {
        let recorded_deny = leash_proto::event::decision_name(e.decision) == Some("deny") || e.would_deny;
        let why = inexact(&e).or_else(|| (!d.errors.is_empty()).then(|| d.errors.join("; ")));
        let finding = pb::ReplayFinding {
            decision: if d.allow { "allow" } else { "deny" }.to_owned(),
            policies: d.reasons,
            inexact: why.clone().unwrap_or_default(),
            event: Some(e),
        };
        if why.is_some() {
            out.inexact.push(finding);
        } else if !d.allow && !recorded_deny {
            out.denied.push(finding);
        } else if d.allow && recorded_deny {
            out.allowed.push(finding);
        }
    }
    Ok(out)
}
