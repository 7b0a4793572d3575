//! Encoding: a frame (or a REQUEST or BATCH from borrowed parts, without copying the
//! bodies first) into its bytes with the length prefix, or an error when a field
//! does not fit its length field.

use crate::frame::{Error, Frame, ItemOutcome, kind};

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<(), Error> {
    let n = u32::try_from(b.len()).map_err(|_| Error::TooLarge {
        len: b.len(),
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<(), Error> {
    let n = u16::try_from(n).map_err(|_| Error::FieldTooLong { what, len: n })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), Error> {
    let n = u16::try_from(s.len()).map_err(|_| Error::FieldTooLong { what, len: s.len() })?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![0, 0, 0, 0, self.kind()];
        match self {
            Frame::Hello { version, pid, meta } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(meta.as_bytes());
            }
            Frame::Ready { json } => out.extend_from_slice(json.as_bytes()),
            Frame::SetupFailed { text } => out.extend_from_slice(text.as_bytes()),
            Frame::ForkWarning { json } => out.extend_from_slice(json.as_bytes()),
            Frame::Request(r) => {
                return encode_request(r.id, r.deadline_ms, &r.method, &r.content_type, &r.body);
            }
            Frame::Reply {
                id,
                content_type,
                body,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(&mut out, content_type, "content type")?;
                out.extend_from_slice(body);
            }
            Frame::Error {
                id,
                message,
                traceback,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&(message.len() as u32).to_be_bytes());
                out.extend_from_slice(message.as_bytes());
                out.extend_from_slice(traceback.as_bytes());
            }
            Frame::BadRequest { id, message } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Refused {
                id,
                status,
                message,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Batch { method, items } => {
                let refs: Vec<BatchItemRef<'_>> = items
                    .iter()
                    .map(|i| (i.id, i.deadline_ms, i.content_type.as_str(), &i.body[..]))
                    .collect();
                return encode_batch(method, &refs);
            }
            Frame::BatchReply { results } => {
                put_count(&mut out, results.len(), "batch size")?;
                for r in results {
                    out.extend_from_slice(&r.id.to_be_bytes());
                    match &r.outcome {
                        ItemOutcome::Ok { content_type, body } => {
                            out.push(0);
                            put_str16(&mut out, content_type, "content type")?;
                            put_bytes32(&mut out, body)?;
                        }
                        ItemOutcome::Refused { status, message } => {
                            out.push(1);
                            out.extend_from_slice(&status.to_be_bytes());
                            put_bytes32(&mut out, message.as_bytes())?;
                        }
                        ItemOutcome::Failed { message, traceback } => {
                            out.push(2);
                            put_bytes32(&mut out, message.as_bytes())?;
                            put_bytes32(&mut out, traceback.as_bytes())?;
                        }
                    }
                }
            }
            Frame::StreamStart { id, content_type } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(&mut out, content_type, "content type")?;
            }
            Frame::Chunk { id, data } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::StreamEnd { id } => out.extend_from_slice(&id.to_be_bytes()),
            Frame::Shutdown => {}
            Frame::Cancel { id } => out.extend_from_slice(&id.to_be_bytes()),
        }
        let len = out.len() - 4;
        let len32 = u32::try_from(len).map_err(|_| Error::TooLarge {
            len,
            max: u32::MAX as usize,
        })?;
        out[..4].copy_from_slice(&len32.to_be_bytes());
        Ok(out)
    }
}

/// Encodes a REQUEST frame from borrowed parts, in one allocation of the exact
/// size: the daemon's hot path, which does not own the request's body.
pub fn encode_request(
    id: u64,
    deadline_ms: u32,
    method: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let len = 1 + 8 + 4 + 2 + method.len() + 2 + content_type.len() + body.len();
    let mut out = start_frame(kind::REQUEST, len)?;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&deadline_ms.to_be_bytes());
    put_str16(&mut out, method, "method")?;
    put_str16(&mut out, content_type, "content type")?;
    out.extend_from_slice(body);
    Ok(out)
}

/// A frame of `len` bytes (type byte included) so far: its length prefix and type,
/// with room for the rest.
fn start_frame(kind: u8, len: usize) -> Result<Vec<u8>, Error> {
    let len32 = u32::try_from(len).map_err(|_| Error::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&len32.to_be_bytes());
    out.push(kind);
    Ok(out)
}

/// One item of a BATCH, borrowed: id, deadline_ms, content type, body.
pub type BatchItemRef<'a> = (u64, u32, &'a str, &'a [u8]);

/// Encodes a BATCH frame from borrowed parts, in one allocation of the exact size
/// (the daemon does not own its requests' bodies).
pub fn encode_batch(method: &str, items: &[BatchItemRef<'_>]) -> Result<Vec<u8>, Error> {
    if items.is_empty() {
        return Err(Error::Invalid("BATCH", "a batch of no request"));
    }
    let len = 1
        + 2
        + method.len()
        + 2
        + items
            .iter()
            .map(|(_, _, ct, body)| 8 + 4 + 2 + ct.len() + 4 + body.len())
            .sum::<usize>();
    let mut out = start_frame(kind::BATCH, len)?;
    put_str16(&mut out, method, "method")?;
    put_count(&mut out, items.len(), "batch size")?;
    for (id, deadline_ms, ct, body) in items {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&deadline_ms.to_be_bytes());
        put_str16(&mut out, ct, "content type")?;
        put_bytes32(&mut out, body)?;
    }
    Ok(out)
}
