//! The access log: one line per TCP connection and per UDP session when it ends, and optional
//! progress lines for long ones (`[access_log]`).
//!
//! The data path never waits for the log. A connection task fills a [`Record`] (copies of
//! addresses, counters, durations, reference-counted names: nothing formatted, nothing allocated
//! on its behalf) and hands it to a bounded queue with `try_send`. One writer thread per
//! configured log formats records and writes them out in batches. When the sink stalls (a full
//! disk, a FIFO nobody reads, a journal that cannot keep up), the writer blocks on it, the queue
//! fills, and further records are dropped and counted (`tandem_access_log_dropped_total`) rather
//! than slowing a connection down.
//!
//! A thread rather than a task: writes to a file or to stderr are blocking system calls, and a
//! stalled one would hold a runtime worker (and every connection scheduled on it).
//!
//! [`AccessLog`] is the handle the data path holds, one per process: reloads swap the writer
//! behind it (the old writer finishes what it has queued and exits), so a connection that
//! started under one config logs its end to the log configured when it ends.
//!
//! Not here: deciding outcomes (the proxy does), the config (`config::AccessLog`).

mod format;
mod writer;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::config::Protocol;
use crate::pool::PoolState;

pub use format::{Formatter, TEXT_FIELDS};
pub use writer::{Writer, WriterControl};

/// Records the queue holds while the writer is busy or its sink stalled; beyond it records are
/// dropped and counted. About 1 MB when full; at 50,000 connections/s it covers a sink stalled
/// for 80 ms, while a writer that keeps up holds a handful.
pub const QUEUE_CAPACITY: usize = 4096;

/// One side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Member,
}

impl Peer {
    fn as_str(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Member => "member",
        }
    }
}

/// What cut a connection that was still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The shutdown grace period ran out.
    Shutdown,
    /// Its member was removed or taken out of service by a reload, and `drain_timeout` ran out.
    MemberRetired,
    /// Its service was removed by a reload, and `drain_timeout` ran out.
    ServiceRemoved,
}

/// Why no member took a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No member of the active pool (nor, under `auto`, of the paired one) was available.
    NoMember,
    /// The last member tried refused the connect.
    Refused,
    /// The last member tried did not answer within `connect_timeout`.
    Timeout,
    /// The last member tried failed otherwise (unreachable, ...).
    Error(io::ErrorKind),
    /// The member accepted, but sending it the PROXY protocol header failed.
    ProxyHeader,
}

/// Why a client was turned away before any member was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `max_connections` connections were open.
    MaxConnections,
    /// This process was out of descriptors or memory.
    LocalResources,
    /// The service was removed by a reload between accept and routing.
    ServiceRemoved,
    /// The client's address had `max_connections_per_source` connections open.
    PerSourceConnections,
    /// The client's address was over `max_rate_per_source`.
    PerSourceRate,
    /// No server name (or not TLS) on a service with `sni_required`.
    SniRequired,
}

impl Rejection {
    /// The reason's word in both formats.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::LocalResources => "local_resources",
            Rejection::ServiceRemoved => "service_removed",
            Rejection::PerSourceConnections => "max_connections_per_source",
            Rejection::PerSourceRate => "max_rate_per_source",
            Rejection::SniRequired => "sni_required",
        }
    }
}

/// How a connection or session ended, or [`Outcome::Open`] for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Progress line: still open.
    Open,
    /// The client finished sending first (FIN), then the member; a clean end.
    ClientClosed,
    /// The member finished sending first, then the client; a clean end.
    MemberClosed,
    /// Nothing moved either way for the service's `idle_timeout`.
    IdleTimeout,
    /// Cut while still open.
    DrainDeadline(Cut),
    /// One side aborted (RST); passed on to the other side as a reset.
    Reset(Peer),
    /// One side's socket failed otherwise (keepalive timeout, unreachable).
    Error(Peer, io::ErrorKind),
    ConnectFailed(ConnectFailure),
    Rejected(Rejection),
    /// UDP: the session's member became unavailable (down, drain, maint, removed); the
    /// client's next datagram went to another member.
    MemberUnavailable,
    /// UDP: the service stopped (shutdown, or removed by a reload).
    Stopped,
}

impl Outcome {
    /// The outcome's name in both formats.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::ClientClosed => "client_closed",
            Outcome::MemberClosed => "member_closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::DrainDeadline(_) => "drain_deadline",
            Outcome::Reset(_) => "reset",
            Outcome::Error(..) => "error",
            Outcome::ConnectFailed(_) => "connect_failed",
            Outcome::Rejected(_) => "rejected",
            Outcome::MemberUnavailable => "member_unavailable",
            Outcome::Stopped => "stopped",
        }
    }

    /// The reason, as one word (no spaces: it is a field of the text format), when the outcome
    /// has one.
    pub fn reason(self) -> Option<Reason> {
        Some(match self {
            Outcome::Open
            | Outcome::ClientClosed
            | Outcome::MemberClosed
            | Outcome::IdleTimeout
            | Outcome::MemberUnavailable
            | Outcome::Stopped => return None,
            Outcome::DrainDeadline(cut) => Reason::Word(match cut {
                Cut::Shutdown => "shutdown",
                Cut::MemberRetired => "member_retired",
                Cut::ServiceRemoved => "service_removed",
            }),
            Outcome::Reset(peer) => Reason::Word(peer.as_str()),
            Outcome::Error(peer, kind) => Reason::Failed(peer, kind),
            Outcome::ConnectFailed(failure) => match failure {
                ConnectFailure::NoMember => Reason::Word("no_member"),
                ConnectFailure::Refused => Reason::Word("refused"),
                ConnectFailure::Timeout => Reason::Word("timeout"),
                ConnectFailure::Error(kind) => Reason::Kind(kind),
                ConnectFailure::ProxyHeader => Reason::Word("proxy_header"),
            },
            Outcome::Rejected(rejection) => Reason::Word(rejection.as_str()),
        })
    }
}

