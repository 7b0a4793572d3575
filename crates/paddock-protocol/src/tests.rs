//! The protocol's tests: round trips of every frame (property-tested), prefixes,
//! concatenation, arbitrary bytes, the documented limits, and the version every
//! document names.

use super::*;
use proptest::prelude::*;

fn arb_frame() -> impl Strategy<Value = Frame> {
    let s16 = "[a-zA-Z0-9/;=. -]{0,40}";
    prop_oneof![
        (any::<u16>(), any::<u32>(), ".{0,40}").prop_map(|(version, pid, meta)| Frame::Hello {
            version,
            pid,
            meta
        }),
        ".{0,80}".prop_map(|json| Frame::Ready { json }),
        ".{0,80}".prop_map(|text| Frame::SetupFailed { text }),
        ".{0,80}".prop_map(|json| Frame::ForkWarning { json }),
        (
            any::<u64>(),
            any::<u32>(),
            s16,
            s16,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(id, deadline_ms, method, content_type, body)| {
                Frame::Request(Request {
                    id,
                    deadline_ms,
                    method,
                    content_type,
                    body,
                })
            }),
        (
            any::<u64>(),
            s16,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(id, content_type, body)| Frame::Reply {
                id,
                content_type,
                body
            }),
        (any::<u64>(), ".{0,60}", ".{0,200}").prop_map(|(id, message, traceback)| {
            Frame::Error {
                id,
                message,
                traceback,
            }
        }),
        (any::<u64>(), ".{0,60}").prop_map(|(id, message)| Frame::BadRequest { id, message }),
        (any::<u64>(), 400u16..=599, ".{0,60}").prop_map(|(id, status, message)| {
            Frame::Refused {
                id,
                status,
                message,
            }
        }),
        (
            s16,
            proptest::collection::vec(
                (
                    any::<u64>(),
                    any::<u32>(),
                    s16,
                    proptest::collection::vec(any::<u8>(), 0..60)
                ),
                1..8
            )
        )
            .prop_map(|(method, items)| Frame::Batch {
                method,
                items: items
                    .into_iter()
                    .map(|(id, deadline_ms, content_type, body)| BatchItem {
                        id,
                        deadline_ms,
                        content_type,
                        body
                    })
                    .collect()
            }),
        proptest::collection::vec((any::<u64>(), arb_outcome()), 0..8).prop_map(|rs| {
            Frame::BatchReply {
                results: rs
                    .into_iter()
                    .map(|(id, outcome)| BatchResult { id, outcome })
                    .collect(),
            }
        }),
        (any::<u64>(), s16).prop_map(|(id, content_type)| Frame::StreamStart { id, content_type }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(id, data)| Frame::Chunk { id, data }),
        any::<u64>().prop_map(|id| Frame::StreamEnd { id }),
        Just(Frame::Shutdown),
        any::<u64>().prop_map(|id| Frame::Cancel { id }),
    ]
}

fn arb_outcome() -> impl Strategy<Value = ItemOutcome> {
    prop_oneof![
        (
            "[a-z/;=]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..60)
        )
            .prop_map(|(content_type, body)| ItemOutcome::Ok { content_type, body }),
        (400u16..=599, ".{0,40}")
            .prop_map(|(status, message)| ItemOutcome::Refused { status, message }),
        (".{0,40}", ".{0,80}")
            .prop_map(|(message, traceback)| ItemOutcome::Failed { message, traceback }),
    ]
}

