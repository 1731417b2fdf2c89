//! The failover storm: CLIENTS clients hold connections through the local pool, the whole local
//! pool is killed, and every client reconnects at once (after a failed attempt it retries 1 s
//! later, as SIP clients do) until the paired pool serves it. Run against `tandem run` (pool +
//! backup_pool, failover = "auto") and HAProxy (the same servers, the paired ones as `backup`,
//! the same check settings) in the same run, turn about.
//!
//!   benches/storm.sh                          # installs haproxy, pins, prints the table
//!   RUNS=3 CLIENTS=8000 cargo bench --bench storm
//!   TARGETS=tandem CHECK_INTER=1s cargo bench --bench storm
//!
//! Figures per run and target: the time from the kill until 99% and 100% of the clients are
//! connected again through the paired pool (t99, t100), the failed attempts the clients saw
//! (errors), the proxy's CPU time from the kill to t100 (utime + stime of /proc/PID/stat) and
//! its peak RSS (VmHWM, which includes holding the CLIENTS connections before the kill).
//!
//! Processes: this one is the clients (and the orchestrator); each pool is a child process of
//! this binary (`storm member ...`, MEMBERS members on 127.0.2.x and 127.0.3.x), so the local
//! pool dies as a whole with one SIGKILL, sent by this process, which also takes the kill
//! instant. Each member greets a connection with its name ("local-2\n") and then echoes; a
//! client counts as reconnected only when a `backup-` member greeted it and echoed its own
//! 32-byte line intact. Anything else (a `local-` greeting after the kill, a corrupt echo, a
//! connection dropped before the kill, a client not back by DEADLINE) fails the bench loudly.
//!
//! Clients connect from SOURCES loopback addresses (127.0.4.1 up), so no one source runs short
//! of ephemeral ports and source-IP hashing has sources to spread. Descriptors: the proxy holds
//! 2 x CLIENTS (16,000 at the default, under the 20,000 hard limit), each pool process and this
//! one CLIENTS; every process raises its soft RLIMIT_NOFILE to the hard limit.
//!
//! Environment: RUNS (3), CLIENTS (8000), SOURCES (200), MEMBERS (4 per pool), CHECK_INTER
//! ("2s"), FALL (3), RISE (2) — HAProxy's defaults, which tandem shares —, CHECK_TIMEOUT
//! ("1s"), RETRY_MS (1000), ATTEMPT_TIMEOUT_S (10), DEADLINE_S (120), TARGETS ("tandem
//! haproxy"), PIN (1: the proxy runs under `taskset -c 1`; storm.sh pins this process and the
//! members to CPU 0), TANDEM (another tandem binary; default the one cargo built), SHOW_LOG (1:
//! print each proxy's stderr after its storm, to see when it noticed the pool die).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Raises the soft open-files limit to the hard one (20,000 here): a pool process holds one
/// descriptor per client, the clients process one per client plus set-up.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn main() {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("member") {
        member_main(&args[1..]);
    } else {
        bench_main();
    }
}

// ---- members ---------------------------------------------------------------------------------

/// `storm member NAME IP...`: one member per IP (port 0), named NAME-0, NAME-1, ...; prints
/// each bound address on a line, then serves until stdin closes (the parent died) or it is
/// killed.
fn member_main(args: &[String]) {
    let (name, ips) = args.split_first().expect("member NAME IP...");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for (i, ip) in ips.iter().enumerate() {
            let ip: IpAddr = ip.parse().expect("member IP");
            let listener = bind_listener(SocketAddr::new(ip, 0));
            println!("{}", listener.local_addr().expect("member address"));
            let banner: Arc<[u8]> = format!("{name}-{i}\n").into_bytes().into();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(serve(s, banner.clone()));
                        }
                        // Out of descriptors or a connection reset in the queue: go on.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        }
        println!("ready");
        let mut stdin = tokio::io::stdin();
        let mut sink = [0u8; 64];
        while !matches!(stdin.read(&mut sink).await, Ok(0) | Err(_)) {}
    });
}

