//! Fuzz the frame decoder: it must never panic, never allocate past the maximum,
//! and every frame it accepts must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock_protocol::{Frame, decode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest, 1 << 16) {
        let again = frame.encode().expect("a decoded frame re-encodes");
        let (g, _) = decode(&again, 1 << 16).unwrap().unwrap();
        assert_eq!(g, frame);
        rest = &rest[used..];
    }
    let _ = Frame::decode_body(data);
});
