//! Ask on deny in the proxy (`leash --ask`): an HTTP request the policy
//! denies in enforce mode waits — its client keeps waiting for the
//! response — while leashd asks the session's user; the request goes on
//! when the answer allows it, and is refused (403) on "deny" or when the
//! session's `ask_timeout` passes. Waiting holds no lock: each request is
//! its own task, parked on a one-shot channel. At most [`MAX_WAITING`]
//! requests of all sessions wait at once; past that a denial is refused
//! at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leash_proto::v1 as pb;
use tokio::sync::oneshot;

/// Requests waiting for an answer at once, over all sessions.
pub const MAX_WAITING: usize = 256;

/// Each waiting request's session and where its answer goes, by ask id.
type Open = HashMap<u64, (String, oneshot::Sender<(bool, String)>)>;

/// The requests waiting for an answer.
#[derive(Debug)]
pub struct Waiting {
    next: AtomicU64,
    open: Mutex<Open>,
}

impl Default for Waiting {
    fn default() -> Waiting {
        // Ids start from the time: a restarted proxy never reuses one a
        // question still open in leashd carries.
        Waiting { next: AtomicU64::new(leash_core::time::id_seed()), open: Mutex::default() }
    }
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks about a denied request of `session`: `publish` gets its ask id
    /// (to publish the question); waits up to `timeout` for the answer.
    /// Whether it may go on, and how it was answered ("timeout" when it was
    /// not; "refused" when too many wait).
    pub async fn ask(&self, session: &str, timeout: Duration, publish: impl FnOnce(u64)) -> (bool, String) {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut open = self.lock();
            if open.len() >= MAX_WAITING {
                return (false, "refused".to_owned());
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            open.insert(id, (session.to_owned(), tx));
            id
        };
        publish(id);
        let answer = tokio::time::timeout(timeout, rx).await;
        self.lock().remove(&id);
        match answer {
            Ok(Ok(a)) => a,
            _ => (false, "timeout".to_owned()),
        }
    }

    /// Hands an answer to the request waiting on it; false when none of
    /// `session` does (answered, or timed out).
    pub fn answer(&self, a: &pb::AnswerRequest) -> bool {
        let mut open = self.lock();
        match open.get(&a.ask_id) {
            Some((s, _)) if *s == a.session => {}
            _ => return false,
        }
        let (_, tx) = open.remove(&a.ask_id).expect("present");
        tx.send((a.allow, a.how.clone())).is_ok()
    }
}

/// Whether a denial is the policy's, which a user may be asked to
/// overrule: not one of the proxy's own refusals (`leash:` reasons: domain
/// fronting, the policy service unavailable, the guards).
pub fn offerable(reasons: &[String]) -> bool {
    !reasons.iter().any(|r| r.starts_with("leash:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_request_only_and_silence_times_out() {
        let w = std::sync::Arc::new(Waiting::default());
        let (id_tx, id_rx) = oneshot::channel();
        let asking = {
            let w = w.clone();
            tokio::spawn(async move {
                w.ask("s1", Duration::from_secs(10), |id| {
                    let _ = id_tx.send(id);
                })
                .await
            })
        };
        let id = id_rx.await.unwrap();
        let answer = |session: &str, id| pb::AnswerRequest {
            session: session.into(),
            ask_id: id,
            allow: true,
            how: "once".into(),
        };
        assert!(!w.answer(&answer("s2", id)), "another session's answer");
        assert!(!w.answer(&answer("s1", id + 1)), "another id");
        assert!(w.answer(&answer("s1", id)));
        assert_eq!(asking.await.unwrap(), (true, "once".to_owned()));
        assert!(!w.answer(&answer("s1", id)), "answered once only");
        let silent = w.ask("s1", Duration::from_millis(20), |_| {}).await;
        assert_eq!(silent, (false, "timeout".to_owned()));
        assert!(w.lock().is_empty());
    }

    #[test]
    fn the_proxys_own_refusals_are_never_offered() {
        assert!(offerable(&["no-post".into()]));
        assert!(offerable(&[]));
        assert!(!offerable(&["leash:sni-host-mismatch".into()]));
    }
}
