//! The speaker's tasks: one per peer doing the TCP I/O of a [`Session`], and the announcer,
//! which recomputes what to announce ([`super::announce`]) whenever health, failover or a
//! reload may have changed it and hands the set to the peers over a `watch` channel. Each peer
//! task sends only the difference between what its peer has and the new set.
//!
//! Thin on purpose: the decisions are in [`Session`] (what to send, when the session is over)
//! and [`super::announce`] (what to announce); here are sockets, timers and the status.
//!
//! Stopping: [`Speaker::withdraw`] stops the announcer, withdraws everything from every peer
//! and waits until the withdrawals are written (bounded), for a graceful shutdown to drain
//! after; [`Speaker::stop`] ends the sessions with a NOTIFICATION (Cease), which makes the
//! peers drop whatever is left. A crash does the same through the kernel closing the sockets.
//! [`Speaker::hand_over`] (binary upgrade) stops each session between two messages and returns
//! it with its connection; in the next process, [`Speaker::start`] with `adopting` holds its
//! peers back until [`Speaker::adopt`] gives them those sessions (see [`super::handoff`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::announce::{self, Announcement};
use super::codec::{self, Message, Notification, Prefix, error};
use super::handoff::{self, Handed, HandedPeer};
use super::session::{Backoff, Params, Session, State};
use super::{PeerStatus, Status};
use crate::config::{Bgp, BgpPeer};
use crate::events::{BgpEvent, Event, EventSender};
use crate::pool::Snapshot;

/// How long a TCP connect to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to a peer may block (its receive window full) before the session is
/// given up: longer than any sane hold time, so the hold timer normally decides first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Speaker::withdraw`] waits for the withdrawals to be written to every peer.
const WITHDRAW_LIMIT: Duration = Duration::from_secs(2);
/// After the withdrawals are written: time for the peers' kernels to take them and for the
/// routers to process them before the caller goes on (stops accepting). Withdrawals written to
/// an established session reach a router on the same segment in well under a millisecond;
/// this leaves a wide margin for the router's own scheduling, and costs a stop nothing.
const WITHDRAW_SETTLE: Duration = Duration::from_millis(200);
/// How long [`Speaker::hand_over`] waits for the sessions to stop between two messages: a
/// session busy for longer is blocked on a write (its peer's window full), and a KEEPALIVE
/// from the next process could not get through either; it is closed instead.
const HANDOVER_LIMIT: Duration = Duration::from_secs(2);

/// The running speaker.
pub struct Speaker {
    config: Bgp,
    wanted: watch::Sender<BTreeSet<Prefix>>,
    peers: Vec<PeerTask>,
    announcer: Option<(CancellationToken, JoinHandle<()>)>,
    routes: Arc<ArcSwap<Snapshot>>,
    status: Arc<Status>,
    events: EventSender,
}

struct PeerTask {
    config: BgpPeer,
    /// `Some`: end the session and the task.
    stop: watch::Sender<Option<Stop>>,
    /// Prefixes the peer has from us, as written to its socket.
    advertised: watch::Receiver<usize>,
    /// While the peer waits for a session from the process we took over from.
    adopt: Option<oneshot::Sender<Option<Handed>>>,
    /// Returns the session when asked to hand it over.
    task: JoinHandle<Option<Handed>>,
}

/// How a peer task is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Send a NOTIFICATION (Cease) with this subcode and close.
    Cease(u8),
    /// Binary upgrade: stop between two messages and return the session with its connection;
    /// a session not Established is closed as by a Cease.
    HandOver,
}

impl Speaker {
    /// Starts a session with every peer of `config` and the announcer over `routes`. Status
    /// goes to `status`, session and announcement changes to `events`. `adopting` (a process
    /// taking over in a binary upgrade): the peers wait for [`Speaker::adopt`] before
    /// connecting, so none opens a second session beside the one coming over.
    pub fn start(
        config: &Bgp,
        routes: Arc<ArcSwap<Snapshot>>,
        status: Arc<Status>,
        events: EventSender,
        adopting: bool,
    ) -> Speaker {
        let list = announce::announcements(&routes.load());
        let (wanted, _) = watch::channel(announce::wanted(&list));
        let mut speaker = Speaker {
            config: config.clone(),
            wanted,
            peers: Vec::new(),
            announcer: None,
            routes,
            status,
            events,
        };
        // The announcer reports each service's first state (an `announced` event for each that
        // can serve) and fills the status.
        speaker.start_announcer();
        speaker.start_peers(config.peers.iter(), adopting);
        speaker
    }

