//! Copies bytes both ways between a client and a member until both directions end.
//!
//! Half-close is kept: when one side finishes sending (FIN), the other side's write half is shut
//! down and the opposite direction keeps flowing until it ends too. An error on either side ends
//! both (the sockets are dropped, which closes them). A reset is passed on as a reset: when one
//! side aborts (RST) before it finished sending, the other side's socket is closed with
//! SO_LINGER 0, so that side sees the abort too rather than a FIN it would take for a clean end
//! (as Envoy's tcp_proxy does; HAProxy in mode tcp passes a client's reset on to the server,
//! and a server's reset to the client as a FIN). The connection ends early when no byte has
//! moved in either direction for the idle timeout, or when the caller's `stop` future completes
//! (shutdown grace over, or a drain period after a reload ended).
//!
//! With a progress interval (the access log's `interval`), the relay reports the bytes moved so
//! far every interval, from the same timer as the idle timeout: no timer of its own, and a
//! connection costs one more wake-up per interval.
//!
//! The same timer applies the caller's late socket options (the member leg's keepalive) once the
//! connection has lived [`SETTLE`]: options that only a lasting connection needs then cost a
//! short one no syscall, and a lasting one one more wake-up in its life.
//!
//! An idle connection holds no buffer: each direction waits for readiness first, then borrows a
//! buffer from a small per-thread pool only while bytes are in flight, and gives it back as soon
//! as a read would block. Memory per held idle connection is then the task and two sockets.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rustix::net::{RecvFlags, recv};
use socket2::SockRef;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes read per syscall in each direction, at most. A bulk stream that is behind fills it on
/// every read, so the size sets the syscalls per GB: 64 KiB took 15-30% less proxy CPU per GB
/// than 16 KiB (HAProxy's and NGINX's default) with iperf3 through one worker (benches/compare.sh
/// `bulk1`, `bulk8`). Request-response traffic holds a buffer only for the microseconds between
/// a read and its write, and an idle connection holds none, so the size counts only for streams
/// whose reader is slower than their writer (63 KiB each way while the write waits). 63 rather
/// than 64: offsets into the buffer are `u16` in the state of every held connection.
const BUFFER_SIZE: usize = 63 * 1024;
/// A read shorter than this (and than the buffer) is taken as a whole message and the socket as
/// drained: its readiness is cleared and the next read waits for the next epoll event, instead
/// of a read that finds nothing. Request-response traffic (a SIP message, an HTTP request, a
/// TLS record) then costs no failed read per message: with wrk keepalive, two of the six
/// syscalls per request were EAGAIN reads (strace -c), one per direction. A bulk stream reads
/// more than this whenever it is behind, and keeps reading at once (see `poll_copy`).
const MESSAGE_MAX: usize = 4 * 1024;
/// Age of a connection at which the caller's late options are applied (see [`RelayState::new`]).
/// Keepalive, the option deferred, first acts after 60 s of silence, so a second changes nothing
/// for it; most short connections (a request and its answer) are over well before.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Free buffers kept per worker thread (1 MiB in all); more are freed when given back. Enough
/// for the connections one thread has bytes in flight on at once.
const POOL_KEEP: usize = 16;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions finished with a FIN.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The caller's stop future completed (shutdown grace or drain period over).
    Forced,
}

/// Byte counts of one relayed connection, whatever ended it, and which side ended it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub to_member: u64,
    pub to_client: u64,
    /// The side that finished sending (FIN) first, if either did.
    pub first_fin: Option<Side>,
    /// The side whose socket failed (a reset or another error), when the relay ended with one.
    pub failed: Option<Side>,
}

/// Progress reports while the relay runs: the access log's lines of a connection still open.
pub trait Report {
    /// When the next report is due and the time between two; kept by the reporter, so that a
    /// connection without reports carries neither.
    fn schedule(&mut self) -> &mut Schedule;
    /// Reports the bytes moved so far, given the two sockets (client, member).
    fn report(&mut self, client: &TcpStream, member: &TcpStream, so_far: Transferred);
}

/// When a [`Report`] is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub next: Instant,
    pub every: Duration,
}

impl Schedule {
    /// Reports every `every`, the first one `every` from now.
    pub fn every(every: Duration) -> Schedule {
        Schedule {
            next: Instant::now() + every,
            every,
        }
    }
}

