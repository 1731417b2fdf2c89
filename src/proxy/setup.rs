//! The setup of a client connection, between accept and relay: limits per source, the
//! ClientHello when routing by server name, the connect along the client's preference order,
//! the PROXY header and the ClientHello's bytes. Its state lives in an allocation of its own,
//! freed once the member answers; see `tcp::open`, which turns what it hands over into the
//! held connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::access::{self, Failed};
use super::proxy_protocol;
use super::sni::{self, Choice};
use super::source;
use super::tcp::ServiceContext;
use crate::access_log::{Cut, Outcome, Rejection};
use crate::config::ProxyProtocol;
use crate::kill::Registration;
use crate::limits;
use crate::local_error;
use crate::pool::{ClientKey, MAX_CONNECT_TRIES, PoolState, Route, Target};
use crate::stats::bump;

/// A connection whose member answered, as `setup` hands it to `tcp::open`.
pub(super) struct Opened<'a> {
    pub member: TcpStream,
    pub pool: Arc<PoolState>,
    pub index: usize,
    pub route: Arc<Route>,
    pub source: Option<limits::SourceGuard>,
    pub kill: Registration<'a>,
    pub early_bytes: u64,
}

/// Options for the member leg, set on its socket before the connect (the client leg inherits
/// them from the listener, see `tcp::bind`): TCP_NODELAY, a Lync requirement that must hold
/// from the first byte. Keepalive comes later, from the relay (`tcp::member_keepalive`).
fn tune(socket: &socket2::Socket) {
    // Best effort: a socket that refuses it still relays correctly.
    let _ = socket.set_tcp_nodelay(true);
}

/// The limits, the ClientHello when routing by server name, the connect, the PROXY header and
/// the early bytes; with how long the connect took, when `started` is given (the access log is
/// on). An error when the client is to be closed instead: it has been counted, and the caller
/// logs it.
// Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958): this
// future sits in the connect phase's allocation.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(super) fn setup<'a>(
    client: &mut TcpStream,
    peer: &SocketAddr,
    cx: &'a ServiceContext,
    started: Option<Instant>,
) -> impl Future<Output = Result<(Opened<'a>, Option<Duration>), Failed>> + Send {
    async move {
        let Some(route) = cx.routes.load().route(&cx.name).cloned() else {
            // The service was removed between accept and here; its listener is closing.
            return Err(Failed::new(Outcome::Rejected(Rejection::ServiceRemoved)));
        };
        // Limits per client address come first: a refused source costs no read and no connect.
        let source = if route.service.per_source.is_active() {
            match cx
                .stats
                .sources
                .admit(peer.ip(), &route.service.per_source, Instant::now())
            {
                Ok(guard) => guard,
                Err(why) => {
                    let (counter, rejection) = match why {
                        limits::Rejection::Connections => (
                            &cx.stats.rejected_per_source_connections,
                            Rejection::PerSourceConnections,
                        ),
                        limits::Rejection::Rate => {
                            (&cx.stats.rejected_per_source_rate, Rejection::PerSourceRate)
                        }
                    };
                    bump(counter);
                    debug!(service = %cx.name, %peer, limit = rejection.as_str(), "source over its limit; connection closed");
                    return Err(Failed::new(Outcome::Rejected(rejection)));
                }
            }
        } else {
            None
        };
        // With server-name routes, the ClientHello decides the pools; its bytes go to the member
        // first.
        let (early, target) = if route.service.sni.reads_hello() {
            match sni::read_hello(client, &route, route.service.connect_timeout).await {
                Err(e) => {
                    debug!(service = %cx.name, client = %peer, error = %e, "client gone before its ClientHello");
                    return Err(Failed::new(Outcome::Error(
                        crate::access_log::Peer::Client,
                        e.kind(),
                    )));
                }
                Ok((bytes, choice)) => {
                    let readable = !matches!(
                        choice,
                        Choice::Default { readable: false } | Choice::Refuse { readable: false }
                    );
                    if !readable {
                        bump(&cx.stats.sni_unreadable);
                    }
                    match choice {
                        Choice::Route(i) => match route.sni.get(i) {
                            Some(r) => {
                                r.connections.fetch_add(1, Relaxed);
                                (bytes, r.target())
                            }
                            None => (bytes, route.target()),
                        },
                        Choice::Default { .. } => {
                            bump(&cx.stats.sni_default);
                            (bytes, route.target())
                        }
                        Choice::Refuse { .. } => {
                            bump(&cx.stats.rejected_sni_required);
                            debug!(service = %cx.name, client = %peer, "no server name and sni_required; connection closed");
                            return Err(Failed::new(Outcome::Rejected(Rejection::SniRequired)));
                        }
                    }
                }
            }
        } else {
            (Vec::new(), route.target())
        };
        // The connection's kill switch, from the connect on: shutdown can cut a connect attempt.
        let kill = cx.switches.register(&cx.removed);
        let Connected {
            stream: mut member,
            addr,
            pool,
            index,
        } = match connect_member(&route, target, cx, *peer, &kill).await {
            Ok(connected) => connected,
            Err(failed) => return Err(failed),
        };
        let connect_time = started.map(|s| s.elapsed());

        if route.service.proxy_protocol != ProxyProtocol::Off {
            // Only now ask for the local address: it costs a syscall most services never need.
            let header = client.local_addr().ok().and_then(|local| {
                proxy_protocol::header(route.service.proxy_protocol, *peer, local)
            });
            let sent = match header {
                Some(h) => member.write_all(h.as_bytes()).await,
                None => Err(io::Error::other("client socket has no local address")),
            };
            if let Err(e) = sent {
                bump(&cx.stats.connect_failures);
                debug!(service = %cx.name, member = %addr, error = %e, "sending PROXY header failed");
                return Err(Failed {
                    outcome: Outcome::ConnectFailed(crate::access_log::ConnectFailure::ProxyHeader),
                    member: Some(addr),
                    pool: Some(pool),
                });
            }
        }

        // The ClientHello read to choose the route goes first, unchanged, before anything else the
        // client sends; its bytes count with the relay's.
        let early_bytes = match send_early(&mut member, early).await {
            Ok(n) => n,
            Err(e) => {
                debug!(service = %cx.name, member = %addr, error = %e, "sending the ClientHello failed");
                return Err(Failed {
                    outcome: Outcome::Error(crate::access_log::Peer::Member, e.kind()),
                    member: Some(addr),
                    pool: Some(pool),
                });
            }
        };
        let opened = Opened {
            member,
            pool,
            index,
            route,
            source,
            kill,
            early_bytes,
        };
        Ok((opened, connect_time))
    }
}

