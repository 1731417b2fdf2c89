//! TCP services: the accept loop and the life of one client connection.
//!
//! Per connection: take a `max_connections` permit (or close at once), then `setup` (in
//! `setup.rs`) picks a member by the client's hash key from the active pool, connects with
//! `connect_timeout`, falling through the key's preference order on refusal or timeout, and
//! sends the PROXY header if configured; then the connection is held and relayed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use pin_project_lite::pin_project;
use socket2::TcpKeepalive;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::access;
use super::relay::{RelayEnd, RelayState, Report, Schedule, Sides};
use super::setup::{Opened, setup};
use crate::access_log::{AccessLog, Cut};
use crate::kill::{Scope, Signal, StopState, Switches, Ticket};
use crate::limits;
use crate::pool::{MemberState, PoolState, Route, Snapshot};
use crate::stats::{ServiceStats, WorkerCounter, bump};

/// Kernel accept queue length per listener (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;
/// Keepalive on both legs, so a client or member that vanished without a FIN or RST is noticed
/// long before the idle timeout on the other leg.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;
/// Pause after an accept error such as EMFILE: the pending connection stays queued and the
/// listener stays readable, so retrying at once would spin a core.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Binds one TCP listener of a service's socket group: SO_REUSEADDR (so a restart does not wait
/// out TIME_WAIT) and SO_REUSEPORT (one listener per worker on the same address, see
/// [`crate::listeners`]). Not registered with a runtime yet: the worker that serves it does so.
///
/// TCP_NODELAY and the keepalive options are set on the listener: Linux copies them to every
/// accepted socket, which saves five syscalls per client connection (see the test below).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Best effort, as in `tune`: a listener that refuses them still serves.
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keepalive());
    freebind(&socket, addr);
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// IP_FREEBIND (IPV6_FREEBIND): the listener binds to a VIP this host does not hold yet, as
/// the standby of a VRRP pair must, without the `ip_nonlocal_bind` sysctl. Connections arrive
/// once the address lands on an interface. Best effort: where the option is refused, binding a
/// local address still works and a missing one fails with its own error.
pub(crate) fn freebind(socket: &socket2::Socket, addr: SocketAddr) {
    let _ = match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true),
        SocketAddr::V6(_) => socket.set_freebind_v6(true),
    };
}

/// What one service's accept loop and its connections share.
#[derive(Clone)]
pub struct ServiceContext {
    /// Service name, the key of its route in the snapshot.
    pub name: Arc<str>,
    /// The current routing snapshot, read once per connection.
    pub routes: Arc<ArcSwap<Snapshot>>,
    pub stats: Arc<ServiceStats>,
    /// `max_connections` permits.
    pub limiter: Arc<Semaphore>,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Fires when the listener must stop accepting.
    pub stop_accepting: CancellationToken,
    /// The kill switches of open connections: each connection registers one, which the app
    /// flips at the end of shutdown grace, or when a reload removes the service or retires
    /// the connection's member.
    pub switches: Arc<Switches>,
    /// Ended when a reload removes the service: its connections then live on for the
    /// service's `drain_timeout`.
    pub removed: Arc<Scope>,
    /// The process's access log (possibly none configured).
    pub access_log: AccessLog,
    /// The listener's bound address: the access log's `frontend` unless it is a wildcard.
    pub local_addr: SocketAddr,
    /// The accepted-connections counter of the worker this listener's loop runs on.
    pub worker: WorkerCounter,
}

/// Accepts until `stop_accepting` fires; then drops the listener, which closes it. Runs on the
/// worker the listener is registered with, and so does every connection it spawns.
pub async fn serve(listener: TcpListener, cx: ServiceContext) {
    // One reference count per connection, rather than cloning every field (each
    // `CancellationToken` clone and drop takes a lock).
    let cx = Arc::new(cx);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cx.stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                bump(&cx.stats.accepted);
                cx.worker.bump();
                let Ok(permit) = cx.limiter.clone().try_acquire_owned() else {
                    // Closing at once tells the client to go elsewhere; queueing it would hold
                    // a descriptor for a connection we cannot serve.
                    bump(&cx.stats.rejected_limit);
                    debug!(service = %cx.name, %peer, "max_connections reached; connection closed");
                    if cx.access_log.enabled() {
                        access::rejected(&cx, &stream, peer);
                    }
                    drop(stream);
                    continue;
                };
                let cx2 = Arc::clone(&cx);
                // Spawned as is: an `async move` wrapper would store the arguments a second time.
                cx.tracker.spawn(connection(stream, peer, cx2, permit));
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                warn!(service = %cx.name, error = %e, pause_ms = backoff.as_millis() as u64,
                      "accept failed; pausing the listener");
                tokio::select! {
                    _ = cx.stop_accepting.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    debug!(service = %cx.name, "listener closed");
}

/// Errors about one pending connection (it died in the queue), not about the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES)
}

