//! `AsyncRead + AsyncSeek` over a file. Reading streams from the current position with a
//! read-ahead window that starts at one segment and doubles as reads continue; seeking drops
//! the stream (cancelling its fetches), so random access never fetches far ahead.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::handle::FileHandle;
use super::stream::ByteStream;

/// See the module documentation. Created by [`FileHandle::reader`].
#[derive(Debug)]
pub struct FileReader {
    handle: FileHandle,
    position: u64,
    stream: Option<ByteStream>,
    chunk: Bytes,
}

impl FileHandle {
    /// An `AsyncRead + AsyncSeek` view of the file, positioned at 0.
    pub fn reader(&self) -> FileReader {
        FileReader {
            handle: self.clone(),
            position: 0,
            stream: None,
            chunk: Bytes::new(),
        }
    }
}

impl FileReader {
    /// The position of the next byte `poll_read` returns.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk[..n]);
                this.chunk.advance(n);
                this.position += n as u64;
                return Poll::Ready(Ok(()));
            }
            let len = this.handle.len();
            if this.position >= len {
                return Poll::Ready(Ok(()));
            }
            let (handle, position) = (&this.handle, this.position);
            let stream = this
                .stream
                .get_or_insert_with(|| handle.stream_slow_start(position..len));
            match ready!(stream.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.chunk = chunk,
                Some(Err(e)) => {
                    this.stream = None;
                    return Poll::Ready(Err(e.into()));
                }
                None => {
                    this.stream = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended early",
                    )));
                }
            }
        }
    }
}

impl AsyncSeek for FileReader {
    fn start_seek(mut self: Pin<&mut Self>, target: SeekFrom) -> io::Result<()> {
        let len = self.handle.len();
        let base_plus = |base: u64, delta: i64| base.checked_add_signed(delta);
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => base_plus(len, delta),
            SeekFrom::Current(delta) => base_plus(self.position, delta),
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        if position != self.position {
            self.stream = None;
            self.chunk = Bytes::new();
            self.position = position;
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.position))
    }
}
