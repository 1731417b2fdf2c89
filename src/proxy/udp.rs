//! UDP services: a session per client address, one connected upstream socket per session.
//!
//! A service listens on one socket per worker (`SO_REUSEPORT`, see [`crate::listeners`]), and
//! [`serve`] runs for each socket on its worker with a session table of its own: the kernel
//! keeps a client's datagrams on one socket while the group is unchanged, so its session, its
//! replies (sent from that socket) and its worker stay together.
//!
//! The receive loop owns the listening socket's read side. For each datagram it finds the
//! client's session in a sharded table (`DashMap`, keyed by the client's full address) or opens
//! one: a `max_connections` permit, a member picked from the active pool by the client's hash
//! key (so with `hash = "source-ip"` every port of one IP lands on one member), and a socket on an
//! ephemeral port connected to that member. The datagram goes out on that socket.
//!
//! Each session has one task, which relays the member's replies back to the client *from the
//! listening socket* (so the client sees answers from the address it wrote to; on a wildcard
//! listener each reply names that address as its source, see [`super::udp_vip`]) and owns the
//! session's idle timer: nothing scans the table. A session ends after `idle_timeout` without a
//! datagram in either direction, when the service stops (shutdown, or removed by a reload), or
//! when a re-hash replaces it. Ending drops its upstream socket, closing it.
//!
//! A session stays on its member while the member is available. When it is not (down, drain,
//! maint, removed by a reload), the client's next datagram opens a new session on the member the
//! client's key now picks in the active pool: UDP has no connection to keep, and the old member is
//! not going to answer.
//!
//! Hot path: no allocation per datagram. The receive loop reuses one 64 KiB buffer; reply tasks
//! share one per worker thread (a reply is read and sent without an `.await` in between). Counters
//! are added once per batch.
//!
//! The receive loop never waits on one session: a datagram whose member socket has no room in
//! its send buffer is dropped and counted (`datagrams_dropped_send_blocked`). Only a reply to a
//! client that would block copies the datagram and waits, in that session's own task.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{source, udp_vip};
use crate::access_log::{AccessLog, Outcome, Record};
use crate::config::{Protocol, Source};
use crate::local_error;
use crate::pool::{ClientKey, MemberState, PoolState, Route, Snapshot};
use crate::stats::ServiceStats;

/// Largest datagram relayed (the UDP maximum); longer ones do not exist on the wire.
pub const MAX_DATAGRAM: usize = 65535;
/// Receive buffer asked of the kernel for a listening socket (it caps it at `net.core.rmem_max`):
/// a burst of datagrams waits here while the receive loop is busy.
const LISTEN_RECV_BUFFER: usize = 4 << 20;
/// Datagrams handled in one go before the receive loop yields to other tasks.
const BATCH: usize = 256;
/// Pause after a listening socket error that is not about one datagram.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