/// The member leg's keepalive, applied by the relay once the connection has lived
/// [`SETTLE`](super::relay::SETTLE) (1 s) rather than before the connect: it only acts after
/// `KEEPALIVE_IDLE` of silence, and it takes four setsockopt calls (Linux sets SO_KEEPALIVE,
/// the idle time, the interval and the count separately), which most connections, over in
/// well under a second, would pay for nothing. Kept for lasting ones: without our interval and
/// count a member that vanished would be noticed after the kernel's default 60 s + 9 x 75 s
/// instead of 60 s + 6 x 10 s. Deferring them took a short connection from 22.3 to 17.9
/// syscalls (`perf stat` on one worker under wrk `Connection: close`).
fn member_keepalive(member: &TcpStream) {
    // Best effort, like `tune`.
    let _ = socket2::SockRef::from(member).set_tcp_keepalive(&keepalive());
}

/// The task of one client connection: `open` (everything up to a connected member) in its own
/// allocation, then the connection as [`Held`] until it ends.
///
/// Written by hand rather than as an `async` block: the task of a held connection is tokio's
/// cell around this future, the future plus 112 bytes, rounded up to 128 (x86_64), so every 128
/// bytes saved here are saved per connection. An `async` block keeps its captured arguments
/// for its whole life and lends them to the relay by reference, with the `Stop` future, the
/// access-log line and the relay's own references beside them (520 bytes when measured, a
/// 640-byte cell); [`Held`] owns each thing once (384 bytes, a 512-byte cell).
fn connection(
    client: TcpStream,
    peer: SocketAddr,
    cx: Arc<ServiceContext>,
    permit: OwnedSemaphorePermit,
) -> Connection {
    Connection::Opening {
        open: Box::pin(open(client, peer, cx, permit)),
    }
}

pin_project! {
    #[project = ConnectionProj]
    enum Connection {
        Opening { open: Pin<Box<dyn Future<Output = Option<Held>> + Send>> },
        Held { #[pin] held: Held },
        Done,
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ConnectionProj::Opening { open } => match ready!(open.as_mut().poll(cx)) {
                    Some(held) => self.set(Connection::Held { held }),
                    None => {
                        self.set(Connection::Done);
                        return Poll::Ready(());
                    }
                },
                ConnectionProj::Held { held } => {
                    ready!(held.poll(cx));
                    // Dropped here: the sockets close and the permit returns as the task ends.
                    self.set(Connection::Done);
                    return Poll::Ready(());
                }
                ConnectionProj::Done => return Poll::Ready(()),
            }
        }
    }
}

pin_project! {
    /// A connection whose member answered, for as long as it is relayed: everything the relay
    /// and the connection's last log lines need, each kept once. The member is kept as its
    /// pool and index there: its address and health are looked up when needed (36 bytes fewer
    /// per held connection).
    struct Held {
        #[pin]
        relay: RelayState,
        client: TcpStream,
        member: TcpStream,
        peer: SocketAddr,
        registered: Registered,
        // The service's route as the connection found it: its timeouts hold for its life.
        route: Arc<Route>,
        // The pool the member was picked from, and its index in `pool.members`.
        pool: Arc<PoolState>,
        index: usize,
        stop: StopState,
        // Boxed: it would take room in every held connection otherwise, log or not.
        line: Option<Box<access::Line>>,
        // Boxed: limits per source are off by default, and the guard is 24 bytes.
        _source: Option<Box<limits::SourceGuard>>,
        // Last: `max_connections` counts the connection until its sockets are closed.
        _permit: OwnedSemaphorePermit,
    }
}

/// The connection's service context and its place in the kill-switch register, which it
/// leaves when dropped.
struct Registered {
    cx: Arc<ServiceContext>,
    kill: Ticket,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cx.switches.unregister(&self.kill);
    }
}

/// The member at `index` of `pool`, which the connection was relayed to.
fn member_of(pool: &PoolState, index: usize) -> &MemberState {
    // The index came from this pool, whose members never change.
    &pool.members[index]
}

impl Future for Held {
    type Output = ();

