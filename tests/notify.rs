//! systemd's notify protocol with the real binary and a fake `NOTIFY_SOCKET`: `READY=1` comes
//! only after the first health round (a member that holds its answer holds READY back),
//! `RELOADING=1` with `MONOTONIC_USEC` then `READY=1` around every reload (applied or rejected),
//! `STOPPING=1` on SIGTERM, and `WATCHDOG=1` pings when `WATCHDOG_USEC` is set.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A systemd stand-in: the datagram socket `NOTIFY_SOCKET` points at.
struct FakeSystemd {
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        FakeSystemd {
            socket: UnixDatagram::bind(path).expect("notify socket binds"),
        }
    }

    /// The next datagram within `limit`, as text; `None` when none came.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(limit))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// The next datagram that is not a watchdog ping, within 10 s.
    fn next(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification within 10 s");
            if let Some(m) = self.recv(left)
                && m != "WATCHDOG=1\n"
            {
                return m;
            }
        }
    }
}

/// The value of `KEY=` in a notification, if present.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `tandem run` with `NOTIFY_SOCKET` (and optional extra environment); its log goes to a file
/// beside the config, printed when the test fails.
fn spawn(config: &Path, notify_socket: &Path, env: &[(&str, &str)]) -> Tandem {
    let log_path = config.with_extension("log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["run", "--no-watch", "--shutdown-grace", "2s", "-c"])
        .arg(config)
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tandem starts");
    Tandem { child, log_path }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits at most 10 s for the child to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "tandem did not exit within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running binary; killed when the test ends, its log shown when the test failed.
struct Tandem {
    child: Child,
    log_path: std::path::PathBuf,
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("--- tandem's log\n{log}---");
        }
    }
}

/// A tiny HTTP member on loopback. The first probe's answer is held until the test sends on
/// the returned channel; later probes are answered at once. The first receiver tells when the
/// first request has been read.
fn held_http_member() -> (SocketAddr, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("member binds");
    let addr = listener.local_addr().expect("member addr");
    let (probed_tx, probed_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if read_request(&mut conn).is_err() {
                continue;
            }
            if first {
                first = false;
                let _ = probed_tx.send(());
                // Held until released (or the test is gone).
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, probed_rx, release_tx)
}

/// Reads a request head (up to the blank line).
fn read_request(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            return Ok(());
        }
    }
}

fn config(member: SocketAddr, failover: &str) -> String {
    format!(
        r#"
[[pool]]
name = "web"
members = [{{ addr = "{member}" }}]
  [[pool.check]]
  kind = "http"
  interval = "1s"
  timeout = "10s"

[[service]]
name = "web"
listen = "127.0.0.1:0"
pool = "web"
failover = "{failover}"
"#
    )
}

#[test]
fn ready_after_the_first_health_round_then_reload_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let systemd = FakeSystemd::bind(&dir.path().join("notify.sock"));
    let (member, probed, release) = held_http_member();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config(member, "auto")).expect("write config");

    let mut tandem = spawn(&path, &dir.path().join("notify.sock"), &[]);
    let pid = tandem.child.id().to_string();

    // The first probe reaches the member, which holds its answer: the first round is not over,
    // so systemd must not hear READY yet. Bounded negative check: 500 ms of silence.
    probed
        .recv_timeout(Duration::from_secs(10))
        .expect("the first health probe reaches the member");
    assert_eq!(
        systemd.recv(Duration::from_millis(500)),
        None,
        "systemd heard something before the first health round finished"
    );

    // The member answers: the first round finishes, listeners accept, READY=1.
    release.send(()).expect("release the member");
    let ready = systemd.next();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert_eq!(field(&ready, "MAINPID"), Some(pid.as_str()), "{ready:?}");

    // SIGHUP with a valid edit: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1.
    std::fs::write(&path, config(member, "local")).expect("write config");
    let before = monotonic_usec();
    signal(&tandem.child, "HUP");
    let reloading = systemd.next();
    let after = monotonic_usec();
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let stamp: i128 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        before <= stamp && stamp <= after,
        "MONOTONIC_USEC {stamp} outside [{before}, {after}]"
    );
    let ready = systemd.next();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.starts_with("serving generation 2")),
        "{ready:?}"
    );

    // SIGHUP with a broken file: rejected, and still RELOADING=1 then READY=1 (the old config
    // keeps serving, so the service is ready again).
    std::fs::write(&path, config(member, "sideways")).expect("write config");
    signal(&tandem.child, "HUP");
    let reloading = systemd.next();
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let ready = systemd.next();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.starts_with("reload rejected")),
        "{ready:?}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    signal(&tandem.child, "TERM");
    let stopping = systemd.next();
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let status = wait_exit(&mut tandem.child);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        systemd.recv(Duration::from_millis(100)),
        None,
        "nothing after STOPPING=1"
    );
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("notify.sock");
    let systemd = FakeSystemd::bind(&socket);
    // A pool without checks: its members count as up, so READY comes at once.
    let path = dir.path().join("tandem.toml");
    std::fs::write(
        &path,
        "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.0.1:9\" }]\n\
         [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n",
    )
    .expect("write config");

    // WATCHDOG_USEC = 1 s: a ping every 500 ms.
    let mut tandem = spawn(&path, &socket, &[("WATCHDOG_USEC", "1000000")]);
    // Pings may come before READY=1; the figures start after it, so how long tandem takes to
    // start (long on a loaded machine) is not in them.
    let ready = systemd.next();
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    let mut pings = Vec::new();
    while pings.len() < 7 {
        match systemd.recv(Duration::from_secs(5)) {
            Some(m) if m == "WATCHDOG=1\n" => pings.push(Instant::now()),
            Some(m) => panic!("unexpected notification {m:?}"),
            None => panic!("no watchdog ping within 5 s (after {} pings)", pings.len()),
        }
    }
    // Real time and a real process: a loaded machine delays some pings, or our reading of
    // them, and a late read makes the next gap look short. The median of the six gaps shrugs
    // that off. Firm below: tandem waits a full 500 ms after each ping (a ping can come late,
    // never early), so only late reads can shorten a gap. Loose above: 900 ms still tells half
    // the timeout from the whole of it, leaving 400 ms a ping for a slow machine.
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(400) && median < Duration::from_millis(900),
        "median gap {median:?} between watchdog pings, expected about 500 ms; gaps {gaps:?}"
    );

    signal(&tandem.child, "TERM");
    assert!(wait_exit(&mut tandem.child).success());
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
fn monotonic_usec() -> i128 {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(sd_notify::NotifyState::MonotonicUsec(usec)) => usec,
        other => panic!("cannot read CLOCK_MONOTONIC: {other:?}"),
    }
}
