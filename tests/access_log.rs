//! The access log over real sockets: one line per connection and per UDP session, for every
//! outcome tandem decides, in both formats; progress lines; reload; a stalled sink; and, with
//! the real binary, SIGUSR1 reopening the file after a rename.
//!
//! Lines are read from a FIFO the test holds open: each line is an event to await, so no test
//! polls a file or sleeps (except the SIGUSR1 test, which needs a regular file to rename).

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use socket2::SockRef;
use tandem::app::App;
use tandem::config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::net::{TcpListener, UdpSocket};

use common::*;
use process::Tandem;

/// The read end of a FIFO that tandem logs to.
struct Tap {
    path: PathBuf,
    lines: Lines<BufReader<pipe::Receiver>>,
    _dir: tempfile::TempDir,
}

impl Tap {
    fn new() -> Tap {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        // Read and write: the FIFO then never reads as ended while tandem swaps writers.
        let rx = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .expect("open the FIFO");
        Tap {
            path,
            lines: BufReader::new(rx).lines(),
            _dir: dir,
        }
    }

    /// An `[access_log]` table writing here.
    fn table(&self, extra: &str) -> String {
        format!(
            "[access_log]\npath = \"{}\"\n{extra}\n",
            self.path.display()
        )
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(other) => panic!("the access log FIFO failed: {other:?}"),
            Err(_) => panic!("no access log line within 10 s"),
        }
    }

    async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }
}

async fn start(toml: &str) -> App {
    balancer(toml).await
}

fn addr(v: &Value, key: &str) -> SocketAddr {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address `{key}` in {v}"))
}

#[tokio::test]
async fn a_connection_the_client_ends_gives_one_line_with_every_field() {
    let ms = members("m", 201, 1).await;
    let mut tap = Tap::new();
    let app = start(&(pool_toml("p", &ms) + &service_toml("s", "p", "") + &tap.table(""))).await;
    let front = app.local_addr("s").expect("bound");

    let (greeting, mut client) = greeting_from(client_ip(1), front).await.expect("connects");
    let client_addr = client.local_addr().expect("addr");
    client.write_all(b"hello").await.expect("write");
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).await.expect("echo");
    client.shutdown().await.expect("FIN");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("member's FIN");
    drop(client);

    let v = tap.json().await;
    assert_eq!(v["outcome"], "client_closed", "{v}");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["service"], "s");
    assert_eq!(addr(&v, "client"), client_addr);
    assert_eq!(addr(&v, "frontend"), front);
    assert_eq!(v["pool"], "p");
    assert_eq!(addr(&v, "member"), ms[0].addr());
    let source = addr(&v, "source");
    assert!(source.ip().is_loopback() && source.port() != 0, "{v}");
    assert_eq!(v["bytes_to_member"], 5);
    assert_eq!(v["bytes_to_client"], greeting.len() as u64 + 1 + 5);
    let connect = v["connect_ms"].as_f64().expect("connect_ms");
    let duration = v["duration_ms"].as_f64().expect("duration_ms");
    assert!(connect >= 0.0 && connect <= duration, "{v}");
    let time = v["time"].as_str().expect("time");
    let started = humantime::parse_rfc3339(time).expect("RFC 3339 time");
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .expect("in the past");
    assert!(age < Duration::from_secs(60), "{v}");

    // Exactly one line: the next line is the next connection's.
    let (_, next) = greeting_from(client_ip(2), front).await.expect("connects");
    let next_addr = next.local_addr().expect("addr");
    SockRef::from(&next)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(next);
    let v = tap.json().await;
    assert_eq!(
        addr(&v, "client"),
        next_addr,
        "a second line for one connection: {v}"
    );
    assert_eq!(v["outcome"], "reset");
    assert_eq!(v["reason"], "client");
    // The writer counts a batch once its write returned, which can be just after the reader
    // has the line: wait for the count rather than assume it.
    let view = app.view();
    eventually(
        "both lines counted as written",
        Duration::from_secs(5),
        || {
            let metrics = view.render_metrics();
            async move { metrics.contains("tandem_access_log_lines_total 2") }
        },
    )
    .await;
    let metrics = view.render_metrics();
    assert!(
        metrics.contains("tandem_access_log_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_member_that_closes_first_and_one_that_is_refused() {
    // A member that says goodbye and closes at once.
    let listener = TcpListener::bind("127.0.1.202:0").await.expect("bind");
    let member = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"bye").await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
    });
    // A member address where nothing listens.
    let gone = std::net::TcpListener::bind("127.0.1.203:0").expect("bind");
    let refused = gone.local_addr().expect("addr");
    drop(gone);

    let mut tap = Tap::new();
    let toml = pool_toml_of("closer", [member], "")
        + &pool_toml_of("nobody", [refused], "")
        + &service_toml("closing", "closer", "")
        + &service_toml("refusing", "nobody", "")
        + &tap.table("");
    let app = start(&toml).await;

    let mut c = connect_from(client_ip(3), app.local_addr("closing").expect("bound"))
        .await
        .expect("connects");
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.expect("EOF");
    assert_eq!(got, b"bye");
    drop(c);
    let v = tap.json().await;
    assert_eq!(v["outcome"], "member_closed", "{v}");
    assert_eq!(v["bytes_to_client"], 3);
    assert_eq!(v["bytes_to_member"], 0);

    let mut c = connect_from(client_ip(4), app.local_addr("refusing").expect("bound"))
        .await
        .expect("connects");
    let _ = c.read_to_end(&mut got).await;
    let v = tap.json().await;
    assert_eq!(v["outcome"], "connect_failed", "{v}");
    assert_eq!(v["reason"], "refused");
    assert_eq!(v["service"], "refusing");
    assert_eq!(v["pool"], "nobody");
    assert_eq!(addr(&v, "member"), refused);
    assert_eq!(v["source"], Value::Null);
    assert_eq!(v["connect_ms"], Value::Null);
}