/// Relays until both directions end, the connection idles out, or `stop` completes.
/// The caller pins `stop` and lends it, so that this future, which lives as long as the
/// connection, is stored once rather than in both the caller's and this function's state.
///
/// Returns the end reason and the bytes moved, or the first I/O error together with the
/// bytes moved up to it.
pub fn relay<'a, S>(
    client: &'a mut TcpStream,
    member: &'a mut TcpStream,
    idle_timeout: Duration,
    stop: S,
) -> Relay<'a, S>
where
    S: Future<Output = ()> + Unpin,
{
    relay_settling(client, member, idle_timeout, stop, None)
}

/// [`relay`], with `settled` called once with the member's socket at the relay's first timer
/// wake (see [`RelayState::new`]).
pub fn relay_settling<'a, S>(
    client: &'a mut TcpStream,
    member: &'a mut TcpStream,
    idle_timeout: Duration,
    stop: S,
    settled: Option<fn(&TcpStream)>,
) -> Relay<'a, S>
where
    S: Future<Output = ()> + Unpin,
{
    Relay {
        client,
        member,
        stop,
        idle_timeout,
        settled,
        state: RelayState::new(idle_timeout, None, settled.is_some()),
    }
}

pin_project! {
    /// The future of [`relay`]: the sockets and the stop future lent by the caller, around a
    /// [`RelayState`].
    #[must_use = "a relay moves nothing unless polled"]
    pub struct Relay<'a, S> {
        client: &'a mut TcpStream,
        member: &'a mut TcpStream,
        stop: S,
        idle_timeout: Duration,
        settled: Option<fn(&TcpStream)>,
        #[pin]
        state: RelayState,
    }
}

impl<S> Future for Relay<'_, S>
where
    S: Future<Output = ()> + Unpin,
{
    type Output = (io::Result<RelayEnd>, Transferred);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let stopped = Pin::new(this.stop).poll(cx).is_ready();
        this.state.poll_relay(
            cx,
            Sides {
                client: this.client,
                member: this.member,
            },
            *this.idle_timeout,
            stopped,
            None,
            this.settled.unwrap_or(|_| {}),
        )
    }
}

/// The two sockets of a relayed connection, lent to [`RelayState::poll_relay`].
pub struct Sides<'a> {
    pub client: &'a mut TcpStream,
    pub member: &'a mut TcpStream,
}

pin_project! {
    /// What a relay keeps between polls, for a caller that owns the sockets itself (the TCP
    /// proxy's held connection) and lends them to each poll.
    ///
    /// Polled by hand rather than written as an `async` block around a `poll_fn`, so that its
    /// state is exactly these fields: the `async` form also kept the closure's references to
    /// each of them (104 bytes per held connection when measured). The two directions are
    /// plain state machines polled in turn, rather than two `async` pumps joined: an `async`
    /// pump keeps a readiness future (168 bytes in tokio 1.x) in its state for as long as it
    /// waits, whereas `poll_read_ready` leaves the waker with the socket's own registration.
    #[project = RelayStateProj]
    pub struct RelayState {
        up: Direction,
        down: Direction,
        // The timer is re-armed only when it fires: activity just records when it happened,
        // so a busy connection costs no timer operations.
        last_activity: Instant,
        #[pin]
        idle: Sleep,
        first_fin: Option<Side>,
        // Which direction goes first alternates between polls, as in `tokio::join!`: a
        // direction that always has bytes could otherwise spend the task's whole cooperative
        // budget on every poll and starve the other.
        up_first: bool,
        // The `settled` call of `poll_relay` is still to come.
        settling: bool,
    }
}

impl RelayState {
    /// A relay starting now. Its timer first wakes at the earliest of: the idle timeout, the
    /// first progress report (`report`), and [`SETTLE`] from now when `settle` is set. On
    /// that first wake `poll_relay` calls its `settled` with the member's socket: options only a
    /// lasting connection needs. A connection that ends before never gets them.
    pub fn new(idle_timeout: Duration, report: Option<Instant>, settle: bool) -> RelayState {
        let now = Instant::now();
        // The progress reports share the idle timer: it sleeps until whichever comes first.
        let mut first_wake = report.map_or(now + idle_timeout, |r| r.min(now + idle_timeout));
        if settle {
            first_wake = first_wake.min(now + SETTLE);
        }
        RelayState {
            up: Direction::default(),
            down: Direction::default(),
            last_activity: now,
            idle: tokio::time::sleep_until(first_wake),
            first_fin: None,
            up_first: false,
            settling: settle,
        }
    }

