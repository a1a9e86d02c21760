//! leashd's Control UI API, on the bodies a local user's client (the UI,
//! a script) sends `/api/policies…` (an add-from-action's names come from
//! recorded events, which an agent shapes): the first byte picks
//! the endpoint (replace, PATCH, add, add-from-action, delete, persist,
//! validate, complete, mode, replay) and, for Cedar bodies, whether the
//! content type says JSON; the rest is the body, read and checked as the
//! handler does before anything reaches the policy service, and for
//! `complete` the completions computed.
//!
//! Checked: nothing panics; what is accepted is not blank; an empty body
//! is accepted only where it may be; a statement made from an action is
//! exactly one Cedar statement, with the effect asked for, whatever the
//! action's names hold (no statement smuggled in through a quote); and
//! completions stay within `maxItems` and on the cursor's line.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "only what the bodies use is driven")]
#[path = "../../crates/leashd/src/api/suggest.rs"]
mod suggest;

#[path = "../../crates/leashd/src/api/bodies.rs"]
mod bodies;

fn content_type(json: bool) -> &'static str {
    if json { "application/json" } else { "text/plain; charset=utf-8" }
}

/// The statement made from an action: one Cedar policy, of the effect the
/// body asks for.
fn one_statement(body: &[u8], statement: &str) {
    let set = cedar_policy::PolicySet::from_str(statement)
        .unwrap_or_else(|e| panic!("{statement:?} from {:?} does not parse: {e}", String::from_utf8_lossy(body)));
    let policies: Vec<_> = set.policies().collect();
    assert_eq!(policies.len(), 1, "{statement:?}");
    // Read as the handler reads it (a struct: the strings of fields it
    // skips are not checked for UTF-8, as a `Value` would have them).
    #[derive(serde::Deserialize)]
    struct Asked {
        #[serde(default)]
        effect: String,
    }
    let asked = serde_json::from_slice::<Asked>(body).ok().map(|a| a.effect);
    let effect = match policies[0].effect() {
        cedar_policy::Effect::Permit => "permit",
        cedar_policy::Effect::Forbid => "forbid",
    };
    assert_eq!(asked.map(|a| a.trim().to_lowercase()).as_deref(), Some(effect), "{statement:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let json = first & 0x80 != 0;
    match (first & 0x7f) % 10 {
        // POST /api/policies, POST /api/policies/add
        0 | 2 => {
            if let Ok(text) = bodies::cedar(content_type(json), body) {
                assert!(!text.trim().is_empty(), "{text:?}");
            }
        }
        1 => {
            if let Ok(c) = bodies::patch(body) {
                assert!(!c.add.is_empty() || !c.remove.is_empty(), "{c:?}");
                assert!(c.add.iter().all(|s| !s.trim().is_empty()), "{c:?}");
                assert!(c.remove.iter().all(|s| !s.trim().is_empty()), "{c:?}");
            }
        }
        3 => {
            if let Ok(statement) = bodies::from_action(body) {
                one_statement(body, &statement);
            }
        }
        4 => {
            if let Ok(what) = bodies::delete(body) {
                assert!(!what.trim().is_empty(), "{what:?}");
            }
        }
        // POST /api/policies/persist, POST /api/policies/validate
        5 | 6 => {
            let blank = body.iter().all(u8::is_ascii_whitespace);
            match bodies::optional_cedar(content_type(json), body) {
                Ok(None) => assert!(blank),
                Ok(Some(text)) => assert!(!blank && !text.trim().is_empty(), "{text:?}"),
                Err(_) => assert!(!blank),
            }
        }
        7 => {
            let Ok(req) = bodies::complete(body) else { return };
            assert!(req.cursor.line >= 1 && req.cursor.column >= 1);
            let mut hints = suggest::Hints::default();
            hints.observe("FileOpenReadOnly", "/work/src/main.rs");
            hints.observe("NetworkConnect", "api.example.com:443");
            hints.observe("McpCall", "echo@mcp.test");
            if let Some(extra) = req.id_hints {
                hints.tools.extend(extra.tools);
                hints.servers.extend(extra.servers);
            }
            let (line, column) = (req.cursor.line as usize, req.cursor.column as usize);
            let max = req.max_items.unwrap_or(75);
            let items = suggest::complete(&req.cedar, line, column, max, &hints);
            assert!(items.len() <= max);
            for i in &items {
                assert!(i.range.start.line == line && i.range.end.line == line, "{i:?}");
                assert!(1 <= i.range.start.column && i.range.start.column <= i.range.end.column, "{i:?}");
                assert!(i.range.end.column <= column.max(1), "{i:?} past the cursor {column}");
            }
        }
        8 => {
            let _ = bodies::mode(body);
        }
        _ => {
            if let Ok(r) = bodies::replay(body) {
                let _ = (r.cedar, r.session, r.limit);
            }
        }
    }
});
