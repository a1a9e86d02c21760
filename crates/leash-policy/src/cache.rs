//! A decision cache for the paths that cannot use kernel tables (hostnames,
//! MCP calls, the decision API): keyed by (action, resource, context),
//! emptied whenever the policy changes, so it never serves an answer of an
//! older policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::engine::{Action, Decision, Engine};
use crate::resource::Resource;

/// The cache of one session.
#[derive(Debug)]
pub struct DecisionCache {
    engine: Arc<Engine>,
    principal: String,
    generation: u64,
    entries: HashMap<(Action, Resource, BTreeMap<String, String>), Decision>,
    capacity: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that asked the authorizer.
    pub misses: u64,
}

impl DecisionCache {
    /// An empty cache over `engine`, keeping at most `capacity` decisions.
    pub fn new(engine: Arc<Engine>, principal: &str, generation: u64, capacity: usize) -> DecisionCache {
        DecisionCache {
            engine,
            principal: principal.to_owned(),
            generation,
            entries: HashMap::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// The generation of the policy the cached decisions came from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Switches to a new policy: every cached decision is dropped.
    pub fn replace(&mut self, engine: Arc<Engine>, generation: u64) {
        self.engine = engine;
        self.generation = generation;
        self.entries.clear();
    }

    /// Decides, from the cache when it can.
    pub fn decide(&mut self, action: Action, resource: &Resource, context: &BTreeMap<String, String>) -> Decision {
        let key = (action, resource.clone(), context.clone());
        if let Some(d) = self.entries.get(&key) {
            self.hits += 1;
            return d.clone();
        }
        self.misses += 1;
        let d = self.engine.authorize(&self.principal, action, resource, context);
        if self.entries.len() >= self.capacity {
            // Full: start over rather than track recency; hot entries return at once.
            self.entries.clear();
        }
        self.entries.insert(key, d.clone());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Source;

    fn engine(text: &str) -> Arc<Engine> {
        Arc::new(Engine::load(&[Source { name: "t".into(), text: text.into() }]).unwrap())
    }

    #[test]
    fn hits_and_invalidation() {
        let allow = engine("@id(\"a\") permit (principal, action, resource);");
        let deny = engine("@id(\"d\") forbid (principal, action, resource);");
        let mut c = DecisionCache::new(allow, "claude", 1, 10);
        let r = Resource::File("/x".into());
        let ctx = BTreeMap::new();
        assert!(c.decide(Action::FileOpen, &r, &ctx).allow);
        assert!(c.decide(Action::FileOpen, &r, &ctx).allow);
        assert_eq!((c.hits, c.misses), (1, 1));
        c.replace(deny, 2);
        let d = c.decide(Action::FileOpen, &r, &ctx);
        assert_eq!(
            (d.allow, d.reasons.as_slice()),
            (false, ["d".to_owned()].as_slice()),
            "no stale answer after a change"
        );
        assert_eq!(c.generation(), 2);
    }
}