/// A listener with a backlog as deep as the kernel allows (net.core.somaxconn, 4096 here): the
/// proxies connect a whole pool's share of the clients at once.
fn bind_listener(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind member");
    socket.listen(4096).expect("listen")
}

/// Greets, then echoes until the peer closes. Health probes connect and close at once: their
/// errors are expected and ignored.
async fn serve(mut s: TcpStream, banner: Arc<[u8]>) {
    let _ = s.set_nodelay(true);
    if s.write_all(&banner).await.is_err() {
        return;
    }
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A pool process; killed (SIGKILL) when dropped unless already killed by the storm.
struct Pool {
    child: Child,
    _stdin: ChildStdin,
    addrs: Vec<SocketAddr>,
}

impl Pool {
    fn start(name: &str, third_octet: u8, members: u8) -> Pool {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.arg("member").arg(name);
        for i in 1..=members {
            cmd.arg(Ipv4Addr::new(127, 0, third_octet, i).to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a pool process");
        let stdin = child.stdin.take().expect("pool stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("pool stdout")).lines();
        let mut addrs = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("pool output");
            if line == "ready" {
                break;
            }
            addrs.push(line.parse().expect("pool prints addresses"));
        }
        assert_eq!(addrs.len(), members as usize, "pool {name} did not start");
        Pool {
            child,
            _stdin: stdin,
            addrs,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- proxies ---------------------------------------------------------------------------------

struct Settings {
    clients: usize,
    sources: u8,
    members: u8,
    inter: String,
    fall: u64,
    rise: u64,
    check_timeout: String,
    retry: Duration,
    attempt_timeout: Duration,
    deadline: Duration,
    pin: bool,
    tandem: String,
    show_log: bool,
}

struct Proxy {
    child: Child,
    listen: SocketAddr,
    /// The config and the proxy's stderr (`stderr.log`), shown when the bench fails.
    dir: tempfile::TempDir,
}

impl Proxy {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_proxy(target: &str, s: &Settings, local: &Pool, backup: &Pool) -> Proxy {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut cmd = if s.pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]);
        c
    } else {
        // `env` runs the program in its place, as taskset does, so the pid is the proxy's.
        Command::new("env")
    };
    match target {
        "tandem" => {
            let pool = |name: &str, p: &Pool| {
                let members: Vec<String> = p
                    .addrs
                    .iter()
                    .map(|a| format!("{{ addr = \"{a}\" }}"))
                    .collect();
                format!(
                    "[[pool]]\nname = \"{name}\"\nmembers = [{}]\n  [[pool.check]]\n  kind = \"tcp\"\n  \
                     interval = \"{}\"\n  timeout = \"{}\"\n  rise = {}\n  fall = {}\n",
                    members.join(", "),
                    s.inter,
                    s.check_timeout,
                    s.rise,
                    s.fall
                )
            };
            let config = format!(
                "{}{}[[service]]\nname = \"storm\"\nlisten = \"{listen}\"\npool = \"local\"\n\
                 backup_pool = \"backup\"\nfailover = \"auto\"\nmax_connections = {}\n",
                pool("local", local),
                pool("backup", backup),
                s.clients * 2
            );
            let path = dir.path().join("tandem.toml");
            std::fs::write(&path, config).expect("write tandem.toml");
            cmd.arg(&s.tandem)
                .args(["run", "--workers", "1", "--no-watch", "-c"])
                .arg(&path)
                .env("RUST_LOG", env_str("TANDEM_LOG", "warn"));
        }
        "haproxy" => {
            // maxconn counts client connections; HAProxy derives its descriptor need from it
            // (about 2 x maxconn), which must stay under the 20,000 hard limit. `allbackups`
            // spreads over every backup server as tandem spreads over the backup pool (without
            // it HAProxy sends everything to the first backup). `balance source` is tandem's
            // default hash = "source-ip". retries (3) and no `option redispatch` are HAProxy's
            // defaults, as a new user would run it.
            let maxconn = s.clients + 1000;
            let check = format!("check inter {} fall {} rise {}", s.inter, s.fall, s.rise);
            let mut servers = String::new();
            for (i, a) in local.addrs.iter().enumerate() {
                servers.push_str(&format!("  server l{i} {a} {check}\n"));
            }
            for (i, a) in backup.addrs.iter().enumerate() {
                servers.push_str(&format!("  server b{i} {a} {check} backup\n"));
            }
            let config = format!(
                "global\n  nbthread 1\n  maxconn {maxconn}\ndefaults\n  mode tcp\n  \
                 timeout connect 2s\n  timeout client 1800s\n  timeout server 1800s\n  \
                 timeout check {}\nlisten storm\n  bind {listen}\n  maxconn {maxconn}\n  \
                 balance source\n  option allbackups\n{servers}",
                s.check_timeout
            );
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, config).expect("write haproxy.cfg");
            cmd.args(["haproxy", "-db", "-f"]).arg(&path);
        }
        other => panic!("unknown target {other:?} (TARGETS: tandem haproxy)"),
    }
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("proxy log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start {target}: {e} (is it installed? benches/storm.sh installs haproxy)")
        });
    Proxy { child, listen, dir }
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Peak resident memory (VmHWM) of a process, in MiB. HAProxy runs as one process here
/// (`-db`, no master, `nbthread 1`), so its pid is all of it.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

// ---- clients ---------------------------------------------------------------------------------

/// What one connection attempt can run into that is not the bench's own failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    /// connect() itself failed, and how (refused, reset in the handshake, no address).
    Connect(std::io::ErrorKind),
    /// The proxy accepted, then closed before a member greeted.
    Closed,
    /// The proxy accepted, then reset before a member greeted.
    Reset,
    /// A member greeted, then the connection closed or reset before the echo came back.
    LostAfterGreeting,
    /// No greeting and echo within ATTEMPT_TIMEOUT_S.
    Timeout,
}

enum AttemptError {
    Failed(Failure),
    /// Wrong member, corrupt echo: the bench fails.
    Fatal(String),
}

/// One attempt: connect from `from`, read the greeting (it must name a member of `pool`), send
/// a line naming this client and attempt, read it back intact. The stream and how long the
/// TCP connect to the proxy took (a second or more: the proxy's SYN or accept queue overflowed
/// and the client's kernel sent the SYN again), on success.
async fn attempt(
    from: IpAddr,
    proxy: SocketAddr,
    pool: &str,
    line: &[u8; 32],
) -> Result<(TcpStream, Duration), AttemptError> {
    let started = Instant::now();
    let connect = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(proxy).await
    };
    let mut s = connect
        .await
        .map_err(|e| AttemptError::Failed(Failure::Connect(e.kind())))?;
    let connect_took = started.elapsed();
    let _ = s.set_nodelay(true);
    let lost = |e: std::io::Error| {
        AttemptError::Failed(if e.kind() == std::io::ErrorKind::ConnectionReset {
            Failure::Reset
        } else {
            Failure::Closed
        })
    };
    // The greeting is one short line ("backup-3\n"), read to its newline.
    let mut greeting = Vec::with_capacity(16);
    let mut byte = [0u8; 16];
    while !greeting.ends_with(b"\n") {
        match s.read(&mut byte).await {
            Ok(0) => return Err(AttemptError::Failed(Failure::Closed)),
            Ok(n) => greeting.extend_from_slice(&byte[..n]),
            Err(e) => return Err(lost(e)),
        }
        if greeting.len() > 64 {
            break;
        }
    }
    if !greeting.starts_with(pool.as_bytes()) || !greeting.ends_with(b"\n") {
        return Err(AttemptError::Fatal(format!(
            "expected a {pool} member, greeted by {:?}",
            String::from_utf8_lossy(&greeting)
        )));
    }
    let after = |_| AttemptError::Failed(Failure::LostAfterGreeting);
    s.write_all(line).await.map_err(after)?;
    let mut echo = [0u8; 32];
    s.read_exact(&mut echo).await.map_err(after)?;
    if &echo != line {
        return Err(AttemptError::Fatal(format!(
            "echo corrupted: sent {:?}, got {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&echo)
        )));
    }
    Ok((s, connect_took))
}

