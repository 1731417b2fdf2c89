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
//! An idle connection holds no buffer: each direction waits for readiness first, then borrows a
//! buffer from a small per-thread pool only while bytes are in flight, and gives it back as soon
//! as a read would block. Memory per held idle connection is then the task and two sockets.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

/// Bytes read per syscall in each direction.
const BUFFER_SIZE: usize = 16 * 1024;
/// Free buffers kept per worker thread (16 KiB each); more are freed when given back. Enough
/// for the connections one thread has bytes in flight on at once.
const POOL_KEEP: usize = 64;

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

/// Byte counts of one relayed connection, whatever ended it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub to_member: u64,
    pub to_client: u64,
}

/// Relays until both directions end, the connection idles out, or `stop` completes.
/// The caller pins `stop` and lends it, so that this future, which lives as long as the
/// connection, is stored once rather than in both the caller's and this function's state.
///
/// Returns the end reason and the bytes moved, or the first I/O error together with the
/// bytes moved up to it.
pub async fn relay(
    client: &mut TcpStream,
    member: &mut TcpStream,
    idle_timeout: Duration,
    mut stop: impl Future<Output = ()> + Unpin,
) -> (io::Result<RelayEnd>, Transferred) {
    // Shared by the two pumps of this one task; atomics (uncontended, relaxed) rather than
    // `Cell` because the task must be `Send`. Activity is kept as nanoseconds since `start`.
    let start = Instant::now();
    let activity = Activity {
        start,
        last: AtomicU64::new(0),
    };
    let to_member = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    // Set when a side's FIN has been passed on: a reset after that is the end of a finished
    // stream, not an abort of one, and is not passed on (it would discard data still queued).
    let client_done = AtomicBool::new(false);
    let member_done = AtomicBool::new(false);

    let result = {
        let (client_read, mut client_write) = client.split();
        let (member_read, mut member_write) = member.split();
        let both = async {
            tokio::try_join!(
                async {
                    pump(&client_read, &mut member_write, &activity, &to_member)
                        .await
                        .map_err(|f| f.blame(Side::Client, Side::Member))?;
                    client_done.store(true, Relaxed);
                    Ok(())
                },
                async {
                    pump(&member_read, &mut client_write, &activity, &to_client)
                        .await
                        .map_err(|f| f.blame(Side::Member, Side::Client))?;
                    member_done.store(true, Relaxed);
                    Ok(())
                },
            )
        };
        tokio::pin!(both);

        loop {
            let deadline = activity.last() + idle_timeout;
            tokio::select! {
                r = &mut both => break r.map(|_| RelayEnd::Closed),
                _ = tokio::time::sleep_until(deadline) => {
                    // Activity may have moved the deadline while we slept; only a full quiet
                    // period ends the connection.
                    if activity.last() + idle_timeout <= Instant::now() {
                        break Ok(RelayEnd::Idle);
                    }
                }
                _ = &mut stop => break Ok(RelayEnd::Forced),
            }
        }
    };
    let result = result.map_err(|(side, e)| {
        let (finished, other) = match side {
            Side::Client => (&client_done, &*member),
            Side::Member => (&member_done, &*client),
        };
        if is_reset(&e) && !finished.load(Relaxed) {
            // Best effort: if the option cannot be set, the other side gets a FIN.
            let _ = SockRef::from(other).set_linger(Some(Duration::ZERO));
        }
        e
    });
    let moved = Transferred {
        to_member: to_member.load(Relaxed),
        to_client: to_client.load(Relaxed),
    };
    (result, moved)
}

/// The two sides of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Member,
}

/// A pump's error, and whether reading or writing failed.
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    /// The error and the side whose socket it came from, for a pump that reads from `from`
    /// and writes to `to`.
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

/// Copies one direction until EOF, then passes the FIN on by shutting down the write half.
///
/// Waits for readability without a buffer; borrows one for the bytes in flight and returns it
/// when the socket has nothing more to read (or on any exit, through the lease's `Drop`).
async fn pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    activity: &Activity,
    count: &AtomicU64,
) -> Result<(), PumpError> {
    loop {
        from.readable().await.map_err(PumpError::Read)?;
        let mut buf = Lease::take();
        loop {
            let n = match from.try_read(&mut buf.0) {
                Ok(n) => n,
                // Readiness was spurious or the socket is drained: back to waiting, and the
                // buffer back to the pool.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(PumpError::Read(e)),
            };
            if n == 0 {
                // The peer may already be gone (it reset or closed); a failed shutdown then
                // changes nothing for the other direction, which ends on its own.
                drop(buf);
                let _ = to.shutdown().await;
                return Ok(());
            }
            activity.touch();
            to.write_all(&buf.0[..n]).await.map_err(PumpError::Write)?;
            count.fetch_add(n as u64, Relaxed);
            activity.touch();
        }
    }
}

thread_local! {
    /// Free relay buffers of this worker thread.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer borrowed from the thread's pool; goes back on drop (to the pool of whichever
/// thread drops it, as the task may have moved), or is freed when that pool is full.
struct Lease(Box<[u8]>);

impl Lease {
    fn take() -> Lease {
        let pooled = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        // Zeroed once when first allocated, then reused as is: the relay only ever writes out
        // the bytes a read just put in.
        Lease(pooled.unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice()))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // `try_with` fails only while the thread exits; the buffer is then simply freed.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_KEEP {
                pool.push(buf);
            }
        });
    }
}

/// When bytes last moved, in either direction.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let nanos = self.start.elapsed().as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
