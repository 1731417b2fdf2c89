//! Wiring: turns a validated [`Config`] into running listeners, health checks and failover, and
//! applies reloads.
//!
//! [`App::start`] builds the routing snapshot and binds every listener before any of them
//! accepts, so a config that cannot be served fails as a whole. It then runs the first round of
//! health checks and only starts accepting once every member has a verdict (bounded by the
//! longest check timeout), so no connection is routed on unknown health.
//!
//! [`App::reload`] is validate, plan, apply: [`reload::plan`] decides what is kept, rebuilt and
//! retired; new listeners are bound and new members get their first probe before anything
//! changes; then one snapshot swap applies it all, and nothing after the swap can fail. Kept
//! services keep their listeners and connections; removed services stop accepting and their
//! connections drain for `drain_timeout`; members removed or taken out of service keep their
//! connections as long.
//!
//! Every service listens on a socket group, one `SO_REUSEPORT` socket per data-path worker
//! ([`crate::listeners`], [`crate::workers`]); socket `i`'s accept (or receive) loop and every
//! connection it accepts run on worker `i`. [`App::start`] runs them all on the caller's runtime
//! (one worker); [`App::start_on`] on the workers it is given.
//!
//! [`App::start_with`] and [`App::start_on`] start on listening sockets inherited from the
//! process being upgraded (see [`crate::upgrade`]); every service keeps a duplicate of each
//! socket of its group ([`App::handoff_sockets`]) to hand over in turn. [`App::take_over`] is
//! that start in the new process of an upgrade: its BGP peers wait for the old process's
//! sessions ([`App::adopt_bgp`]), which [`App::hand_over_bgp`] sends once the new process serves.
//!
//! [`App::shutdown`] stops accepting, waits for open connections up to a grace period, then cuts
//! the rest. UDP services stop at once with their sessions: a session has no connection to
//! finish, and its replies would have to leave from the listening socket that just closed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::access_log::{self, AccessLog, WriterControl};
use crate::bgp;
use crate::config::{self, Config, ConfigError, Protocol, Service};
use crate::events::{self, Event, EventSender, ReloadEvent};
use crate::health::checker::{self, FirstRound};
use crate::health::probe::ProbeSetupError;
use crate::kill::{Scope, Switches};
use crate::listeners::{self, Group, Listener};
use crate::metrics::{Metrics, ReloadCounters, ServiceSample};
use crate::pool::{PoolState, Snapshot, SnapshotError};
use crate::proxy::source::{self, SourceError};
use crate::proxy::tcp::{self, ServiceContext};
use crate::proxy::udp::{self, UdpContext};
use crate::reload::{self, Diff, PoolPlan, ServicePlan};
use crate::stats::{ServiceStats, StatsSnapshot, WorkerCounter, WorkerStats};
use crate::upgrade::{self, Inherited, SocketInfo};
use crate::workers::Workers;

/// Why a valid config cannot be served: at start, or as the new config of a reload.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Binding, inheriting or setting up a service's listening socket failed.
    #[error("service \"{service}\": cannot listen on {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("health check: {0}")]
    Check(#[from] ProbeSetupError),
    /// The access log file cannot be opened (or, for a FIFO, has no reader).
    #[error("access log: cannot open {path}: {source}")]
    AccessLog {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A service's `source` cannot be used here (no CAP_NET_ADMIN, an address not local).
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Why a reload was rejected. The running config keeps serving, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not load or validate: every problem, with where it is.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The new config is valid but cannot be served.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended, which were then closed.
    pub forced: usize,
}

/// What an applied reload did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The generation now serving.
    pub generation: u64,
    pub diff: Diff,
    /// From the start of the reload to the snapshot swap.
    pub took: Duration,
}

/// Events kept for status pages (the most recent ones).
pub const RECENT_EVENTS: usize = 100;

/// A listening service as the operator surface sees it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub name: String,
    pub protocol: Protocol,
    /// The bound address (the real port when the config said 0).
    pub local_addr: SocketAddr,
    pub stats: Arc<ServiceStats>,
}

