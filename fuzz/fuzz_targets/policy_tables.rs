//! The table compiler: for any policy that loads, the compiled tables
//! decide every path the policy names (and its neighbours) as the
//! authorizer does, wherever the tables give a final answer.
#![no_main]

use std::collections::BTreeMap;

use leash_core::tables::{FileAction, Lookup};
use leash_policy::engine::{Action, Engine, Source, combine};
use leash_policy::resource::Resource;
use libfuzzer_sys::fuzz_target;

/// Absolute paths in the text, with a child and a sibling of each.
fn paths(text: &str) -> Vec<String> {
    let mut out = vec!["/".to_owned(), "/etc/passwd".to_owned(), "/w/p/.git/hooks/pre-commit".to_owned()];
    for quoted in text.split('"').skip(1).step_by(2).filter(|s| s.starts_with('/')).take(16) {
        let base = quoted.trim_end_matches('/');
        out.push(quoted.to_owned());
        out.push(format!("{base}/x"));
        out.push(format!("{base}x"));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let Ok(engine) = Engine::load(&[Source { name: "fuzz.cedar".into(), text: text.clone() }]) else { return };
    let tables = engine.tables("claude");
    let ctx = BTreeMap::new();
    for p in paths(&text) {
        let r = Resource::File(p.clone());
        for action in FileAction::ALL {
            let expected = match action {
                FileAction::Open => engine.authorize_one("claude", Action::FileOpen, &r, &ctx),
                FileAction::Read => combine(
                    engine.authorize_one("claude", Action::FileOpenReadOnly, &r, &ctx),
                    engine.authorize_one("claude", Action::FileOpen, &r, &ctx),
                ),
                FileAction::Write => combine(
                    engine.authorize_one("claude", Action::FileOpenReadWrite, &r, &ctx),
                    engine.authorize_one("claude", Action::FileOpen, &r, &ctx),
                ),
                FileAction::Exec => engine.authorize_one("claude", Action::ProcessExec, &r, &ctx),
            };
            if let Lookup::Final(v) = tables.lookup(action, &p) {
                assert_eq!(
                    (v.allow, tables.reasons(v)),
                    (expected.allow, expected.reasons.as_slice()),
                    "{action:?} {p}\n{text}"
                );
            }
        }
    }
});
