//! Pieces more than one fuzz target uses; each target includes this file with `#[path]`.
#![allow(dead_code)] // each target uses its own subset

use tandem::config::Check;
use tokio::runtime::Runtime;

/// A current-thread runtime with its clock paused: timeouts in the code under test cost no
/// real time.
pub fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The first check of the first pool of config `text`.
pub fn first_check(text: &str) -> Check {
    let config = tandem::config::parse(text, "fuzz.toml").expect("valid config");
    config.pools[0].checks[0].clone()
}

/// A probed member's side of the connection, for the probe targets: once what the probe wrote
/// satisfies `ready` (an HTTP request head; any ClientHello), replies with `reply`, at most
/// `piece` bytes a read, then end of stream. Nothing is readable before: an HTTP client rightly
/// rejects a response that arrives before its request, so a reply served at once would never
/// reach the parser under test. Later writes are taken and kept.
pub struct CannedMember {
    written: Vec<u8>,
    ready: fn(&[u8]) -> bool,
    reader: Option<std::task::Waker>,
    reply: Vec<u8>,
    at: usize,
    piece: usize,
}

impl CannedMember {
    /// `data`'s first byte sets the piece size (1-256), the rest is the reply.
    pub fn from_input(data: &[u8], ready: fn(&[u8]) -> bool) -> Option<CannedMember> {
        let (&piece, reply) = data.split_first()?;
        Some(CannedMember {
            written: Vec::new(),
            ready,
            reader: None,
            reply: reply.to_vec(),
            at: 0,
            piece: usize::from(piece) + 1,
        })
    }
}

impl tokio::io::AsyncRead for CannedMember {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !(self.ready)(&self.written) {
            self.reader = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        let n = self
            .piece
            .min(buf.remaining())
            .min(self.reply.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.reply[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for CannedMember {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.written.extend_from_slice(b);
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        std::task::Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
