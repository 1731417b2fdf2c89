//! The admin API of the real binary. Each test starts its own `tandem run` (two pools, a service
//! that fails over between them, a token for POST) and checks one part: `/healthz` and
//! `/readyz`, `/events` in order, reloads (without, with a wrong and with the token, and a
//! broken file), and, after the whole scripted sequence (connections, two members down, the
//! failover, the reloads), `/status`, `/metrics` (and promtool's verdict on it, a test of its own
//! as it needs promtool) and hostile requests.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// The bearer token the config's `token_file` holds.
const AUTH: &str = "Authorization: Bearer s3cret\r\n";

/// One `tandem run` as every test here starts it: pool `dc1` (3 members, `local`), its backup
/// `dc2` (3, `backup`), service `fe` failing over below 2 healthy local members, fast checks,
/// the admin API with a token, and no file watch (reloads only by request).
struct Scenario {
    /// Killed when the scenario is dropped.
    _tandem: Tandem,
    local: Vec<DemoMember>,
    backup: Vec<DemoMember>,
    service: SocketAddr,
    admin: SocketAddr,
    path: PathBuf,
    token: PathBuf,
    /// Holds the config and token files.
    _dir: tempfile::TempDir,
}

impl Scenario {
    async fn start() -> Scenario {
        let local = members("local", 120, 3).await;
        let backup = members("backup", 123, 3).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "s3cret\n").expect("token");
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, config(&local, &backup, &token, "")).expect("write");
        let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
        let service = tandem.addr_of("listening").await;
        let admin = tandem.addr_of("admin API listening").await;
        Scenario {
            _tandem: tandem,
            local,
            backup,
            service,
            admin,
            path,
            token,
            _dir: dir,
        }
    }

    /// Rewrites the config file with `extra` lines in the service (picked up by a reload).
    fn rewrite(&self, extra: &str) {
        std::fs::write(
            &self.path,
            config(&self.local, &self.backup, &self.token, extra),
        )
        .expect("write");
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, "").await
    }

    /// `GET /status`, parsed.
    async fn status(&self) -> Value {
        let (code, status) = self.get("/status").await;
        assert_eq!(code, 200);
        serde_json::from_str(&status).expect("json")
    }

    /// `/status` once its recent events hold `events` entries. The ring is filled by its own
    /// subscriber task, so an event sent just before a reply (the rejected reload's) can reach
    /// it a moment after the reply: polled, bounded, rather than assumed.
    async fn status_with_events(&self, events: usize) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status = self.status().await;
            let seen = status["recent_events"].as_array().map_or(0, Vec::len);
            if seen >= events || std::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn reload(&self, headers: &str) -> (u16, String) {
        http(self.admin, "POST", "/reload", headers).await
    }

    /// Ten clients served through `fe`.
    async fn serve_clients(&self) {
        for i in 0..10 {
            who_serves(client_ip(800 + i), self.service)
                .await
                .expect("served");
        }
    }

    /// Stops `local[0]`, then `local[1]`: two health events, then `fe` fails over to `dc2`
    /// (below `min_healthy = 2`); `events` must say so in that order.
    async fn fail_over(&mut self, events: &mut mpsc::UnboundedReceiver<(String, Value)>) {
        self.local[0].stop();
        let (kind, e) = next_event(events).await;
        assert_eq!(
            (kind.as_str(), e["to"].as_str()),
            ("health", Some("down")),
            "{e}"
        );
        assert_eq!(e["member"], self.local[0].addr().to_string());
        // Two of three down: below min_healthy = 2, the service fails over.
        self.local[1].stop();
        let (kind, e) = next_event(events).await;
        assert_eq!(
            (kind.as_str(), e["member"].as_str()),
            ("health", Some(&*self.local[1].addr().to_string()))
        );
        let (kind, e) = next_event(events).await;
        assert_eq!(kind, "failover", "{e}");
        assert_eq!(
            (e["kind"].as_str(), e["to"].as_str()),
            (Some("failover"), Some("backup"))
        );
    }

    /// An edited config, reloaded without a token and with a wrong one: refused, nothing changes.
    async fn refused_reloads(&self) {
        self.rewrite("idle_timeout = \"900s\"");
        assert_eq!(self.reload("").await.0, 401);
        assert_eq!(self.reload("Authorization: Bearer nope\r\n").await.0, 401);
        let status = self.status().await;
        assert_eq!(
            status["generation"], 1,
            "a refused reload changed something"
        );
    }

    /// An edited config reloaded with the token: applied as generation 2, the change reported
    /// in the reply and on `events`.
    async fn applied_reload(&self, events: &mut mpsc::UnboundedReceiver<(String, Value)>) {
        self.rewrite("idle_timeout = \"900s\"");
        let (code, body) = self.reload(AUTH).await;
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
        let (kind, e) = next_event(events).await;
        assert_eq!(
            (kind.as_str(), e["applied"].as_bool()),
            ("reload", Some(true)),
            "{e}"
        );
    }

    /// A broken config reloaded with the token: rejected with where and why (422), and
    /// `events` says it was not applied.
    async fn rejected_reload(&self, events: &mut mpsc::UnboundedReceiver<(String, Value)>) {
        self.rewrite("idle_timeout = \"soon\"");
        let (code, body) = self.reload(AUTH).await;
        assert_eq!(code, 422, "{body}");
        assert!(
            body.contains("tandem.toml:")
                && body.contains("idle_timeout \\\"soon\\\" is not a duration"),
            "{body}"
        );
        let (kind, e) = next_event(events).await;
        assert_eq!(
            (kind.as_str(), e["applied"].as_bool()),
            ("reload", Some(false)),
            "{e}"
        );
    }

    /// The whole sequence the `/status` and `/metrics` tests look back on: ten connections, two
    /// members down and the failover, two refused reloads, an applied one and a rejected one.
    async fn scripted(&mut self) {
        let mut events = sse(self.admin).await;
        self.serve_clients().await;
        self.fail_over(&mut events).await;
        self.refused_reloads().await;
        self.applied_reload(&mut events).await;
        self.rejected_reload(&mut events).await;
    }
}

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let s = Scenario::start().await;
    assert_eq!(s.get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(s.get("/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test]
async fn events_stream_health_changes_then_the_failover_in_order() {
    let mut s = Scenario::start().await;
    let mut events = sse(s.admin).await;
    s.fail_over(&mut events).await;
}

#[tokio::test]
async fn reload_without_the_token_or_with_a_wrong_one_is_refused() {
    let s = Scenario::start().await;
    s.refused_reloads().await;
}

#[tokio::test]
async fn reload_with_the_token_applies_and_reports_the_change() {
    let s = Scenario::start().await;
    let mut events = sse(s.admin).await;
    s.applied_reload(&mut events).await;
}

#[tokio::test]
async fn reload_of_a_broken_file_is_rejected_with_where_and_why() {
    let s = Scenario::start().await;
    let mut events = sse(s.admin).await;
    s.rejected_reload(&mut events).await;
}

#[tokio::test]
async fn status_reflects_the_failover_the_reloads_and_member_health() {
    let mut s = Scenario::start().await;
    s.scripted().await;
    // Six first-round verdicts, two members down, the failover, two reloads.
    let status = s.status_with_events(11).await;
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
}

/// `GET /history` after the scripted sequence: the documented shape (README "Status page
/// charts"), the two members that went down with a `down` band starting at their health event's
/// time, and the failover marked on the service.
#[tokio::test]
async fn history_has_its_documented_shape_with_the_bands_and_the_failover() {
    let mut s = Scenario::start().await;
    s.scripted().await;
    let (code, body) = s.get("/history").await;
    assert_eq!(code, 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (
            h["interval_seconds"].as_f64(),
            h["window_seconds"].as_f64(),
            h["samples_max"].as_u64()
        ),
        (Some(5.0), Some(900.0), Some(180))
    );
    let ms = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a time: {v}"));
    let (now, start) = (ms(&h["now"]), ms(&h["start"]));
    assert_eq!(now - start, 900_000);
    let t: Vec<u64> = h["t"].as_array().expect("t").iter().map(ms).collect();
    assert!(!t.is_empty(), "the first sample is taken at start");
    assert!(t.windows(2).all(|w| w[0] < w[1]) && t.iter().all(|&x| x <= now));

    let services = h["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{h}");
    let fe = &services[0];
    assert_eq!(
        (
            fe["name"].as_str(),
            fe["protocol"].as_str(),
            fe["unit"].as_str()
        ),
        (Some("fe"), Some("tcp"), Some("connections"))
    );
    for key in ["per_second", "active"] {
        assert_eq!(fe[key].as_array().map(Vec::len), Some(t.len()), "{key}");
    }
    let marks = fe["failovers"].as_array().expect("failovers");
    assert_eq!(marks.len(), 1, "{fe}");
    assert_eq!(
        (
            marks[0]["kind"].as_str(),
            marks[0]["to"].as_str(),
            marks[0]["pool"].as_str()
        ),
        (Some("failover"), Some("backup"), Some("dc2"))
    );
    assert!((start..=now).contains(&ms(&marks[0]["at"])));
    assert!(!marks[0]["reason"].as_str().unwrap_or_default().is_empty());

    // Members in pool order, then config order; each with gapless bands up to now.
    let status = s.status().await;
    let down_at = |member: &DemoMember| -> u64 {
        let e = status["recent_events"]
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["member"] == member.addr().to_string() && e["to"] == "down")
            .unwrap_or_else(|| panic!("no down event for {}", member.addr()));
        let at = humantime::parse_rfc3339(e["at"].as_str().expect("at")).expect("rfc3339");
        at.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    };
    let members = h["members"].as_array().expect("members");
    let expected: Vec<(String, String)> = s
        .local
        .iter()
        .map(|m| ("dc1".to_string(), m.addr().to_string()))
        .chain(
            s.backup
                .iter()
                .map(|m| ("dc2".to_string(), m.addr().to_string())),
        )
        .collect();
    let listed: Vec<(String, String)> = members
        .iter()
        .map(|m| {
            (
                m["pool"].as_str().unwrap_or_default().to_string(),
                m["member"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["active"].as_array().map(Vec::len), Some(t.len()));
        let bands = m["bands"].as_array().expect("bands");
        let states: Vec<&str> = bands.iter().filter_map(|b| b["state"].as_str()).collect();
        assert!(
            bands.windows(2).all(|w| w[0]["to"] == w[1]["from"]),
            "gapless: {m}"
        );
        assert_eq!(bands.last().map(|b| ms(&b["to"])), Some(now), "{m}");
        if i < 2 {
            assert_eq!(states, ["up", "down"], "{m}");
            assert_eq!(m["state"], "down");
            // The band starts at the transition itself, not at a sample.
            let from = ms(&bands[1]["from"]);
            let event = down_at(&s.local[i]);
            assert!(
                from.abs_diff(event) <= 50,
                "band at {from}, event at {event}"
            );
        } else {
            assert_eq!(states, ["up"], "{m}");
        }
    }
    assert_eq!(http(s.admin, "HEAD", "/history", "").await.0, 200);
    assert_eq!(http(s.admin, "POST", "/history", "").await.0, 405);
}

#[tokio::test]
async fn metrics_hold_every_family_with_the_values_of_the_sequence() {
    let mut s = Scenario::start().await;
    s.scripted().await;
    let (code, metrics) = s.get("/metrics").await;
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
        s.local[0].addr()
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
}

#[tokio::test]
#[ignore = "needs promtool, from Debian's prometheus (CI runs it: cargo test -- --include-ignored)"]
async fn metrics_exposition_passes_promtool() {
    let mut s = Scenario::start().await;
    s.scripted().await;
    let (code, metrics) = s.get("/metrics").await;
    assert_eq!(code, 200);
    promtool_check(&metrics);
}

#[tokio::test]
async fn hostile_requests_are_answered_with_errors_and_nothing_else_notices() {
    let mut s = Scenario::start().await;
    let mut events = sse(s.admin).await;
    s.fail_over(&mut events).await;
    let admin = s.admin;
    // Never a crash, and the API keeps answering.
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
    let mut conn = TcpStream::connect(admin).await.expect("connect");
    let _ = conn
        .write_all(format!("GET /status HTTP/1.1\r\nHost: t\r\n{huge}\r\n").as_bytes())
        .await;
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
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
    // And the data path never noticed (it serves from the backup pool since the failover).
    assert!(
        who_serves(client_ip(900), s.service)
            .await
            .expect("served")
            .starts_with("backup")
    );
}

/// Runs `promtool check metrics` on the exposition; fails, saying so, where promtool is missing.
fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("this machine lacks promtool (apt-get install prometheus): {e}")
        });
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
