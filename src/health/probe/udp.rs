//! The `udp` probe: send the check's datagram from a fresh connected socket, then wait for
//! one reply datagram that must contain the expected bytes (a STUN binding request answered by any
//! binding response, for example).
//!
//! The socket is connected, so only the member's datagrams are read, and an ICMP port
//! unreachable comes back as "port unreachable" instead of a silent timeout. A reply that does
//! not match is a failure (a probe is one exchange); the check's timeout, applied by the caller,
//! bounds the wait. Nothing is retransmitted: a lost datagram is one failed probe, which `fall`
//! absorbs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::{ProbeOutcome, io_reason, quote_bytes};
use crate::config::Exchange;
use crate::local_error::LocalError;

/// Largest reply read: a whole UDP datagram.
const MAX_DATAGRAM: usize = 65535;

/// How many received bytes a failure reason quotes.
const QUOTE_LEN: usize = 40;

/// Sends `exchange.send` to `addr` and waits for a datagram containing `exchange.expect`.
/// `Err` when this machine cannot open the probe's socket (see [`LocalError`]).
pub(super) async fn probe(
    exchange: &Exchange,
    addr: SocketAddr,
) -> Result<ProbeOutcome, LocalError> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            return LocalError::from_io(e)
                .map(Err)
                .unwrap_or_else(|e| Ok(ProbeOutcome::fail(format!("bind: {}", io_reason(&e)))));
        }
    };
    if let Err(e) = socket.connect(addr).await {
        return LocalError::from_io(e)
            .map(Err)
            .unwrap_or_else(|e| Ok(ProbeOutcome::fail(format!("connect: {}", io_reason(&e)))));
    }
    if let Err(e) = socket.send(&exchange.send).await {
        return Ok(ProbeOutcome::fail(format!("send: {}", io_reason(&e))));
    }
    let expect = exchange.expect.as_slice();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = match socket.recv(&mut buf).await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(ProbeOutcome::fail("port unreachable"));
        }
        Err(e) => return Ok(ProbeOutcome::fail(format!("recv: {}", io_reason(&e)))),
    };
    Ok(judge(expect, &buf[..n]))
}

/// The verdict on one reply datagram: up when it contains `expect` (anything does when `expect`
/// is empty), else down, quoting the start of what came back. Pure, so the fuzz targets can feed
/// it any datagram.
pub(crate) fn judge(expect: &[u8], got: &[u8]) -> ProbeOutcome {
    if expect.is_empty() || got.windows(expect.len()).any(|w| w == expect) {
        ProbeOutcome::pass("matched")
    } else {
        ProbeOutcome::fail(format!(
            "reply without a match: \"{}\"",
            quote_bytes(got, QUOTE_LEN)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_passes_when_it_contains_expect() {
        // A STUN binding success response carries the request's magic cookie.
        let cookie = [0x21, 0x12, 0xa4, 0x42];
        let reply = [&[0x01, 0x01, 0x00, 0x00][..], &cookie, &[7; 12]].concat();
        assert!(judge(&cookie, &reply).ok);
        assert!(judge(&[], b"").ok);
        let miss = judge(&cookie, b"\x01\x01\x00\x00\r\n");
        assert!(!miss.ok);
        assert_eq!(
            miss.reason,
            "reply without a match: \"\\x01\\x01\\x00\\x00\\r\\n\""
        );
        // Shorter than expect: no window to compare, a plain miss.
        assert!(!judge(&cookie, &cookie[..3]).ok);
    }
}
