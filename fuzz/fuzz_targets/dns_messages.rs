//! The DNS relay's message parsing: any bytes, as a question, a query to
//! refuse and an answer, never panic (compression loops, truncation, bad
//! lengths); a refusal built is itself one plain question.
#![no_main]

use leash_proxy::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dns::question(data);
    let _ = dns::answer(data);
    if let Ok(q) = dns::query(data) {
        let _ = dns::suspicious(&q.name);
    }
    if let Some(r) = dns::refusal(data, dns::RCODE_REFUSED) {
        assert_eq!(dns::question(&r).ok(), dns::query(data).ok().map(|q| q.name));
    }
});
