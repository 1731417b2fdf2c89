//! One peer's task: connects (or adopts the session a binary upgrade handed over), runs the
//! [`Session`] over the TCP connection, retries with backoff, and stops when asked: with a
//! Cease, or between two messages to hand the session over ([`super::handoff`]).
//!
//! Thin on purpose, like the rest of the speaker: what to send and when the session is over
//! are the session's decisions; here are the socket, the timers' sleeps and the status.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Status;
use super::codec::{self, Message, Notification, Prefix, error};
use super::handoff::{self, Handed, HandedPeer};
use super::session::{Backoff, Params, Session, State};
use crate::events::{BgpEvent, Event, EventSender};

/// How long a TCP connect to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to a peer may block (its receive window full) before the session is
/// given up: longer than any sane hold time, so the hold timer normally decides first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How a peer task is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Send a NOTIFICATION (Cease) with this subcode and close.
    Cease(u8),
    /// Binary upgrade: stop between two messages and return the session with its connection;
    /// a session not Established is closed as by a Cease.
    HandOver,
}

/// How a session ended.
enum Ended {
    /// Asked to stop (the Cease was sent).
    Stopped,
    /// Asked to hand the session over: here it is, with its connection.
    HandedOver(Handed),
    /// The session went down; the reason, to log and show.
    Down(String),
}

/// How a session starts.
enum Start {
    /// A new connection: the OPEN goes first.
    Connected(TcpStream),
    /// A session adopted from the process we took over from, already Established.
    Adopted(TcpStream, HandedPeer),
}

/// One peer: connect (or adopt the session handed over), run the session, retry with
/// backoff, until asked to stop; the session itself when asked to hand it over.
#[allow(clippy::too_many_arguments)] // the task's channels, each its own kind
pub(super) async fn run_peer(
    addr: SocketAddr,
    params: Params,
    mut wanted: watch::Receiver<BTreeSet<Prefix>>,
    advertised: watch::Sender<usize>,
    mut stop: watch::Receiver<Option<Stop>>,
    status: Arc<Status>,
    events: EventSender,
    adopt: Option<oneshot::Receiver<Option<Handed>>>,
) -> Option<Handed> {
    let mut session = Session::new(params.clone());
    let mut backoff = Backoff::new();
    let mut adopted = None;
    if let Some(rx) = adopt {
        // The value is taken out in the future: a watch `Ref` must not live across an await.
        let handed = tokio::select! {
            handed = rx => handed.ok().flatten(),
            _ = async { stop.wait_for(Option::is_some).await.is_ok() } => return None,
        };
        match handed {
            Some(h) => adopted = take_up(addr, &params, h).await,
            None => info!(peer = %addr, "bgp: no session handed over for this peer; connecting"),
        }
    }
    loop {
        let start = match adopted.take() {
            Some((s, stream, peer)) => {
                session = s;
                Ok(Start::Adopted(stream, peer))
            }
            None => {
                let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr));
                let connected = tokio::select! {
                    r = connect => r,
                    _ = stop.wait_for(Option::is_some) => return None,
                };
                match connected {
                    Ok(Ok(stream)) => Ok(Start::Connected(stream)),
                    Ok(Err(e)) => Err(format!("connect: {e}")),
                    Err(_) => Err(format!(
                        "connect: no answer in {}s",
                        CONNECT_TIMEOUT.as_secs()
                    )),
                }
            }
        };
        let error = match start {
            Ok(start) => {
                let io = PeerIo {
                    addr,
                    session: &mut session,
                    wanted: &mut wanted,
                    advertised: &advertised,
                    status: &status,
                    events: &events,
                };
                let was = status
                    .peers()
                    .iter()
                    .find(|p| p.peer == addr)
                    .map(|p| p.established);
                let ended = io.run(start, &mut stop).await;
                session.closed();
                advertised.send_replace(0);
                let now_est = status
                    .peers()
                    .iter()
                    .find(|p| p.peer == addr)
                    .map(|p| p.established);
                if now_est != was {
                    backoff.reset();
                }
                match ended {
                    Ended::Stopped => {
                        status.update_peer(addr, |p| {
                            p.state = State::Idle;
                            p.since = SystemTime::now();
                            p.advertised = 0;
                        });
                        return None;
                    }
                    Ended::HandedOver(h) => return Some(h),
                    Ended::Down(reason) => reason,
                }
            }
            Err(e) => e,
        };
        status.update_peer(addr, |p| {
            if p.state != State::Idle {
                p.since = SystemTime::now();
            }
            p.state = State::Idle;
            p.advertised = 0;
            p.last_error = Some(error.clone());
        });
        let delay = backoff.next_delay();
        tracing::debug!(peer = %addr, error = %error, retry_s = delay.as_secs(), "bgp: no session");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(Option::is_some) => return None,
        }
    }
}