thread_local! {
    /// Reply buffer of the session tasks running on this thread.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// Binds one listening socket of a UDP service's socket group (see [`crate::listeners`]). Not
/// registered with a runtime yet: the worker that serves it does so.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // SO_REUSEPORT, not SO_REUSEADDR: the port is shared only with sockets of this user that
    // set it too (the group, one per worker), and the kernel keeps a client's datagrams on one
    // of them by hashing the 4-tuple. `listeners` checks the port is free before binding a new
    // group, so another process holding it is still an error.
    socket.set_reuse_port(true)?;
    // Best effort: a smaller buffer still works, it only drops sooner under a burst.
    let _ = socket.set_recv_buffer_size(LISTEN_RECV_BUFFER);
    socket.set_nonblocking(true)?;
    super::tcp::freebind(&socket, addr);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// What a UDP service's receive loop and its sessions share with the app.
#[derive(Clone)]
pub struct UdpContext {
    /// Service name, the key of its route in the snapshot.
    pub name: Arc<str>,
    /// The current routing snapshot, read for new sessions and after a reload.
    pub routes: Arc<ArcSwap<Snapshot>>,
    pub stats: Arc<ServiceStats>,
    /// `max_connections` permits: one per session.
    pub limiter: Arc<Semaphore>,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Fires when the service stops (shutdown, or removed by a reload): the receive loop and
    /// every session end at once, and the listening socket closes.
    pub stop: CancellationToken,
    /// The process's access log (possibly none configured): a line per session when it ends.
    pub access_log: AccessLog,
}

/// The client-facing side of one running UDP service: the listening socket and the session
/// table, shared by the receive loop and the session tasks. (Not `config::Service`, which is
/// the service as configured.)
struct Frontend {
    /// The service's name, routes, counters and stop signal, as the app handed them over.
    service: UdpContext,
    listen: UdpSocket,
    /// A wildcard listener: replies name their source address (see [`udp_vip`]).
    wildcard: bool,
    sessions: DashMap<Flow, Session>,
    /// Time origin of `last_seen` stamps (milliseconds since it).
    base: Instant,
    /// The listening socket's address, for the access log.
    local: Option<SocketAddr>,
}

impl Frontend {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

/// What a session is keyed by: the client's address, and on a wildcard listener the local
/// address it wrote to (its replies leave from there; the same client port writing to two VIPs
/// of one service is two sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    peer: SocketAddr,
    local: Option<IpAddr>,
}

/// One client's session, as the receive loop sees it.
struct Session {
    io: Arc<SessionIo>,
    /// The member the session is bound to, as of snapshot `generation`.
    member: Option<MemberState>,
    /// The pool the member was picked from (local or backup).
    pool: Arc<PoolState>,
    generation: u64,
    /// When the client last sent a datagram (ms since [`Frontend::base`]).
    last_seen: u64,
    /// The session's `max_connections` permit; handed to the session that replaces it.
    permit: Option<OwnedSemaphorePermit>,
}

/// What a session's task owns: the upstream socket, and a token that ends the task when a
/// re-hash replaces the session.
struct SessionIo {
    socket: UdpSocket,
    replaced: CancellationToken,
    /// The member and its pool, for the access log.
    member: SocketAddr,
    pool: Arc<PoolState>,
    /// Bytes sent to the member. Written by the receive loop only (a load and a store, no
    /// locked instruction), read by the session's task when it logs.
    to_member: AtomicU64,
}

impl SessionIo {
    fn new(socket: UdpSocket, member: SocketAddr, pool: Arc<PoolState>) -> SessionIo {
        SessionIo {
            socket,
            replaced: CancellationToken::new(),
            member,
            pool,
            to_member: AtomicU64::new(0),
        }
    }

    /// Sends one datagram (see [`send`]) and counts it for the access log.
    fn forward(&self, datagram: &[u8]) -> Forward {
        let sent = send(self, datagram);
        if let Forward::Sent = sent {
            let n = self.to_member.load(Relaxed);
            self.to_member.store(n + datagram.len() as u64, Relaxed);
        }
        sent
    }
}

/// Receives until `service.stop` fires; then ends every session and closes the socket.
pub async fn serve(listen: UdpSocket, service: UdpContext) {
    let local = listen.local_addr().ok();
    // Here rather than at bind, so a socket inherited in a binary upgrade gets it too.
    let wildcard = match listen
        .local_addr()
        .and_then(|l| udp_vip::enable(&listen, l))
    {
        Ok(on) => on,
        Err(e) => {
            warn!(service = %service.name, error = %e,
                  "cannot learn the destination of datagrams; replies leave from the routed address");
            false
        }
    };
    let frontend = Arc::new(Frontend {
        service,
        listen,
        wildcard,
        sessions: DashMap::new(),
        base: Instant::now(),
        local,
    });
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut control = [0u8; udp_vip::CONTROL_SPACE];
    let stop = frontend.service.stop.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = frontend.listen.readable() => {
                if let Err(e) = r {
                    warn!(service = %frontend.service.name, error = %e, "udp socket failed; pausing");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                }
            }
        }
        receive_batch(&frontend, &mut buf, &mut control).await;
        // Let session tasks and others run between batches under a flood.
        tokio::task::yield_now().await;
    }
    // Sessions see `stop` too and end; take them out of the gauge here, once.
    let mut open = 0;
    frontend.sessions.retain(|_, _| {
        open += 1;
        false
    });
    frontend
        .service
        .stats
        .sessions_active
        .fetch_sub(open, Relaxed);
    debug!(service = %frontend.service.name, sessions = open, "udp listener closed");
}