    fn start_announcer(&mut self) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(announcer(
            self.routes.clone(),
            self.events.subscribe(),
            self.wanted.clone(),
            self.status.clone(),
            self.events.clone(),
            stop.clone(),
        ));
        self.announcer = Some((stop, task));
    }

    fn start_peers<'a>(&mut self, peers: impl Iterator<Item = &'a BgpPeer>, adopting: bool) {
        for peer in peers {
            let (stop, stop_rx) = watch::channel(None);
            let (adopt, adopt_rx) = if adopting {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let (advertised_tx, advertised) = watch::channel(0);
            let params = Params {
                local_asn: self.config.asn,
                router_id: self.config.router_id,
                hold_time: u16::try_from(self.config.hold_time.as_secs()).unwrap_or(u16::MAX),
                peer_asn: peer.asn,
            };
            let task = tokio::spawn(run_peer(
                peer.socket_addr(),
                params,
                self.wanted.subscribe(),
                advertised_tx,
                stop_rx,
                self.status.clone(),
                self.events.clone(),
                adopt_rx,
            ));
            self.peers.push(PeerTask {
                config: peer.clone(),
                stop,
                advertised,
                adopt,
                task,
            });
        }
        self.publish_peers();
    }

    /// Status rows for the configured peers, keeping what is known of those that stay.
    fn publish_peers(&self) {
        let old = self.status.peers();
        let rows = self
            .peers
            .iter()
            .map(|p| {
                let addr = p.config.socket_addr();
                old.iter()
                    .find(|o| o.peer == addr && o.asn == p.config.asn)
                    .cloned()
                    .unwrap_or(PeerStatus {
                        peer: addr,
                        asn: p.config.asn,
                        state: State::Idle,
                        since: SystemTime::now(),
                        last_error: None,
                        advertised: 0,
                        established: 0,
                        updates_sent: 0,
                    })
            })
            .collect();
        self.status.set_peers(rows);
    }

    /// Applies a reloaded `[bgp]`: sessions whose settings are unchanged stay up (a change of
    /// `announce` only changes what they announce, through the announcer); a peer removed
    /// or changed is closed with a Cease, a new one connects. A change of `asn`, `router_id` or
    /// `hold_time` is in every OPEN, so it restarts every session.
    pub fn reconfigure(&mut self, new: &Bgp) {
        let global_changed = (
            self.config.asn,
            self.config.router_id,
            self.config.hold_time,
        ) != (new.asn, new.router_id, new.hold_time);
        let (keep, drop): (Vec<PeerTask>, Vec<PeerTask>) = std::mem::take(&mut self.peers)
            .into_iter()
            .partition(|p| !global_changed && new.peers.contains(&p.config));
        for p in drop {
            let subcode = if new.peers.iter().any(|n| n.address == p.config.address) {
                error::CEASE_CONFIG_CHANGE
            } else {
                error::CEASE_PEER_DECONFIGURED
            };
            info!(peer = %p.config.socket_addr(), "bgp: peer removed or changed; closing its session");
            let _ = p.stop.send(Some(Stop::Cease(subcode)));
        }
        self.peers = keep;
        self.config = new.clone();
        let added: Vec<BgpPeer> = new
            .peers
            .iter()
            .filter(|n| !self.peers.iter().any(|p| &p.config == *n))
            .cloned()
            .collect();
        self.start_peers(added.iter(), false);
        // Config order, as the status shows it.
        self.peers.sort_by_key(|p| {
            new.peers
                .iter()
                .position(|n| *n == p.config)
                .unwrap_or(usize::MAX)
        });
        self.publish_peers();
    }

    /// Stops announcing: withdraws every prefix from every peer and waits until the
    /// withdrawals are written (at most 2 s), then a moment for the routers to act on them.
    /// Sessions stay up (with nothing announced) until [`Speaker::stop`].
    pub async fn withdraw(&mut self) {
        if let Some((stop, task)) = self.announcer.take() {
            stop.cancel();
            let _ = task.await;
        }
        let had = self.peers.iter().any(|p| *p.advertised.borrow() > 0);
        self.wanted.send_replace(BTreeSet::new());
        let services: Vec<Announcement> = self
            .status
            .services()
            .into_iter()
            .map(|mut s| {
                if s.announced {
                    s.announced = false;
                    let _ = self.events.send(Event::Bgp(BgpEvent {
                        change: "withdrawn",
                        peer: None,
                        service: Some(s.service.clone()),
                        prefix: Some(s.prefix.to_string()),
                        reason: "shutting down".to_string(),
                        at: SystemTime::now(),
                    }));
                }
                s
            })
            .collect();
        self.status.set_services(services);
        if !had {
            return;
        }
        let started = Instant::now();
        let all_written = async {
            for p in &mut self.peers {
                let _ = p.advertised.wait_for(|n| *n == 0).await;
            }
        };
        if tokio::time::timeout(WITHDRAW_LIMIT, all_written)
            .await
            .is_err()
        {
            warn!("bgp: withdrawals not written to every peer in time; stopping anyway");
        }
        tokio::time::sleep(WITHDRAW_SETTLE).await;
        info!(
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "bgp: routes withdrawn"
        );
    }

    /// Ends every session with a NOTIFICATION (Cease, administrative shutdown) and waits for
    /// the tasks. The peers drop whatever they still had from us.
    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.announcer.take() {
            stop.cancel();
            let _ = task.await;
        }
        for p in &self.peers {
            let _ = p.stop.send(Some(Stop::Cease(error::CEASE_ADMIN_SHUTDOWN)));
        }
        for p in self.peers.drain(..) {
            let _ = p.task.await;
        }
    }

    /// Binary upgrade, once the new process serves: stops every Established session between
    /// two messages and returns it with its connection, for the new process to adopt; nothing
    /// is withdrawn. Sessions not Established are closed (the new process opens its own), as
    /// is one that does not stop within 2 s.
    pub async fn hand_over(mut self) -> Vec<Handed> {
        if let Some((stop, task)) = self.announcer.take() {
            stop.cancel();
            let _ = task.await;
        }
        for p in &self.peers {
            let _ = p.stop.send(Some(Stop::HandOver));
        }
        let deadline = Instant::now() + HANDOVER_LIMIT;
        let mut handed = Vec::new();
        for p in self.peers.drain(..) {
            let mut task = p.task;
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Some(h))) => handed.push(h),
                Ok(_) => {}
                Err(_) => {
                    task.abort();
                    warn!(peer = %p.config.socket_addr(),
                          "bgp: session did not stop for the handoff in time; closed, the new process opens its own");
                }
            }
        }
        handed
    }

    /// In a process that took over (started `adopting`): gives each waiting peer the session
    /// handed over for it, and lets the others connect. Returns the sessions no peer took (their
    /// peer is not configured here, or stopped meanwhile); the caller closes them.
    pub fn adopt(&mut self, mut handed: Vec<Handed>) -> Vec<Handed> {
        for p in &mut self.peers {
            let Some(tx) = p.adopt.take() else {
                continue;
            };
            let addr = p.config.socket_addr();
            let mine = handed
                .iter()
                .position(|h| h.peer.peer == addr)
                .map(|i| handed.swap_remove(i));
            if let Err(Some(h)) = tx.send(mine) {
                handed.push(h);
            }
        }
        handed
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.announcer {
            stop.cancel();
        }
        for p in &self.peers {
            let _ = p.stop.send(Some(Stop::Cease(error::CEASE_ADMIN_SHUTDOWN)));
        }
    }
}