/// A cheap, cloneable, read-only view of a running balancer for the admin API: it never holds
/// a lock across an await and never blocks the data path.
#[derive(Clone)]
pub struct AppView {
    routes: Arc<ArcSwap<Snapshot>>,
    services: Arc<ArcSwap<Vec<ServiceView>>>,
    metrics: Arc<Metrics>,
    reloads: Arc<ReloadCounters>,
    recent: Arc<Mutex<VecDeque<Event>>>,
    events: EventSender,
    ready: Arc<AtomicBool>,
    access_log: AccessLog,
    bgp: Arc<bgp::Status>,
    workers: Arc<WorkerStats>,
}

impl AppView {
    /// The routing snapshot now serving.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.routes.load_full()
    }

    /// The listening services.
    pub fn services(&self) -> Arc<Vec<ServiceView>> {
        self.services.load_full()
    }

    /// Whether the first health round is done and the config is serving.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The most recent transitions, oldest first.
    pub fn recent_events(&self) -> Vec<Event> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The BGP speaker's sessions and announcements (empty without `[bgp]`).
    pub fn bgp(&self) -> &bgp::Status {
        &self.bgp
    }

    /// Transitions from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A view of `config` as a balancer would serve it right after start, with no listener
    /// bound, no check run and no task started: every member's health is still unknown. For
    /// [`crate::fuzzing`], which runs the admin API without an [`App`].
    pub(crate) fn detached(config: &Config) -> Result<AppView, ServeError> {
        let events = events::channel();
        let snapshot = Snapshot::build(config, 1, &events, None)?;
        Ok(AppView {
            routes: Arc::new(ArcSwap::from_pointee(snapshot)),
            services: Arc::new(ArcSwap::from_pointee(Vec::new())),
            metrics: Arc::new(Metrics::new()),
            reloads: Arc::new(ReloadCounters::default()),
            recent: Arc::new(Mutex::new(VecDeque::new())),
            events,
            ready: Arc::new(AtomicBool::new(true)),
            access_log: AccessLog::new(),
            bgp: Arc::new(bgp::Status::default()),
            workers: Arc::new(WorkerStats::new(1)),
        })
    }

    /// Reload outcomes so far.
    pub fn reloads(&self) -> &ReloadCounters {
        &self.reloads
    }

    /// The Prometheus exposition of the current state.
    pub fn render_metrics(&self) -> String {
        let snapshot = self.routes.load();
        let services = self.services.load();
        let samples: Vec<ServiceSample<'_>> = services
            .iter()
            .map(|s| ServiceSample {
                name: &s.name,
                udp: s.protocol == Protocol::Udp,
                stats: &s.stats,
            })
            .collect();
        let mut out = self.metrics.render(&snapshot, &samples, &self.reloads);
        crate::metrics::render_access_log(&mut out, self.access_log.counters());
        crate::metrics::render_workers(&mut out, &self.workers);
        self.bgp.render_metrics(&mut out);
        out
    }
}

/// A running balancer.
pub struct App {
    config: Config,
    routes: Arc<ArcSwap<Snapshot>>,
    services: HashMap<String, RunningService>,
    /// Stops the check loops of one pool (replaced when a reload changes the pool).
    pool_checks: HashMap<String, CancellationToken>,
    /// Connection tasks, so shutdown can wait for them.
    tracker: TaskTracker,
    /// The kill switches of open TCP connections (shutdown forces them; removed services and
    /// retired members drain theirs).
    switches: Arc<Switches>,
    /// Check loops and the failover controller.
    background: JoinSet<()>,
    stop_background: CancellationToken,
    events: EventSender,
    /// Wakes the failover controller after a reload.
    reevaluate: Arc<Notify>,
    metrics: Arc<Metrics>,
    reloads: Arc<ReloadCounters>,
    recent: Arc<Mutex<VecDeque<Event>>>,
    service_views: Arc<ArcSwap<Vec<ServiceView>>>,
    ready: Arc<AtomicBool>,
    /// The access log the data path writes to, and the control of its writer (none when the
    /// config has no `[access_log]`).
    access_log: AccessLog,
    access_writer: Option<WriterControl>,
    /// The BGP speaker, while `[bgp]` is configured and tandem has not begun to stop.
    bgp: Option<bgp::Speaker>,
    bgp_status: Arc<bgp::Status>,
    /// The runtimes the data path runs on; dropped last, once connections have drained.
    workers: Workers,
    worker_stats: Arc<WorkerStats>,
}

