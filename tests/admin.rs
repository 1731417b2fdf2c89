//! The admin API of the real binary after a scripted sequence: connections, a member down, a
//! failover, reloads (with and without the token, and a broken one): `/metrics` (checked by
//! promtool when it is installed), `/status`, `/events` in order, and hostile requests.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use process::Tandem;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One HTTP/1.1 request; returns the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connects");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Opens `/events` and returns once the stream is open (its first comment has arrived, so the
/// server has subscribed); events then arrive on the channel as (event, data).
async fn sse(addr: SocketAddr) -> mpsc::UnboundedReceiver<(String, Value)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut lines = BufReader::new(s).lines();
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(": tandem events") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(opened, Ok(true), "the event stream did not open");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut event = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((event.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten()
        .expect("an event within 10 s")
}

fn config(local: &[DemoMember], backup: &[DemoMember], token: &Path, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token.display()
    ) + &pool_toml("dc1", local)
        + &fast_tcp_check(1, 1)
        + &pool_toml("dc2", backup)
        + &fast_tcp_check(1, 1)
        + &service_toml(
            "fe",
            "dc1",
            &format!("backup_pool = \"dc2\"\nmin_healthy = 2\n{extra}"),
        )
}

/// The value of the sample `name{labels}` in an exposition (labels as rendered, sorted as given).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn admin_api_after_a_scripted_sequence() {
    let mut local = members("local", 120, 3).await;
    let backup = members("backup", 123, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config(&local, &backup, &token, "")).expect("write");

    let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
    let service = tandem.addr_of("listening").await;
    let admin = tandem.addr_of("admin API listening").await;
    assert_eq!(
        http(admin, "GET", "/healthz", "").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        http(admin, "GET", "/readyz", "").await,
        (200, "ready\n".to_string())
    );
    let mut events = sse(admin).await;

    for i in 0..10 {
        who_serves(client_ip(800 + i), service)
            .await
            .expect("served");
    }
    local[0].stop();
    let (kind, e) = next_event(&mut events).await;
    assert_eq!(
        (kind.as_str(), e["to"].as_str()),
        ("health", Some("down")),
        "{e}"
    );
    assert_eq!(e["member"], local[0].addr().to_string());
    // Two of three down: below min_healthy = 2, the service fails over.
    local[1].stop();
    let (kind, e) = next_event(&mut events).await;
    assert_eq!(
        (kind.as_str(), e["member"].as_str()),
        ("health", Some(&*local[1].addr().to_string()))
    );
    let (kind, e) = next_event(&mut events).await;
    assert_eq!(kind, "failover", "{e}");
    assert_eq!(
        (e["kind"].as_str(), e["to"].as_str()),
        (Some("failover"), Some("backup"))
    );

    // Reloads: refused without or with a wrong token (nothing changes), applied with it,
    // rejected with a broken file.
    std::fs::write(
        &path,
        config(&local, &backup, &token, "idle_timeout = \"900s\""),
    )
    .expect("write");
    assert_eq!(http(admin, "POST", "/reload", "").await.0, 401);
    assert_eq!(
        http(admin, "POST", "/reload", "Authorization: Bearer nope\r\n")
            .await
            .0,
        401
    );
    let (_, status) = http(admin, "GET", "/status", "").await;
    let status: Value = serde_json::from_str(&status).expect("json");
    assert_eq!(
        status["generation"], 1,
        "a refused reload changed something"
    );
    let (code, body) = http(admin, "POST", "/reload", "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(code, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (body["applied"].as_bool(), body["generation"].as_u64()),
        (Some(true), Some(2))
    );
    assert!(
        body["change"]
            .as_str()
            .unwrap_or_default()
            .contains("idle_timeout"),
        "{body}"
    );
    let (kind, e) = next_event(&mut events).await;
    assert_eq!(
        (kind.as_str(), e["applied"].as_bool()),
        ("reload", Some(true)),
        "{e}"
    );
    std::fs::write(
        &path,
        config(&local, &backup, &token, "idle_timeout = \"soon\""),
    )
    .expect("write");
    let (code, body) = http(admin, "POST", "/reload", "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("tandem.toml:")
            && body.contains("idle_timeout \\\"soon\\\" is not a duration"),
        "{body}"
    );
    let (kind, e) = next_event(&mut events).await;
    assert_eq!(
        (kind.as_str(), e["applied"].as_bool()),
        ("reload", Some(false)),
        "{e}"
    );

    // /status reflects all of it.
    let (code, status) = http(admin, "GET", "/status", "").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["generation"], 2);
    assert_eq!(
        (
            status["reloads"]["applied"].as_u64(),
            status["reloads"]["rejected"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let fe = &status["services"][0];
    assert_eq!(
        (fe["name"].as_str(), fe["active_pool"].as_str()),
        (Some("fe"), Some("dc2"))
    );
    assert_eq!(fe["failover"]["side"], "backup");
    assert_eq!(fe["failover"]["local_healthy"], 1);
    assert!(fe["connections"]["accepted"].as_u64() >= Some(10));
    let dc1 = status["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "dc1"))
        .expect("dc1");
    let health: Vec<&str> = dc1["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["health"].as_str())
        .collect();
    assert_eq!(health, vec!["down", "down", "up"]);
    assert!(
        dc1["members"][0]["checks"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{dc1}"
    );
    // Six first-round verdicts, two members down, the failover, two reloads: in order.
    let kinds: Vec<&str> = status["recent_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "health", "health", "health", "health", "health", "health", "health", "health",
            "failover", "reload", "reload"
        ],
        "{}",
        status["recent_events"]
    );

    // /metrics holds the families with the right values.
    let (code, metrics) = http(admin, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let expect = [
        ("tandem_config_generation", 2.0),
        ("tandem_reloads_total{result=\"applied\"}", 1.0),
        ("tandem_reloads_total{result=\"rejected\"}", 1.0),
        ("tandem_active_pool{service=\"fe\",pool=\"dc2\"}", 1.0),
        ("tandem_active_pool{service=\"fe\",pool=\"dc1\"}", 0.0),
        ("tandem_failovers_total{service=\"fe\"}", 1.0),
        ("tandem_failbacks_total{service=\"fe\"}", 0.0),
        ("tandem_build_info{version=\"0.1.0\"}", 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in\n{metrics}"
        );
    }
    let m1 = format!(
        "tandem_member_up{{pool=\"dc1\",member=\"{}\"}}",
        local[0].addr()
    );
    assert_eq!(sample(&metrics, &m1), Some(0.0), "{metrics}");
    assert!(sample(&metrics, "tandem_connections_total{service=\"fe\"}") >= Some(10.0));
    for family in [
        "tandem_connections_active",
        "tandem_connections_rejected_total",
        "tandem_connect_failures_total",
        "tandem_connect_retries_total",
        "tandem_bytes_total",
        "tandem_member_connections_total",
        "tandem_member_bytes_total",
        "tandem_check_results_total",
        "tandem_check_duration_seconds_bucket",
        "tandem_last_reload_success_timestamp_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }
    promtool_check(&metrics);

    // Hostile requests: never a crash, and the API keeps answering.
    assert_eq!(http(admin, "GET", "/nope", "").await.0, 404);
    assert_eq!(http(admin, "DELETE", "/status", "").await.0, 405);
    assert_eq!(http(admin, "GET", "/reload", "").await.0, 405);
    assert_eq!(
        http(admin, "POST", "/reload", "Content-Length: 999999999\r\n")
            .await
            .0,
        413
    );
    let huge = format!("X-Junk: {}\r\n", "a".repeat(64 * 1024));
    let mut s = TcpStream::connect(admin).await.expect("connect");
    let _ = s
        .write_all(format!("GET /status HTTP/1.1\r\nHost: t\r\n{huge}\r\n").as_bytes())
        .await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let answer = String::from_utf8_lossy(&raw);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    let mut garbage = TcpStream::connect(admin).await.expect("connect");
    let _ = garbage
        .write_all(b"\x00\xff\r\n\r\nnot http at all\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let _ = garbage.read_to_end(&mut raw).await;
    // A client that sends half a request and stalls does not hold up anyone else.
    let mut slow = TcpStream::connect(admin).await.expect("connect");
    slow.write_all(b"GET /status HTTP/1.1\r\nHost:")
        .await
        .expect("write");
    assert_eq!(http(admin, "GET", "/healthz", "").await.0, 200);
    drop(slow);
    // And the data path never noticed.
    assert!(
        who_serves(client_ip(900), service)
            .await
            .expect("served")
            .starts_with("backup")
    );
}

/// Runs `promtool check metrics` on the exposition when promtool is installed (CI installs it).
fn promtool_check(metrics: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed, but CI must check the exposition with it"
        );
        eprintln!("skipped promtool check: promtool not installed (apt-get install prometheus)");
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(metrics.as_bytes())
            .expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