/// Writes the bytes read before the member was chosen (the ClientHello), if any; returns how
/// many.
async fn send_early(upstream: &mut TcpStream, early: Vec<u8>) -> io::Result<u64> {
    if !early.is_empty() {
        upstream.write_all(&early).await?;
    }
    Ok(early.len() as u64)
}

/// The member connection that a client is relayed to, with what the relay needs of the member.
struct Connected {
    stream: TcpStream,
    addr: SocketAddr,
    /// The pool the member was picked from.
    pool: Arc<PoolState>,
    /// The member's index in `pool.members`.
    index: usize,
}

/// Connects to the client's member: along its preference order in the active pool, up to
/// `MAX_CONNECT_TRIES`, then under `auto` in the paired pool. An error when the client is to
/// be closed (no member reachable, out of local resources, or forced close during the attempt);
/// the reason has been counted and logged, and is returned for the access log.
// Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958): this
// future sits in the connect phase's allocation.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn connect_member(
    route: &Route,
    target: Target<'_>,
    cx: &ServiceContext,
    peer: SocketAddr,
    kill: &Registration<'_>,
) -> impl Future<Output = Result<Connected, Failed>> + Send {
    async move {
        let service = &route.service;
        let key = ClientKey::new(peer, service.hash);
        // The active pool first. Under `auto`, when none of its members can be reached (the
        // moments between a whole pool dying and the health checks noticing), the paired pool is
        // tried too rather than turning the client away; pinned modes never spill over.
        let (active, spill) = target.pools();
        let (active, spill) = (active.clone(), spill.cloned());

        let mut attempts = 0;
        // The last member tried and how it failed, for the access log.
        let mut last = None;
        for pool in std::iter::once(&active).chain(spill.as_ref()) {
            let mut tried = [usize::MAX; MAX_CONNECT_TRIES];
            for attempt in 0..MAX_CONNECT_TRIES {
                let Some(index) = pool.pick(key.as_bytes(), &tried[..attempt]) else {
                    break;
                };
                tried[attempt] = index;
                let Some(target) = pool.members.get(index) else {
                    break;
                };
                attempts += 1;
                if attempts > 1 {
                    bump(&cx.stats.retries);
                }
                let addr = target.addr.socket_addr(service.port);
                let outcome = tokio::select! {
                    r = tokio::time::timeout(
                        service.connect_timeout,
                        source::connect_tcp(&service.source, peer.ip(), addr, tune),
                    ) => r,
                    _ = kill.forced() => {
                        return Err(Failed {
                            outcome: Outcome::DrainDeadline(Cut::Shutdown),
                            member: Some(addr),
                            pool: Some(pool.clone()),
                        });
                    }
                };
                let health = &target.health;
                match outcome {
                    Ok(Ok(stream)) => {
                        health.connect_succeeded();
                        kill.attach_member(&target.retired);
                        return Ok(Connected {
                            stream,
                            addr,
                            pool: pool.clone(),
                            index,
                        });
                    }
                    Ok(Err(e)) => {
                        if let Some(reason) = local_error::classify(&e) {
                            // Out of ports, descriptors or memory here: no member is to blame and
                            // none would do better, so the member's health is left alone and the
                            // client closed at once.
                            bump(&cx.stats.rejected_resources);
                            if let Some(suppressed) = cx.stats.local_errors.record(reason) {
                                warn!(service = %cx.name, member = %addr, reason = %reason, error = %e,
                                  suppressed, remedy = reason.remedy(),
                                  "cannot open a connection to a member; client closed");
                            }
                            return Err(Failed {
                                outcome: Outcome::Rejected(Rejection::LocalResources),
                                member: Some(addr),
                                pool: Some(pool.clone()),
                            });
                        }
                        health.connect_failed();
                        bump(&cx.stats.connect_failures);
                        debug!(service = %cx.name, member = %addr, error = %e, "connect to member failed");
                        last = Some((addr, pool, access::connect_failure(Some(&e))));
                    }
                    Err(_) => {
                        health.connect_failed();
                        bump(&cx.stats.connect_failures);
                        debug!(service = %cx.name, member = %addr, "connect to member timed out");
                        last = Some((addr, pool, access::connect_failure(None)));
                    }
                }
            }
        }
        bump(&cx.stats.rejected_no_member);
        info!(service = %cx.name, pool = %active.name, client = %peer, tried = attempts,
          "no member reachable; client connection closed");
        Err(match last {
            Some((addr, pool, failure)) => Failed {
                outcome: Outcome::ConnectFailed(failure),
                member: Some(addr),
                pool: Some(pool.clone()),
            },
            None => Failed::new(Outcome::ConnectFailed(
                crate::access_log::ConnectFailure::NoMember,
            )),
        })
    }
}
