//! `tandem run` as a library: the process around the [`App`]. [`run`] takes over the listening
//! sockets of a predecessor (binary upgrade) or binds its own, serves the admin API, tells systemd
//! what it is doing, and answers signals, admin commands, config file changes and upgrade
//! requests in one loop until it is asked to stop or has handed over to a successor.
//!
//! The start-up order is a contract with operators and with the process being upgraded:
//! 1. signal handlers first, so an early SIGTERM is not lost and an early SIGHUP cannot kill us;
//! 2. with `upgrade_from`, the sockets are received before the config is read (receiving binds
//!    nothing), so a bad config closes the control connection and the old process logs the failed
//!    upgrade; without it, the config is checked before any port is bound;
//! 3. the admin listener is bound (or adopted) before the app starts: a taken port fails the start
//!    as a whole, as it does for a service;
//! 4. `READY=1` once the app serves (first health round done), then our own control socket, then
//!    "ready" to the predecessor, which stops accepting and drains; when it has stopped taking
//!    requests the config file is read again, and reloaded if a reload it applied changed it;
//! 5. the admin API and the config watcher start.
//!
//! Reloads and handoffs are served one at a time by the loop: a handoff requested during a reload
//! waits for it to finish and hands over the listeners it left.
//!
//! Not here: argument parsing, logging set-up and the runtime (the binary's job).

use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin;
use crate::app::{App, AppView, ServeError};
use crate::bgp;
use crate::config::{self, Config, ConfigError};
use crate::notify::{Notifier, Watchdog};
use crate::signals::{Request, Signals};
use crate::tls::TlsError;
use crate::upgrade::{self, Control, Inherited, SocketInfo, UpgradeError};
use crate::watch::ConfigWatcher;
use crate::workers::Workers;

/// Quiet time after a config file change before reloading: editors write in several steps.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);
/// How long a new process waits, after its "ready", for the old one's BGP sessions before its
/// peers connect afresh. The old one sends them as soon as it reads "ready", once each session
/// is between two messages (at most 2 s, `HANDOVER_LIMIT` in the speaker); the rest is margin
/// for a loaded machine.
const BGP_HANDOFF_WAIT: Duration = Duration::from_secs(5);

/// How `tandem run` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long open connections may finish after SIGTERM/SIGINT before they are closed
    /// (default 30 s).
    pub shutdown_grace: Duration,
    /// Reload when the config file changes (default on; SIGHUP and the admin API reload either
    /// way).
    pub watch: bool,
    /// Control socket to listen on for the next upgrade. `None`: the `upgrade_from` path, else
    /// [`upgrade::DEFAULT_SOCKET`]. When it cannot be bound, tandem runs without it.
    pub upgrade_socket: Option<PathBuf>,
    /// Control socket of the running tandem to take the listeners over from.
    pub upgrade_from: Option<PathBuf>,
    /// Data-path worker threads, each with its own runtime and a socket of every service
    /// (see [`crate::workers`]). `None`: the data path runs on the caller's runtime.
    pub workers: Option<usize>,
    /// With `workers`: run the data path on the caller's (multi-threaded) runtime instead, a
    /// socket per worker still ([`Workers::shared`]); for measuring the two models.
    pub shared_runtime: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            shutdown_grace: Duration::from_secs(30),
            watch: true,
            upgrade_socket: None,
            upgrade_from: None,
            workers: None,
            shared_runtime: false,
        }
    }
}

impl Options {
    /// The control socket this process listens on.
    fn control_path(&self) -> PathBuf {
        self.upgrade_socket
            .clone()
            .or_else(|| self.upgrade_from.clone())
            .unwrap_or_else(|| PathBuf::from(upgrade::DEFAULT_SOCKET))
    }
}

