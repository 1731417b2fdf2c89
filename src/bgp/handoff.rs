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

#[cfg(test)]
mod tests {
    //! The handoff between two speakers in one process, against a scripted router on loopback:
    //! no root, no BIRD (tests/bgp.rs does it with the real binary and BIRD).

    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::super::codec::{self, AFI_IPV4, Capability, Open, Prefix, SAFI_UNICAST};
    use super::super::{Speaker, State, Status};
    use super::*;
    use crate::config::parse;
    use crate::events;
    use crate::pool::Snapshot;

    fn config(port: u16, vip: &str) -> crate::config::Config {
        let text = format!(
            r#"
[bgp]
asn = 65010
router_id = "127.0.0.2"
hold_time = "3s"
  [[bgp.peer]]
  address = "127.0.0.1"
  port = {port}
  asn = 65000
[[pool]]
name = "p"
members = [{{ addr = "127.0.1.1:80" }}]
[[service]]
name = "web"
listen = "{vip}:80"
pool = "p"
announce = true
"#
        );
        parse(&text, "t.toml").expect("valid")
    }

    fn speaker(cfg: &crate::config::Config, adopting: bool) -> (Speaker, Arc<Status>) {
        let events = events::channel();
        let snapshot = Snapshot::build(cfg, 1, &events, None).expect("snapshot");
        let status = Arc::new(Status::default());
        let bgp = cfg.bgp.as_ref().expect("[bgp]");
        let routes = Arc::new(ArcSwap::from_pointee(snapshot));
        let s = Speaker::start(bgp, routes, status.clone(), events, adopting);
        (s, status)
    }

    /// The router's end of the session.
    struct Router {
        conn: TcpStream,
        buf: Vec<u8>,
    }

    impl Router {
        /// The next whole message from the speaker.
        async fn any(&mut self) -> Message {
            loop {
                if let Ok(Some(len)) = codec::frame_len(&self.buf)
                    && self.buf.len() >= len
                {
                    let m = codec::decode(&self.buf[..len], true).expect("a valid message");
                    self.buf.drain(..len);
                    return m;
                }
                let n = self.conn.read_buf(&mut self.buf).await.expect("read");
                assert_ne!(n, 0, "the session's connection closed");
            }
        }

        /// The next message that is not a KEEPALIVE.
        async fn next(&mut self) -> Message {
            loop {
                let m = self.any().await;
                if m != Message::Keepalive {
                    return m;
                }
            }
        }

        /// A KEEPALIVE within the 3 s hold time, and nothing else before it.
        async fn keepalive(&mut self) {
            let m = tokio::time::timeout(Duration::from_secs(3), self.any())
                .await
                .expect("a KEEPALIVE within the hold time");
            assert_eq!(m, Message::Keepalive);
        }
    }

    #[tokio::test]
    async fn a_session_moves_to_another_speaker_and_goes_on_with_its_config() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let old_cfg = config(port, "127.0.0.10");
        let (old, _) = speaker(&old_cfg, false);
        let (conn, _) = listener.accept().await.expect("the speaker connects");
        let mut router = Router {
            conn,
            buf: Vec::new(),
        };
        assert!(matches!(router.next().await, Message::Open(_)));
        let open = Message::Open(Open {
            asn: 65000,
            hold_time: 3,
            router_id: "127.0.0.1".parse().expect("ip"),
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::FourOctetAs(65000),
            ],
        });
        let mut hello = open.encode(true);
        hello.extend_from_slice(&Message::Keepalive.encode(true));
        router.conn.write_all(&hello).await.expect("write");
        let vip = |s: &str| Prefix::host(s.parse().expect("ip"));
        match router.next().await {
            Message::Update(u) => assert_eq!(u.nlri, vec![vip("127.0.0.10")]),
            m => panic!("expected the announcement, got {m:?}"),
        }

        let handed = old.hand_over().await;
        assert_eq!(handed.len(), 1, "the established session is handed over");
        // Through JSON, as between two processes.
        let handed: Vec<Handed> = handed
            .into_iter()
            .map(|h| Handed {
                peer: serde_json::from_slice(&serde_json::to_vec(&h.peer).expect("json"))
                    .expect("json"),
                fd: h.fd,
            })
            .collect();

        // The next process announces another address.
        let (mut new, status) = speaker(&config(port, "127.0.0.11"), true);
        assert!(new.adopt(handed).is_empty(), "its peer takes it");
        match router.next().await {
            Message::Update(u) => assert_eq!(u.withdrawn, vec![vip("127.0.0.10")]),
            m => panic!("expected the withdrawal, got {m:?}"),
        }
        match router.next().await {
            Message::Update(u) => assert_eq!(u.nlri, vec![vip("127.0.0.11")]),
            m => panic!("expected the new announcement, got {m:?}"),
        }
        // It keeps the session alive: KEEPALIVEs within the 3 s hold time.
        router.keepalive().await;
        router.keepalive().await;
        let peers = status.peers();
        assert_eq!(peers[0].state, State::Established);
        assert_eq!(peers[0].established, 1, "carried over, not a new session");
        assert_eq!(peers[0].advertised, 1);
        assert!(
            tokio::time::timeout(Duration::ZERO, listener.accept())
                .await
                .is_err(),
            "no second connection"
        );
        new.stop().await;
    }
}
