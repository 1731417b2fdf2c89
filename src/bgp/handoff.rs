//! BGP sessions carried through a binary upgrade, so the routers never see the service address
//! withdrawn (the DESIGN's "a binary upgrade does not withdraw").
//!
//! After the new process has said "ready", the old one stops each Established session between
//! two messages (its writes are whole messages, and what it has read but not yet parsed goes
//! along) and sends the TCP connections with a [`HandedPeer`] each over the upgrade control
//! connection ([`crate::upgrade::send_frame`]). The new process, whose peers have waited for
//! this instead of connecting, adopts each connection and goes on: its KEEPALIVEs come when
//! they were due, then its announcer brings the peer to what its own config and health want.
//! A session not handed over, or not taken up, falls back to what an upgrade did before: the
//! old connection closes (with a Cease when we can still write it) and the new process opens
//! its own, which costs the route about a second.
//!
//! Why not graceful restart (RFC 4724): the router would keep the routes of a dead session for
//! the restart time, so a crash would no longer withdraw within a second (the fate-sharing the
//! speaker exists for), unless that time were too short to cover an upgrade.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::warn;

use super::codec::{Message, Notification, error};
use super::session::Handoff;

/// How long a Cease to a session nobody takes up may take to write.
const CEASE_WRITE: Duration = Duration::from_secs(1);

/// One session as it travels to the next process, its connection's descriptor beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedPeer {
    /// The peer's address: the connection's remote end, checked on arrival.
    pub peer: SocketAddr,
    pub session: Handoff,
    /// Bytes read from the peer that are not yet a whole message.
    pub pending: Vec<u8>,
    /// What the status showed, so it goes on showing the session it is: established since
    /// (Unix milliseconds), sessions established and UPDATEs sent.
    pub since_unix_ms: u64,
    pub established: u64,
    pub updates_sent: u64,
}

/// A session with its connection.
#[derive(Debug)]
pub struct Handed {
    pub peer: HandedPeer,
    pub fd: OwnedFd,
}

impl HandedPeer {
    /// When the session was established, as the old process's status showed it.
    pub fn since(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.since_unix_ms)
    }
}

/// `at` in Unix milliseconds (0 before the epoch).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The connection of a handed-over session, ready for tokio.
pub fn stream(fd: OwnedFd) -> std::io::Result<TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Ends sessions that were handed over but that nobody here takes up (their peer is gone from
/// the config, or the handoff failed): a NOTIFICATION (Cease, `subcode`) at the message
/// boundary they stopped at, then the connection closes and the peer drops our routes.
pub async fn close(handed: Vec<Handed>, subcode: u8, why: &'static str) {
    for h in handed {
        warn!(peer = %h.peer.peer, why, "bgp: handed-over session closed with a Cease");
        let four = h.peer.session.negotiated.four_octet_as;
        if let Ok(mut s) = stream(h.fd) {
            let cease = Message::Notification(Notification::new(error::CEASE, subcode));
            let _ = tokio::time::timeout(CEASE_WRITE, s.write_all(&cease.encode(four))).await;
            let _ = s.shutdown().await;
        }
    }
}