proptest! {
    #[test]
    fn round_trip(f in arb_frame()) {
        let bytes = f.encode().unwrap();
        let (g, used) = decode(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(g, f);
    }

    #[test]
    fn every_prefix_is_incomplete_never_an_error(f in arb_frame()) {
        let bytes = f.encode().unwrap();
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..cut], DEFAULT_MAX_FRAME), Ok(None));
        }
    }

    #[test]
    fn frames_concatenate(a in arb_frame(), b in arb_frame()) {
        let mut bytes = a.encode().unwrap();
        bytes.extend(b.encode().unwrap());
        let (x, n) = decode(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let (y, m) = decode(&bytes[n..], DEFAULT_MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!((x, y, n + m), (a, b, bytes.len()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, 1024);
    }
}

#[test]
fn oversized_prefix_is_rejected_before_the_bytes_arrive() {
    let bytes = [0x7f, 0xff, 0xff, 0xff, kind::REPLY];
    assert_eq!(
        decode(&bytes, DEFAULT_MAX_FRAME),
        Err(Error::TooLarge {
            len: 0x7fff_ffff,
            max: DEFAULT_MAX_FRAME
        })
    );
}

/// One source for the version: the crate's constant. The specification's title
/// and closing note, and the Python SDK's constant and docstring must say the
/// same number.
#[test]
fn every_document_says_the_crates_version() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let v = VERSION;
    let spec = read("docs/protocol.md");
    for says in [
        format!("# The paddock worker protocol, version {v}\n"),
        format!(
            "A version-{v} daemon accepts workers that say {MIN_VERSION} to {v} in HELLO. The Python SDK says {v}."
        ),
        format!("`version: u16` ({MIN_VERSION} to {v})"),
    ] {
        assert!(spec.contains(&says), "docs/protocol.md should say: {says}");
    }
    let constant = read("sdk/python/paddock/_protocol.py");
    let says = format!("\nPROTOCOL_VERSION = {v}  #");
    assert!(
        constant.contains(&says),
        "the SDK's _protocol.py should say: {says}"
    );
    let face = read("sdk/python/paddock/__init__.py");
    let says = format!("implements docs/protocol.md (version {v}:");
    assert!(
        face.contains(&says),
        "the SDK's docstring should say: {says}"
    );
    assert!(
        include_str!("lib.rs")
            .starts_with(&format!("//! The paddock worker protocol (version {v})")),
        "this crate's header should name version {v}"
    );
}

#[test]
fn a_refusal_carries_an_error_status_only() {
    let ok = Frame::Refused {
        id: 7,
        status: 422,
        message: "no".into(),
    };
    let bytes = ok.encode().unwrap();
    assert_eq!(decode(&bytes, 100).unwrap().unwrap().0, ok);
    for status in [200u16, 399, 600] {
        let bad = Frame::Refused {
            id: 7,
            status,
            message: "no".into(),
        };
        assert_eq!(
            decode(&bad.encode().unwrap(), 100),
            Err(Error::Invalid(
                "REFUSED",
                "a refusal's status is not in 400..=599"
            ))
        );
    }
}

#[test]
fn malformed_frames() {
    assert_eq!(decode(&[0, 0, 0, 0], 100), Err(Error::Empty));
    assert_eq!(
        decode(&[0, 0, 0, 1, 0x7f], 100),
        Err(Error::UnknownType(0x7f))
    );
    assert_eq!(
        decode(&[0, 0, 0, 3, kind::REPLY, 0, 0], 100),
        Err(Error::Truncated("REPLY"))
    );
    assert_eq!(
        decode(&[0, 0, 0, 2, kind::SHUTDOWN, 9], 100),
        Err(Error::Trailing("SHUTDOWN"))
    );
}

#[test]
fn bad_request_layout_is_the_documented_one() {
    // docs/protocol.md: type 0x16, `id: u64`, then the message to the end.
    let bytes = Frame::BadRequest {
        id: 0x0102_0304_0506_0708,
        message: "no text".into(),
    }
    .encode()
    .unwrap();
    let mut want = vec![0, 0, 0, 16, 0x16, 1, 2, 3, 4, 5, 6, 7, 8];
    want.extend_from_slice(b"no text");
    assert_eq!(bytes, want);
    assert!(matches!(
        Frame::decode_body(&[0x16, 0, 0, 0]),
        Err(Error::Truncated("BAD_REQUEST"))
    ));
}

#[test]
fn batch_layouts_are_the_documented_ones() {
    // docs/protocol.md: BATCH is method: str16, count: u16, then per item id: u64,
    // deadline_ms: u32, content_type: str16, body_len: u32, body.
    let bytes = Frame::Batch {
        method: "m".into(),
        items: vec![BatchItem {
            id: 1,
            deadline_ms: 2,
            content_type: "t".into(),
            body: b"xy".to_vec(),
        }],
    }
    .encode()
    .unwrap();
    let want = [
        0, 0, 0, 27, 0x17, 0, 1, b'm', 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, b't', 0, 0,
        0, 2, b'x', b'y',
    ];
    assert_eq!(bytes, want);
    // BATCH_REPLY: count: u16, then id: u64, outcome: u8 and its fields.
    let bytes = Frame::BatchReply {
        results: vec![BatchResult {
            id: 9,
            outcome: ItemOutcome::Refused {
                status: 400,
                message: "no".into(),
            },
        }],
    }
    .encode()
    .unwrap();
    let want = [
        0, 0, 0, 20, 0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 1, 144, 0, 0, 0, 2, b'n', b'o',
    ];
    assert_eq!(bytes, want);
}

#[test]
fn malformed_batches() {
    // A batch of nothing.
    assert!(matches!(
        Frame::decode_body(&[0x17, 0, 1, b'm', 0, 0]),
        Err(Error::Invalid("BATCH", _))
    ));
    // A count larger than what follows is truncated, not a huge allocation.
    assert_eq!(
        Frame::decode_body(&[0x17, 0, 1, b'm', 0xff, 0xff]),
        Err(Error::Truncated("BATCH"))
    );
    // An unknown outcome, and a refusal with a status that is no error.
    let mut b = vec![0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 7];
    assert!(matches!(
        Frame::decode_body(&b),
        Err(Error::Invalid("BATCH_REPLY", _))
    ));
    b.truncate(11);
    b.extend_from_slice(&[1, 0, 200, 0, 0, 0, 0]);
    assert!(matches!(
        Frame::decode_body(&b),
        Err(Error::Invalid("BATCH_REPLY", _))
    ));
}

#[test]
fn ids_carry_the_generation() {
    let id = request_id(7, 42);
    assert_eq!(generation_of(id), 7);
    assert_eq!(id & 0xffff_ffff, 42);
}
