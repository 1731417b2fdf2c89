//! The cost of the limits per client address on new connections: connections per second
//! through one `tandem run` child process with two TCP services in front of the same member,
//! one with `max_connections_per_source` and `max_rate_per_source` set (high enough never to
//! refuse) and one with neither, measured in the same run, turn about.
//!
//!   cargo bench --bench source_limits
//!   RUNS=7 SECS=3 CLIENTS=8 SOURCES=4096 cargo bench --bench source_limits
//!   SAME=1 cargo bench --bench source_limits   # both services without limits: the noise floor
//!
//! Each client thread loops: connect from the next of SOURCES loopback addresses (127.20.x.y,
//! so the table of sources sees many sources, as in production, not one), read the member's
//! one-line greeting until the member closes, close. The member closes first, so neither the
//! clients nor tandem's client side collect TIME_WAIT sockets. Runs alternate between the two
//! services (the order flips every round) so load that drifts on a shared machine falls on
//! both; the medians and their ratio are printed. Everything shares the machine's cores:
//! compare the two figures of one run, not figures across machines. `SAME=1` gives both
//! services no limits, which shows how far apart two identical services measure here.
//!
//! Last, the table's own cost: one admission and its release (what a connection pays), timed
//! in this process over 1,000,000 connections from SOURCES sources, set against the time per
//! connection measured above.
//!
//! Last, the table's own cost: one admission and its release (what a connection pays), timed
//! in this process over 1,000,000 connections from SOURCES sources, set against the time per
//! connection measured above.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A member that greets each connection with one line and closes, on a few threads.
fn member(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind member");
    let addr = listener.local_addr().expect("member addr");
    for _ in 0..4 {
        let listener = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(b"member\n");
            }
        });
    }
    addr
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One connection from `from`: connect, read to the end, close. Whether a greeting came.
fn one(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return false;
    };
    if socket.bind(&SocketAddr::new(from, 0).into()).is_err() || socket.connect(&to.into()).is_err()
    {
        return false;
    }
    let mut stream: TcpStream = socket.into();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while let Ok(n) = stream.read(&mut buf[got.min(63)..]) {
        if n == 0 {
            break;
        }
        got += n;
    }
    got > 0
}

/// Completed connections per second to `target` over `secs` with `clients` threads.
fn load(target: SocketAddr, secs: u64, clients: u64, sources: u32) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = c as u32;
                while !stop.load(Ordering::Relaxed) {
                    let n = i % sources;
                    let from =
                        IpAddr::V4(Ipv4Addr::new(127, 20, (n / 250) as u8, (n % 250 + 1) as u8));
                    if one(from, target) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i = i.wrapping_add(clients as u32);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, failed.load(Ordering::Relaxed))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs = env("RUNS", 5);
    let secs = env("SECS", 3);
    let clients = env("CLIENTS", 8);
    let sources = env("SOURCES", 4096).clamp(1, 60_000) as u32;
    let limits = if env("SAME", 0) == 1 {
        ""
    } else {
        "max_connections_per_source = 100000\nmax_rate_per_source = \"1000000/s burst 1000000\"\n"
    };

    let member = member(Ipv4Addr::new(127, 0, 1, 251));
    let plain = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let limited = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(
        &path,
        format!(
            "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member}\" }}]\n\
             [[service]]\nname = \"plain\"\nlisten = \"{plain}\"\npool = \"p\"\n\
             max_connections = 1000000\n\
             [[service]]\nname = \"limited\"\nlisten = \"{limited}\"\npool = \"p\"\n\
             max_connections = 1000000\n{limits}"
        ),
    )
    .expect("write config");
    let _tandem = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["run", "--no-watch", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tandem"),
    );
    let probe = IpAddr::V4(Ipv4Addr::new(127, 20, 255, 1));
    let ready = (0..200).any(|_| {
        let up = one(probe, plain) && one(probe, limited);
        if !up {
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    });
    assert!(ready, "tandem did not serve on {plain} and {limited}");

    println!(
        "new connections/s, {clients} clients from {sources} sources, {runs} runs of {secs} s each, turn about"
    );
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [(plain, false), (limited, true)]
        } else {
            [(limited, true), (plain, false)]
        };
        for (target, limits) in order {
            let (rate, failed) = load(target, secs, clients, sources);
            assert_eq!(
                failed, 0,
                "connections failed (limits refused, or tandem is down)"
            );
            println!(
                "  run {run}: {:<10} {rate:>10.0}/s",
                if limits { "limits" } else { "no limits" }
            );
            if limits { &mut with } else { &mut none }.push(rate);
        }
    }
    let (n, w) = (median(&mut none), median(&mut with));
    println!(
        "median: no limits {n:.0}/s, limits {w:.0}/s, ratio {:.3} (cost {:+.1}%)",
        w / n,
        (1.0 - w / n) * 100.0
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let per_admission = rt.block_on(async {
        let table = Arc::new(tandem::limits::SourceTable::default());
        let limits = tandem::config::SourceLimits {
            max_connections: 100_000,
            rate: tandem::config::Rate::parse("1000000/s burst 1000000").expect("rate"),
            prefix_v6: 64,
        };
        const N: u32 = 1_000_000;
        let started = Instant::now();
        for i in 0..N {
            let n = i % sources;
            let ip = IpAddr::V4(Ipv4Addr::new(127, 20, (n / 250) as u8, (n % 250 + 1) as u8));
            let guard = table.admit(ip, &limits, tokio::time::Instant::now());
            assert!(matches!(guard, Ok(Some(_))));
        }
        started.elapsed() / N
    });
    let per_connection = Duration::from_secs_f64(1.0 / n);
    println!(
        "table: {per_admission:?} per admission and release, {:.2}% of the {per_connection:?} a connection takes",
        per_admission.as_secs_f64() / per_connection.as_secs_f64() * 100.0
    );
}
