//! Reading and writing frames on an async stream.
//!
//! [`FrameReader`] is how the daemon reads a worker: through a buffer, so that a
//! frame costs one `read()` in the usual case (length prefix and body arrive
//! together), and cancel-safe, so that the worker's actor can wait for the next
//! frame in the same `select!` as its timers and commands, with no task in between.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Frame, check_len, decode};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the worker closed its socket")]
    Closed,
    #[error("reading from the worker: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] Error),
}

/// How much the buffer asks the socket for at least, per read.
const CHUNK: usize = 64 * 1024;
/// A buffer grown past this by a large frame is given back once it is empty.
const KEEP: usize = 1024 * 1024;

/// Frames from a stream, read through a buffer.
///
/// Invariants: the buffer only ever holds the bytes of frames not yet returned; a
/// length prefix is checked against `max` before room for its frame is reserved;
/// [`FrameReader::next`] is cancel-safe (bytes read before a cancellation stay in
/// the buffer, and a frame leaves the buffer only in the step that returns it).
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            max,
        }
    }

    /// The stream frames are read from.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame. `Closed` at end-of-file between frames; end-of-file inside
    /// a frame is an I/O error (`UnexpectedEof`).
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some((frame, used)) = decode(&self.buf, self.max)? {
                self.buf.drain(..used);
                if self.buf.is_empty() && self.buf.capacity() > KEEP {
                    self.buf = Vec::new();
                }
                return Ok(frame);
            }
            // Room for the rest of a frame whose (checked) length is known.
            let whole = match self.buf.get(..4) {
                Some(p) => 4 + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
                None => 0,
            };
            self.buf
                .reserve(whole.saturating_sub(self.buf.len()).max(CHUNK));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }
}

/// Reads one frame, unbuffered. The length is checked against `max` before the
/// body is allocated. Not cancel-safe: prefer [`FrameReader`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, ReadError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    check_len(len, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Frame::decode_body(&body)?)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let bytes = f.encode().map_err(std::io::Error::other)?;
    w.write_all(&bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn reply(n: usize) -> Frame {
        Frame::Reply {
            id: n as u64,
            content_type: "x".into(),
            body: vec![7; n],
        }
    }

    #[test]
    fn frames_split_anywhere_and_glued_together_come_out_whole_and_in_order() {
        rt().block_on(async {
            let frames: Vec<Frame> = [0, 1, 5, 70_000, 3, 200_000].map(reply).to_vec();
            let mut wire = vec![];
            for f in &frames {
                wire.extend(f.encode().unwrap());
            }
            // Chunks of odd sizes: prefixes split, several frames per read.
            let (mut tx, rx) = tokio::io::duplex(1000);
            let writer = tokio::spawn(async move {
                for c in wire.chunks(997) {
                    tx.write_all(c).await.unwrap();
                }
            });
            let mut r = FrameReader::new(rx, 1 << 20);
            for f in &frames {
                assert_eq!(&r.next().await.unwrap(), f);
            }
            writer.await.unwrap();
            assert!(matches!(r.next().await, Err(ReadError::Closed)));
        });
    }

    #[test]
    fn a_length_over_the_maximum_is_refused_before_its_body_arrives() {
        rt().block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            // Only the prefix is ever sent: the reader must not wait for 1 GiB.
            tx.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
            let mut r = FrameReader::new(rx, 1 << 20);
            let e = r.next().await.unwrap_err();
            assert!(
                matches!(e, ReadError::Protocol(Error::TooLarge { .. })),
                "{e}"
            );
            assert!(r.buf.capacity() < 1 << 20);
        });
    }

    #[test]
    fn end_of_file_inside_a_frame_is_not_a_clean_close() {
        rt().block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            let bytes = reply(10).encode().unwrap();
            tx.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
            drop(tx);
            let e = FrameReader::new(rx, 1 << 20).next().await.unwrap_err();
            assert!(matches!(e, ReadError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof), "{e}");
        });
    }

    #[test]
    fn next_is_cancel_safe() {
        rt().block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            let mut r = FrameReader::new(rx, 1 << 20);
            let bytes = reply(40).encode().unwrap();
            // Half a frame, then a cancelled wait: the half must not be lost.
            tx.write_all(&bytes[..20]).await.unwrap();
            tokio::select! {
                biased;
                f = r.next() => panic!("half a frame made {f:?}"),
                _ = async {} => {}
            }
            tx.write_all(&bytes[20..]).await.unwrap();
            assert_eq!(r.next().await.unwrap(), reply(40));
        });
    }
}