fn client_line(id: usize, attempt: u64) -> [u8; 32] {
    let mut line = [b' '; 32];
    let text = format!("client {id:05} attempt {attempt:04}");
    line[..text.len()].copy_from_slice(text.as_bytes());
    line[31] = b'\n';
    line
}

/// Shared between the client tasks and the orchestrator.
struct Shared {
    held: AtomicUsize,
    all_held: Notify,
    killed_at: OnceLock<Instant>,
    attempts: AtomicU64,
}

/// One client after the storm: when it saw its connection drop and when it was served again,
/// both from the kill; the failed attempts in between; the new connection, held to the end.
struct Back {
    dropped: Duration,
    served: Duration,
    failures: Vec<Failure>,
    /// How long the TCP connect of the attempt that succeeded took.
    connect_took: Duration,
    _stream: TcpStream,
}

async fn client(
    id: usize,
    from: IpAddr,
    proxy: SocketAddr,
    s: Arc<Settings>,
    shared: Arc<Shared>,
    opening: Arc<Semaphore>,
) -> Result<Back, String> {
    // Before the storm: hold one connection through the local pool.
    let mut held = {
        let _permit = opening.acquire().await.map_err(|e| e.to_string())?;
        let mut tries = 0;
        loop {
            match attempt(from, proxy, "local-", &client_line(id, 0)).await {
                Ok((s, _)) => break s,
                Err(AttemptError::Fatal(e)) => return Err(format!("client {id}: {e}")),
                // A proxy's queue may overflow while thousands open: a few tries before failing.
                Err(AttemptError::Failed(_)) if tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(AttemptError::Failed(f)) => {
                    return Err(format!(
                        "client {id}: could not connect before the kill: {f:?}"
                    ));
                }
            }
        }
    };
    if shared.held.fetch_add(1, Ordering::AcqRel) + 1 == s.clients {
        shared.all_held.notify_one();
    }
    // The storm: the held connection ends when the local pool dies.
    let mut sink = [0u8; 64];
    let _ = held.read(&mut sink).await;
    let Some(&killed_at) = shared.killed_at.get() else {
        return Err(format!("client {id}: connection dropped before the kill"));
    };
    let dropped = killed_at.elapsed();
    drop(held);
    let mut failures = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let line = client_line(id, n);
        match tokio::time::timeout(s.attempt_timeout, attempt(from, proxy, "backup-", &line)).await
        {
            Ok(Ok((stream, connect_took))) => {
                return Ok(Back {
                    dropped,
                    served: killed_at.elapsed(),
                    failures,
                    connect_took,
                    _stream: stream,
                });
            }
            Ok(Err(AttemptError::Fatal(e))) => return Err(format!("client {id}: {e}")),
            Ok(Err(AttemptError::Failed(f))) => failures.push(f),
            Err(_) => failures.push(Failure::Timeout),
        }
        tokio::time::sleep(s.retry).await;
    }
}