/// Why tandem could not start serving. Once it serves, nothing stops it but a request.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config file cannot be read or is invalid; [`ConfigError::Invalid`] holds every
    /// problem, each with its place in the file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("upgrade: cannot take over from {}: {source}", from.display())]
    TakeOver {
        from: PathBuf,
        #[source]
        source: UpgradeError,
    },
    #[error("admin: cannot use the inherited listener: {0}")]
    AdoptAdmin(#[source] io::Error),
    #[error("admin: cannot listen on {addr}: {source}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The admin TLS files passed the config check but no longer load (replaced meanwhile).
    #[error("admin: {0}")]
    AdminTls(#[source] TlsError),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] io::Error),
    #[error(transparent)]
    Start(#[from] ServeError),
}

/// Runs the balancer on the config file at `path` until SIGTERM/SIGINT (then drains for the
/// grace period) or until a new process has taken over (then drains too, without telling
/// systemd it stops). An error means it never served.
pub async fn run(path: &Path, options: Options) -> Result<(), ServerError> {
    Server::start(path, options).await?.serve().await;
    Ok(())
}

/// The admin API, served on its own task, and the commands it sends to whoever runs the app.
pub(crate) struct AdminServer {
    commands: mpsc::Receiver<admin::Command>,
    /// Its options; replaced on every applied reload.
    settings: admin::Settings,
    stop: CancellationToken,
}

impl AdminServer {
    /// Serves the admin API on `listener` until [`AdminServer::stop`].
    pub(crate) fn spawn(
        listener: TcpListener,
        view: AppView,
        options: admin::Options,
    ) -> AdminServer {
        let (commands_tx, commands) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let settings = admin::Settings::new(options);
        tokio::spawn(admin::serve_with(
            listener,
            view,
            commands_tx,
            settings.clone(),
            stop.clone(),
        ));
        AdminServer {
            commands,
            settings,
            stop,
        }
    }

    /// Applies `[admin]` of a config just applied, except `listen` (the listener belongs to the
    /// process): token file, `allow_plain_post`, and the TLS files read again, so a rotated
    /// certificate is served from the next connection. When the files no longer load (replaced
    /// since the reload checked them) the current options stay.
    pub(crate) fn refresh(&self, config: &config::Admin) {
        match admin::Options::from_config(config) {
            Ok(options) => self.settings.store(options),
            Err(e) => error!(error = %e,
                "admin TLS files changed while reloading and no longer load; \
                 the admin API keeps its previous certificate"),
        }
        if let Some(warning) = config.warning() {
            warn!("{warning}");
        }
    }

    /// The next command; never resolves once the API has stopped sending. Cancel-safe.
    pub(crate) async fn next_command(&mut self) -> admin::Command {
        match self.commands.recv().await {
            Some(command) => command,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting admin connections.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// A running `tandem run`: the app and everything around it that the loop answers.
struct Server {
    /// The config file, read again on every reload.
    path: PathBuf,
    app: App,
    signals: Signals,
    notifier: Notifier,
    watchdog: Watchdog,
    admin: Option<AdminServer>,
    /// A duplicate of the admin listener with its description, to hand over in an upgrade.
    admin_handoff: Option<(SocketInfo, OwnedFd)>,
    /// Our control socket; `None` when it could not be bound (no upgrades then).
    control: Option<Control>,
    control_path: PathBuf,
    /// The new process taking over, between the handoff and its "ready".
    successor: Option<UnixStream>,
    /// The new process that said "ready": its connection carries our BGP sessions next.
    handed_to: Option<UnixStream>,
    /// The process we took over from, between our "ready" and its closing the stream (it then
    /// applies no more reloads), with the config file as we read it at start. A task follows
    /// the stream: reading the BGP frame must not be cut short by the loop's other events.
    predecessor: Option<(JoinHandle<()>, Option<Vec<u8>>)>,
    /// The BGP sessions the process we took over from sends after our "ready".
    bgp_handoff: Option<oneshot::Receiver<Vec<bgp::handoff::Handed>>>,
    watcher: Option<ConfigWatcher>,
    shutdown_grace: Duration,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// SIGTERM or SIGINT.
    Stopped,
    /// A new process serves on our listeners; systemd follows it now.
    HandedOver,
}

impl Server {
    /// Everything up to serving, in the order the module doc gives.
    async fn start(path: &Path, options: Options) -> Result<Server, ServerError> {
        let signals = Signals::new().map_err(ServerError::Signals)?;
        let (predecessor, mut inherited) = match &options.upgrade_from {
            Some(from) => take_over(from).await?,
            None => (None, Inherited::default()),
        };
        // Read before the config is loaded: if the file changes in between, the comparison
        // after the handover sees a difference and reloads once more, never one too few.
        let read_at_start = options
            .upgrade_from
            .as_ref()
            .and_then(|_| std::fs::read(path).ok());
        let cfg = config::load(path)?;
        info!(config = %path.display(), summary = %cfg.summary(), "starting");
        let admin_listener = bind_admin(&cfg, &mut inherited).await?;
        if let Some(warning) = cfg.admin.as_ref().and_then(config::Admin::warning) {
            warn!("{warning}");
        }
        let admin_handoff = admin_listener
            .as_ref()
            .and_then(|(listener, listen, _)| handoff_entry(listener, *listen));
        // systemd: watchdog pings from now on, READY=1 once App::start has returned (listeners
        // accepting, first health round done). All of it is a no-op without NOTIFY_SOCKET.
        let notifier = Notifier::from_env();
        let watchdog = notifier.start_watchdog();
        let workers = match options.workers {
            Some(n) if options.shared_runtime => Workers::shared(n),
            Some(n) => Workers::start(n).map_err(ServerError::Workers)?,
            None => Workers::ambient(),
        };
        let mut app = match predecessor {
            Some(_) => App::take_over(cfg, &mut inherited, workers).await?,
            None => App::start_on(cfg, &mut inherited, workers).await?,
        };
        inherited.close_unused();
        // READY=1 carries MAINPID: after an upgrade systemd follows this process from here on.
        notifier.ready(&serving(&app));
        let control_path = options.control_path();
        let control = bind_control(&control_path, options.upgrade_from.is_some());
        let (predecessor, bgp_handoff) = match predecessor {
            Some(stream) => match tell_predecessor(stream).await {
                Some(stream) => {
                    let (task, handoff) = follow_predecessor(stream);
                    (Some((task, read_at_start)), Some(handoff))
                }
                None => {
                    // No sessions will come: the peers connect now.
                    app.adopt_bgp(Vec::new());
                    (None, None)
                }
            },
            None => (None, None),
        };
        let admin = admin_listener
            .map(|(listener, _, options)| AdminServer::spawn(listener, app.view(), options));
        let watcher = if options.watch { watch(path) } else { None };
        Ok(Server {
            path: path.to_path_buf(),
            app,
            signals,
            notifier,
            watchdog,
            admin,
            admin_handoff,
            control,
            control_path,
            successor: None,
            handed_to: None,
            predecessor,
            bgp_handoff,
            watcher,
            shutdown_grace: options.shutdown_grace,
        })
    }

    /// Answers requests until one ends the loop, then shuts down.
    async fn serve(mut self) {
        let end = loop {
            let step = tokio::select! {
                request = self.signals.next() => self.on_signal(request).await,
                command = or_never(self.admin.as_mut().map(AdminServer::next_command)) => {
                    self.on_admin(command).await
                }
                accepted = or_never(self.control.as_ref().map(Control::accept)) => {
                    self.on_upgrade_request(accepted).await
                }
                ready = or_never(self.successor.as_mut().map(upgrade::wait_ready)) => {
                    self.on_successor(ready)
                }
                change = or_never(self.watcher.as_mut().map(ConfigWatcher::changed)) => {
                    self.on_config_change(change).await
                }
                handed = or_never(self.bgp_handoff.as_mut()) => {
                    self.bgp_handoff = None;
                    self.app.adopt_bgp(handed.unwrap_or_default());
                    ControlFlow::Continue(())
                }
                _ = or_never(self.predecessor.as_mut().map(|(task, _)| task)) => {
                    self.on_predecessor_gone().await
                }
            };
            if let ControlFlow::Break(end) = step {
                break end;
            }
        };
        self.shutdown(end).await;
    }

    async fn on_signal(&mut self, request: Request) -> ControlFlow<End> {
        match request {
            Request::Stop => return ControlFlow::Break(End::Stopped),
            Request::Upgrade => self.start_successor(),
            Request::ReopenLogs => self.app.reopen_access_log(),
            // A rejected reload is logged (with every problem) by the app; the running config
            // keeps serving.
            Request::Reload => {
                let _ = self.reload().await;
            }
        }
        ControlFlow::Continue(())
    }

    async fn on_admin(&mut self, command: admin::Command) -> ControlFlow<End> {
        match command {
            admin::Command::Reload { reply } => {
                let outcome = self.reload().await;
                let _ = reply.send(outcome);
            }
        }
        ControlFlow::Continue(())
    }

    /// A process connected to the control socket to take over: it gets our listeners.
    async fn on_upgrade_request(&mut self, accepted: io::Result<UnixStream>) -> ControlFlow<End> {
        match accepted {
            Ok(_) if self.successor.is_some() => {
                warn!("upgrade: another upgrade is in progress; request refused");
            }
            Ok(stream) => self.hand_over(stream).await,
            Err(e) => warn!(error = %e, "upgrade: cannot accept on the upgrade socket"),
        }
        ControlFlow::Continue(())
    }

    /// The successor said "ready" (`true`), or went away before it (`false`).
    fn on_successor(&mut self, ready: bool) -> ControlFlow<End> {
        if ready {
            info!("upgrade: new process serving; stopping accepting and draining");
            // Closing (once the BGP sessions have gone along) tells the new process we apply
            // no more reloads: it compares the config file with the one it started on, so a
            // reload we applied meanwhile is not lost.
            self.handed_to = self.successor.take();
            return ControlFlow::Break(End::HandedOver);
        }
        warn!("upgrade: new process stopped before it was ready; still serving");
        self.successor = None;
        ControlFlow::Continue(())
    }

    /// The process we took over from stopped taking requests. It may have applied a reload
    /// (SIGHUP, `POST /reload`, its watcher) after we had read the config file: reload if the
    /// file is no longer the one we started on.
    async fn on_predecessor_gone(&mut self) -> ControlFlow<End> {
        if let Some((_, read_at_start)) = self.predecessor.take()
            && std::fs::read(&self.path).ok() != read_at_start
        {
            info!(config = %self.path.display(),
                  "config file changed during the upgrade: reloading");
            let _ = self.reload().await;
        }
        ControlFlow::Continue(())
    }

    /// The watcher saw the file change (`Some`) or stopped (`None`).
    async fn on_config_change(&mut self, change: Option<()>) -> ControlFlow<End> {
        match change {
            Some(()) => {
                info!(config = %self.path.display(), "config file changed: reloading");
                let _ = self.reload().await;
            }
            None => {
                warn!("config file watcher stopped; reload with SIGHUP");
                self.watcher = None;
            }
        }
        ControlFlow::Continue(())
    }

    /// SIGUSR2: starts a new process, which connects to the control socket like one started by
    /// hand.
    fn start_successor(&self) {
        if self.control.is_none() {
            warn!("no upgrade socket: cannot hand over to a new process");
        } else if self.successor.is_some() {
            warn!("upgrade: another upgrade is in progress; request refused");
        } else {
            upgrade::start_successor(&self.control_path);
        }
    }

    /// Sends the service listeners (every socket of every group) and the admin listener to the
    /// process on `stream`; it is our successor from then until it says "ready" or goes away.
    async fn hand_over(&mut self, mut stream: UnixStream) {
        let mut sockets = self.app.handoff_sockets();
        if let Some((info, fd)) = &self.admin_handoff {
            sockets.push((info.clone(), fd.as_fd()));
        }
        match upgrade::hand_over(&mut stream, &sockets).await {
            Ok(()) => {
                info!(
                    sockets = sockets.len(),
                    "upgrade: listening sockets handed over; waiting for the new process"
                );
                self.successor = Some(stream);
            }
            Err(e) => warn!(error = %e, "upgrade: handoff failed; still serving"),
        }
    }

    /// Reloads the config file, telling systemd around it. A rejected reload is logged (with
    /// every problem) by the app; the running config keeps serving. Returns the outcome as the
    /// admin API reports it.
    async fn reload(&mut self) -> Result<admin::ReloadOutcome, String> {
        self.notifier.reloading();
        let result = self.app.reload_file(&self.path).await;
        if result.is_ok()
            && let (Some(admin), Some(config)) = (&self.admin, &self.app.config().admin)
        {
            admin.refresh(config);
        }
        self.notifier
            .ready(&after_reload(&self.app, result.is_ok()));
        admin::ReloadOutcome::of(&result)
    }

    /// Stops accepting, drains open connections for the grace period, then cuts the rest.
    async fn shutdown(self, end: End) {
        // After an upgrade the socket file belongs to the new process: close() leaves it.
        if let Some(control) = self.control {
            control.close();
        }
        // After an upgrade systemd follows the new process: STOPPING=1 would stop the unit.
        if end == End::Stopped {
            self.notifier.stopping();
        }
        if let Some(admin) = &self.admin {
            admin.stop();
        }
        let mut app = self.app;
        // After an upgrade the new process announces, on our sessions: no withdrawal (see
        // App::hand_over_bgp). Then the connection closes.
        if end == End::HandedOver {
            let mut handed_to = self.handed_to;
            app.hand_over_bgp(handed_to.as_mut()).await;
        }
        let view = app.view();
        let report = app.shutdown(self.shutdown_grace).await;
        // Pings go on through the drain, which may take the whole grace period.
        self.watchdog.stop().await;
        log_totals(&view);
        info!(forced = report.forced, "stopped");
    }
}

/// One line per service with what this process did over its life, as HAProxy logs a proxy's
/// cumulated connections when it stops: after an upgrade the old process's counters leave with
/// it, and its admin API has already stopped answering, so the log is the only place left.
fn log_totals(view: &AppView) {
    for s in view.services().iter() {
        let st = s.stats.snapshot();
        info!(service = %s.name, protocol = %s.protocol, accepted = st.accepted,
              rejected_no_member = st.rejected_no_member,
              rejected_max_connections = st.rejected_limit,
              rejected_resources = st.rejected_resources,
              connect_failures = st.connect_failures, connect_retries = st.retries,
              bytes_to_members = st.bytes_to_members, bytes_to_clients = st.bytes_to_clients,
              udp_sessions_created = st.sessions_created,
              udp_sessions_rehashed = st.sessions_rehashed,
              udp_datagrams_to_members = st.datagrams_to_members,
              udp_datagrams_to_clients = st.datagrams_to_clients,
              udp_datagrams_dropped = st.datagrams_dropped,
              "service totals");
    }
}

/// `fut`'s output, or never when there is nothing to wait for: a `select!` branch that is off.
async fn or_never<F: Future>(fut: Option<F>) -> F::Output {
    match fut {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

/// Connects to the process at `from` and receives its listening sockets. The stream is kept to
/// say "ready" on; dropping it unsaid tells the old process the upgrade failed.
async fn take_over(from: &Path) -> Result<(Option<UnixStream>, Inherited), ServerError> {
    match upgrade::receive(from).await {
        Ok((stream, sockets)) => {
            info!(from = %from.display(), sockets = sockets.len(), pid = std::process::id(),
                  "upgrade: received the listening sockets");
            Ok((Some(stream), sockets))
        }
        Err(source) => Err(ServerError::TakeOver {
            from: from.to_path_buf(),
            source,
        }),
    }
}

/// The admin listener (inherited, else bound), its configured address and its options (TLS
/// files read); `None` when the config has no `[admin]`.
async fn bind_admin(
    cfg: &Config,
    inherited: &mut Inherited,
) -> Result<Option<(TcpListener, SocketAddr, admin::Options)>, ServerError> {
    let Some(a) = &cfg.admin else {
        return Ok(None);
    };
    // Before binding: files that do not load must not leave a bound port behind.
    let options = admin::Options::from_config(a).map_err(ServerError::AdminTls)?;
    let listener = match inherited.take(upgrade::Kind::Admin, "admin", a.listen) {
        Some(fd) => adopt_admin(fd).map_err(ServerError::AdoptAdmin)?,
        None => TcpListener::bind(a.listen)
            .await
            .map_err(|source| ServerError::BindAdmin {
                addr: a.listen,
                source,
            })?,
    };
    Ok(Some((listener, a.listen, options)))
}

/// The admin listener inherited from the process being upgraded.
fn adopt_admin(fd: OwnedFd) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// What an upgrade hands over for the admin listener configured on `listen`. `None` when the
/// descriptor cannot be duplicated: the successor then binds its own.
fn handoff_entry(listener: &TcpListener, listen: SocketAddr) -> Option<(SocketInfo, OwnedFd)> {
    let fd = listener.as_fd().try_clone_to_owned().ok()?;
    let local = listener.local_addr().ok()?;
    let info = SocketInfo {
        kind: upgrade::Kind::Admin,
        name: "admin".into(),
        listen,
        local,
    };
    Some((info, fd))
}

/// Our own control socket, for the next upgrade. A successor (`replace`) replaces its
/// predecessor's socket file before saying "ready", so the predecessor, which removes the file
/// when it stops only if it is still its own, leaves ours alone.
fn bind_control(path: &Path, replace: bool) -> Option<Control> {
    match Control::bind(path, replace) {
        Ok(control) => {
            info!(path = %path.display(), "upgrade socket listening");
            Some(control)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e,
                  "cannot listen on the upgrade socket; binary upgrades without refused connections are off");
            None
        }
    }
}

/// Tells the process we took over from that we serve; it stops accepting and drains. Returns
/// the stream, to learn when it has stopped taking requests.
async fn tell_predecessor(mut stream: UnixStream) -> Option<UnixStream> {
    match upgrade::ready(&mut stream).await {
        Ok(()) => {
            info!("upgrade: serving; the old process stops accepting and drains");
            Some(stream)
        }
        Err(e) => {
            warn!(error = %e, "upgrade: cannot tell the old process we serve; both serve until it stops");
            None
        }
    }
}

/// Follows the connection to the process we took over from, after our "ready": first the BGP
/// sessions it hands over (none when it sends none, fails, or takes longer than 5 s: the peers
/// then connect afresh), then its closing the connection, which ends the task.
fn follow_predecessor(
    mut stream: UnixStream,
) -> (JoinHandle<()>, oneshot::Receiver<Vec<bgp::handoff::Handed>>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        type Frame = Vec<bgp::handoff::HandedPeer>;
        let received = tokio::time::timeout(
            BGP_HANDOFF_WAIT,
            upgrade::receive_frame::<Frame>(&mut stream),
        )
        .await;
        let handed = match received {
            Ok(Ok(Some((peers, fds)))) if peers.len() == fds.len() => {
                info!(
                    sessions = peers.len(),
                    "bgp: sessions received from the old process"
                );
                peers
                    .into_iter()
                    .zip(fds)
                    .map(|(peer, fd)| bgp::handoff::Handed { peer, fd })
                    .collect()
            }
            Ok(Ok(Some((peers, fds)))) => {
                warn!(
                    described = peers.len(),
                    received = fds.len(),
                    "bgp: malformed session handoff; the peers connect afresh"
                );
                Vec::new()
            }
            // The old process had no session to hand over (or predates the handoff).
            Ok(Ok(None)) => Vec::new(),
            Ok(Err(e)) => {
                warn!(error = %e, "bgp: session handoff failed; the peers connect afresh");
                Vec::new()
            }
            Err(_) => {
                warn!(
                    wait_s = BGP_HANDOFF_WAIT.as_secs(),
                    "bgp: no sessions from the old process in time; the peers connect afresh"
                );
                Vec::new()
            }
        };
        let _ = tx.send(handed);
        upgrade::wait_closed(&mut stream).await;
    });
    (task, rx)
}

/// The config file watcher; `None` (reloads by SIGHUP only) when the file cannot be watched.
fn watch(path: &Path) -> Option<ConfigWatcher> {
    match ConfigWatcher::new(path, WATCH_DEBOUNCE) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            warn!(error = %e, "not watching the config file; reload with SIGHUP");
            None
        }
    }
}

/// systemd's STATUS= line while serving.
fn serving(app: &App) -> String {
    format!(
        "serving generation {}: {}",
        app.snapshot().generation,
        app.config().summary()
    )
}

/// systemd's STATUS= line after a reload, applied or rejected.
fn after_reload(app: &App, applied: bool) -> String {
    if applied {
        serving(app)
    } else {
        format!("reload rejected (see the log); {}", serving(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_is_the_one_given_else_the_one_taken_over_else_the_default() {
        let mut options = Options::default();
        assert_eq!(options.control_path(), Path::new(upgrade::DEFAULT_SOCKET));
        options.upgrade_from = Some(PathBuf::from("/run/old.sock"));
        assert_eq!(options.control_path(), Path::new("/run/old.sock"));
        options.upgrade_socket = Some(PathBuf::from("/run/new.sock"));
        assert_eq!(options.control_path(), Path::new("/run/new.sock"));
    }
}