    /// Moves what the sockets have; Ready with the end reason and the bytes moved once both
    /// directions ended, the connection idled out, or `stopped` (the caller's stop signal
    /// fired), else Pending.
    pub fn poll_relay(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        sides: Sides<'_>,
        idle_timeout: Duration,
        stopped: bool,
        progress: Option<&mut dyn Report>,
        settled: fn(&TcpStream),
    ) -> Poll<(io::Result<RelayEnd>, Transferred)> {
        let mut this = self.project();
        let Sides { client, member } = sides;
        let result = if stopped {
            Ok(RelayEnd::Forced)
        } else {
            match poll_end(
                &mut this,
                cx,
                client,
                member,
                idle_timeout,
                progress,
                settled,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            }
        };
        let mut failed = None;
        let result = result.map_err(|(side, e)| {
            failed = Some(side);
            // `done`: that side's FIN was passed on. A reset after it ends a finished stream
            // rather than aborting one, and passing it on would only discard data still queued
            // for the other side.
            let (finished, other) = match side {
                Side::Client => (this.up.done, &*member),
                Side::Member => (this.down.done, &*client),
            };
            if is_reset(&e) && !finished {
                // Best effort: if the option cannot be set, the other side gets a FIN.
                let _ = SockRef::from(other).set_linger(Some(Duration::ZERO));
            }
            e
        });
        let moved = Transferred {
            to_member: this.up.count,
            to_client: this.down.count,
            first_fin: *this.first_fin,
            failed,
        };
        Poll::Ready((result, moved))
    }
}

/// One poll of the relay: how it ended, or Pending. An error is tagged with the side whose
/// socket it came from.
fn poll_end(
    this: &mut RelayStateProj<'_>,
    cx: &mut Context<'_>,
    client: &mut TcpStream,
    member: &mut TcpStream,
    idle_timeout: Duration,
    mut progress: Option<&mut dyn Report>,
    settled: fn(&TcpStream),
) -> Poll<Result<RelayEnd, (Side, io::Error)>> {
    let (up, down) = (&mut *this.up, &mut *this.down);
    *this.up_first = !*this.up_first;
    let (up_done, down_done) = if *this.up_first {
        let up_done = up
            .poll_side(cx, client, member, Side::Client, down.done)?
            .is_ready();
        (
            up_done,
            down.poll_side(cx, member, client, Side::Member, up.done)?
                .is_ready(),
        )
    } else {
        let down_done = down
            .poll_side(cx, member, client, Side::Member, up.done)?
            .is_ready();
        (
            up.poll_side(cx, client, member, Side::Client, down.done)?
                .is_ready(),
            down_done,
        )
    };
    if this.first_fin.is_none() {
        *this.first_fin = if up.eof {
            Some(Side::Client)
        } else if down.eof {
            Some(Side::Member)
        } else {
            None
        };
    }
    if up_done && down_done {
        return Poll::Ready(Ok(RelayEnd::Closed));
    }
    if std::mem::take(&mut up.moved) | std::mem::take(&mut down.moved) {
        *this.last_activity = Instant::now();
    }
    // Only a full quiet period ends the connection; a timer that fires early (activity
    // moved the deadline while it slept) is re-armed and polled once more to register.
    while this.idle.as_mut().poll(cx).is_ready() {
        if std::mem::take(this.settling) {
            settled(member);
        }
        let now = Instant::now();
        let mut next_report = None;
        if let Some(p) = progress.as_deref_mut() {
            if p.schedule().next <= now {
                let so_far = Transferred {
                    to_member: up.count,
                    to_client: down.count,
                    first_fin: *this.first_fin,
                    failed: None,
                };
                p.report(client, member, so_far);
                // Reports missed while the task was not polled are not made up for.
                let schedule = p.schedule();
                while schedule.next <= now {
                    schedule.next += schedule.every;
                }
            }
            next_report = Some(p.schedule().next);
        }
        let deadline = *this.last_activity + idle_timeout;
        if deadline <= now {
            return Poll::Ready(Ok(RelayEnd::Idle));
        }
        this.idle
            .as_mut()
            .reset(next_report.map_or(deadline, |r| r.min(deadline)));
    }
    Poll::Pending
}