/// Counts kept in locals and added to the shared counters once per batch.
#[derive(Default)]
struct Tally {
    datagrams: u64,
    bytes: u64,
    dropped: u64,
}

impl Tally {
    fn flush(&mut self, datagrams: &AtomicU64, bytes: &AtomicU64, dropped: &AtomicU64) {
        if self.datagrams > 0 {
            datagrams.fetch_add(self.datagrams, Relaxed);
            bytes.fetch_add(self.bytes, Relaxed);
        }
        if self.dropped > 0 {
            dropped.fetch_add(self.dropped, Relaxed);
        }
        *self = Tally::default();
    }
}

/// Reads datagrams until the socket is empty (or a batch is done) and forwards each.
async fn receive_batch(frontend: &Arc<Frontend>, buf: &mut [u8], control: &mut [u8]) {
    let stats = &frontend.service.stats;
    let mut tally = Tally::default();
    let mut blocked = 0;
    for _ in 0..BATCH {
        let received = if frontend.wildcard {
            udp_vip::try_recv(&frontend.listen, buf, control)
        } else {
            frontend
                .listen
                .try_recv_from(buf)
                .map(|(n, peer)| (n, peer, None))
        };
        let (n, flow) = match received {
            Ok((n, peer, local)) => (n, Flow { peer, local }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // An error about one datagram (e.g. a pending ICMP error): go on with the next.
            Err(_) => continue,
        };
        match forward(frontend, flow, &buf[..n]) {
            Forward::Sent => {
                tally.datagrams += 1;
                tally.bytes += n as u64;
            }
            Forward::Dropped => tally.dropped += 1,
            // The member's socket has no room: drop rather than wait. This loop is the only
            // reader of the service's socket, so waiting for one slow member would stall every
            // other client of the service, and a stop too; UDP is lossy by contract, and the
            // client's own retransmission covers the loss.
            Forward::Blocked => {
                tally.dropped += 1;
                blocked += 1;
            }
        }
    }
    tally.flush(
        &stats.datagrams_to_members,
        &stats.bytes_to_members,
        &stats.datagrams_dropped,
    );
    if blocked > 0 {
        stats
            .datagrams_dropped_send_blocked
            .fetch_add(blocked, Relaxed);
    }
}

/// What became of one client datagram.
enum Forward {
    Sent,
    /// No session could be opened, or the send failed.
    Dropped,
    /// The member socket's send buffer was full; the datagram was not sent.
    Blocked,
}

/// Sends one client datagram to its session's member, opening or re-hashing the session first
/// when needed. Never awaits: table shards are locked only inside.
fn forward(frontend: &Arc<Frontend>, flow: Flow, datagram: &[u8]) -> Forward {
    let peer = flow.peer;
    let now = frontend.now_ms();
    let snapshot = frontend.service.routes.load();
    let mut entry = match frontend.sessions.entry(flow) {
        dashmap::Entry::Occupied(entry) => entry,
        dashmap::Entry::Vacant(vacant) => {
            let Some(session) = open(frontend, &snapshot, flow, now, None) else {
                return Forward::Dropped;
            };
            let io = session.io.clone();
            vacant.insert(session);
            frontend.service.stats.sessions_active.fetch_add(1, Relaxed);
            return io.forward(datagram);
        }
    };
    let session = entry.get_mut();
    if session.generation != snapshot.generation {
        refresh(session, &snapshot, &frontend.service.name);
    }
    session.last_seen = now;
    let usable = session
        .member
        .as_ref()
        .is_some_and(|m| m.available() && !m.retired.is_ended());
    if !usable {
        // The member cannot serve: move the client to the member its key picks now. The new
        // session takes over the old one's permit, so a full table never blocks a re-hash.
        let permit = session.permit.take();
        let Some(new) = open(frontend, &snapshot, flow, now, permit) else {
            // Nobody to move to: the session ends and the datagram is dropped; the client's
            // next datagram starts afresh.
            let (_, old) = entry.remove_entry();
            old.io.replaced.cancel();
            frontend.service.stats.sessions_active.fetch_sub(1, Relaxed);
            return Forward::Dropped;
        };
        debug!(service = %frontend.service.name, client = %peer, "member unavailable; session re-hashed");
        frontend
            .service
            .stats
            .sessions_rehashed
            .fetch_add(1, Relaxed);
        let old = std::mem::replace(session, new);
        old.io.replaced.cancel();
    }
    session.io.forward(datagram)
}

/// Sends one datagram on the session's upstream socket, without waiting.
fn send(io: &SessionIo, datagram: &[u8]) -> Forward {
    // Straight to the kernel, not through tokio's `try_send`: that one first consults tokio's
    // readiness cache, which reports a socket registered a moment ago as not writable until the
    // I/O driver has turned, so it would refuse the first datagram of every new session. The
    // socket is non-blocking: a full send buffer is an immediate WouldBlock here, never a wait.
    let socket = socket2::SockRef::from(&io.socket);
    match socket.send(datagram) {
        Ok(_) => Forward::Sent,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Forward::Blocked,
        // A pending ICMP error from the member (port unreachable) fails this send without
        // sending; the datagram itself may still get through.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match socket.send(datagram) {
            Ok(_) => Forward::Sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Forward::Blocked,
            Err(_) => Forward::Dropped,
        },
        Err(_) => Forward::Dropped,
    }
}