/// Recomputes the announcements on every event (health, failover, reload: any of them may
/// change what can serve) and publishes the set when it changed. Like the failover
/// controller, it never reads an event's content, so a missed one (`Lagged`) costs nothing.
async fn announcer(
    routes: Arc<ArcSwap<Snapshot>>,
    mut events_rx: broadcast::Receiver<Event>,
    wanted: watch::Sender<BTreeSet<Prefix>>,
    status: Arc<Status>,
    events: EventSender,
    stop: CancellationToken,
) {
    use broadcast::error::RecvError;
    loop {
        let list = announce::announcements(&routes.load());
        let old = status.services();
        for a in &list {
            let before = old.iter().find(|o| o.service == a.service);
            if before.map(|b| (b.announced, b.prefix)) != Some((a.announced, a.prefix)) {
                report(&events, a, before.is_none());
            }
        }
        let set = announce::wanted(&list);
        status.set_services(list);
        wanted.send_if_modified(|w| {
            let changed = *w != set;
            *w = set;
            changed
        });
        tokio::select! {
            r = events_rx.recv() => {
                if let Err(RecvError::Closed) = r {
                    return;
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Logs and broadcasts a service's announcement changing (or first seen).
fn report(events: &EventSender, a: &Announcement, first: bool) {
    let change = if a.announced {
        "announced"
    } else {
        "withdrawn"
    };
    let reason = match (a.announced, first) {
        (true, _) => "the active pool has a member up",
        (false, true) => "configured; the active pool has no member up",
        (false, false) => "the active pool has no member up",
    };
    info!(service = %a.service, prefix = %a.prefix, change, reason, "bgp: announcement changed");
    let _ = events.send(Event::Bgp(BgpEvent {
        change,
        peer: None,
        service: Some(a.service.clone()),
        prefix: Some(a.prefix.to_string()),
        reason: reason.to_string(),
        at: SystemTime::now(),
    }));
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
async fn run_peer(
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
