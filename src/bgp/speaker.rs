//! The speaker's tasks: one per peer doing the TCP I/O of a
//! [`Session`](super::session::Session) (in `peer.rs`), and the announcer,
//! which recomputes what to announce ([`super::announce`]) whenever health, failover or a
//! reload may have changed it and hands the set to the peers over a `watch` channel. Each peer
//! task sends only the difference between what its peer has and the new set.
//!
//! Thin on purpose: the decisions are in the session (what to send, when the session is over)
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
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::announce::{self, Announcement};
use super::codec::{Prefix, error};
use super::handoff::Handed;
use super::peer::{Stop, run_peer};
use super::session::{Params, State};
use super::{PeerStatus, Status};
use crate::config::{Bgp, BgpPeer};
use crate::events::{BgpEvent, Event, EventSender};
use crate::pool::Snapshot;

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
