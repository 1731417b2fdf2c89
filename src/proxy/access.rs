//! The data path's side of the access log: turning what the TCP proxy decided (a relay's end, a
//! failed connect, a rejection) into a [`Record`]. Called only when a log is configured; the
//! socket addresses a line needs are asked of the kernel then, once per line, so a connection
//! carries none of them while it is relayed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::relay::{RelayEnd, Report, Schedule, Side, Transferred};
use super::tcp::ServiceContext;
use crate::access_log::{ConnectFailure, Cut, Outcome, Peer, Record};
use crate::config::Protocol;
use crate::pool::PoolState;

/// Why a client connection got no member, with what the log says about it.
pub(super) struct Failed {
    pub outcome: Outcome,
    /// The last member tried, if any.
    pub member: Option<SocketAddr>,
    pub pool: Option<Arc<PoolState>>,
}

impl Failed {
    pub fn new(outcome: Outcome) -> Failed {
        Failed {
            outcome,
            member: None,
            pool: None,
        }
    }
}

/// How a connect attempt that did not succeed is named in the log.
pub(super) fn connect_failure(e: Option<&io::Error>) -> ConnectFailure {
    match e.map(io::Error::kind) {
        None => ConnectFailure::Timeout,
        Some(io::ErrorKind::ConnectionRefused) => ConnectFailure::Refused,
        Some(kind) => ConnectFailure::Error(kind),
    }
}

/// The address `client` connected to: the listener's, unless that is a wildcard (then one
/// system call asks the kernel).
fn frontend(cx: &ServiceContext, client: &TcpStream) -> Option<SocketAddr> {
    if cx.local_addr.ip().is_unspecified() {
        client.local_addr().ok()
    } else {
        Some(cx.local_addr)
    }
}

/// A client closed at accept (`max_connections`), before it had a task.
pub(super) fn rejected(cx: &ServiceContext, client: &TcpStream, peer: SocketAddr) {
    let mut r = Record::new(Protocol::Tcp, cx.name.clone(), peer);
    r.frontend = frontend(cx, client);
    r.outcome = Outcome::Rejected(crate::access_log::Rejection::MaxConnections);
    r.lasted(Duration::ZERO);
    cx.access_log.log(r);
}

/// A client that got no member (or lost it before the relay began).
pub(super) fn failed(
    cx: &ServiceContext,
    client: &TcpStream,
    peer: SocketAddr,
    started: Instant,
    failed: Failed,
) {
    let mut r = Record::new(Protocol::Tcp, cx.name.clone(), peer);
    r.frontend = frontend(cx, client);
    r.member = failed.member;
    r.pool = failed.pool;
    r.outcome = failed.outcome;
    r.lasted(started.elapsed());
    cx.access_log.log(r);
}

/// What a relayed connection's lines say beyond the connection's own state (its addresses,
/// pool and member, lent in [`Ends`]). Kept boxed by the connection, only when the log is on.
pub(super) struct Line {
    pub started: Instant,
    pub connect: Duration,
    /// Bytes sent to the member before the relay (the ClientHello), added to the last line.
    pub early: u64,
    /// The progress lines, when the log has an interval.
    pub progress: Option<Schedule>,
}

/// The parts of a connection a line names.
pub(super) struct Ends<'a> {
    pub cx: &'a ServiceContext,
    pub peer: SocketAddr,
    pub pool: &'a Arc<PoolState>,
    pub member: SocketAddr,
}

impl Line {
    /// Logs the connection's state: `outcome` [`Outcome::Open`] for a progress line.
    pub fn write(
        &self,
        ends: &Ends<'_>,
        client: &TcpStream,
        upstream: &TcpStream,
        moved: Transferred,
        outcome: Outcome,
    ) {
        record(
            ends,
            self.started,
            self.connect,
            (client, upstream),
            moved,
            outcome,
        );
    }

    /// The relay's reporter of progress lines, when the log has an interval.
    pub fn progress<'a>(&'a mut self, ends: Ends<'a>) -> Option<Progress<'a>> {
        let (started, connect) = (self.started, self.connect);
        self.progress.as_mut().map(|schedule| Progress {
            schedule,
            started,
            connect,
            ends,
        })
    }
}

/// A line's progress reports, for one poll of the relay.
pub(super) struct Progress<'a> {
    schedule: &'a mut Schedule,
    started: Instant,
    connect: Duration,
    ends: Ends<'a>,
}

impl Report for Progress<'_> {
    fn schedule(&mut self) -> &mut Schedule {
        self.schedule
    }

    fn report(&mut self, client: &TcpStream, member: &TcpStream, so_far: Transferred) {
        let (started, connect) = (self.started, self.connect);
        record(
            &self.ends,
            started,
            connect,
            (client, member),
            so_far,
            Outcome::Open,
        );
    }
}

/// Logs a relayed connection (its `client` and `upstream` sockets) as it stands.
fn record(
    ends: &Ends<'_>,
    started: Instant,
    connect: Duration,
    (client, upstream): (&TcpStream, &TcpStream),
    moved: Transferred,
    outcome: Outcome,
) {
    let mut r = Record::new(Protocol::Tcp, ends.cx.name.clone(), ends.peer);
    r.frontend = frontend(ends.cx, client);
    r.pool = Some(ends.pool.clone());
    r.member = Some(ends.member);
    r.source = upstream.local_addr().ok();
    r.outcome = outcome;
    r.bytes_to_member = moved.to_member;
    r.bytes_to_client = moved.to_client;
    r.connect = Some(connect);
    r.lasted(started.elapsed());
    ends.cx.access_log.log(r);
}

/// How a relay ended, for the log. `cut`: what the stop future stood for, when it fired.
pub(super) fn relay_outcome(end: &io::Result<RelayEnd>, moved: &Transferred, cut: Cut) -> Outcome {
    match end {
        Ok(RelayEnd::Closed) => match moved.first_fin {
            Some(Side::Member) => Outcome::MemberClosed,
            _ => Outcome::ClientClosed,
        },
        Ok(RelayEnd::Idle) => Outcome::IdleTimeout,
        Ok(RelayEnd::Forced) => Outcome::DrainDeadline(cut),
        Err(e) => {
            let peer = match moved.failed {
                Some(Side::Member) => Peer::Member,
                _ => Peer::Client,
            };
            match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Outcome::Reset(peer),
                kind => Outcome::Error(peer, kind),
            }
        }
    }
}
