//! The operator's drill with the real binary: edit the config file, send SIGHUP, watch new
//! connections move to the paired pool while long-lived ones stream on; a broken edit is
//! rejected with its location and the old config keeps serving; saving the file alone reloads
//! it too; SIGTERM exits 0.

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use common::*;
use process::Tandem;

fn config(local: &[DemoMember], backup: &[DemoMember], failover: &str) -> String {
    pool_toml("dc1", local)
        + &fast_tcp_check(2, 2)
        + &pool_toml("dc2", backup)
        + &fast_tcp_check(2, 2)
        + &service_toml(
            "fe",
            "dc1",
            &format!("backup_pool = \"dc2\"\nfailover = \"{failover}\""),
        )
}

#[tokio::test]
async fn drill_by_editing_the_file_and_sending_sighup() {
    let local = members("local", 110, 3).await;
    let backup = members("backup", 113, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config(&local, &backup, "auto")).expect("write");

    let mut tandem = Tandem::spawn(&path, &["--shutdown-grace", "5s"]);
    let addr = tandem.addr_of("listening").await;

    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(Stream::start(client_ip(700 + i), addr, 50 + u64::from(i)).await);
    }
    assert!(streams.iter().all(|s| s.member.starts_with("local")));
    let load = Load::start(addr, 3500, 100);

    // Drill: pin to the remote pool.
    std::fs::write(&path, config(&local, &backup, "remote")).expect("write");
    tandem.signal("HUP");
    let moved = tandem.expect_log("failover state changed").await;
    assert_eq!(moved["to"], "backup", "{moved}");
    let placed = placement(50, addr).await;
    assert!(
        placed.iter().all(|p| p.starts_with("backup")),
        "{:?}",
        counts(&placed)
    );

    // A broken edit: rejected with its place, the drill config keeps serving.
    std::fs::write(&path, config(&local, &backup, "sideways")).expect("write");
    tandem.signal("HUP");
    let rejected = tandem
        .expect_log("config reload rejected; the running config keeps serving")
        .await;
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tandem.toml:") && error.contains("sideways"),
        "{rejected}"
    );
    assert!(
        who_serves(client_ip(1), addr)
            .await
            .expect("serves")
            .starts_with("backup")
    );

    // Back to auto.
    std::fs::write(&path, config(&local, &backup, "auto")).expect("write");
    tandem.signal("HUP");
    let back = tandem.expect_log("failover state changed").await;
    assert_eq!(back["to"], "local", "{back}");
    let placed = placement(50, addr).await;
    assert!(
        placed.iter().all(|p| p.starts_with("local")),
        "{:?}",
        counts(&placed)
    );

    // No signal at all: saving the file is enough (the file is watched).
    std::fs::write(&path, config(&local, &backup, "remote")).expect("write");
    tandem.expect_log("config file changed: reloading").await;
    let moved = tandem.expect_log("failover state changed").await;
    assert_eq!(moved["to"], "backup", "{moved}");

    let load = load.finish().await;
    assert_eq!(load.failed, 0, "{load:?}");
    for s in streams {
        s.finish()
            .await
            .expect("long-lived stream unharmed by the drill");
    }

    tandem.signal("TERM");
    assert!(tandem.exit(Duration::from_secs(10)).await.success());
}