/// One direction of the relay: reads from one socket, writes to the other, and passes the FIN
/// on by shutting down the write side once the read side ends.
///
/// It waits for readability without a buffer and borrows one only for the bytes in flight,
/// giving it back when the socket has nothing more to read (or on any exit, through `Drop`).
/// 24 bytes, twice in every held connection: hence a thin pointer and 16-bit offsets.
#[derive(Default)]
struct Direction {
    /// The borrowed buffer; `buf[written..filled]` is read and not yet written.
    buf: Option<Box<Buffer>>,
    written: u16,
    filled: u16,
    /// The read side ended (FIN); the write side is shut down next.
    eof: bool,
    /// The FIN has been passed on: this direction is over.
    done: bool,
    /// Bytes moved since the relay's poll last looked (for the idle timer).
    moved: bool,
    count: u64,
}

type Buffer = [u8; BUFFER_SIZE];
const _: () = assert!(
    BUFFER_SIZE <= u16::MAX as usize,
    "offsets in a buffer are u16"
);

impl Drop for Direction {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Direction {
    /// Returns the buffer, if borrowed, to the pool.
    fn give_back(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool_put(buf);
        }
    }

    /// `poll_copy` with its error blamed on a side: `from` is the side read from; the other
    /// one is written to.
    fn poll_side(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        from_side: Side,
        other_done: bool,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let to_side = match from_side {
            Side::Client => Side::Member,
            Side::Member => Side::Client,
        };
        self.poll_copy(cx, from, to, other_done)
            .map_err(|e| e.blame(from_side, to_side))
    }