#[tokio::test]
async fn idle_timeout_and_max_connections_are_named() {
    let ms = members("m", 204, 1).await;
    let mut tap = Tap::new();
    let toml = pool_toml("p", &ms)
        + &service_toml("s", "p", "idle_timeout = \"300ms\"\nmax_connections = 1")
        + &tap.table("");
    let app = start(&toml).await;
    let front = app.local_addr("s").expect("bound");

    let (_, mut held) = greeting_from(client_ip(5), front).await.expect("connects");
    // The only permit is taken: the next client is closed at once.
    let mut extra = connect_from(client_ip(6), front).await.expect("accepted");
    let extra_addr = extra.local_addr().expect("addr");
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf).await;
    let v = tap.json().await;
    assert_eq!(v["outcome"], "rejected", "{v}");
    assert_eq!(v["reason"], "max_connections");
    assert_eq!(addr(&v, "client"), extra_addr);
    assert_eq!(addr(&v, "frontend"), front);
    assert_eq!(v["member"], Value::Null);

    // The held connection idles out.
    held.read_to_end(&mut buf).await.expect("closed by tandem");
    let v = tap.json().await;
    assert_eq!(v["outcome"], "idle_timeout", "{v}");
    assert!(v["duration_ms"].as_f64().expect("duration") >= 300.0, "{v}");
}

#[tokio::test]
async fn long_connections_get_progress_lines_before_their_end() {
    let ms = members("m", 205, 1).await;
    let mut tap = Tap::new();
    let toml = pool_toml("p", &ms)
        + &service_toml("s", "p", "")
        + &tap.table("format = \"json\"\ninterval = \"200ms\"");
    let app = start(&toml).await;
    let front = app.local_addr("s").expect("bound");
    let (greeting, mut c) = greeting_from(client_ip(7), front).await.expect("connects");
    c.write_all(b"abc").await.expect("write");
    let mut echo = [0u8; 3];
    c.read_exact(&mut echo).await.expect("echo");

    let first = tap.json().await;
    assert_eq!(first["outcome"], "open", "{first}");
    assert_eq!(first["bytes_to_member"], 3);
    assert_eq!(first["bytes_to_client"], greeting.len() as u64 + 1 + 3);
    assert_eq!(addr(&first, "member"), ms[0].addr());
    let second = tap.json().await;
    assert_eq!(second["outcome"], "open", "{second}");
    let (d1, d2) = (
        first["duration_ms"].as_f64().expect("duration"),
        second["duration_ms"].as_f64().expect("duration"),
    );
    assert!(d1 >= 200.0 && d2 >= d1 + 150.0, "{first}\n{second}");
    assert_eq!(
        first["time"], second["time"],
        "both date the connection's start"
    );

    SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    loop {
        let v = tap.json().await;
        if v["outcome"] != "open" {
            assert_eq!(v["outcome"], "reset", "{v}");
            break;
        }
    }
}

