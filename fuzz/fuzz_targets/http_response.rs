//! The `http`/`https` probe on an arbitrary member reply, served in pieces whose size comes from
//! the input's first byte and then closed: never panics, ends on its own (the stream never
//! blocks, so a timeout would mean it waits on a closed connection), passes only on an accepted
//! status, and reports a clean, bounded reason.
#![no_main]

#[path = "common.rs"]
mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tandem::config::{Check, CheckKind};
use tandem::health::probe::MAX_REASON;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;

/// Paused clock: the probe's timeout costs no real time if it ever fires.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(common::paused_runtime);

static CHECK: LazyLock<Check> = LazyLock::new(|| {
    let text = r#"
[[pool]]
name = "web"
members = [{ addr = "127.0.0.1:8080" }]
  [[pool.check]]
  kind = "http"
  path = "/healthz"
  expect_status = "200-299,304"
  timeout = "1s"

[[service]]
name = "web"
listen = "127.0.0.1:8000"
pool = "web"
"#;
    common::first_check(text)
});

/// The member's side of the connection: once the probe's request head is in, replies with
/// `reply`, at most `piece` bytes a read, then end of stream.
///
/// Nothing is readable before the request: hyper rightly rejects a response that arrives
/// before its request ("unexpected message"), so a reply served at once would never reach
/// the response parser.
struct Member {
    request: Vec<u8>,
    reader: Option<Waker>,
    reply: Vec<u8>,
    at: usize,
    piece: usize,
}

impl AsyncRead for Member {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.request.ends_with(b"\r\n\r\n") {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = self
            .piece
            .min(buf.remaining())
            .min(self.reply.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.reply[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Member {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.request.extend_from_slice(b);
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, reply)) = data.split_first() else {
        return;
    };
    let member = Member {
        request: Vec::new(),
        reader: None,
        reply: reply.to_vec(),
        at: 0,
        piece: usize::from(piece) + 1,
    };
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let outcome = RUNTIME.block_on(tandem::fuzzing::http_probe(&CHECK, member, addr));

    let reason = &outcome.reason;
    assert!(
        !reason.starts_with("timeout"),
        "hung on a closed stream: {reason}"
    );
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.chars().count() <= MAX_REASON + 3, "{reason:?}");
    if outcome.ok {
        let status: u16 = reason
            .strip_prefix("HTTP ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("pass without a status: {reason:?}"));
        let CheckKind::Http(http) = &CHECK.kind else {
            panic!("the check is not an http check: {:?}", CHECK.kind);
        };
        assert!(http.expect_status.accepts(status), "{reason:?}");
    }
});
