//! Fuzz the frame decoder: it must never panic, never allocate past the maximum,
//! and every frame it accepts must re-encode to the same bytes. Version 3's batch
//! frames are held to their documented limits: a BATCH has at least one item, a
//! refusal's status (BATCH_REPLY's, and version 6's REFUSED) is an HTTP error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock_protocol::{Frame, ItemOutcome, decode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest, 1 << 16) {
        let again = frame.encode().expect("a decoded frame re-encodes");
        let (g, _) = decode(&again, 1 << 16).unwrap().unwrap();
        assert_eq!(g, frame);
        match &frame {
            Frame::Batch { items, .. } => assert!(!items.is_empty()),
            Frame::Refused { status, .. } => assert!((400..=599).contains(status)),
            Frame::BatchReply { results } => {
                for r in results {
                    if let ItemOutcome::Refused { status, .. } = r.outcome {
                        assert!((400..=599).contains(&status));
                    }
                }
            }
            _ => {}
        }
        rest = &rest[used..];
    }
    let _ = Frame::decode_body(data);
});
