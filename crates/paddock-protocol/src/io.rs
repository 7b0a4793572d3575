//! Reading and writing frames on an async stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Frame, check_len};

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

/// Reads one frame. The length is checked against `max` before the body is
/// allocated. Not cancel-safe: run it in a task of its own.
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
