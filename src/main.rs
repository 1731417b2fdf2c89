//! The `tandem` command: parses arguments, sets up logging, builds the runtime and hands over to
//! the library ([`tandem::server`] for `tandem run`), turning the outcome into an exit code and
//! messages on stderr. The server loop, and the rule that no port is bound before the config has
//! been validated, live in the library.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio::runtime::Runtime;

mod man;

use tandem::admin;
use tandem::config::{self, ConfigError, OperatorState};
use tandem::member;
use tandem::server::{self, ServerError};

/// How long `tandem status` waits for the admin API, connecting included.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `tandem member set` waits for the reload: it binds new listeners and probes new
/// members before it answers.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// `tandem member set`: the file is written, but no running tandem could be told to reload.
const EXIT_NOT_RELOADED: u8 = 3;
/// `tandem member set`: the file is written, but the running tandem rejected the reload.
const EXIT_RELOAD_REJECTED: u8 = 4;

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
        /// Worker threads of the data path, each with its own accept socket (SO_REUSEPORT) on
        /// every service (default: the CPUs this process may run on).
        #[arg(long, env = "TANDEM_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// Where the data path runs: `per-worker` (a single-threaded runtime per worker thread)
        /// or `shared` (one multi-threaded runtime with work stealing; for benchmarks).
        #[arg(long, value_enum, default_value_t = RuntimeModel::PerWorker, hide = true)]
        runtime: RuntimeModel,
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
        #[command(flatten)]
        tls: StatusTls,
    },
    /// Set or list the operator state of pool members (up, drain, maint) in the config file.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
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
    /// Print the completion script of a shell (bash: source it, or install it as
    /// /usr/share/bash-completion/completions/tandem).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the tandem(1) man page (roff); the Debian package ships it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Set a member's state in the config file (comments and layout kept) and have the running
    /// tandem reload it. Exit status 3: written, but no running tandem could be told; 4:
    /// written, but the running tandem rejected the reload.
    Set {
        #[command(flatten)]
        file: ConfigFile,
        /// Pool name.
        pool: String,
        /// Member address as in the config: IP or IP:port ([IPv6]:port). An IP alone also
        /// names a member with a port when it is the only one with that IP.
        addr: String,
        /// up: in service; drain: no new connections, open ones stay; maint: as drain, and no
        /// health checks.
        #[arg(value_enum)]
        state: MemberState,
        /// Admin API to ask for the reload (default: `[admin] listen` of the config file).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Process to send SIGHUP when the admin API cannot be used (must be a tandem).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// List each pool's members with their configured state and, when the admin API answers,
    /// their live health.
    List {
        #[command(flatten)]
        file: ConfigFile,
        /// Admin API to read live health from (default: `[admin] listen` of the config file).
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MemberState {
    Up,
    Drain,
    Maint,
}

impl From<MemberState> for OperatorState {
    fn from(s: MemberState) -> Self {
        match s {
            MemberState::Up => OperatorState::Up,
            MemberState::Drain => OperatorState::Drain,
            MemberState::Maint => OperatorState::Maint,
        }
    }
}

/// `tandem status` over TLS, for an admin API with `tls_cert` (and `client_ca`).
#[derive(clap::Args)]
struct StatusTls {
    /// Talk TLS to the admin API, trusting the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present, for an admin API with `client_ca`.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Name the admin API's certificate must carry (default: the IP address connected to).
    #[arg(long, value_name = "NAME", requires = "ca")]
    server_name: Option<String>,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeModel {
    PerWorker,
    Shared,
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
            runtime,
            upgrade_socket,
            upgrade_from,
        } => {
            let options = server::Options {
                shutdown_grace,
                watch: !no_watch,
                upgrade_socket,
                upgrade_from,
                workers: Some(worker_count(workers)),
                shared_runtime: runtime == RuntimeModel::Shared,
            };
            run(&file.config, options)
        }
        Command::Member { command } => match command {
            MemberCommand::Set {
                file,
                pool,
                addr,
                state,
                admin,
                pid,
            } => member_set(&file.config, &pool, &addr, state.into(), admin, pid),
            MemberCommand::List { file, admin } => member_list(&file.config, admin),
        },
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Status {
            admin,
            file,
            json,
            tls,
        } => status(admin, &file.config, json, &tls),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => match man::render(Cli::command(), &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the man page: {e}");
                ExitCode::FAILURE
            }
        },
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

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            if let Some(warning) = cfg.admin.as_ref().and_then(|a| a.warning()) {
                eprintln!("{}: warning: {warning}", path.display());
            }
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

fn status(admin: Option<SocketAddr>, path: &Path, json: bool, tls: &StatusTls) -> ExitCode {
    // Parsed, not loaded: only `listen` is needed, and loading would read the TLS key, which
    // the user asking for the status usually may not read.
    let admin_config = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| config::parse(&text, &path.display().to_string()).ok())
        .and_then(|c| c.admin);
    let addr = admin
        .or(admin_config.as_ref().map(|a| a.listen))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900)));
    let client_tls = match &tls.ca {
        Some(ca) => {
            let identity = tls.cert.as_deref().zip(tls.key.as_deref());
            let name = tls
                .server_name
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            match admin::client::ClientTls::new(ca, identity, &name) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let serves_tls = admin_config.is_some_and(|a| a.tls.is_some());
    // One request: a runtime on this thread is all it needs.
    block_on(current_thread(), async move {
        match admin::client::fetch_status_with(addr, STATUS_TIMEOUT, client_tls.as_ref()).await {
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
                if serves_tls && client_tls.is_none() {
                    eprintln!(
                        "the config file gives the admin API TLS (tls_cert): pass --ca FILE \
                         (and --cert, --key if it has a client_ca)"
                    );
                }
                ExitCode::FAILURE
            }
        }
    })
}