/// The figures of one storm through one proxy.
#[derive(Debug, Clone)]
struct Figures {
    t50: f64,
    t99: f64,
    t100: f64,
    errors: f64,
    attempts: f64,
    cpu: f64,
    rss: f64,
    /// When the last client saw its connection drop (s after the kill).
    last_drop: f64,
    /// Clients whose successful connect took 1 s or more (a SYN sent again after the proxy's
    /// queue overflowed), and clients that needed more than one attempt.
    slow_connects: usize,
    retried: usize,
    by_kind: BTreeMap<String, u64>,
}

fn storm(target: &str, s: &Arc<Settings>) -> Figures {
    let mut local = Pool::start("local", 2, s.members);
    let _backup = Pool::start("backup", 3, s.members);
    let proxy = start_proxy(target, s, &local, &_backup);
    let pid = proxy.child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Ready when a client gets through to the local pool (tandem accepts after its first
        // round of checks).
        let probe = IpAddr::V4(Ipv4Addr::new(127, 0, 4, 254));
        let started = Instant::now();
        while attempt(probe, proxy.listen, "local-", &client_line(99_999, 0))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{target} did not serve on {} within 30 s; its stderr:\n{}",
                proxy.listen,
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shared = Arc::new(Shared {
            held: AtomicUsize::new(0),
            all_held: Notify::new(),
            killed_at: OnceLock::new(),
            attempts: AtomicU64::new(0),
        });
        // 256 opening at a time stays well inside every listen backlog (4096).
        let opening = Arc::new(Semaphore::new(256));
        let tasks: Vec<_> = (0..s.clients)
            .map(|id| {
                let from = IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    4,
                    (id % s.sources as usize) as u8 + 1,
                ));
                tokio::spawn(client(
                    id,
                    from,
                    proxy.listen,
                    s.clone(),
                    shared.clone(),
                    opening.clone(),
                ))
            })
            .collect();
        let all_held = shared.all_held.notified();
        if shared.held.load(Ordering::Acquire) < s.clients
            && tokio::time::timeout(Duration::from_secs(120), all_held)
                .await
                .is_err()
        {
            panic!(
                "{target}: only {} of {} clients connected before the kill; its stderr:\n{}",
                shared.held.load(Ordering::Acquire),
                s.clients,
                proxy.log()
            );
        }
        let cpu_before = cpu_seconds(pid);
        shared.killed_at.set(Instant::now()).expect("one kill");
        // Reaped when `local` drops, after the storm: waiting here would block the clients'
        // thread while the kernel tears down the pool's CLIENTS sockets.
        local.child.kill().expect("kill the local pool");
        let mut backs = Vec::with_capacity(s.clients);
        let mut problems = Vec::new();
        let deadline = tokio::time::sleep(s.deadline);
        tokio::pin!(deadline);
        for task in tasks {
            tokio::select! {
                r = task => match r {
                    Ok(Ok(back)) => backs.push(back),
                    Ok(Err(e)) => problems.push(e),
                    Err(e) => problems.push(e.to_string()),
                },
                _ = &mut deadline => {
                    problems.push(format!("not every client was back within {:?}", s.deadline));
                    break;
                }
            }
        }
        if !problems.is_empty() {
            panic!(
                "{target}: {} of {} clients reconnected through the backup pool; {} problems, \
                 first: {:?}; its stderr:\n{}",
                backs.len(),
                s.clients,
                problems.len(),
                &problems[..problems.len().min(5)],
                proxy.log()
            );
        }
        let cpu = cpu_seconds(pid) - cpu_before;
        if s.show_log {
            println!("--- {target} stderr ---\n{}---", proxy.log());
        }
        let rss = peak_rss_mib(pid);
        let mut served: Vec<f64> = backs.iter().map(|b| b.served.as_secs_f64()).collect();
        served.sort_by(f64::total_cmp);
        let rank =
            |q: f64| served[((q * served.len() as f64).ceil() as usize).clamp(1, served.len()) - 1];
        let mut by_kind = BTreeMap::new();
        for f in backs.iter().flat_map(|b| &b.failures) {
            *by_kind.entry(format!("{f:?}").to_lowercase()).or_insert(0) += 1;
        }
        Figures {
            t50: rank(0.50),
            t99: rank(0.99),
            t100: rank(1.0),
            errors: by_kind.values().sum::<u64>() as f64,
            attempts: shared.attempts.load(Ordering::Relaxed) as f64,
            cpu,
            rss,
            last_drop: backs
                .iter()
                .map(|b| b.dropped.as_secs_f64())
                .fold(0.0, f64::max),
            slow_connects: backs
                .iter()
                .filter(|b| b.connect_took >= Duration::from_millis(900))
                .count(),
            retried: backs.iter().filter(|b| !b.failures.is_empty()).count(),
            by_kind,
        }
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench_main() {
    let s = Arc::new(Settings {
        clients: env_u64("CLIENTS", 8000) as usize,
        sources: env_u64("SOURCES", 200).clamp(1, 250) as u8,
        members: env_u64("MEMBERS", 4).clamp(1, 250) as u8,
        inter: env_str("CHECK_INTER", "2s"),
        fall: env_u64("FALL", 3),
        rise: env_u64("RISE", 2),
        check_timeout: env_str("CHECK_TIMEOUT", "1s"),
        retry: Duration::from_millis(env_u64("RETRY_MS", 1000)),
        attempt_timeout: Duration::from_secs(env_u64("ATTEMPT_TIMEOUT_S", 10)),
        deadline: Duration::from_secs(env_u64("DEADLINE_S", 120)),
        pin: env_u64("PIN", 1) != 0,
        tandem: env_str("TANDEM", env!("CARGO_BIN_EXE_tandem")),
        show_log: env_u64("SHOW_LOG", 0) != 0,
    });
    let runs = env_u64("RUNS", 3).max(1) as usize;
    let targets: Vec<String> = env_str("TARGETS", "tandem haproxy")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    println!(
        "failover storm: {} clients from {} sources, {} + {} members, check inter {} fall {} rise {} \
         timeout {}, retry after {:?}; {runs} runs, targets take turns",
        s.clients,
        s.sources,
        s.members,
        s.members,
        s.inter,
        s.fall,
        s.rise,
        s.check_timeout,
        s.retry
    );
    let mut all: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    for run in 0..runs {
        let mut order = targets.clone();
        if run % 2 == 1 {
            order.reverse();
        }
        for target in &order {
            let f = storm(target, &s);
            println!(
                "  run {run} {target:<8} t50 {:.3} s  t99 {:.3} s  t100 {:.3} s  errors {} {:?}  \
                 attempts {}  last drop seen {:.3} s  clients retried {}  slow connects {}  cpu {:.2} s  \
                 peak rss {:.1} MiB",
                f.t50,
                f.t99,
                f.t100,
                f.errors,
                f.by_kind,
                f.attempts,
                f.last_drop,
                f.retried,
                f.slow_connects,
                f.cpu,
                f.rss
            );
            all.entry(target.clone()).or_default().push(f);
        }
    }
    print_table(&targets, &all, runs);
}

