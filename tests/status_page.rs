//! The HTML status page rendered by a real headless browser (Debian's chromium): the page's
//! script fetches `/status` and draws services, pools and members. Ignored by default, since it
//! needs chromium; `cargo test -- --include-ignored` runs it (CI does, after `.ci/run` installs
//! chromium) and fails, saying so, where chromium is missing.

mod common;

use std::time::Duration;

use common::*;
use tandem::admin;
use tandem::failover::Side;
use tandem::health::state::Verdict;

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

#[tokio::test]
#[ignore = "needs chromium (CI runs it: cargo test -- --include-ignored)"]
async fn status_page_renders_services_and_members_in_a_browser() {
    assert!(
        which("chromium").is_some(),
        "this machine lacks chromium (apt-get install chromium), which renders the status page"
    );
    let mut ms = members("m", 130, 3).await;
    let toml = pool_toml("frontends", &ms)
        + &fast_tcp_check(1, 1)
        + &service_toml("fe-sip", "frontends", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    ms[2].stop();
    wait_health(
        &mut events,
        ms[2].addr(),
        tandem::health::state::Verdict::Down,
        Duration::from_secs(10),
    )
    .await;

    let api = AdminApi::start(app.view(), admin::Options::default()).await;
    let (admin_addr, stop) = (api.addr, api.stop.clone());

    let profile = tempfile::tempdir().expect("profile dir");
    let out = tokio::process::Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("http://{admin_addr}/"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("fe-sip"),
        "service missing from the rendered page:\n{dom}"
    );
    for m in &ms {
        assert!(
            dom.contains(&m.addr().to_string()),
            "member {} missing:\n{dom}",
            m.addr()
        );
    }
    assert!(
        dom.contains(r#"<span class="pill down">down</span>"#),
        "down member not shown as down:\n{dom}"
    );
    assert!(
        dom.contains(r#"<span class="pill up">up</span>"#),
        "up members not shown as up:\n{dom}"
    );
    assert!(dom.contains("2 of 3 healthy"), "{dom}");
    stop.cancel();
}

/// Where the screenshot of the charts is kept, for a person (or CI's artifact upload) to look at.
fn artifact(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("artifacts").join(name)
}

/// One GET to the admin API, parsed as JSON.
async fn get_json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin connects");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {raw}"))
}

