//! The exact request head cap: at most [`crate::server::MAX_HEAD_BYTES`] bytes from the
//! first byte of a request to the blank line that ends its headers.
//!
//! hyper's `max_buf_size` only bounds its read buffer loosely (a head of up to about
//! 114 KB passed a 64 KiB setting, because a read can overshoot the check), so the
//! stream itself counts: each request head is scanned for its end (`\r\n\r\n`) as it is
//! read; a head that grows past the cap gets `431 Request Header Fields Too Large` and
//! the connection ends. Counting restarts when the server writes a response (the next
//! request's head follows it) and stops for good once a `101 Switching Protocols` is
//! written: from then on the stream carries WebSocket frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head: bytes so far and how much of `\r\n\r\n` was just seen.
    Head { bytes: usize, matched: u8 },
    /// The head ended; a body (if any) and the response follow.
    Body,
    /// Upgraded: no more HTTP on this stream.
    Passthrough,
    /// The head passed the cap: 431 was sent; the rest of the request is read and
    /// dropped (so that closing does not reset the connection before the client reads
    /// the answer), up to [`DISCARD_MAX`] bytes, then the connection ends.
    Discard { bytes: usize },
}

/// Most bytes read and dropped after a 431.
const DISCARD_MAX: usize = 4 * 1024 * 1024;

/// A stream that enforces the request head cap.
#[derive(Debug)]
pub struct HeadLimit<S> {
    inner: S,
    state: State,
    max: usize,
}

impl<S> HeadLimit<S> {
    /// Wrap `inner`, allowing heads of at most `max` bytes.
    pub fn new(inner: S, max: usize) -> Self {
        Self { inner, state: State::Head { bytes: 0, matched: 0 }, max }
    }

    /// Account for `data` just read; `false` once the head passed the cap.
    fn scan(&mut self, data: &[u8]) -> bool {
        let State::Head { mut bytes, mut matched } = self.state else { return true };
        for &b in data {
            bytes += 1;
            if bytes > self.max {
                return false;
            }
            matched = match (matched, b) {
                (0 | 2, b'\r') => matched + 1,
                (1 | 3, b'\n') => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == 4 {
                // A pipelined next request may follow in the same read; it is counted
                // from the next response on, like any other.
                self.state = State::Body;
                return true;
            }
        }
        self.state = State::Head { bytes, matched };
        true
    }

    fn wrote(&mut self, first: &[u8]) {
        if first.is_empty() || self.state == State::Passthrough {
            return;
        }
        if first.starts_with(b"HTTP/1.1 101") {
            self.state = State::Passthrough;
        } else if self.state == State::Body && first.starts_with(b"HTTP/") {
            self.state = State::Head { bytes: 0, matched: 0 };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadLimit<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let State::Discard { .. } = this.state {
            return this.poll_discard(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.scan(&buf.filled()[before..]) {
                    return Poll::Ready(Ok(()));
                }
                buf.set_filled(before);
                // Best effort: the socket's send buffer is empty at this point, so the
                // short answer goes out at once.
                let _ = Pin::new(&mut this.inner).poll_write(cx, TOO_LARGE);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                let _ = Pin::new(&mut this.inner).poll_shutdown(cx);
                this.state = State::Discard { bytes: 0 };
                this.poll_discard(cx)
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> HeadLimit<S> {
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let too_large = || Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "request head above the limit")));
        let mut scratch = [0u8; 8192];
        loop {
            let State::Discard { bytes } = self.state else { return too_large() };
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !rb.filled().is_empty() && bytes < DISCARD_MAX => {
                    self.state = State::Discard { bytes: bytes + rb.filled().len() };
                }
                Poll::Ready(_) => return too_large(),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadLimit<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.wrote(buf);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            let first: &[u8] = first;
            self.wrote(first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_counted_to_its_blank_line() {
        let mut h = HeadLimit::new((), 64);
        assert!(h.scan(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(h.scan(b"\n\r\n"));
        assert_eq!(h.state, State::Body);
        // The body is not counted; the next head starts after a response.
        assert!(h.scan(&[b'x'; 1000]));
        h.wrote(b"HTTP/1.1 200 OK\r\n");
        assert!(!h.scan(&[b'a'; 65]));
    }

    #[test]
    fn nothing_is_counted_after_an_upgrade() {
        let mut h = HeadLimit::new((), 64);
        assert!(h.scan(b"GET / HTTP/1.1\r\n\r\n"));
        h.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert!(h.scan(&[0u8; 10_000]));
        h.wrote(b"HTTP/1.1 200 OK");
        assert!(h.scan(&[0u8; 10_000]));
    }

    #[test]
    fn exactly_the_limit_passes() {
        let mut h = HeadLimit::new((), 18);
        let head = b"GET / HTTP/1.1\r\n\r\n"; // 18 bytes
        assert!(h.scan(&head[..]));
        let mut h = HeadLimit::new((), 17);
        assert!(!h.scan(&head[..]));
    }
}