/// After a reload: finds the session's member in the new snapshot (same pool, same address),
/// so its current health and operator state apply. A member that is gone is unusable.
fn refresh(session: &mut Session, snapshot: &Snapshot, name: &str) {
    session.generation = snapshot.generation;
    let addr = session.member.as_ref().map(|m| m.addr);
    let current = snapshot.route(name).and_then(|route| {
        std::iter::once(&route.local)
            .chain(route.backup.as_ref())
            .find(|p| p.name == session.pool.name)
    });
    match (current, addr) {
        (Some(pool), Some(addr)) => {
            session.member = pool.members.iter().find(|m| m.addr == addr).cloned();
            session.pool = pool.clone();
        }
        _ => session.member = None,
    }
}

/// Opens a session for `peer`: a permit (or the one handed over by a re-hash), a member from
/// the active pool (spilling to the paired pool under `auto` when the active one has none), a
/// connected upstream socket, and the task relaying replies.
fn open(
    frontend: &Arc<Frontend>,
    snapshot: &Snapshot,
    flow: Flow,
    now: u64,
    permit: Option<OwnedSemaphorePermit>,
) -> Option<Session> {
    let peer = flow.peer;
    let stats = &frontend.service.stats;
    let route = snapshot.route(&frontend.service.name)?;
    let permit = match permit {
        Some(p) => p,
        None => match frontend.service.limiter.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stats.rejected_limit.fetch_add(1, Relaxed);
                debug!(service = %frontend.service.name, client = %peer, "max_connections sessions open; datagram dropped");
                return None;
            }
        },
    };
    let Some((pool, member)) = choose(route, peer) else {
        stats.rejected_no_member.fetch_add(1, Relaxed);
        debug!(service = %frontend.service.name, client = %peer, "no member available; datagram dropped");
        return None;
    };
    let addr = member.addr.socket_addr(route.service.port);
    let socket = match connect(&route.service.source, peer.ip(), addr) {
        Ok(s) => s,
        Err(e) => {
            if let Some(reason) = local_error::classify(&e) {
                // This machine's exhaustion, not the member's: counted apart, logged sparingly.
                stats.rejected_resources.fetch_add(1, Relaxed);
                if let Some(suppressed) = stats.local_errors.record(reason) {
                    warn!(service = %frontend.service.name, member = %addr, reason = %reason,
                          error = %e, suppressed, remedy = reason.remedy(),
                          "cannot open a socket to a member; datagram dropped");
                }
            } else {
                stats.connect_failures.fetch_add(1, Relaxed);
                debug!(service = %frontend.service.name, member = %addr, error = %e, "upstream socket failed");
            }
            return None;
        }
    };
    let io = Arc::new(SessionIo::new(socket, addr, pool.clone()));
    stats.sessions_created.fetch_add(1, Relaxed);
    frontend.service.tracker.spawn(relay_replies(
        frontend.clone(),
        flow,
        io.clone(),
        route.service.idle_timeout,
        now,
    ));
    Some(Session {
        io,
        member: Some(member),
        pool,
        generation: snapshot.generation,
        last_seen: now,
        permit: Some(permit),
    })
}