fn member_set(
    path: &Path,
    pool: &str,
    addr: &str,
    state: OperatorState,
    admin: Option<SocketAddr>,
    pid: Option<u32>,
) -> ExitCode {
    let name = path.display().to_string();
    let edited = member::set_in_file(path, pool, addr, state);
    let edit = match edited {
        Ok(edit) => edit,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if edit.changed() {
        println!(
            "{name}: pool {pool} member {} is now {} (was {})",
            edit.member,
            edit.to.as_str(),
            edit.from.as_str()
        );
    } else {
        println!(
            "{name}: pool {pool} member {} is already {}; file unchanged",
            edit.member,
            edit.to.as_str()
        );
    }
    // Reloaded even when unchanged: the running tandem may not have the file's state yet.
    let target = member::reload::Target::of(&edit.config, admin, pid);
    block_on(current_thread(), async move {
        match member::reload::trigger(&target, RELOAD_TIMEOUT).await {
            Ok(outcome @ member::reload::Outcome::Rejected { .. }) => {
                eprintln!("{outcome}");
                ExitCode::from(EXIT_RELOAD_REJECTED)
            }
            Ok(outcome) => {
                println!("{outcome}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "{name} is written, but {e}.\nA tandem watching the file reloads it by \
                     itself; otherwise run systemctl reload tandem (or send it SIGHUP)."
                );
                ExitCode::from(EXIT_NOT_RELOADED)
            }
        }
    })
}

fn member_list(path: &Path, admin: Option<SocketAddr>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return report(&e),
    };
    let addr = admin.or(cfg.admin.as_ref().map(|a| a.listen));
    // No running tandem is fine: the list then shows the file alone.
    let live = addr.and_then(|addr| match current_thread() {
        Ok(rt) => rt
            .block_on(admin::client::fetch_status(addr, STATUS_TIMEOUT))
            .map_err(|e| eprintln!("{e}; showing the config file only"))
            .ok(),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}; showing the config file only");
            None
        }
    });
    print!("{}", member::list(&cfg, live.as_ref()));
    ExitCode::SUCCESS
}

/// Runs `main` on `runtime` to its exit code.
fn block_on(
    runtime: io::Result<Runtime>,
    main: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match runtime {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--workers`, else one per CPU this process may run on.
fn worker_count(workers: Option<u16>) -> usize {
    // tokio's default is the machine's CPU count; the CPUs we may run on (taskset, cgroups) is
    // what an operator pinning the process means.
    workers
        .map(usize::from)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// The runtime of `tandem demo`: one thread per CPU this process may run on.
fn multi_thread(workers: Option<u16>) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_count(workers))
        .enable_all()
        .build()
}

fn current_thread() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `tandem run`: the control plane (checks, admin API, reloads, BGP) on this thread; the data
/// path on `options.workers` threads of its own (see `tandem::workers`).
fn run(path: &Path, options: server::Options) -> ExitCode {
    let runtime = if options.shared_runtime {
        // Control plane and data path on one work-stealing runtime of `workers` threads.
        multi_thread(options.workers.and_then(|n| u16::try_from(n).ok()))
    } else {
        current_thread()
    };
    block_on(runtime, async move {
        match server::run(path, options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(ServerError::Config(e)) => report(&e),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    block_on(multi_thread(None), async move {
        match tandem::demo::run(listen, admin).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