/// How long shutdown waits for the access log to write what is queued; longer means its sink
/// is stalled, and the lines are lost with the process.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(5);

struct RunningService {
    config: Service,
    local_addr: SocketAddr,
    stats: Arc<ServiceStats>,
    limiter: Arc<Semaphore>,
    stop_accepting: CancellationToken,
    /// Ended when the service is removed or moved: its connections drain.
    removed: Arc<Scope>,
    /// The accept (UDP: receive) loop of each socket of the group.
    accept: Vec<JoinHandle<()>>,
    /// Duplicates of the group's sockets, to hand over in a binary upgrade. Closed with the
    /// service, so a removed service's port is free once its accept loops end.
    handoff: Vec<OwnedFd>,
}

impl App {
    /// Builds the snapshot, binds every listener, runs the first round of health checks, then
    /// starts accepting on all listeners.
    pub async fn start(config: Config) -> Result<App, ServeError> {
        App::start_with(config, &mut Inherited::default()).await
    }

    /// [`App::start`], taking the listening sockets of each service from `inherited` (a binary
    /// upgrade) when the old process handed some over for it, and binding the others.
    pub async fn start_with(config: Config, inherited: &mut Inherited) -> Result<App, ServeError> {
        App::start_on(config, inherited, Workers::ambient()).await
    }

    /// [`App::start_with`], with the data path on `workers`: every service gets a socket per
    /// worker. The control plane (checks, failover, reload) stays on the caller's runtime.
    pub async fn start_on(
        config: Config,
        inherited: &mut Inherited,
        workers: Workers,
    ) -> Result<App, ServeError> {
        App::start_inner(config, inherited, workers, false).await
    }

    /// [`App::start_on`] in the new process of a binary upgrade: the BGP peers do not
    /// connect until [`App::adopt_bgp`] gives them the sessions of the process being upgraded
    /// (or says there are none), so no peer gets a second session beside the one coming over.
    pub async fn take_over(
        config: Config,
        inherited: &mut Inherited,
        workers: Workers,
    ) -> Result<App, ServeError> {
        App::start_inner(config, inherited, workers, true).await
    }