/// The session handed over for the peer at `addr`, ready to run; `None` (logged, and the
/// connection closed with a Cease) when it cannot be taken up: the peer then connects afresh.
async fn take_up(
    addr: SocketAddr,
    params: &Params,
    handed: Handed,
) -> Option<(Session, TcpStream, HandedPeer)> {
    let Handed { peer, fd } = handed;
    let stream = match handoff::stream(fd) {
        Ok(s) => s,
        Err(e) => {
            warn!(peer = %addr, error = %e,
                  "bgp: cannot use the connection handed over; opening a new session");
            return None;
        }
    };
    let checked = match stream.peer_addr() {
        Ok(remote) if remote == addr => {
            Session::adopt(params.clone(), peer.session.clone(), Instant::now())
        }
        Ok(remote) => Err(format!("its connection goes to {remote}")),
        Err(e) => Err(format!("its connection: {e}")),
    };
    match checked {
        Ok(session) => Some((session, stream, peer)),
        Err(reason) => {
            let fd = match stream.into_std() {
                Ok(s) => OwnedFd::from(s),
                Err(_) => return None,
            };
            warn!(peer = %addr, reason, "bgp: cannot adopt the session handed over; opening a new one");
            let why = "not adoptable";
            handoff::close(vec![Handed { peer, fd }], error::CEASE_CONFIG_CHANGE, why).await;
            None
        }
    }
}

/// One connection's worth of a peer's state, borrowed from [`run_peer`].
struct PeerIo<'a> {
    addr: SocketAddr,
    session: &'a mut Session,
    wanted: &'a mut watch::Receiver<BTreeSet<Prefix>>,
    advertised: &'a watch::Sender<usize>,
    status: &'a Status,
    events: &'a EventSender,
}

