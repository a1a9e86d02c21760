//! The Cedar front end: any text, loaded as a policy (parsing, the Go-leash
//! spelling rewrites, validation, lints), never panics; what loads has
//! lines and tables.
#![no_main]

use leash_policy::engine::{Engine, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    if let Ok(engine) = Engine::load(&[Source { name: "fuzz.cedar".into(), text }]) {
        let _ = leash_policy::lines(&engine);
        let _ = engine.tables("claude");
    }
});
