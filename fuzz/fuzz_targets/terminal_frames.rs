//! The frames between leashd and leash-entry: any bytes either side could
//! receive are a whole frame, a frame still arriving, or an error naming
//! what is wrong — never a panic or an allocation beyond the bytes given —
//! and every frame read encodes back to the bytes it was read from.
#![no_main]

use leash_core::terminal::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, n))) = Frame::decode(rest) {
        let mut again = Vec::new();
        frame.encode(&mut again).expect("a frame read is a frame that can be written");
        assert_eq!(again, &rest[..n], "{frame:?}");
        rest = &rest[n..];
    }
});