/// The member for a new session: the active pool first; under `auto`, the paired pool when
/// the active one has nobody available (the moments before failover is decided).
fn choose(route: &Route, peer: SocketAddr) -> Option<(Arc<PoolState>, MemberState)> {
    let key = ClientKey::new(peer, route.service.hash);
    let (active, spill) = route.target().pools();
    std::iter::once(active).chain(spill).find_map(|pool| {
        let index = pool.pick(key.as_bytes(), &[])?;
        let member = pool.members.get(index)?.clone();
        Some((pool.clone(), member))
    })
}

/// A socket on an ephemeral port connected to `member`, its address as the service's `source`
/// says for `client` (synchronous: a few syscalls, no wait).
fn connect(source: &Source, client: IpAddr, member: SocketAddr) -> io::Result<UdpSocket> {
    let socket = source::udp_socket(source, client, member)?;
    socket.connect(member)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A session's task: relays the member's replies to the client from the listening socket, and
/// ends the session after `idle` without traffic either way. Writes the session's access log
/// line when it ends (and progress lines every `interval` of the log, if it has one).
async fn relay_replies(
    frontend: Arc<Frontend>,
    flow: Flow,
    io: Arc<SessionIo>,
    idle: Duration,
    opened: u64,
) {
    let log = &frontend.service.access_log;
    let mut to_client = 0;
    let outcome = session(&frontend, flow, &io, idle, opened, &mut to_client).await;
    if log.enabled() {
        log.log(session_record(
            &frontend, flow, &io, opened, to_client, outcome,
        ));
    }
}

/// The access log line of a UDP session: `outcome` [`Outcome::Open`] for a progress line.
fn session_record(
    frontend: &Frontend,
    flow: Flow,
    io: &SessionIo,
    opened: u64,
    to_client: u64,
    outcome: Outcome,
) -> Record {
    let mut r = Record::new(Protocol::Udp, frontend.service.name.clone(), flow.peer);
    // On a wildcard listener, the address the client wrote to.
    r.frontend = match (frontend.local, flow.local) {
        (Some(listen), Some(ip)) => Some(SocketAddr::new(ip, listen.port())),
        (listen, _) => listen,
    };
    r.pool = Some(io.pool.clone());
    r.member = Some(io.member);
    r.source = io.socket.local_addr().ok();
    r.outcome = outcome;
    r.bytes_to_member = io.to_member.load(Relaxed);
    r.bytes_to_client = to_client;
    r.lasted(Duration::from_millis(
        frontend.now_ms().saturating_sub(opened),
    ));
    r
}

/// [`relay_replies`] until the session ends; returns how it ended, and adds the bytes relayed
/// to the client to `to_client`.
async fn session(
    frontend: &Frontend,
    flow: Flow,
    io: &Arc<SessionIo>,
    idle: Duration,
    opened: u64,
    to_client: &mut u64,
) -> Outcome {
    let peer = flow.peer;
    let stats = &frontend.service.stats;
    let idle_ms = idle.as_millis() as u64;
    let mut last_reply = opened;
    // Progress lines share the idle timer: it sleeps until whichever comes first.
    let every = frontend.service.access_log.interval();
    let mut next_report = every.map(|every| Instant::now() + every);
    let first = Instant::now() + idle;
    let timer = tokio::time::sleep_until(next_report.map_or(first, |r| r.min(first)));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            _ = frontend.service.stop.cancelled() => return Outcome::Stopped,
            _ = io.replaced.cancelled() => return Outcome::MemberUnavailable,
            r = io.socket.readable() => {
                if r.is_err() {
                    // Only when the runtime's I/O driver is gone: nothing more will come.
                    return Outcome::Stopped;
                }
                let mut tally = Tally::default();
                let pending = relay_ready(frontend, io, flow, &mut tally);
                if let Some(datagram) = pending {
                    // The listening socket's send buffer is full: wait for room (rare).
                    let sent = match flow.local {
                        Some(from) => udp_vip::send_from(&frontend.listen, &datagram, peer, from).await,
                        None => frontend.listen.send_to(&datagram, peer).await,
                    };
                    match sent {
                        Ok(_) => {
                            tally.datagrams += 1;
                            tally.bytes += datagram.len() as u64;
                        }
                        Err(_) => tally.dropped += 1,
                    }
                }
                if tally.datagrams > 0 {
                    last_reply = frontend.now_ms();
                }
                *to_client += tally.bytes;
                tally.flush(&stats.datagrams_to_clients, &stats.bytes_to_clients, &stats.datagrams_dropped);
            }
            _ = &mut timer => {
                if let (Some(at), Some(every)) = (next_report.as_mut(), every)
                    && *at <= Instant::now()
                {
                    let line = session_record(frontend, flow, io, opened, *to_client, Outcome::Open);
                    frontend.service.access_log.log(line);
                    while *at <= Instant::now() {
                        *at += every;
                    }
                }
                let Some(last_seen) = frontend
                    .sessions
                    .get(&flow)
                    .filter(|s| Arc::ptr_eq(&s.io, io))
                    .map(|s| s.last_seen)
                else {
                    // No longer in the table: replaced, or the service stopped.
                    return if io.replaced.is_cancelled() {
                        Outcome::MemberUnavailable
                    } else {
                        Outcome::Stopped
                    };
                };
                let last = last_seen.max(last_reply);
                let now = frontend.now_ms();
                if now.saturating_sub(last) >= idle_ms {
                    // Remove only if the client has not sent meanwhile (checked under the
                    // shard lock the receive loop also takes).
                    let removed = frontend.sessions.remove_if(&flow, |_, s| {
                        Arc::ptr_eq(&s.io, io) && s.last_seen == last_seen
                    });
                    if removed.is_some() {
                        stats.sessions_expired.fetch_add(1, Relaxed);
                        stats.sessions_active.fetch_sub(1, Relaxed);
                        debug!(service = %frontend.service.name, client = %peer, "udp session idle; closed");
                        return Outcome::IdleTimeout;
                    }
                    let deadline = Instant::now() + idle;
                    timer.as_mut().reset(next_report.map_or(deadline, |r| r.min(deadline)));
                } else {
                    let left = idle_ms - (now - last);
                    let deadline = Instant::now() + Duration::from_millis(left);
                    timer.as_mut().reset(next_report.map_or(deadline, |r| r.min(deadline)));
                }
            }
        }
    }
}