/// The reason of an outcome, written without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Word(&'static str),
    /// An I/O error kind, as Rust names it (`HostUnreachable`).
    Kind(io::ErrorKind),
    /// The side whose socket failed and the error kind: `member:TimedOut`.
    Failed(Peer, io::ErrorKind),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Word(w) => f.write_str(w),
            Reason::Kind(kind) => write!(f, "{kind:?}"),
            Reason::Failed(peer, kind) => write!(f, "{}:{kind:?}", peer.as_str()),
        }
    }
}

/// One access log line before formatting: filled on the connection's task, formatted on the
/// writer's thread.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the connection was accepted (TCP) or the session opened (UDP).
    pub started: SystemTime,
    pub protocol: Protocol,
    pub service: Arc<str>,
    pub client: SocketAddr,
    /// The address the client connected to: the listener's local address for this connection.
    pub frontend: Option<SocketAddr>,
    /// The pool the member was picked from.
    pub pool: Option<Arc<PoolState>>,
    /// The member connected to (or, for a failed connect, the last one tried).
    pub member: Option<SocketAddr>,
    /// The local address of the member-side socket.
    pub source: Option<SocketAddr>,
    pub outcome: Outcome,
    pub bytes_to_member: u64,
    pub bytes_to_client: u64,
    /// From accept to the member's connect completing (TCP only).
    pub connect: Option<Duration>,
    /// From accept (or session open) to this line.
    pub duration: Duration,
}

impl Record {
    /// A record of `service` for `client` with nothing else known yet: outcome
    /// [`Outcome::Open`], no bytes, no member.
    pub fn new(protocol: Protocol, service: Arc<str>, client: SocketAddr) -> Record {
        Record {
            started: SystemTime::UNIX_EPOCH,
            protocol,
            service,
            client,
            frontend: None,
            pool: None,
            member: None,
            source: None,
            outcome: Outcome::Open,
            bytes_to_member: 0,
            bytes_to_client: 0,
            connect: None,
            duration: Duration::ZERO,
        }
    }

    /// Sets `duration` and dates `started` back from now by it: one clock read for the line
    /// instead of a wall-clock read per connection at accept.
    pub fn lasted(&mut self, duration: Duration) {
        self.duration = duration;
        self.started = SystemTime::now()
            .checked_sub(duration)
            .unwrap_or(SystemTime::UNIX_EPOCH);
    }
}

/// What the writer thread receives.
///
/// Not boxed though the variants differ in size: `Wake` is rare, and boxing every record
/// would cost an allocation per connection to save a few bytes per SIGUSR1.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Message {
    Line(Record),
    /// Look for a reopened file now (SIGUSR1), rather than at the next line.
    Wake,
}

/// The sending end of a writer's queue, with the settings the data path needs.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: tokio::sync::mpsc::Sender<Message>,
    interval: Option<Duration>,
}

/// Lines written and dropped since start, across reloads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lines written to the sink.
    pub lines: AtomicU64,
    /// Lines lost: queue full (sink stalled), or the write failed.
    pub dropped: AtomicU64,
}

/// The access log as the data path sees it: cheap to clone (one per service context), and
/// without a log configured every call is a load and a branch.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    current: ArcSwapOption<Queue>,
    counters: Arc<Counters>,
}

impl AccessLog {
    /// A handle with no log configured.
    pub fn new() -> AccessLog {
        AccessLog::default()
    }

    /// Whether a log is configured now: a connection gathers what a record needs only then.
    pub fn enabled(&self) -> bool {
        self.shared.current.load().is_some()
    }

    /// The progress interval of the log configured now, if it has one.
    pub fn interval(&self) -> Option<Duration> {
        self.shared.current.load().as_ref().and_then(|q| q.interval)
    }

    /// Queues a record for the log configured now; never waits. Dropped and counted when the
    /// queue is full; ignored when no log is configured.
    pub fn log(&self, record: Record) {
        let current = self.shared.current.load();
        let Some(queue) = current.as_ref() else {
            return;
        };
        // By value: the queue's blocks are allocated as it first fills and then reused, so a
        // record costs no allocation in steady state.
        if queue.tx.try_send(Message::Line(record)).is_err() {
            self.shared.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Lines written and dropped so far.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Makes `writer` the log from now on (or none); returns the control of the previous
    /// writer, which finishes once the records queued for it are written.
    pub fn install(&self, writer: Option<Writer>) -> Option<WriterControl> {
        let (queue, control) = match writer {
            Some(w) => {
                let (queue, control) = w.split();
                (Some(Arc::new(queue)), Some(control))
            }
            None => (None, None),
        };
        self.shared.current.store(queue);
        control
    }

    /// The shared counters, for a new writer to count into.
    pub(crate) fn counters_arc(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }
}