#[tokio::test]
async fn text_lines_are_one_greppable_line_in_the_documented_order() {
    let ms = members("m", 206, 1).await;
    let mut tap = Tap::new();
    let toml = pool_toml("p", &ms) + &service_toml("s", "p", "") + &tap.table("format = \"text\"");
    let app = start(&toml).await;
    let front = app.local_addr("s").expect("bound");
    let (_, c) = greeting_from(client_ip(8), front).await.expect("connects");
    let client_addr = c.local_addr().expect("addr");
    SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    let line = tap.line().await;
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), tandem::access_log::TEXT_FIELDS.len(), "{line}");
    assert!(humantime::parse_rfc3339(f[0]).is_ok(), "{line}");
    assert_eq!(f[1..4], ["tcp", "s", &client_addr.to_string()], "{line}");
    assert_eq!(f[4], front.to_string());
    assert_eq!(f[5], "p");
    assert_eq!(f[6], ms[0].addr().to_string());
    assert!(f[7].parse::<SocketAddr>().is_ok(), "{line}");
    assert_eq!(f[8..10], ["reset", "client"], "{line}");
}

#[tokio::test]
async fn a_udp_session_logs_its_end_at_idle_timeout() {
    let echo = UdpSocket::bind("127.0.1.207:0").await.expect("bind");
    let member = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let mut tap = Tap::new();
    let toml = pool_toml_of("p", [member], "")
        + &service_toml("u", "p", "protocol = \"udp\"\nidle_timeout = \"300ms\"")
        + &tap.table("");
    let app = start(&toml).await;
    let front = app.local_addr("u").expect("bound");
    let client = UdpSocket::bind("127.0.2.9:0").await.expect("bind");
    client.send_to(b"ping", front).await.expect("send");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("a reply")
        .expect("recv");
    assert_eq!(&buf[..n], b"ping");

    let v = tap.json().await;
    assert_eq!(v["protocol"], "udp", "{v}");
    assert_eq!(v["outcome"], "idle_timeout", "{v}");
    assert_eq!(v["service"], "u");
    assert_eq!(addr(&v, "client"), client.local_addr().expect("addr"));
    assert_eq!(addr(&v, "frontend"), front);
    assert_eq!(v["pool"], "p");
    assert_eq!(addr(&v, "member"), member);
    assert!(addr(&v, "source").port() != 0, "{v}");
    assert_eq!(v["bytes_to_member"], 4);
    assert_eq!(v["bytes_to_client"], 4);
    assert_eq!(v["connect_ms"], Value::Null);
    assert!(v["duration_ms"].as_f64().expect("duration") >= 300.0, "{v}");
}

#[tokio::test]
async fn reload_adds_changes_and_removes_the_log() {
    let ms = members("m", 208, 1).await;
    let mut tap = Tap::new();
    let base = pool_toml("p", &ms) + &service_toml("s", "p", "");
    let mut app = start(&base).await;
    let front = app.local_addr("s").expect("bound");
    let parse = |text: &str| config::parse(text, "t.toml").expect("valid");
    let reset_from = |i| async move {
        let (_, c) = greeting_from(client_ip(i), front).await.expect("connects");
        let a = c.local_addr().expect("addr");
        SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(c);
        a
    };

    // No log yet: this connection leaves no line.
    reset_from(10).await;
    app.reload(parse(&(base.clone() + &tap.table(""))))
        .await
        .expect("reload adds the log");
    let a = reset_from(11).await;
    let v = tap.json().await;
    assert_eq!(
        addr(&v, "client"),
        a,
        "the line of the connection before the log: {v}"
    );

    app.reload(parse(&(base.clone() + &tap.table("format = \"text\""))))
        .await
        .expect("reload changes the format");
    let a = reset_from(12).await;
    let line = tap.line().await;
    assert!(line.contains(&format!(" {a} ")), "{line}");
    assert!(!line.starts_with('{'), "{line}");

    app.reload(parse(&base))
        .await
        .expect("reload removes the log");
    reset_from(13).await;
    app.reload(parse(&(base.clone() + &tap.table(""))))
        .await
        .expect("and adds it back");
    let a = reset_from(14).await;
    let v = tap.json().await;
    assert_eq!(
        addr(&v, "client"),
        a,
        "a line written while there was no log: {v}"
    );
}