    async fn start_inner(
        config: Config,
        inherited: &mut Inherited,
        workers: Workers,
        adopting_bgp: bool,
    ) -> Result<App, ServeError> {
        let events = events::channel();
        let snapshot = Snapshot::build(&config, 1, &events, None)?;
        for service in &config.services {
            source::check(service)?;
        }
        let access_log = AccessLog::new();
        let writer = start_access_log(&config, &access_log)?;
        // Bind everything first: a port already taken must fail the start, not half of it.
        let mut listeners = Vec::new();
        for service in &config.services {
            let fds = inherited.take_all(kind(service.protocol), &service.name, service.listen);
            listeners.push(Bound::new(service, fds, &workers)?);
        }

        let stop_background = CancellationToken::new();
        let mut background = JoinSet::new();
        let metrics = Arc::new(Metrics::new());
        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)));
        background.spawn(keep_recent(
            events.subscribe(),
            recent.clone(),
            stop_background.clone(),
        ));
        background.spawn(metrics_upkeep(metrics.clone(), stop_background.clone()));
        let checks = start_checks(
            snapshot.pools(),
            &mut background,
            &stop_background,
            &metrics,
        )?;
        wait_first_round(checks.first_round).await;
        // A local pool that starts below min_healthy fails over before the first connection.
        snapshot.evaluate_failover(Instant::now());

        let routes = Arc::new(ArcSwap::from_pointee(snapshot));
        // After the first health round: nothing is announced on unknown health.
        let bgp_status = Arc::new(bgp::Status::default());
        let speaker = config.bgp.as_ref().map(|b| {
            bgp::Speaker::start(
                b,
                routes.clone(),
                bgp_status.clone(),
                events.clone(),
                adopting_bgp,
            )
        });
        let reevaluate = Arc::new(Notify::new());
        background.spawn(failover_controller(
            routes.clone(),
            events.subscribe(),
            reevaluate.clone(),
            stop_background.clone(),
        ));

        let mut app = App {
            config,
            routes,
            services: HashMap::new(),
            pool_checks: checks.stops.into_iter().collect(),
            tracker: TaskTracker::new(),
            switches: Arc::default(),
            background,
            stop_background,
            events,
            reevaluate,
            metrics,
            reloads: Arc::new(ReloadCounters::default()),
            recent,
            service_views: Arc::new(ArcSwap::from_pointee(Vec::new())),
            ready: Arc::new(AtomicBool::new(false)),
            access_writer: access_log.install(writer),
            access_log,
            bgp: speaker,
            bgp_status,
            worker_stats: Arc::new(WorkerStats::new(workers.len())),
            workers,
        };
        for bound in listeners {
            app.serve(bound, Arc::new(ServiceStats::default()));
        }
        app.publish_services();
        app.reloads
            .last_applied_unix
            .store(unix_now(), Ordering::Relaxed);
        app.ready.store(true, Ordering::Release);
        Ok(app)
    }

    /// A read-only view for the admin API.
    pub fn view(&self) -> AppView {
        AppView {
            routes: self.routes.clone(),
            services: self.service_views.clone(),
            metrics: self.metrics.clone(),
            reloads: self.reloads.clone(),
            recent: self.recent.clone(),
            events: self.events.clone(),
            ready: self.ready.clone(),
            access_log: self.access_log.clone(),
            bgp: self.bgp_status.clone(),
            workers: self.worker_stats.clone(),
        }
    }

    fn publish_services(&self) {
        let mut views: Vec<ServiceView> = self
            .services
            .values()
            .map(|s| ServiceView {
                name: s.config.name.clone(),
                protocol: s.config.protocol,
                local_addr: s.local_addr,
                stats: s.stats.clone(),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        self.service_views.store(Arc::new(views));
    }

    /// Starts the accept loops (TCP) or receive loops (UDP) of a bound service, socket `i` of
    /// its group on worker `i`. Cannot fail: whatever could was done by [`Bound::new`], so a
    /// reload calls this after its swap.
    fn serve(&mut self, bound: Bound, stats: Arc<ServiceStats>) {
        let Bound {
            service,
            group:
                Group {
                    local_addr,
                    sockets,
                    handoff,
                },
        } = bound;
        let limiter = Arc::new(Semaphore::new(service.max_connections));
        let stop_accepting = CancellationToken::new();
        let removed = Arc::new(Scope::default());
        info!(service = %service.name, listen = %local_addr, protocol = %service.protocol,
              pool = %service.pool, backup_pool = service.backup_pool.as_deref().unwrap_or("-"),
              sockets = sockets.len(), "listening");
        let name: Arc<str> = Arc::from(service.name.as_str());
        let mut accept = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let worker = self.workers.handle(i);
            accept.push(match socket {
                Listener::Tcp(listener) => worker.spawn(tcp::serve(
                    listener,
                    ServiceContext {
                        name: name.clone(),
                        routes: self.routes.clone(),
                        stats: stats.clone(),
                        limiter: limiter.clone(),
                        tracker: self.tracker.clone(),
                        stop_accepting: stop_accepting.clone(),
                        switches: self.switches.clone(),
                        removed: removed.clone(),
                        access_log: self.access_log.clone(),
                        local_addr,
                        worker: WorkerCounter::new(&self.worker_stats, i % self.workers.len()),
                    },
                )),
                // UDP sessions end with their service (shutdown or removal): there is no
                // connection to drain, and the listening socket they reply from closes. Each
                // socket of the group has its own sessions: a client's datagrams keep to one
                // socket while the group is unchanged (the kernel hashes the 4-tuple).
                Listener::Udp(socket) => worker.spawn(udp::serve(
                    socket,
                    UdpContext {
                        name: name.clone(),
                        routes: self.routes.clone(),
                        stats: stats.clone(),
                        limiter: limiter.clone(),
                        tracker: self.tracker.clone(),
                        stop: stop_accepting.clone(),
                        access_log: self.access_log.clone(),
                    },
                )),
            });
        }
        self.services.insert(
            service.name.clone(),
            RunningService {
                config: service,
                local_addr,
                stats,
                limiter,
                stop_accepting,
                removed,
                accept,
                handoff,
            },
        );
    }

    /// The listening sockets of every service, described for a binary upgrade.
    pub fn handoff_sockets(&self) -> Vec<(SocketInfo, BorrowedFd<'_>)> {
        self.services
            .values()
            .flat_map(|s| {
                let info = SocketInfo {
                    kind: kind(s.config.protocol),
                    name: s.config.name.clone(),
                    listen: s.config.listen,
                    local: s.local_addr,
                };
                s.handoff.iter().map(move |fd| (info.clone(), fd.as_fd()))
            })
            .collect()
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

    /// The config now serving.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Health, failover and reload transitions from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Reads, validates and applies the config file at `path`. On any error the running config
    /// keeps serving; the error carries the same messages as `tandem check`.
    pub async fn reload_file(&mut self, path: &Path) -> Result<ReloadReport, ReloadError> {
        let result = match config::load(path) {
            Ok(new) => self.reload(new).await,
            Err(e) => Err(ReloadError::Config(e)),
        };
        if let Err(e) = &result {
            self.rejected(e);
        }
        result
    }

    /// Applies a validated config. Nothing changes unless everything can: listeners for new
    /// services are bound and new members probed first, then one snapshot swap applies it.
    pub async fn reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload(new).await;
        if let Err(e) = &result {
            self.rejected(e);
        }
        result
    }

    fn rejected(&self, e: &ReloadError) {
        self.reloads.rejected.fetch_add(1, Ordering::Relaxed);
        let generation = self.routes.load().generation;
        error!(generation, error = %e, "config reload rejected; the running config keeps serving");
        let _ = self.events.send(Event::Reload(ReloadEvent {
            applied: false,
            generation,
            message: e.to_string(),
            at: SystemTime::now(),
        }));
    }

    async fn try_reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        let plan = reload::plan(&self.config, &new);
        if self.config.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
            // The admin listener belongs to the process, not to a config generation; the rest
            // of `[admin]` (token, TLS files) is applied by the server after the swap.
            warn!(
                "[admin] listen changed; the admin API keeps its current listener until a restart"
            );
        }
        let old = self.routes.load_full();
        let generation = old.generation + 1;

        // Everything that can fail happens before the swap; returning early drops what was
        // prepared (listeners close, new check loops are stopped), so a rejected reload leaves
        // nothing behind.
        // 1. Every service's `source` usable (a reload may switch it), then listeners for
        //    services that are new or moved, bound and ready to serve.
        for service in &new.services {
            source::check(service).map_err(ServeError::from)?;
        }
        let mut listeners = Vec::new();
        for service in &new.services {
            if plan.service(&service.name).is_some_and(ServicePlan::binds) {
                listeners.push(Bound::new(service, Vec::new(), &self.workers)?);
            }
        }

        // 1b. The access log's new writer, when `[access_log]` changed (its file opened).
        let access_changed = self.config.access_log != new.access_log;
        let writer = if access_changed {
            start_access_log(&new, &self.access_log)?
        } else {
            None
        };

        // 2. The new snapshot, carrying over what the plan keeps.
        let snapshot = Snapshot::build(&new, generation, &self.events, Some((&old, &plan)))
            .map_err(ServeError::from)?;

        // 3. Check loops for the pools the plan rebuilds; their first round runs now, so
        //    nothing new is routed on unknown health. The loops they replace stop after the swap.
        let rebuilt = snapshot
            .pools()
            .filter(|p| plan.pool(&p.name).is_some_and(PoolPlan::starts_checks));
        let checks = start_checks(
            rebuilt,
            &mut self.background,
            &self.stop_background,
            &self.metrics,
        )?;
        wait_first_round(checks.first_round).await;
        // A changed failover mode (a drill) applies to the very next connection.
        snapshot.evaluate_failover(Instant::now());

        // 4. One swap. Nothing below can fail: the reload applies whole.
        self.routes.store(Arc::new(snapshot));
        let took = started.elapsed();

        // 5. The rest of the plan, on what lives outside the snapshot.
        if access_changed {
            // The old writer writes what was queued for it and stops on its own.
            self.access_writer = self.access_log.install(writer);
            info!(access_log = ?new.access_log, "access log changed");
        }
        for (name, pool) in &plan.pools {
            if pool.stops_checks()
                && let Some(stop) = self.pool_checks.remove(name)
            {
                stop.cancel();
            }
            for member in old.pool(name).iter().flat_map(|p| &p.members) {
                if pool.retires(&member.addr) {
                    self.switches.retire_member(&member.retired);
                }
            }
        }
        self.pool_checks.extend(checks.stops);
        for bound in listeners {
            // A moved service keeps its counters; its old listener closes and its connections
            // drain.
            let stats = match self.services.remove(&bound.service.name) {
                Some(old) => {
                    retire(&old, &self.switches);
                    old.stats
                }
                None => Arc::new(ServiceStats::default()),
            };
            self.serve(bound, stats);
        }
        for service in &new.services {
            if let Some(ServicePlan::Kept { .. }) = plan.service(&service.name)
                && let Some(running) = self.services.get_mut(&service.name)
            {
                resize(
                    &running.limiter,
                    running.config.max_connections,
                    service.max_connections,
                );
                running.config = service.clone();
            }
        }
        for (name, service) in &plan.services {
            if *service == ServicePlan::Removed
                && let Some(old) = self.services.remove(name)
            {
                retire(&old, &self.switches);
            }
        }
        self.reconfigure_bgp(new.bgp.as_ref());
        let diff = plan.diff;

        self.config = new;
        self.publish_services();
        self.reloads.applied.fetch_add(1, Ordering::Relaxed);
        self.reloads
            .last_applied_unix
            .store(unix_now(), Ordering::Relaxed);
        self.reevaluate.notify_one();
        info!(generation, change = %diff, took_ms = took.as_secs_f64() * 1000.0, "config reload applied");
        let _ = self.events.send(Event::Reload(ReloadEvent {
            applied: true,
            generation,
            message: diff.to_string(),
            at: SystemTime::now(),
        }));
        Ok(ReloadReport {
            generation,
            diff,
            took,
        })
    }

    /// Applies a reloaded `[bgp]` (see [`bgp::Speaker::reconfigure`]); what each session
    /// announces follows from the new snapshot through the announcer. A removed `[bgp]` ends
    /// every session with a Cease, and the routers drop the routes with them.
    fn reconfigure_bgp(&mut self, new: Option<&config::Bgp>) {
        match (&mut self.bgp, new) {
            (Some(speaker), Some(b)) => speaker.reconfigure(b),
            (None, Some(b)) => {
                self.bgp = Some(bgp::Speaker::start(
                    b,
                    self.routes.clone(),
                    self.bgp_status.clone(),
                    self.events.clone(),
                    false,
                ));
            }
            (Some(_), None) => {
                if let Some(speaker) = self.bgp.take() {
                    tokio::spawn(speaker.stop());
                }
            }
            (None, None) => {}
        }
    }

    /// For a binary upgrade, once the new process serves: stops the BGP sessions between two
    /// messages and sends them, connections included, to the new process on `to` (the upgrade
    /// control connection), which goes on with them; the routers see nothing. Nothing is
    /// withdrawn either way. When they cannot be sent, each session ends with a Cease and the
    /// new process opens its own (the route is gone until then, about a second).
    pub async fn hand_over_bgp(&mut self, to: Option<&mut tokio::net::UnixStream>) {
        let Some(speaker) = self.bgp.take() else {
            return;
        };
        let Some(to) = to else {
            speaker.stop().await;
            return;
        };
        let handed = speaker.hand_over().await;
        let (peers, fds): (Vec<bgp::handoff::HandedPeer>, Vec<OwnedFd>) =
            handed.into_iter().map(|h| (h.peer, h.fd)).unzip();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
        match upgrade::send_frame(to, &peers, &borrowed).await {
            Ok(()) => info!(
                sessions = peers.len(),
                "bgp: sessions handed over to the new process"
            ),
            Err(e) => {
                warn!(error = %e, "bgp: cannot hand the sessions over; the new process opens its own");
                drop(borrowed);
                let handed = peers
                    .into_iter()
                    .zip(fds)
                    .map(|(peer, fd)| bgp::handoff::Handed { peer, fd })
                    .collect();
                bgp::handoff::close(
                    handed,
                    bgp::codec::error::CEASE_ADMIN_SHUTDOWN,
                    "handoff failed",
                )
                .await;
            }
        }
    }

    /// In the new process of a binary upgrade ([`App::take_over`]): the BGP sessions the old
    /// process handed over (none when it sent none). Each peer takes up its own and the others
    /// connect; a session whose peer is no longer configured ends with a Cease.
    pub fn adopt_bgp(&mut self, handed: Vec<bgp::handoff::Handed>) {
        let left = match &mut self.bgp {
            Some(speaker) => speaker.adopt(handed),
            None => handed,
        };
        if !left.is_empty() {
            tokio::spawn(bgp::handoff::close(
                left,
                bgp::codec::error::CEASE_PEER_DECONFIGURED,
                "its peer is not configured in this process",
            ));
        }
    }

    /// Withdraws every BGP announcement (waiting until the peers have been sent the
    /// withdrawals), then stops accepting, lets open connections finish for up to `grace`, then
    /// closes the rest.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        // Withdraw first, then drain: routers stop sending new clients before the listeners
        // close, so none is refused; the sessions end once the drain is over.
        let speaker = self.bgp.take();
        let speaker = match speaker {
            Some(mut s) => {
                s.withdraw().await;
                Some(s)
            }
            None => None,
        };
        let report = self.stop_and_drain(grace).await;
        if let Some(s) = speaker {
            s.stop().await;
        }
        report
    }

    async fn stop_and_drain(mut self, grace: Duration) -> ShutdownReport {
        for s in self.services.values() {
            s.stop_accepting.cancel();
        }
        // Wait for the accept loops so every listener is closed before we report.
        for (_, s) in self.services.drain() {
            for loop_ in s.accept {
                let _ = loop_.await;
            }
        }
        self.stop_background.cancel();
        while self.background.join_next().await.is_some() {}
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
            self.close_access_log().await;
            return ShutdownReport { forced: 0 };
        }
        let forced = self.tracker.len();
        warn!(
            connections = forced,
            "shutdown grace over; closing remaining connections"
        );
        self.switches.force_all();
        self.tracker.wait().await;
        self.close_access_log().await;
        ShutdownReport { forced }
    }

    /// Opens the access log file anew (SIGUSR1, after logrotate renamed it). On error the log
    /// keeps writing to the file it has.
    pub fn reopen_access_log(&self) {
        let Some(control) = &self.access_writer else {
            return;
        };
        let path = control.path().map(|p| p.display().to_string());
        match control.reopen() {
            Ok(()) => info!(path = path.as_deref().unwrap_or("-"), "access log reopened"),
            Err(e) => warn!(path = path.as_deref().unwrap_or("-"), error = %e,
                            "access log: cannot reopen; still writing to the file it had"),
        }
    }

    /// Lets the access log write what is queued, then stops it.
    async fn close_access_log(&mut self) {
        self.access_log.install(None);
        if let Some(control) = self.access_writer.take()
            && !control.finish(ACCESS_LOG_FLUSH).await
        {
            warn!("access log: its sink is stalled; queued lines are lost");
        }
    }
}

