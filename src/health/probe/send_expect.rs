//! The `send-expect` probe: write the check's bytes, then read until the expected bytes show up.
//!
//! Reads at most [`MAX_READ`] bytes; what it received goes into the failure reason, escaped and
//! cut short, because it is whatever the member chose to send.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ProbeOutcome, io_reason, quote_bytes};
use crate::config::Check;

/// Most bytes read while looking for the expected ones: 64 KiB.
pub const MAX_READ: usize = 64 * 1024;

/// How many received bytes a failure reason quotes.
const QUOTE_LEN: usize = 40;

/// Sends `check.send` (if any) on `stream` and waits for `check.expect` in the reply.
pub(super) async fn probe(check: &Check, mut stream: TcpStream) -> ProbeOutcome {
    if !check.send.is_empty()
        && let Err(e) = stream.write_all(&check.send).await
    {
        return ProbeOutcome::fail(format!("send: {}", io_reason(&e)));
    }
    let expect = check.expect.as_slice();
    if expect.is_empty() {
        // Validation requires `expect`; an empty one is trivially contained in anything.
        return ProbeOutcome::pass("matched");
    }
    let mut received = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    while received.len() < MAX_READ {
        let room = (MAX_READ - received.len()).min(buf.len());
        let n = match stream.read(&mut buf[..room]).await {
            Ok(n) => n,
            Err(e) => return ProbeOutcome::fail(format!("read: {}", io_reason(&e))),
        };
        if n == 0 {
            return ProbeOutcome::fail(format!(
                "closed without a match after {} bytes: \"{}\"",
                received.len(),
                quote_bytes(&received, QUOTE_LEN)
            ));
        }
        // Only the new bytes, plus enough before them to catch a match split across reads.
        let from = received.len().saturating_sub(expect.len() - 1);
        received.extend_from_slice(&buf[..n]);
        if received[from..].windows(expect.len()).any(|w| w == expect) {
            return ProbeOutcome::pass("matched");
        }
    }
    ProbeOutcome::fail(format!(
        "no match in the first {} KiB: \"{}\"",
        MAX_READ / 1024,
        quote_bytes(&received, QUOTE_LEN)
    ))
}
