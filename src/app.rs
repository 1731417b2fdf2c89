//! Wiring: turns a validated [`Config`] into running listeners and owns what they share.
//!
//! [`App::start`] builds the routing snapshot and binds every listener before any of them
//! accepts, so a config that cannot be served fails as a whole. It then runs the first round of
//! health checks and only starts accepting once every member has a verdict (bounded by the
//! longest check timeout), so no connection is routed on unknown health. [`App::shutdown`]
//! stops accepting, waits for open connections up to a grace period, then cuts the rest.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, Protocol};
use crate::events::{self, Event, EventSender};
use crate::health::checker;
use crate::health::probe::ProbeSetupError;
use crate::pool::{Snapshot, SnapshotError};
use crate::proxy::tcp::{self, ServiceContext};
use crate::stats::{ServiceStats, StatsSnapshot};

/// Why tandem could not start serving a config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("service \"{service}\": cannot listen on {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("service \"{service}\": protocol udp is not served by this build yet")]
    UdpNotSupported { service: String },
    #[error("health check: {0}")]
    Check(#[from] ProbeSetupError),
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended, which were then closed.
    pub forced: usize,
}

/// A running balancer.
pub struct App {
    routes: Arc<ArcSwap<Snapshot>>,
    services: HashMap<String, RunningService>,
    tracker: TaskTracker,
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    accept_loops: JoinSet<()>,
    stop_checks: CancellationToken,
    checkers: JoinSet<()>,
    events: EventSender,
}

struct RunningService {
    local_addr: SocketAddr,
    stats: Arc<ServiceStats>,
}

impl App {
    /// Builds the snapshot, binds every listener, runs the first round of health checks, then
    /// starts accepting on all listeners.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let events = events::channel();
        let snapshot = Snapshot::build(&config, 1, &events)?;
        // Bind everything first: a port already taken must fail the start, not half of it.
        let mut listeners = Vec::new();
        for service in &config.services {
            if service.protocol == Protocol::Udp {
                return Err(StartError::UdpNotSupported {
                    service: service.name.clone(),
                });
            }
            let listener = tcp::bind(service.listen).map_err(|source| StartError::Bind {
                service: service.name.clone(),
                addr: service.listen,
                source,
            })?;
            listeners.push((service, listener));
        }

        let stop_checks = CancellationToken::new();
        let mut checkers = JoinSet::new();
        let first_round = checker::spawn_all(&snapshot, &mut checkers, &stop_checks)?;
        let bound = first_round.bound;
        if !first_round.wait().await {
            warn!(
                bound_ms = bound.as_millis() as u64,
                "first health-check round did not finish in time; starting anyway"
            );
        }

        let routes = Arc::new(ArcSwap::from_pointee(snapshot));
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let force_close = CancellationToken::new();
        let mut accept_loops = JoinSet::new();
        let mut services = HashMap::new();
        for (service, listener) in listeners {
            let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
                service: service.name.clone(),
                addr: service.listen,
                source,
            })?;
            let stats = Arc::new(ServiceStats::default());
            let cx = ServiceContext {
                name: Arc::from(service.name.as_str()),
                routes: routes.clone(),
                stats: stats.clone(),
                limiter: Arc::new(Semaphore::new(service.max_connections)),
                tracker: tracker.clone(),
                stop_accepting: stop_accepting.clone(),
                force_close: force_close.clone(),
            };
            info!(service = %service.name, listen = %local_addr, pool = %service.pool,
                  backup_pool = service.backup_pool.as_deref().unwrap_or("-"), "listening");
            accept_loops.spawn(tcp::serve(listener, cx));
            services.insert(service.name.clone(), RunningService { local_addr, stats });
        }
        Ok(App {
            routes,
            services,
            tracker,
            stop_accepting,
            force_close,
            accept_loops,
            stop_checks,
            checkers,
            events,
        })
    }

    /// Health (and later failover and reload) transitions from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The address a service listens on (useful with port 0).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.services.get(service).map(|s| s.local_addr)
    }

    /// The counters of a service.
    pub fn stats(&self, service: &str) -> Option<StatsSnapshot> {
        self.services.get(service).map(|s| s.stats.snapshot())
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.routes.load_full()
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then closes the rest.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.stop_accepting.cancel();
        self.stop_checks.cancel();
        // Wait for the accept loops so every listener is closed before we report.
        while self.accept_loops.join_next().await.is_some() {}
        while self.checkers.join_next().await.is_some() {}
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            info!(
                connections = open,
                grace_s = grace.as_secs_f64(),
                "draining open connections"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return ShutdownReport { forced: 0 };
        }
        let forced = self.tracker.len();
        warn!(
            connections = forced,
            "shutdown grace over; closing remaining connections"
        );
        self.force_close.cancel();
        self.tracker.wait().await;
        ShutdownReport { forced }
    }
}