/// A service's socket group ready to serve: bound (or inherited), registered with the workers
/// and duplicated for a binary upgrade. Everything about the sockets that can fail is done
/// here, so serving them cannot.
struct Bound {
    service: Service,
    group: Group,
}

impl Bound {
    /// The group of `service`: the `inherited` sockets (a binary upgrade) if any, else new ones.
    fn new(
        service: &Service,
        inherited: Vec<OwnedFd>,
        workers: &Workers,
    ) -> Result<Bound, ServeError> {
        let group = listeners::open(service.protocol, service.listen, inherited, workers).map_err(
            |source| ServeError::Bind {
                service: service.name.clone(),
                addr: service.listen,
                source,
            },
        )?;
        Ok(Bound {
            service: service.clone(),
            group,
        })
    }
}

/// Check loops started for some pools, with their first round still running.
struct Checks {
    /// What stops each pool's loops, by pool name.
    stops: Vec<(String, CancellationToken)>,
    first_round: FirstRound,
}

/// Starts the check loops of `pools` on `background`, each pool's stoppable on its own and all
/// with `parent`. All or none: when one pool's checks cannot be set up, the loops already
/// started for the others are stopped.
fn start_checks<'a>(
    pools: impl Iterator<Item = &'a Arc<PoolState>>,
    background: &mut JoinSet<()>,
    parent: &CancellationToken,
    metrics: &Metrics,
) -> Result<Checks, ServeError> {
    let mut checks = Checks {
        stops: Vec::new(),
        first_round: FirstRound::default(),
    };
    for pool in pools {
        let stop = parent.child_token();
        let instruments = metrics.check_instruments(&pool.name);
        match checker::spawn_pool(&pool.check_targets(), background, &stop, &instruments) {
            Ok(round) => checks.first_round.merge(round),
            Err(e) => {
                stop.cancel();
                for (_, started) in &checks.stops {
                    started.cancel();
                }
                return Err(e.into());
            }
        }
        checks.stops.push((pool.name.clone(), stop));
    }
    Ok(checks)
}

