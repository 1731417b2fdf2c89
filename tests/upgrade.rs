//! Binary upgrades with the real binary: a second tandem started with `--upgrade-from` takes
//! over the listening sockets of the running one, which stops accepting and drains once the new
//! one serves. Under steady load no new connection is refused or reset and long-lived streams on
//! the old process run on; a new process that fails to start leaves the old one serving; a
//! handoff requested during a reload waits for it.

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use common::*;
use process::Tandem;

/// The drain after the handoff is bounded by this (the streams end long before).
const GRACE: &str = "20s";

fn config(members: &[DemoMember]) -> String {
    pool_toml("dc1", members) + &fast_tcp_check(2, 2) + &service_toml("fe", "dc1", "")
}

/// `tandem run` listening for upgrades on `socket`.
fn old_process(config: &Path, socket: &Path) -> Tandem {
    Tandem::spawn(
        config,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--upgrade-socket",
            socket.to_str().expect("utf-8 path"),
        ],
    )
}

/// `tandem run --upgrade-from socket` (which then listens on `socket` itself).
fn new_process(config: &Path, socket: &Path) -> Tandem {
    Tandem::spawn(
        config,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--upgrade-from",
            socket.to_str().expect("utf-8 path"),
        ],
    )
}

/// Waits (at most `limit`) for `tandem` to exit by itself.
async fn exit_of(mut tandem: Tandem, limit: Duration) -> ExitStatus {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = tandem.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tandem did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("wait task")
}

/// Several clients connecting in a loop from distinct address ranges.
fn loads(addr: std::net::SocketAddr) -> Vec<Load> {
    (0..16)
        .map(|i| Load::start(addr, 4000 + i * 50, 50))
        .collect()
}

async fn finish(loads: Vec<Load>) -> LoadReport {
    let mut total = LoadReport::default();
    for l in loads {
        let r = l.finish().await;
        total.ok += r.ok;
        total.failed += r.failed;
        total.refused += r.refused;
        total.reset += r.reset;
    }
    total
}

/// The new process has taken over: same address, old one draining.
async fn take_over(old: &mut Tandem, new: &mut Tandem, addr: std::net::SocketAddr) {
    assert_eq!(new.addr_of("listening").await, addr, "same socket");
    old.expect_log("upgrade: new process serving; stopping accepting and draining")
        .await;
    new.expect_log("upgrade socket listening").await;
}

#[tokio::test]
async fn upgrade_under_load_refuses_nothing_and_streams_run_on() {
    let members = members("up", 150, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members)).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;

    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(Stream::start(client_ip(900 + i), addr, 70 + u64::from(i)).await);
    }
    let load = loads(addr);

    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    let draining = old.expect_log("draining open connections").await;
    assert!(
        draining["connections"].as_u64().unwrap_or(0) >= 4,
        "{draining}"
    );

    // The streams on the old process run on after it stopped accepting, until we end them.
    for s in streams {
        let bytes = s
            .finish()
            .await
            .expect("stream on the old process unharmed");
        assert!(bytes > 0);
    }
    let status = exit_of(old, Duration::from_secs(10)).await;
    assert!(status.success(), "old process: {status}");

    // Only the new process is left, and it serves everything.
    let placed = placement(100, addr).await;
    assert_eq!(placed.len(), 100);
    let report = finish(load).await;
    eprintln!(
        "upgrade under load: {} connections attempted, {} refused, {} reset, {} failed",
        report.ok + report.failed,
        report.refused,
        report.reset,
        report.failed
    );
    assert!(report.ok > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(exit_of(new, Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn a_new_process_with_a_bad_config_leaves_the_old_one_serving() {
    let members = members("bad", 153, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let broken = dir.path().join("broken.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members)).expect("write");
    std::fs::write(&broken, config(&members) + "hash = \"sideways\"\n").expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let stream = Stream::start(client_ip(950), addr, 80).await;
    let load = loads(addr);

    let failed = new_process(&broken, &socket);
    old.expect_log("upgrade: listening sockets handed over; waiting for the new process")
        .await;
    old.expect_log("upgrade: new process stopped before it was ready; still serving")
        .await;
    let status = exit_of(failed, Duration::from_secs(10)).await;
    assert!(!status.success(), "a bad config fails the new process");
    assert_eq!(placement(50, addr).await.len(), 50, "the old one serves");

    // A later good upgrade still works.
    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    stream.finish().await.expect("stream unharmed");
    assert!(exit_of(old, Duration::from_secs(10)).await.success());
    assert_eq!(placement(50, addr).await.len(), 50, "the new one serves");
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(exit_of(new, Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn an_upgrade_requested_during_a_reload_waits_for_it() {
    let members = members("mid", 156, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, config(&members[..3])).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let stream = Stream::start(client_ip(960), addr, 90).await;
    let load = loads(addr);

    // A reload adding a member (its first probe runs inside the reload), and at once an upgrade.
    std::fs::write(&path, config(&members)).expect("write");
    old.signal("HUP");
    let mut new = new_process(&path, &socket);
    old.expect_log("config reload applied").await;
    old.expect_log("upgrade: listening sockets handed over; waiting for the new process")
        .await;
    take_over(&mut old, &mut new, addr).await;

    stream.finish().await.expect("stream unharmed");
    assert!(exit_of(old, Duration::from_secs(10)).await.success());
    let placed = placement(100, addr).await;
    assert!(placed.iter().any(|m| m == "mid4"), "{:?}", counts(&placed));
    let report = finish(load).await;
    assert_eq!(report.failed, 0, "{report:?}");

    new.signal("TERM");
    assert!(exit_of(new, Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn the_new_process_takes_the_udp_socket() {
    let members = udp_members("u", 159, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    let toml =
        udp_pool_toml("p", &members, &fast_tcp_check(1, 1)) + &udp_service_toml("u", "p", "");
    std::fs::write(&path, toml).expect("write");

    let mut old = old_process(&path, &socket);
    let addr = old.addr_of("listening").await;
    old.expect_log("upgrade socket listening").await;
    let client = udp_client(client_ip(970)).await;
    let before = udp_who(&client, addr).await;

    let mut new = new_process(&path, &socket);
    take_over(&mut old, &mut new, addr).await;
    // UDP sessions end with the old process; it does not wait for them.
    assert!(exit_of(old, Duration::from_secs(10)).await.success());

    // The same client, the same address: the new process answers (a new session, placed by
    // the same hash on the same member).
    assert_eq!(udp_who(&client, addr).await, before);
    let other = udp_client(client_ip(971)).await;
    udp_who(&other, addr).await;

    new.signal("TERM");
    assert!(exit_of(new, Duration::from_secs(10)).await.success());
}