#[tokio::test]
async fn shutdown_names_the_connections_it_cuts_and_flushes_the_log() {
    let ms = members("m", 209, 1).await;
    let mut tap = Tap::new();
    let app = start(&(pool_toml("p", &ms) + &service_toml("s", "p", "") + &tap.table(""))).await;
    let front = app.local_addr("s").expect("bound");
    let (_, _open) = greeting_from(client_ip(15), front).await.expect("connects");
    let report = app.shutdown(Duration::ZERO).await;
    assert_eq!(report.forced, 1);
    let v = tap.json().await;
    assert_eq!(v["outcome"], "drain_deadline", "{v}");
    assert_eq!(v["reason"], "shutdown");
}

#[tokio::test]
async fn a_fifo_without_a_reader_fails_the_start() {
    let ms = members("m", 210, 1).await;
    let tap = Tap::new();
    let path = tap.path.clone();
    drop(tap);
    let text = pool_toml("p", &ms)
        + &service_toml("s", "p", "")
        + &format!("[access_log]\npath = \"{}\"\n", path.display());
    let cfg = config::parse(&text, "t.toml").expect("valid");
    let Err(e) = App::start(cfg).await else {
        panic!("started with a log nobody reads");
    };
    assert!(e.to_string().starts_with("access log: cannot open"), "{e}");
}

/// With the sink stalled (a FIFO nobody reads), connections go on at full speed: the queue
/// fills, and the lines beyond it are dropped and counted.
#[tokio::test]
async fn a_stalled_sink_drops_and_counts_lines_instead_of_blocking_connections() {
    let ms = members("m", 211, 1).await;
    // Held open and never read.
    let tap = Tap::new();
    let app = start(&(pool_toml("p", &ms) + &service_toml("s", "p", "") + &tap.table(""))).await;
    let front = app.local_addr("s").expect("bound");
    let n = tandem::access_log::QUEUE_CAPACITY as u32 + 1000;
    let started = std::time::Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 32).min(n))
            .map(|c| tokio::spawn(who_serves(client_ip(c % 2000), front)))
            .collect();
        for task in batch {
            task.await
                .expect("task")
                .expect("served while the log is stalled");
        }
        i += 32;
    }
    let took = started.elapsed();
    let metrics = app.view().render_metrics();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let lines = value("tandem_access_log_lines_total");
    let dropped = value("tandem_access_log_dropped_total");
    // Some lines filled the FIFO's buffer (64 KiB); the queue holds QUEUE_CAPACITY.
    assert!(dropped > 0, "nothing dropped: lines {lines}, in {took:?}");
    assert!(
        lines + dropped + tandem::access_log::QUEUE_CAPACITY as u64 + 64 >= u64::from(n),
        "lines {lines} + dropped {dropped} do not account for {n} connections"
    );
    drop(tap);
}

/// `tandem run` with a log file: logrotate renames it and sends SIGUSR1; the next line lands
/// in a new file at the configured path, the renamed one keeps what it had.
#[tokio::test]
async fn sigusr1_reopens_the_file_after_a_rename() {
    let ms = members("m", 212, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let config = dir.path().join("tandem.toml");
    let text = pool_toml("p", &ms)
        + &service_toml("s", "p", "")
        + &format!(
            "[access_log]\npath = \"{}\"\nformat = \"text\"\n",
            log.display()
        );
    std::fs::write(&config, text).expect("write config");
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().expect("utf-8 path");
    let mut tandem = Tandem::spawn(&config, &["--no-watch", "--upgrade-socket", socket]);
    let front = tandem.addr_of("listening").await;

    who_serves(client_ip(20), front).await.expect("served");
    wait_lines(&log, 1).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    tandem.signal("USR1");
    tandem.expect_log("access log reopened").await;
    who_serves(client_ip(21), front).await.expect("served");
    wait_lines(&log, 1).await;
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    let new = std::fs::read_to_string(&log).expect("new file");
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(old.contains(" 127.0.2.21:"), "{old}");
    assert!(new.contains(" 127.0.2.22:"), "{new}");
}

/// Waits until the file at `path` has `n` lines. Polled: a file has no event to await.
async fn wait_lines(path: &Path, n: usize) {
    eventually(
        &format!("{n} line(s) in {}", path.display()),
        Duration::from_secs(10),
        || async { std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() == n) },
    )
    .await;
}
