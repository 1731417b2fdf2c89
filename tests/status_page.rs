//! The HTML status page rendered by a real headless browser (Debian's chromium): the page's
//! script fetches `/status` and draws services, pools and members. Ignored by default, since it
//! needs chromium; `cargo test -- --include-ignored` runs it (CI does, after `.ci/run` installs
//! chromium) and fails, saying so, where chromium is missing.

mod common;

use std::time::Duration;

use common::*;
use tandem::admin;

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

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = listener.local_addr().expect("addr");
    let (commands, _rx) = tokio::sync::mpsc::channel(1);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(admin::serve(
        listener,
        app.view(),
        commands,
        admin::Options::default(),
        stop.clone(),
    ));

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

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
