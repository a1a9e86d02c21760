//! The DNS relay's message parsing: any bytes, as a question and as an
//! answer, never panic (compression loops, truncation, bad lengths).
#![no_main]

use leash_proxy::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dns::question(data);
    let _ = dns::answer(data);
});
