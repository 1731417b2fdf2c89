//! The `tandem` command: parses arguments, sets up logging, loads the config, and hands over to
//! the library. Nothing here binds a port before the config has been validated.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{info, warn};

use tandem::watch::ConfigWatcher;

/// Quiet time after a config file change before reloading: editors write in several steps.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

use tandem::admin;
use tandem::app::{App, ReloadError, ReloadReport};
use tandem::config::{self, ConfigError};
use tandem::notify::Notifier;
use tandem::signals::{Request, Signals};
use tandem::upgrade::{self, Control, Inherited, SocketInfo};

/// Binary upgrade options of `tandem run`.
struct Upgrade {
    /// Control socket to listen on.
    socket: PathBuf,
    /// Control socket of the process to take over from.
    from: Option<PathBuf>,
}

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Layer-4 load balancer for paired server pools"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "TANDEM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer.
    Run {
        #[command(flatten)]
        file: ConfigFile,
        /// How long open connections may finish after SIGTERM/SIGINT before they are closed.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        shutdown_grace: Duration,
        /// Do not reload when the config file changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
        /// Worker threads of the data path (default: the CPUs this process may run on).
        #[arg(long, env = "TANDEM_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// Control socket a new tandem connects to with `--upgrade-from` to take over the
        /// listeners (binary upgrade). Default: the `--upgrade-from` path, else
        /// /run/tandem/upgrade.sock. When it cannot be bound, tandem runs without it.
        #[arg(long)]
        upgrade_socket: Option<PathBuf>,
        /// Take over the listeners of the tandem listening on this control socket; it stops
        /// accepting and drains once this process serves.
        #[arg(long)]
        upgrade_from: Option<PathBuf>,
    },
    /// Validate a config file and report every problem in it.
    Check {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Show services, pools and members of a running tandem (from its admin API).
    Status {
        /// Admin API address (default: `[admin] listen` of the config file, else 127.0.0.1:9900).
        #[arg(long)]
        admin: Option<SocketAddr>,
        // The config file is read for `[admin] listen` when `--admin` is not given.
        #[command(flatten)]
        file: ConfigFile,
        /// Print the raw JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Start demo pools on loopback with a balancer in front and walk through hashing.
    Demo {
        /// Address of the demo balancer.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Address of the demo's admin API and status page.
        #[arg(long, default_value = tandem::config::DEFAULT_ADMIN_LISTEN)]
        admin: SocketAddr,
    },
}

/// `-c/--config`, shared by the commands that read the config file.
#[derive(clap::Args)]
struct ConfigFile {
    /// Config file.
    #[arg(
        short,
        long,
        default_value = "/etc/tandem/tandem.toml",
        env = "TANDEM_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { file } => check(&file.config),
        Command::Run {
            file,
            shutdown_grace,
            no_watch,
            workers,
            upgrade_socket,
            upgrade_from,
        } => {
            let upgrade = Upgrade {
                socket: upgrade_socket
                    .or_else(|| upgrade_from.clone())
                    .unwrap_or_else(|| PathBuf::from(upgrade::DEFAULT_SOCKET)),
                from: upgrade_from,
            };
            run(&file.config, shutdown_grace, !no_watch, workers, upgrade)
        }
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Status { admin, file, json } => status(admin, &file.config, json),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}: ok, {}", path.display(), cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

fn report(e: &ConfigError) -> ExitCode {
    match e {
        ConfigError::Invalid(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
        }
        other => eprintln!("{other}"),
    }
    ExitCode::FAILURE
}

fn status(admin: Option<SocketAddr>, path: &std::path::Path, json: bool) -> ExitCode {
    let addr = admin
        .or_else(|| {
            config::load(path)
                .ok()
                .and_then(|c| c.admin.map(|a| a.listen))
        })
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900)));
    match admin::client::fetch_status(addr, Duration::from_secs(3)) {
        Ok(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(s) => {
            print!("{}", admin::client::format_status(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the runtime, installs the signal handlers inside it (before any listener exists, so
/// an early SIGTERM is not lost), and runs `main` to its exit code.
fn with_runtime<F, Fut>(workers: Option<u16>, main: F) -> ExitCode
where
    F: FnOnce(Signals) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match Signals::new() {
            Ok(signals) => main(signals).await,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    // tokio's default is the machine's CPU count; the CPUs we may run on (taskset, cgroups) is
    // what an operator pinning the process means.
    let workers = workers
        .map(usize::from)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

fn run(
    path: &std::path::Path,
    grace: Duration,
    watch: bool,
    workers: Option<u16>,
    upgrade: Upgrade,
) -> ExitCode {
    // Without an upgrade, the config is checked before the runtime exists. With one, the
    // sockets are received first (receiving binds nothing), so that a bad config closes the
    // control connection and the old process logs the failed upgrade.
    let cfg = match upgrade.from {
        Some(_) => None,
        None => match config::load(path) {
            Ok(cfg) => Some(cfg),
            Err(e) => return report(&e),
        },
    };
    with_runtime(workers, move |signals| async move {
        let mut inherited = Inherited::default();
        let mut predecessor = None;
        if let Some(from) = &upgrade.from {
            match upgrade::receive(from).await {
                Ok((stream, sockets)) => {
                    info!(from = %from.display(), sockets = sockets.len(), pid = std::process::id(),
                          "upgrade: received the listening sockets");
                    predecessor = Some(stream);
                    inherited = sockets;
                }
                Err(e) => {
                    eprintln!("upgrade: cannot take over from {}: {e}", from.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        let cfg = match cfg {
            Some(cfg) => cfg,
            None => match config::load(path) {
                Ok(cfg) => cfg,
                Err(e) => return report(&e),
            },
        };
        info!(config = %path.display(), summary = %cfg.summary(), "starting");
        // The admin listener is bound before anything starts, like the service listeners: a
        // port that is taken fails the start as a whole.
        let admin = match &cfg.admin {
            Some(a) => match inherited.take(upgrade::Kind::Admin, "admin", a.listen) {
                Some(fd) => match adopt_admin(fd) {
                    Ok(l) => Some((l, a.token_file.clone())),
                    Err(e) => {
                        eprintln!("admin: cannot use the inherited listener: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => match tokio::net::TcpListener::bind(a.listen).await {
                    Ok(l) => Some((l, a.token_file.clone())),
                    Err(e) => {
                        eprintln!("admin: cannot listen on {}: {e}", a.listen);
                        return ExitCode::FAILURE;
                    }
                },
            },
            None => None,
        };
        // Kept to hand the admin listener over in a later upgrade.
        let admin_handoff = match &admin {
            Some((l, _)) => match (l.as_fd().try_clone_to_owned(), l.local_addr()) {
                (Ok(fd), Ok(local)) => cfg.admin.as_ref().map(|a| {
                    let info = SocketInfo {
                        kind: upgrade::Kind::Admin,
                        name: "admin".into(),
                        listen: a.listen,
                        local,
                    };
                    (info, fd)
                }),
                _ => None,
            },
            None => None,
        };
        // systemd: watchdog pings from now on, READY=1 once App::start has returned (listeners
        // accepting, first health round done). All of it is a no-op without NOTIFY_SOCKET.
        let notifier = Notifier::from_env();
        let stop_watchdog = tokio_util::sync::CancellationToken::new();
        let watchdog = notifier.spawn_watchdog(stop_watchdog.clone());
        let app = match App::start_with(cfg, &mut inherited).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        inherited.close_unused();
        // READY=1 carries MAINPID: after an upgrade systemd follows this process from here on.
        notifier.ready(&serving(&app));
        // Our own control socket, for the next upgrade. A successor replaces its
        // predecessor's socket file before saying "ready", so the predecessor, which removes
        // the file when it stops only if it is still its own, leaves ours alone.
        let control = match Control::bind(&upgrade.socket, upgrade.from.is_some()) {
            Ok(c) => {
                info!(path = %upgrade.socket.display(), "upgrade socket listening");
                Some(c)
            }
            Err(e) => {
                warn!(path = %upgrade.socket.display(), error = %e,
                      "cannot listen on the upgrade socket; binary upgrades without refused connections are off");
                None
            }
        };
        if let Some(stream) = predecessor {
            match upgrade::ready(stream).await {
                Ok(()) => info!("upgrade: serving; the old process stops accepting and drains"),
                Err(e) => {
                    warn!(error = %e, "upgrade: cannot tell the old process we serve; both serve until it stops")
                }
            }
        }
        // The new process taking over, between the handoff and its "ready".
        let mut successor: Option<tokio::net::UnixStream> = None;
        let mut upgraded = false;
        let mut app = app;
        let (commands_tx, mut commands) = tokio::sync::mpsc::channel(8);
        let stop_admin = tokio_util::sync::CancellationToken::new();
        if let Some((listener, token_file)) = admin {
            tokio::spawn(admin::serve(
                listener,
                app.view(),
                commands_tx,
                admin::Options { token_file },
                stop_admin.clone(),
            ));
        } else {
            drop(commands_tx);
        }
        let mut signals = signals;
        let mut watcher = if watch {
            match ConfigWatcher::new(path, WATCH_DEBOUNCE) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(error = %e, "not watching the config file; reload with SIGHUP");
                    None
                }
            }
        } else {
            None
        };
        loop {
            let upgrade_request = async {
                match &control {
                    Some(c) => c.accept().await,
                    None => std::future::pending().await,
                }
            };
            let successor_ready = async {
                match successor.as_mut() {
                    Some(s) => upgrade::wait_ready(s).await,
                    None => std::future::pending().await,
                }
            };
            let changed = async {
                match watcher.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = signals.next() => match request {
                    Request::Stop => break,
                    Request::Upgrade if control.is_none() => {
                        warn!("no upgrade socket: cannot hand over to a new process");
                    }
                    Request::Upgrade if successor.is_some() => {
                        warn!("upgrade: another upgrade is in progress; request refused");
                    }
                    // The new process connects to the control socket like one started by hand.
                    Request::Upgrade => upgrade::start_successor(&upgrade.socket),
                    // A rejected reload is logged (with every problem) by the app; the running
                    // config keeps serving.
                    Request::Reload => {
                        let _ = reload(&mut app, path, &notifier).await;
                    }
                },
                Some(command) = commands.recv() => match command {
                    admin::Command::Reload { reply } => {
                        let result = reload(&mut app, path, &notifier).await;
                        let _ = reply.send(admin::ReloadOutcome::of(&result));
                    }
                },
                // Served by this loop like signals and reloads: a handoff requested during a
                // reload waits for it to finish, and hands over the listeners it left.
                accepted = upgrade_request => match accepted {
                    Ok(_) if successor.is_some() => {
                        warn!("upgrade: another upgrade is in progress; request refused");
                    }
                    Ok(mut stream) => {
                        let mut sockets = app.handoff_sockets();
                        if let Some((info, fd)) = &admin_handoff {
                            sockets.push((info.clone(), fd.as_fd()));
                        }
                        match upgrade::hand_over(&mut stream, &sockets).await {
                            Ok(()) => {
                                info!(sockets = sockets.len(), "upgrade: listening sockets handed over; waiting for the new process");
                                drop(sockets);
                                successor = Some(stream);
                            }
                            Err(e) => warn!(error = %e, "upgrade: handoff failed; still serving"),
                        }
                    }
                    Err(e) => warn!(error = %e, "upgrade: cannot accept on the upgrade socket"),
                },
                ready = successor_ready => {
                    if ready {
                        info!("upgrade: new process serving; stopping accepting and draining");
                        upgraded = true;
                        break;
                    }
                    warn!("upgrade: new process stopped before it was ready; still serving");
                    successor = None;
                }
                change = changed => match change {
                    Some(()) => {
                        info!(config = %path.display(), "config file changed: reloading");
                        let _ = reload(&mut app, path, &notifier).await;
                    }
                    None => {
                        warn!("config file watcher stopped; reload with SIGHUP");
                        watcher = None;
                    }
                },
            }
        }
        // After an upgrade the socket file belongs to the new process: close() leaves it.
        if let Some(c) = control {
            c.close();
        }
        // After an upgrade systemd follows the new process: STOPPING=1 would stop the unit.
        if !upgraded {
            notifier.stopping();
        }
        stop_admin.cancel();
        let report = app.shutdown(grace).await;
        stop_watchdog.cancel();
        if let Some(task) = watchdog {
            let _ = task.await;
        }
        info!(forced = report.forced, "stopped");
        ExitCode::SUCCESS
    })
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
/// Reloads the config file, telling systemd around it. A rejected reload is logged (with every
/// problem) by the app; the running config keeps serving.
async fn reload(
    app: &mut App,
    path: &std::path::Path,
    notifier: &Notifier,
) -> Result<ReloadReport, ReloadError> {
    notifier.reloading();
    let result = app.reload_file(path).await;
    notifier.ready(&after_reload(app, result.is_ok()));
    result
}

fn after_reload(app: &App, applied: bool) -> String {
    if applied {
        serving(app)
    } else {
        format!("reload rejected (see the log); {}", serving(app))
    }
}

/// The admin listener inherited from the process being upgraded.
fn adopt_admin(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    with_runtime(None, move |signals| async move {
        match tandem::demo::run(listen, admin, signals).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