    fn poll(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let cx = &*this.registered.cx;
        let service = &this.route.service;
        // The connection ends early when shutdown runs out of grace, or `drain_timeout` after
        // a reload retired its member or removed its service: all three reach it through its
        // one kill switch.
        let stopped = this
            .registered
            .kill
            .poll_stop(task, this.stop, Some(service.drain_timeout))
            .is_ready();
        let mut progress = this.line.as_deref_mut().and_then(|line| {
            let ends = access::Ends {
                cx,
                peer: *this.peer,
                pool: this.pool,
                member: member_of(this.pool, *this.index)
                    .addr
                    .socket_addr(service.port),
            };
            line.progress(ends)
        });
        let (end, mut moved) = ready!(this.relay.poll_relay(
            task,
            Sides {
                client: this.client,
                member: this.member,
            },
            service.idle_timeout,
            stopped,
            progress.as_mut().map(|p| p as &mut dyn Report),
            member_keepalive,
        ));
        let member_addr = member_of(this.pool, *this.index)
            .addr
            .socket_addr(service.port);
        let traffic = &member_of(this.pool, *this.index).health.traffic;
        cx.stats.active.fetch_sub(1, Relaxed);
        traffic.active.fetch_sub(1, Relaxed);
        // Byte counts are added once per connection, not per read: the hot loop stays free of
        // shared writes.
        cx.stats
            .bytes_to_members
            .fetch_add(moved.to_member, Relaxed);
        cx.stats
            .bytes_to_clients
            .fetch_add(moved.to_client, Relaxed);
        traffic.bytes_to_member.fetch_add(moved.to_member, Relaxed);
        traffic.bytes_to_client.fetch_add(moved.to_client, Relaxed);
        if let Some(line) = this.line.as_deref() {
            let cut = match this.registered.kill.signal() {
                Signal::Force => Cut::Shutdown,
                Signal::MemberRetired => Cut::MemberRetired,
                Signal::ServiceRemoved | Signal::Running => Cut::ServiceRemoved,
            };
            // The bytes sent before the relay (the ClientHello) count in the last line; the
            // counters had them when they were sent.
            moved.to_member += line.early;
            let outcome = access::relay_outcome(&end, &moved, cut);
            let ends = access::Ends {
                cx,
                peer: *this.peer,
                pool: this.pool,
                member: member_addr,
            };
            line.write(&ends, this.client, this.member, moved, outcome);
        }
        let peer = *this.peer;
        match end {
            Ok(RelayEnd::Closed) => {}
            Ok(RelayEnd::Idle) => {
                debug!(service = %cx.name, client = %peer, member = %member_addr, "idle timeout");
            }
            Ok(RelayEnd::Forced) => {
                debug!(service = %cx.name, client = %peer, "closed at end of shutdown grace");
            }
            Err(e) => {
                debug!(service = %cx.name, client = %peer, member = %member_addr, error = %e, "relay ended with error");
            }
        }
        Poll::Ready(())
    }
}

/// Everything between accept and relay (see `setup`), then the connection as it is held. None
/// when the client is closed instead, which has been counted and logged.
// Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn open(
    mut client: TcpStream,
    peer: SocketAddr,
    cx: Arc<ServiceContext>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = Option<Held>> + Send {
    async move {
        // When the access log is on: the start of the connection, for its connect time and
        // duration.
        let started = cx.access_log.enabled().then(Instant::now);
        let (
            Opened {
                member,
                pool,
                index,
                route,
                source,
                kill,
                early_bytes,
            },
            connect_time,
        ) = match setup(&mut client, &peer, &cx, started).await {
            Ok(opened) => opened,
            Err(failed) => {
                if let Some(started) = started {
                    access::failed(&cx, &client, peer, started, failed);
                }
                return None;
            }
        };
        let kill = kill.into_ticket();
        let traffic = &member_of(&pool, index).health.traffic;
        traffic.connections.fetch_add(1, Relaxed);
        traffic.active.fetch_add(1, Relaxed);
        cx.stats.active.fetch_add(1, Relaxed);
        if early_bytes > 0 {
            cx.stats.bytes_to_members.fetch_add(early_bytes, Relaxed);
            traffic.bytes_to_member.fetch_add(early_bytes, Relaxed);
        }
        let interval = cx.access_log.interval();
        let line = started.zip(connect_time).map(|(started, connect)| {
            Box::new(access::Line {
                started,
                connect,
                early: early_bytes,
                progress: interval.map(Schedule::every),
            })
        });
        let relay = RelayState::new(
            route.service.idle_timeout,
            line.as_ref().and_then(|l| l.progress).map(|s| s.next),
            true,
        );
        Some(Held {
            relay,
            client,
            member,
            peer,
            registered: Registered { cx, kill },
            route,
            pool,
            index,
            stop: StopState::default(),
            line,
            _source: source.map(Box::new),
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bind` relies on Linux copying these options from the listener to accepted sockets.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener =
            TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }

    /// A held connection costs tokio's task cell around `Connection`: its size plus 112 bytes
    /// (the task's header, id, scheduler, trailer and the tracker's token), rounded up to 128
    /// (x86_64). At most 400 bytes keeps it in a 512-byte cell;
    /// `cargo +nightly rustc --release --lib -- -Zprint-type-sizes` shows what takes the room.
    /// Debug builds lay out tokio's types larger (a `TcpStream` is 40 bytes there, not 32).
    #[test]
    fn a_held_connection_fits_a_512_byte_task_cell() {
        let limit = if cfg!(debug_assertions) { 416 } else { 400 };
        let size = std::mem::size_of::<Connection>();
        assert!(
            size <= limit,
            "a connection's future is {size} bytes, more than {limit}"
        );
    }
}
