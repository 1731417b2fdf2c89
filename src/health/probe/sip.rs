//! The `sip` probe's I/O: send one OPTIONS over a connected stream (TCP or TLS) and wait for the
//! final response. The message text and the response reader are the pure
//! [`crate::health::sip`]; this file only moves bytes and makes the random tokens.
//!
//! Reads in small chunks through the bounded reader, so a member cannot make it buffer more than
//! one response head, and it never answers anything the member sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub(super) use crate::health::sip::Transport;
use crate::health::sip::{OptionsRequest, ResponseReader};

use super::{ProbeOutcome, USER_AGENT, io_reason};
use crate::config::StatusRanges;

/// Sends OPTIONS to `member` from `local` over `stream`; up when the final response's status is
/// one of `expect_status`.
pub(super) async fn probe<S>(
    expect_status: &StatusRanges,
    mut stream: S,
    member: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) -> ProbeOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (branch, tag, call_id) = (token(), token(), token());
    let request = OptionsRequest {
        member,
        local,
        transport,
        branch: &branch,
        tag: &tag,
        call_id: &call_id,
        user_agent: USER_AGENT,
    }
    .to_wire();
    // flush matters for TLS: the record is only sent once the session is flushed.
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await
    };
    if let Err(e) = sent.await {
        return ProbeOutcome::fail(format!("send OPTIONS: {}", io_reason(&e)));
    }

    let mut reader = ResponseReader::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // rustls reports a close without close_notify this way; to us it is just a close.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return ProbeOutcome::fail(format!("read: {}", io_reason(&e))),
        };
        if n == 0 {
            let pending = reader.pending();
            return ProbeOutcome::fail(if pending.is_empty() {
                "connection closed before a final SIP response".to_string()
            } else {
                format!("connection closed before a final SIP response: \"{pending}\"")
            });
        }
        match reader.feed(&buf[..n]) {
            Ok(None) => {}
            Ok(Some(status)) if expect_status.accepts(status.code) => {
                return ProbeOutcome::pass(status.to_string());
            }
            Ok(Some(status)) => return ProbeOutcome::fail(status.to_string()),
            Err(e) => return ProbeOutcome::fail(e.to_string()),
        }
    }
}

/// A fresh 16-hex-digit token for a branch, tag or Call-ID. They need to be unique, not secret
/// (RFC 3261 asks for uniqueness in time and space), so a hash of the clock, the process and a
/// counter does; no random-number dependency for it.
fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = n ^ (u64::from(std::process::id()) << 40);
    format!("{:016x}", xxh3_64_with_seed(&nanos.to_le_bytes(), seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_distinct_hex() {
        let tokens: HashSet<String> = (0..1000).map(|_| token()).collect();
        assert_eq!(tokens.len(), 1000);
        assert!(
            tokens
                .iter()
                .all(|t| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