    /// Moves bytes until the source would block (Pending) or this direction is over (Ready).
    /// `other_done`: the opposite direction has ended (its FIN passed on).
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        other_done: bool,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(buf) = &self.buf
                && self.written < self.filled
            {
                let pending = &buf[usize::from(self.written)..usize::from(self.filled)];
                let n =
                    ready!(Pin::new(&mut *to).poll_write(cx, pending)).map_err(PumpError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                // At most what was pending: it fits (see `Buffer`).
                self.written += n as u16;
                self.count += n as u64;
                self.moved = true;
                continue;
            }
            if self.eof {
                // When the other direction is over too, the relay ends and the sockets are
                // closed, which sends this FIN: the shutdown call would only cost a syscall.
                // (Both read sides have seen EOF, so nothing unread turns the close into a
                // reset.) The peer may already be gone (it reset or closed); a failed shutdown
                // then changes nothing for the other direction, which ends on its own.
                if !other_done {
                    let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                }
                self.done = true;
                continue;
            }
            if self.buf.is_none() {
                ready!(from.poll_read_ready(cx)).map_err(PumpError::Read)?;
                self.buf = Some(pool_take());
            }
            let Some(buf) = self.buf.as_mut() else {
                continue;
            };
            // Reading again at once after a short read rather than as `poll_read` does: after a
            // short read, `poll_read` marks the socket drained and the next read waits for a
            // new epoll event. That saves one EAGAIN read per burst, but a bulk stream then
            // pays an event-loop round trip per short read, while reading again at once
            // usually finds the bytes that arrived during the write (8 streams: 14.6 Gbit/s
            // against 18.2 with `try_read`, same run). A short read below `MESSAGE_MAX` is
            // treated as `poll_read` treats every short one: the readiness is cleared inside
            // `try_io`, against the event seen before the read, so bytes or a FIN that arrive
            // after it still wake us (tokio keeps the closed states and newer events).
            let from: &TcpStream = from;
            let mut message = 0;
            let read = from.try_io(Interest::READABLE, || {
                let (n, _) = recv(from, &mut buf[..], RecvFlags::empty())?;
                if n > 0 && n < MESSAGE_MAX.min(buf.len()) {
                    message = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match read {
                Ok(0) => {
                    self.give_back();
                    self.eof = true;
                }
                // A read fills at most the buffer: the count fits (see `Buffer`).
                Ok(n) => {
                    self.written = 0;
                    self.filled = n as u16;
                    self.moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && message > 0 => {
                    self.written = 0;
                    self.filled = message as u16;
                    self.moved = true;
                }
                // Readiness was spurious or the socket is drained (tokio cleared its
                // readiness): the buffer goes back to the pool and we wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.give_back(),
                Err(e) => return Poll::Ready(Err(PumpError::Read(e))),
            }
        }
    }
}

/// The two sides of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Member,
}

/// A direction's error, and whether reading or writing failed.
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    /// The error and the side whose socket it came from, for a direction that reads from
    /// `from` and writes to `to`.
    fn blame(self, from: Side, to: Side) -> (Side, io::Error) {
        match self {
            PumpError::Read(e) => (from, e),
            PumpError::Write(e) => (to, e),
        }
    }
}

/// The peer aborted the connection: it sent a reset (seen on a read or a write), or it is gone
/// and a write found the pipe broken.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

thread_local! {
    /// Free relay buffers of this worker thread.
    static POOL: RefCell<Vec<Box<Buffer>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer from the thread's pool, or a new one.
fn pool_take() -> Box<Buffer> {
    let pooled = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
    // Zeroed once when first allocated, then reused as is: the relay only ever writes out the
    // bytes a read just put in.
    pooled.unwrap_or_else(|| Box::new([0u8; BUFFER_SIZE]))
}

/// Gives a buffer back to the pool of whichever thread this runs on (the task may have moved),
/// or frees it when that pool is full.
fn pool_put(buf: Box<Buffer>) {
    // `try_with` fails only while the thread exits; the buffer is then simply freed.
    let _ = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Two ends of one loopback connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Relays between a client and a member on loopback; returns the client's end, the
    /// member's end, and the relay task (which closes its sockets when the relay ends).
    async fn relayed() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<RelayEnd>>,
    ) {
        let (client_end, mut client) = pair().await;
        let (mut member, member_end) = pair().await;
        let task = tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            relay(&mut client, &mut member, Duration::from_secs(60), stop)
                .await
                .0
        });
        (client_end, member_end, task)
    }

    fn abort(stream: TcpStream) {
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }

    #[tokio::test]
    async fn a_member_reset_reaches_the_client_as_a_reset() {
        let (mut client_end, member_end, task) = relayed().await;
        abort(member_end);
        let mut buf = [0u8; 16];
        let err = client_end.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(is_reset(&task.await.unwrap().unwrap_err()));
    }

    #[tokio::test]
    async fn a_client_reset_reaches_the_member_as_a_reset() {
        let (client_end, mut member_end, task) = relayed().await;
        abort(client_end);
        let mut buf = [0u8; 16];
        let err = member_end.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(task.await.unwrap().is_err());
    }

    fn set_keepalive(member: &TcpStream) {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        SockRef::from(member).set_tcp_keepalive(&keepalive).unwrap();
    }

    /// Polls `f` once; true when it completed.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> bool {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn late_options_reach_the_member_socket_once_the_connection_has_settled() {
        let (_client_end, mut client) = pair().await;
        let (mut member, _member_end) = pair().await;
        // A second descriptor of the member socket: its options are the socket's, read while
        // the relay holds the stream.
        let probe = SockRef::from(&member).try_clone().unwrap();
        assert!(!probe.keepalive().unwrap());
        let mut relay = pin!(relay_settling(
            &mut client,
            &mut member,
            Duration::from_secs(1800),
            std::future::pending::<()>(),
            Some(set_keepalive),
        ));
        assert!(!poll_once(&mut relay).await);
        tokio::time::advance(SETTLE - Duration::from_millis(1)).await;
        assert!(!poll_once(&mut relay).await);
        assert!(!probe.keepalive().unwrap(), "applied before SETTLE");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!poll_once(&mut relay).await, "the relay goes on");
        assert!(probe.keepalive().unwrap());
        assert_eq!(probe.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            probe.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(probe.tcp_keepalive_retries().unwrap(), 6);
        // The timer is re-armed for the idle timeout as before.
        tokio::time::advance(Duration::from_secs(1800) - SETTLE - Duration::from_millis(1)).await;
        assert!(!poll_once(&mut relay).await);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll_once(&mut relay).await, "idle timeout");
    }
}