/// Reads every reply waiting on the session's socket and sends each to the client, without
/// waiting. Returns a copy of a reply that could not be sent without waiting.
fn relay_ready(
    frontend: &Frontend,
    io: &SessionIo,
    flow: Flow,
    tally: &mut Tally,
) -> Option<Vec<u8>> {
    REPLY_BUF.with_borrow_mut(|buf| {
        for _ in 0..BATCH {
            let n = match io.socket.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                // The member's port is closed (ICMP port unreachable), or another error about
                // one datagram: nothing to relay; health checks judge the member.
                Err(_) => {
                    tally.dropped += 1;
                    continue;
                }
            };
            let sent = match flow.local {
                Some(from) => udp_vip::try_send_from(&frontend.listen, &buf[..n], flow.peer, from),
                None => frontend.listen.try_send_to(&buf[..n], flow.peer),
            };
            match sent {
                Ok(_) => {
                    tally.datagrams += 1;
                    tally.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(buf[..n].to_vec()),
                Err(_) => tally.dropped += 1,
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokio reports a socket registered a moment ago as not writable until its I/O driver has
    /// turned; `send` must not take that for a full buffer, or every new session would lose its
    /// first datagram.
    #[tokio::test]
    async fn the_first_datagram_of_a_new_session_is_sent() {
        let member = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind member");
        member
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let member_addr = member.local_addr().expect("member addr");
        let socket = connect(
            &Source::Auto,
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            member_addr,
        )
        .expect("connect");
        let config = crate::config::parse(
            &format!("[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member_addr}\" }}]\n"),
            "t.toml",
        )
        .expect("valid");
        let snapshot =
            Snapshot::build(&config, 1, &crate::events::channel(), None).expect("snapshot");
        let pool = snapshot.pools().next().expect("a pool").clone();
        let io = SessionIo::new(socket, member_addr, pool);
        assert!(matches!(send(&io, b"first"), Forward::Sent));
        let mut buf = [0u8; 16];
        let n = member.recv(&mut buf).expect("the member receives it");
        assert_eq!(&buf[..n], b"first");
    }
}
