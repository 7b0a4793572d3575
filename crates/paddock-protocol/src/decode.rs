//! Decoding: one frame from the front of a buffer, its length checked against the
//! maximum before anything is allocated for it; never a panic, whatever the bytes.

use crate::frame::{BatchItem, BatchResult, Error, Frame, ItemOutcome, Request, kind};

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn text(&self, b: &[u8]) -> Result<String, Error> {
        String::from_utf8(b.to_vec()).map_err(|_| Error::NotUtf8(self.what))
    }
    fn str16(&mut self) -> Result<String, Error> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        self.text(b)
    }
    /// A `u32` length, then that many bytes.
    fn bytes32(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

impl Frame {
    /// Decodes a frame body: the type byte and the payload (the length prefix
    /// already removed and checked).
    pub fn decode_body(body: &[u8]) -> Result<Frame, Error> {
        let (&t, payload) = body.split_first().ok_or(Error::Empty)?;
        let mut r = Reader {
            buf: payload,
            what: Frame::name(t),
        };
        let f = match t {
            kind::HELLO => {
                let version = r.u16()?;
                let pid = r.u32()?;
                let meta = r.rest();
                Frame::Hello {
                    version,
                    pid,
                    meta: r.text(meta)?,
                }
            }
            kind::READY => {
                let b = r.rest();
                Frame::Ready { json: r.text(b)? }
            }
            kind::SETUP_FAILED => Frame::SetupFailed {
                text: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            kind::FORK_WARNING => {
                let b = r.rest();
                Frame::ForkWarning { json: r.text(b)? }
            }
            kind::REQUEST => Frame::Request(Request {
                id: r.u64()?,
                deadline_ms: r.u32()?,
                method: r.str16()?,
                content_type: r.str16()?,
                body: r.rest().to_vec(),
            }),
            kind::REPLY => Frame::Reply {
                id: r.u64()?,
                content_type: r.str16()?,
                body: r.rest().to_vec(),
            },
            kind::ERROR => {
                let id = r.u64()?;
                let n = r.u32()? as usize;
                let m = r.take(n)?;
                Frame::Error {
                    id,
                    message: String::from_utf8_lossy(m).into_owned(),
                    traceback: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::BAD_REQUEST => {
                let id = r.u64()?;
                Frame::BadRequest {
                    id,
                    message: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::REFUSED => {
                let id = r.u64()?;
                let status = r.u16()?;
                if !(400..=599).contains(&status) {
                    return Err(Error::Invalid(
                        "REFUSED",
                        "a refusal's status is not in 400..=599",
                    ));
                }
                Frame::Refused {
                    id,
                    status,
                    message: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::BATCH => {
                let method = r.str16()?;
                let count = r.u16()?;
                if count == 0 {
                    return Err(Error::Invalid("BATCH", "a batch of no request"));
                }
                let mut items = Vec::with_capacity(usize::from(count).min(r.buf.len() / 18));
                for _ in 0..count {
                    items.push(BatchItem {
                        id: r.u64()?,
                        deadline_ms: r.u32()?,
                        content_type: r.str16()?,
                        body: r.bytes32()?.to_vec(),
                    });
                }
                Frame::Batch { method, items }
            }
            kind::BATCH_REPLY => {
                let count = r.u16()?;
                let mut results = Vec::with_capacity(usize::from(count).min(r.buf.len() / 9));
                for _ in 0..count {
                    let id = r.u64()?;
                    let outcome = match r.u8()? {
                        0 => ItemOutcome::Ok {
                            content_type: r.str16()?,
                            body: r.bytes32()?.to_vec(),
                        },
                        1 => {
                            let status = r.u16()?;
                            if !(400..=599).contains(&status) {
                                return Err(Error::Invalid(
                                    "BATCH_REPLY",
                                    "a refusal's status is not in 400..=599",
                                ));
                            }
                            let m = r.bytes32()?;
                            ItemOutcome::Refused {
                                status,
                                message: String::from_utf8_lossy(m).into_owned(),
                            }
                        }
                        2 => {
                            let m = r.bytes32()?;
                            let t = r.bytes32()?;
                            ItemOutcome::Failed {
                                message: String::from_utf8_lossy(m).into_owned(),
                                traceback: String::from_utf8_lossy(t).into_owned(),
                            }
                        }
                        _ => return Err(Error::Invalid("BATCH_REPLY", "unknown outcome")),
                    };
                    results.push(BatchResult { id, outcome });
                }
                Frame::BatchReply { results }
            }
            kind::STREAM_START => Frame::StreamStart {
                id: r.u64()?,
                content_type: r.str16()?,
            },
            kind::CHUNK => Frame::Chunk {
                id: r.u64()?,
                data: r.rest().to_vec(),
            },
            kind::STREAM_END => Frame::StreamEnd { id: r.u64()? },
            kind::SHUTDOWN => Frame::Shutdown,
            kind::CANCEL => Frame::Cancel { id: r.u64()? },
            other => return Err(Error::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(Error::Trailing(Frame::name(t)));
        }
        Ok(f)
    }
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Ok(Some((frame, used)))` when a frame is complete. The length prefix is
/// checked against `max` before the frame's bytes are even looked at.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_len(len, max)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let f = Frame::decode_body(&buf[4..4 + len])?;
    Ok(Some((f, 4 + len)))
}

/// The length check applied to every prefix.
pub fn check_len(len: usize, max: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::Empty);
    }
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    Ok(())
}