/// Runs chromium on `url` with `args`; its stdout.
async fn chromium(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = tokio::process::Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the history holds `n` samples taken after the newest one now, so a phase of the
/// drill shows on the charts for that long.
async fn wait_samples(admin: std::net::SocketAddr, n: usize) {
    let times = |h: serde_json::Value| -> Vec<u64> {
        h["t"]
            .as_array()
            .map(|t| t.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default()
    };
    let newest = times(get_json(admin, "/history").await)
        .last()
        .copied()
        .unwrap_or(0);
    eventually(
        &format!("{n} more samples"),
        Duration::from_secs(30),
        || async {
            let t = times(get_json(admin, "/history").await);
            t.iter().filter(|&&x| x > newest).count() >= n
        },
    )
    .await;
}

/// The `(state, from)` of every band the page drew for `member`, in document order.
fn bands_in_dom(dom: &str, member: &str) -> Vec<(String, u64)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    dom.split("<rect")
        .skip(1)
        .filter_map(|r| r.split('>').next())
        .filter(|tag| {
            tag.contains(" data-band=") && attr(tag, "data-member").as_deref() == Some(member)
        })
        .filter_map(|tag| {
            Some((
                attr(tag, "data-state")?,
                attr(tag, "data-from")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The charts after a drill: a real member killed (its pool falls below `min_healthy`, so the
/// service fails over) and revived (the service fails back). The page's health timeline shows
/// the member up, down, then up again, with the failover and failback marked; the PNG is kept
/// at `target/artifacts/status-page.png` (printed) for a person to look at.
#[tokio::test]
#[ignore = "needs chromium (CI runs it: cargo test -- --include-ignored)"]
async fn status_page_charts_a_member_down_and_back_with_the_failover_marked() {
    assert!(
        which("chromium").is_some(),
        "this machine lacks chromium (apt-get install chromium), which renders the status page"
    );
    let mut ms = members("fe", 140, 3).await;
    let backup = members("dr", 150, 2).await;
    let toml = pool_toml("fe-dc1", &ms)
        + &fast_tcp_check(1, 1)
        + &pool_toml("fe-dc2", &backup)
        + &fast_tcp_check(1, 1)
        + &service_toml(
            "fe-sip",
            "fe-dc1",
            "backup_pool = \"fe-dc2\"\nmin_healthy = 3\nfailback_after = \"1s\"",
        );
    let app = balancer(&toml).await;
    let service = app.view().services()[0].local_addr;
    let mut events = app.events();

    // Samples every 150 ms, so the 180 kept cover the last 27 s: the whole drill, whose three
    // phases last 20 samples (3 s) each, and the browser runs after it.
    let options = admin::Options {
        history_interval: Duration::from_millis(150),
        ..admin::Options::default()
    };
    let api = AdminApi::start(app.view(), options).await;
    let (admin_addr, stop, server) = (api.addr, api.stop.clone(), api.task);
    // Answering means the server runs, and its sampler has subscribed to the events.
    get_json(admin_addr, "/history").await;

    // Traffic before the drill: clients that stay connected (active per member) and some that
    // come and go (connections per second).
    let mut held = Vec::new();
    for i in 0..9 {
        held.push(
            connect_from(client_ip(4000 + i), service)
                .await
                .expect("connects"),
        );
    }
    placement(40, service).await;
    eventually(
        "a sample shows the held connections",
        Duration::from_secs(10),
        || async {
            let h = get_json(admin_addr, "/history").await;
            h["services"][0]["active"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(serde_json::Value::as_u64)
                == Some(9)
        },
    )
    .await;
    wait_samples(admin_addr, 20).await;

    let victim = ms[2].addr();
    ms[2].kill().await;
    let down = health_event(&mut events, victim, Verdict::Down, Duration::from_secs(10)).await;
    failover_event(&mut events, "fe-sip", Side::Backup, Duration::from_secs(10)).await;
    // The backup pool serves while the member is down.
    let mut backup_held = Vec::new();
    for i in 0..4 {
        backup_held.push(
            connect_from(client_ip(4100 + i), service)
                .await
                .expect("connects"),
        );
    }
    placement(40, service).await;
    wait_samples(admin_addr, 20).await;
    ms[2].restart().await.expect("member restarts");
    health_event(&mut events, victim, Verdict::Up, Duration::from_secs(10)).await;
    failover_event(&mut events, "fe-sip", Side::Local, Duration::from_secs(10)).await;
    drop(backup_held);
    placement(20, service).await;
    wait_samples(admin_addr, 20).await;

    let url = format!("http://{admin_addr}/");
    let dom = chromium(&["--dump-dom".to_string()], &url).await;
    let bands = bands_in_dom(&dom, &victim.to_string());
    let states: Vec<&str> = bands.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        states.ends_with(&["up", "down", "up"]),
        "the timeline of {victim} is not up, down, up: {bands:?}\n{dom}"
    );
    // The down band starts at the health event itself.
    let down_ms = down
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let drawn = bands[bands.len() - 2].1;
    assert!(
        drawn.abs_diff(down_ms) <= 50,
        "down band at {drawn}, event at {down_ms}"
    );
    for other in &ms[..2] {
        let states: Vec<String> = bands_in_dom(&dom, &other.addr().to_string())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            states.last().map(String::as_str),
            Some("up"),
            "{}: {states:?}",
            other.addr()
        );
        assert!(
            !states.iter().any(|s| s == "down"),
            "{}: {states:?}",
            other.addr()
        );
    }
    for kind in ["failover", "failback"] {
        assert!(
            dom.contains(&format!(r#"data-mark="{kind}" data-service="fe-sip""#)),
            "no {kind} mark:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"data-chart="rate" data-service="fe-sip""#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"data-chart="active" data-pool="fe-dc1""#),
        "{dom}"
    );

    let png = artifact("status-page.png");
    std::fs::create_dir_all(png.parent().expect("parent")).expect("artifact dir");
    let _ = std::fs::remove_file(&png);
    chromium(
        &[
            "--hide-scrollbars".to_string(),
            "--window-size=1280,1500".to_string(),
            format!("--screenshot={}", png.display()),
        ],
        &url,
    )
    .await;
    let bytes =
        std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        png.display()
    );
    println!("status page screenshot: {}", png.display());

    drop(held);
    stop.cancel();
    server.await.expect("admin server and its sampler stop");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