fn kind(protocol: Protocol) -> upgrade::Kind {
    match protocol {
        Protocol::Tcp => upgrade::Kind::Tcp,
        Protocol::Udp => upgrade::Kind::Udp,
    }
}

/// Opens the access log `config` asks for (none without `[access_log]`), counting into `log`'s
/// counters; not installed yet.
fn start_access_log(
    config: &Config,
    log: &AccessLog,
) -> Result<Option<access_log::Writer>, ServeError> {
    let Some(cfg) = &config.access_log else {
        return Ok(None);
    };
    access_log::Writer::start(cfg, log.counters_arc())
        .map(Some)
        .map_err(|source| ServeError::AccessLog {
            path: match &cfg.target {
                config::LogTarget::File(p) => p.display().to_string(),
                config::LogTarget::Stderr => "-".to_string(),
            },
            source,
        })
}

/// A service leaving: its listener closes now, its connections drain for `drain_timeout`
/// (UDP: its socket and sessions close now).
fn retire(service: &RunningService, switches: &Switches) {
    info!(service = %service.config.name, drain_s = service.config.drain_timeout.as_secs_f64(),
          "listener closed; open connections drain");
    service.stop_accepting.cancel();
    switches.end_service(&service.removed);
}

/// Changes a live `max_connections`: permits held by open connections stay valid.
fn resize(limiter: &Semaphore, old: usize, new: usize) {
    if new > old {
        limiter.add_permits(new - old);
    } else if new < old {
        // Only free permits can be taken back now; connections over the new cap finish as
        // they are, and the cap holds for everything after them.
        let wanted = old - new;
        let missing = wanted - limiter.forget_permits(wanted);
        if missing > 0 {
            warn!(
                permits = missing,
                "max_connections lowered below the open connections; the cap applies as they close"
            );
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps the most recent events for status pages.
async fn keep_recent(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    recent: Arc<Mutex<VecDeque<Event>>>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(e) => {
                if let Ok(mut r) = recent.lock() {
                    if r.len() == RECENT_EVENTS {
                        r.pop_front();
                    }
                    r.push_back(e);
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Runs the metrics recorder's upkeep (histogram memory) every few seconds.
async fn metrics_upkeep(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}

async fn wait_first_round(round: FirstRound) {
    let bound = round.bound;
    if !round.wait().await {
        warn!(
            bound_ms = bound.as_millis() as u64,
            "first health-check round did not finish in time"
        );
    }
}

/// Re-evaluates every service's failover state whenever health changes, after a reload, and at
/// failback deadlines.
async fn failover_controller(
    routes: Arc<ArcSwap<Snapshot>>,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    reevaluate: Arc<Notify>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let next = routes.load().evaluate_failover(Instant::now());
        let deadline = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = events.recv() => {
                // Any event (our own failover events too) just means "look again": evaluating
                // with nothing changed is cheap and changes nothing.
                if let Err(RecvError::Closed) = r {
                    return;
                }
            }
            _ = reevaluate.notified() => {}
            _ = deadline => {}
            _ = stop.cancelled() => return,
        }
    }
}
