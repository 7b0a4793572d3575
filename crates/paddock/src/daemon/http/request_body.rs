//! Reading a request's body within its service's limit and the instance's
//! `body_timeout`, for the model and job routes.
//!
//! Invariants: a body declared (`Content-Length`) over the limit is refused from
//! the head alone, before a byte of it is waited for; a body that grows past the
//! limit while it arrives (chunked) is refused as soon as it does; every refusal is
//! the gateway's JSON error shape, naming the limit and the setting behind it.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body::Body as _;

/// The largest body a REQUEST frame of `max_frame` bytes can carry for this
/// method and content type (docs/protocol.md: type, id, deadline, two str16s).
pub fn online_limit(max_frame: usize, method: &str, content_type: &str) -> usize {
    max_frame.saturating_sub(1 + 8 + 4 + 2 + method.len() + 2 + content_type.len())
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over `limit` bytes: `declared` when the head said so, else the bytes seen.
    TooLarge { size: u64, declared: bool },
    /// It did not arrive within `body_timeout`.
    TimedOut,
    /// The connection broke or the framing was bad.
    Broken(String),
}

impl BodyError {
    /// The HTTP status and the message; `limit` and `setting` name what was
    /// exceeded (for example `services.embed.max_frame`).
    pub fn answer(&self, limit: usize, setting: &str, timeout: Duration) -> (StatusCode, String) {
        match self {
            BodyError::TooLarge { size, declared } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is {}{size} bytes, over this route's limit of {limit} bytes ({setting})",
                    if *declared { "" } else { "at least " }
                ),
            ),
            BodyError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}ms (instance.body_timeout)",
                    timeout.as_millis()
                ),
            ),
            BodyError::Broken(why) => (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {why}"),
            ),
        }
    }
}

/// The length the head declares, where it declares one it can be held to.
fn declared(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses from the head alone a body declared over `limit`.
pub fn check_head(headers: &HeaderMap, limit: usize) -> Result<(), BodyError> {
    match declared(headers) {
        Some(n) if n > limit as u64 => Err(BodyError::TooLarge {
            size: n,
            declared: true,
        }),
        _ => Ok(()),
    }
}

/// The whole body, at most `limit` bytes, within `timeout`.
pub async fn read(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, collect(body, limit)).await {
        Ok(r) => r,
        Err(_) => Err(BodyError::TimedOut),
    }
}

async fn collect(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut parts: Vec<Bytes> = vec![];
    let mut size = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            size += data.len();
            if size > limit {
                return Err(BodyError::TooLarge {
                    size: size as u64,
                    declared: false,
                });
            }
            parts.push(data);
        }
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut all = Vec::with_capacity(size);
            for p in parts {
                all.extend_from_slice(&p);
            }
            all.into()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_online_limit_is_what_a_frame_can_carry() {
        // 1 type byte, id 8, deadline 4, "predict" (2 + 7), "application/json" (2 + 16).
        assert_eq!(online_limit(4096, "predict", "application/json"), 4096 - 40);
        assert_eq!(online_limit(10, "predict", "x"), 0);
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_from_the_head() {
        let mut h = HeaderMap::new();
        assert_eq!(check_head(&h, 10), Ok(()));
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(
            check_head(&h, 10),
            Err(BodyError::TooLarge {
                size: 11,
                declared: true
            })
        );
        assert_eq!(check_head(&h, 11), Ok(()));
    }

    #[tokio::test]
    async fn a_body_is_read_whole_or_refused_past_the_limit() {
        let t = Duration::from_secs(5);
        let b = read(Body::from("hello"), 5, t).await.unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(
            read(Body::from("hello!"), 5, t).await,
            Err(BodyError::TooLarge {
                size: 6,
                declared: false
            })
        );
    }
}