impl PeerIo<'_> {
    /// Runs the session until it ends.
    async fn run(mut self, start: Start, stop: &mut watch::Receiver<Option<Stop>>) -> Ended {
        let (stream, adopted) = match start {
            Start::Connected(stream) => (stream, None),
            Start::Adopted(stream, peer) => (stream, Some(peer)),
        };
        // BGP messages are small and each matters now: no Nagle delay on a withdrawal.
        let _ = stream.set_nodelay(true);
        let mut buf: Vec<u8> = Vec::with_capacity(2 * codec::MAX_MESSAGE_LEN);
        // What to send before waiting for anything: the OPEN of a new session; for an adopted
        // one, the answers to whatever whole messages came along, then the UPDATEs that bring
        // the peer from what the old process announced to what this one wants.
        let mut first = match &adopted {
            None => {
                let local = match stream.local_addr() {
                    Ok(a) => a.ip(),
                    Err(e) => return Ended::Down(format!("local address: {e}")),
                };
                let open = self.session.connected(local, Instant::now());
                self.set_state();
                Some(Ok(open))
            }
            Some(peer) => {
                self.adopted(peer);
                buf.extend_from_slice(&peer.pending);
                Some(self.take_messages(&mut buf).map(|mut out| {
                    let wanted = self.wanted.borrow_and_update().clone();
                    out.extend(self.session.sync(&wanted));
                    out
                }))
            }
        };
        let (mut rd, mut wr) = stream.into_split();
        loop {
            if let Some(outcome) = first.take() {
                match outcome {
                    Ok(out) => {
                        if let Err(e) = self.send(&mut wr, out).await {
                            self.down(&e, true);
                            return Ended::Down(e);
                        }
                    }
                    Err(d) => return self.end(&mut wr, d).await,
                }
            }
            let deadline = self.session.deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                // The value is copied out in the future: a watch `Ref` must not live across the
                // awaits below.
                request = async { stop.wait_for(Option::is_some).await.ok().and_then(|s| *s) } => {
                    if request == Some(Stop::HandOver)
                        && self.session.state() == State::Established
                    {
                        return self.hand_over(rd, wr, buf);
                    }
                    let subcode = match request {
                        Some(Stop::Cease(subcode)) => subcode,
                        _ => error::CEASE_ADMIN_SHUTDOWN,
                    };
                    let cease = Message::Notification(Notification::new(error::CEASE, subcode));
                    let _ = self.send(&mut wr, vec![cease]).await;
                    let _ = wr.shutdown().await;
                    self.down("stopped", false);
                    return Ended::Stopped;
                }
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) => Err(down("the peer closed the connection")),
                    Ok(_) => self.take_messages(&mut buf),
                    Err(e) => Err(down(&format!("read: {e}"))),
                },
                _ = sleep => self.session.timers(Instant::now()),
                changed = self.wanted.changed() => match changed {
                    Ok(()) => {
                        let wanted = self.wanted.borrow_and_update().clone();
                        Ok(self.session.sync(&wanted))
                    }
                    // The speaker is gone without a stop: as a stop.
                    Err(_) => Err(session_down(None, "speaker stopped")),
                },
            };
            match outcome {
                Ok(out) => {
                    if let Err(e) = self.send(&mut wr, out).await {
                        self.down(&e, true);
                        return Ended::Down(e);
                    }
                }
                Err(d) => return self.end(&mut wr, d).await,
            }
        }
    }

    /// The session went down: the NOTIFICATION (if any), then the connection closes.
    async fn end(&mut self, wr: &mut OwnedWriteHalf, d: super::session::Down) -> Ended {
        if let Some(n) = d.notify {
            let _ = self.send(wr, vec![Message::Notification(n)]).await;
        }
        let _ = wr.shutdown().await;
        self.down(&d.reason, true);
        Ended::Down(d.reason)
    }

    /// Stops the Established session here, between two messages, and returns it with its
    /// connection and the bytes read but not yet parsed (`pending`).
    fn hand_over(&self, rd: OwnedReadHalf, wr: OwnedWriteHalf, pending: Vec<u8>) -> Ended {
        let Some(session) = self.session.hand_over(Instant::now()) else {
            return Ended::Down("handoff: the session is not established".to_string());
        };
        // Reuniting (rather than dropping the halves) keeps the write side open: a dropped
        // tokio write half shuts it down, which would end the session for the router.
        let fd = match rd
            .reunite(wr)
            .map_err(|e| e.to_string())
            .and_then(|stream| stream.into_std().map_err(|e| e.to_string()))
        {
            Ok(stream) => OwnedFd::from(stream),
            Err(e) => return Ended::Down(format!("handoff: {e}")),
        };
        let row = self
            .status
            .peers()
            .into_iter()
            .find(|p| p.peer == self.addr);
        info!(peer = %self.addr, advertised = session.advertised.len(),
              "bgp: session stopped for the handoff to the new process");
        Ended::HandedOver(Handed {
            peer: HandedPeer {
                peer: self.addr,
                session,
                pending,
                since_unix_ms: row.as_ref().map_or(0, |r| handoff::unix_ms(r.since)),
                established: row.as_ref().map_or(0, |r| r.established),
                updates_sent: row.as_ref().map_or(0, |r| r.updates_sent),
            },
            fd,
        })
    }

    /// The session came over from the old process: the status goes on showing it as it was.
    fn adopted(&self, peer: &HandedPeer) {
        let advertised = self.session.advertised().len();
        self.status.update_peer(self.addr, |p| {
            p.state = State::Established;
            p.since = peer.since();
            p.established = peer.established;
            p.updates_sent = peer.updates_sent;
            p.advertised = advertised;
            p.last_error = None;
        });
        self.advertised.send_replace(advertised);
        info!(peer = %self.addr, advertised,
              hold_s = self.session.negotiated().map(|n| n.hold.as_secs()),
              "bgp: session taken over from the previous process");
    }

    /// Decodes and handles every whole message in `buf`; what to send back.
    fn take_messages(&mut self, buf: &mut Vec<u8>) -> Result<Vec<Message>, super::session::Down> {
        let mut out = Vec::new();
        let mut used = 0;
        let result = loop {
            let rest = &buf[used..];
            let len = match codec::frame_len(rest) {
                Ok(Some(len)) if rest.len() >= len => len,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            };
            let message = match codec::decode(&rest[..len], self.session.four_octet_as()) {
                Ok(m) => m,
                Err(e) => break Err(e),
            };
            used += len;
            let before = self.session.state();
            let wanted = self.wanted.borrow_and_update().clone();
            out.extend(self.session.receive(message, &wanted, Instant::now())?);
            if self.session.state() != before {
                self.set_state();
            }
        };
        buf.drain(..used);
        match result {
            Ok(()) => Ok(out),
            Err(e) => Err(session_down(Some(e.notification.clone()), &e.to_string())),
        }
    }

    /// Writes `messages` (whole, in order) and publishes what the peer has now.
    async fn send(
        &mut self,
        wr: &mut OwnedWriteHalf,
        messages: Vec<Message>,
    ) -> Result<(), String> {
        if messages.is_empty() {
            return Ok(());
        }
        let four = self.session.four_octet_as();
        let updates = messages
            .iter()
            .filter(|m| matches!(m, Message::Update(_)))
            .count() as u64;
        let mut bytes = Vec::new();
        for m in &messages {
            bytes.extend_from_slice(&m.encode(four));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write: {e}")),
            Err(_) => return Err(format!("write: blocked for {}s", WRITE_TIMEOUT.as_secs())),
        }
        let advertised = self.session.advertised().len();
        if updates > 0 {
            self.status.update_peer(self.addr, |p| {
                p.updates_sent += updates;
                p.advertised = advertised;
            });
        }
        self.advertised.send_replace(advertised);
        Ok(())
    }

    fn set_state(&self) {
        let state = self.session.state();
        let established = state == State::Established;
        self.status.update_peer(self.addr, |p| {
            p.state = state;
            p.since = SystemTime::now();
            if established {
                p.established += 1;
                p.last_error = None;
            }
        });
        if established {
            let n = self.session.negotiated();
            info!(peer = %self.addr, hold_s = n.map(|n| n.hold.as_secs()),
                  peer_router_id = ?n.map(|n| n.peer_router_id), "bgp: session established");
            let _ = self.events.send(Event::Bgp(BgpEvent {
                change: "session_up",
                peer: Some(self.addr.to_string()),
                service: None,
                prefix: None,
                reason: "established".to_string(),
                at: SystemTime::now(),
            }));
        }
    }

    /// The session ended: status, log and (if it had been established) an event.
    fn down(&self, reason: &str, unexpected: bool) {
        let was_up = self.session.state() == State::Established
            || self
                .status
                .peers()
                .iter()
                .any(|p| p.peer == self.addr && p.state == State::Established);
        self.status.update_peer(self.addr, |p| {
            p.state = State::Idle;
            p.since = SystemTime::now();
            p.advertised = 0;
            if unexpected {
                p.last_error = Some(reason.to_string());
            }
        });
        if was_up {
            if unexpected {
                warn!(peer = %self.addr, reason, "bgp: session down");
            } else {
                info!(peer = %self.addr, reason, "bgp: session closed");
            }
            let _ = self.events.send(Event::Bgp(BgpEvent {
                change: "session_down",
                peer: Some(self.addr.to_string()),
                service: None,
                prefix: None,
                reason: reason.to_string(),
                at: SystemTime::now(),
            }));
        }
    }
}

fn down(reason: &str) -> super::session::Down {
    session_down(None, reason)
}

fn session_down(notify: Option<Notification>, reason: &str) -> super::session::Down {
    super::session::Down {
        notify,
        reason: reason.to_string(),
    }
}