fn print_table(targets: &[String], all: &BTreeMap<String, Vec<Figures>>, runs: usize) {
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick); 7] = [
        ("storm: t50 from kill to served by backup (s)", |f| f.t50),
        ("storm: t99 (s, lower is better)", |f| f.t99),
        ("storm: t100 (s, lower is better)", |f| f.t100),
        ("storm: failed attempts the clients saw", |f| f.errors),
        ("storm: reconnect attempts", |f| f.attempts),
        ("storm: proxy CPU from kill to t100 (s)", |f| f.cpu),
        ("storm: proxy peak RSS (MiB)", |f| f.rss),
    ];
    let ratio = targets.iter().any(|t| t == "tandem") && targets.iter().any(|t| t == "haproxy");
    let mut head: Vec<String> = vec!["workload".into()];
    head.extend(targets.iter().cloned());
    if ratio {
        head.push("tandem/haproxy".into());
    }
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    let mut medians: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (name, pick) in rows {
        let mut line = vec![name.to_string()];
        for t in targets {
            let v: Vec<f64> = all
                .get(t)
                .map(|fs| fs.iter().map(pick).collect())
                .unwrap_or_default();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let m = median(&v);
            medians.insert((name, t.as_str()), m);
            line.push(format!("{m:.2} ({lo:.2}-{hi:.2})"));
        }
        if ratio {
            let (a, b) = (medians[&(name, "tandem")], medians[&(name, "haproxy")]);
            line.push(if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            });
        }
        println!("| {} |", line.join(" | "));
    }
    println!(
        "(medians of {runs} runs with min-max in brackets; targets take turns within each run)"
    );
    if ratio {
        let t99 = "storm: t99 (s, lower is better)";
        let errors = "storm: failed attempts the clients saw";
        let met = medians[&(t99, "tandem")] <= medians[&(t99, "haproxy")]
            && medians[&(errors, "tandem")] <= medians[&(errors, "haproxy")];
        println!(
            "target (tandem's t99 and errors no worse than HAProxy's): {}",
            if met { "met" } else { "NOT met" }
        );
    }
}
