//! UDP datagrams per second on loopback, direct to an echo member and through a `tandem run`
//! child process, and the tandem process's memory per 10,000 sessions.
//!
//!   cargo bench --bench udp
//!   SECS=10 CLIENTS=4 WINDOW=16 SIZE=100 SESSIONS=10000 cargo bench --bench udp
//!
//! The echo member is one thread with a blocking socket; each client thread keeps WINDOW
//! datagrams of SIZE bytes in flight on its own connected socket and counts replies, resending
//! the window after 50 ms without one (so a lost datagram costs a pause, not a stall). One
//! "datagram per second" is one request relayed and its reply relayed back. Everything shares
//! the machine's cores: compare the two figures of one run, not figures across machines.
//!
//! Memory: SESSIONS clients on distinct loopback IPs (127.10.x.y) each send one datagram and wait
//! for the reply, then close their socket; the session stays in tandem until its idle timeout
//! (60 s). The figure is the growth of tandem's VmRSS. Each session holds one descriptor in tandem
//! (the bench's clients hold none afterwards), so `ulimit -n` must exceed SESSIONS + a few dozen.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An echo member on `ip`, answering on one thread.
fn echo_member(ip: Ipv4Addr) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).expect("bind member");
    let addr = socket.local_addr().expect("member addr");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Replies per second to CLIENTS clients keeping WINDOW datagrams in flight to `target`.
fn load(target: SocketAddr, secs: u64, clients: u64, window: u64, size: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, total) = (stop.clone(), total.clone());
            std::thread::spawn(move || {
                let ip = Ipv4Addr::new(127, 0, 3, 1 + i as u8);
                let socket = UdpSocket::bind((ip, 0)).expect("bind client");
                socket.connect(target).expect("connect");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let payload = vec![0x5a; size];
                let mut buf = vec![0u8; 65535];
                let mut got = 0u64;
                let refill = |socket: &UdpSocket| {
                    for _ in 0..window {
                        let _ = socket.send(&payload);
                    }
                };
                refill(&socket);
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(_) => {
                            got += 1;
                            let _ = socket.send(&payload);
                        }
                        Err(_) => refill(&socket),
                    }
                }
                total.fetch_add(got, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    total.load(Ordering::Relaxed) as f64 / secs as f64
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    s.local_addr().expect("addr").port()
}

/// Sends from `socket` to `to` until a reply comes (at most `tries` x 200 ms).
fn ask(socket: &UdpSocket, to: SocketAddr, tries: u32) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    for _ in 0..tries {
        let _ = socket.send_to(b"hello", to);
        if socket.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NGINX's stream module proxying UDP to `member` with one worker, when installed.
fn nginx_stream_udp(member: SocketAddr, dir: &std::path::Path) -> Option<(KillOnDrop, SocketAddr)> {
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if !std::path::Path::new(module).exists() {
        return None;
    }
    let port = free_udp_port();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {module};\nworker_processes 1;\ndaemon off;\npid {pid};\n\
             error_log {log} error;\nevents {{ worker_connections 65536; }}\n\
             stream {{ server {{ listen {addr} udp; proxy_pass {member}; proxy_timeout 60s; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            log = dir.join("nginx.log").display(),
        ),
    )
    .ok()?;
    let child = Command::new("nginx")
        .args(["-p"])
        .arg(dir)
        .args(["-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let nginx = KillOnDrop(child);
    let probe = UdpSocket::bind((Ipv4Addr::new(127, 0, 2, 251), 0)).ok()?;
    ask(&probe, addr, 50).then_some((nginx, addr))
}

fn main() {
    let secs = env("SECS", 5);
    let clients = env("CLIENTS", 4);
    let window = env("WINDOW", 16);
    let size = env("SIZE", 100) as usize;
    let sessions = env("SESSIONS", 10_000);

    let member = echo_member(Ipv4Addr::new(127, 0, 1, 250));
    let port = free_udp_port();
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let mut file = std::fs::File::create(&path).expect("config");
    write!(
        file,
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member}\" }}]\n\
         [[service]]\nname = \"u\"\nlisten = \"{listen}\"\nprotocol = \"udp\"\npool = \"p\"\n\
         max_connections = 1000000\n"
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["run", "--no-watch", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tandem");
    let tandem = KillOnDrop(child);
    let pid = tandem.0.id();
    let probe = UdpSocket::bind((Ipv4Addr::new(127, 0, 2, 250), 0)).expect("bind");
    assert!(ask(&probe, listen, 50), "tandem did not answer on {listen}");

    println!(
        "udp echo, {clients} clients x {window} in flight, {size}-byte datagrams, {secs} s each"
    );
    let direct = load(member, secs, clients, window, size);
    println!("  direct         {direct:>10.0} datagrams/s");
    let via = load(listen, secs, clients, window, size);
    println!(
        "  through tandem {via:>10.0} datagrams/s  ({:.0}% of direct)",
        via / direct * 100.0
    );
    match nginx_stream_udp(member, dir.path()) {
        Some((nginx, addr)) => {
            let ngx = load(addr, secs, clients, window, size);
            println!(
                "  through nginx  {ngx:>10.0} datagrams/s  ({:.0}% of direct; tandem/nginx {:.2}x)",
                ngx / direct * 100.0,
                via / ngx
            );
            drop(nginx);
        }
        None => println!("  through nginx  skipped (needs nginx and libnginx-mod-stream)"),
    }

    // Memory: warm up (thread buffers, table shards), then SESSIONS more sessions.
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    let started = Instant::now();
    let mut answered = 0u64;
    for i in 0..sessions {
        let ip = Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250) as u8 + 1);
        let socket = UdpSocket::bind((ip, 0)).expect("bind session client");
        if ask(&socket, listen, 5) {
            answered += 1;
        }
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, fds_after) = (rss_kib(pid), open_fds(pid));
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "memory: {answered}/{sessions} sessions opened in {:.2} s; tandem VmRSS {rss_before} -> {rss_after} KiB \
         (+{grown} KiB, {:.0} bytes/session, {:.1} MiB per 10,000); fds {fds_before} -> {fds_after}",
        took.as_secs_f64(),
        grown as f64 * 1024.0 / sessions.max(1) as f64,
        grown as f64 / 1024.0 * 10_000.0 / sessions.max(1) as f64,
    );
}
