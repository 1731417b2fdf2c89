//! Health checking end to end: members killed and revived under client load, passive detection,
//! readiness before the first connection, several checks per pool, drained members.

mod common;

use std::time::Duration;

use common::*;
use tandem::health::state::Verdict;
use tokio::net::TcpListener;

const CLIENTS: u32 = 600;

#[tokio::test]
async fn killed_member_is_detected_and_revived_without_a_failed_client() {
    let mut ms = members("m", 40, 3).await;
    let toml = pool_toml("p", &ms) + &fast_tcp_check(2, 2) + &service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let before = placement(CLIENTS, addr).await;

    let load = Load::start(addr, 1000, 300);
    ms[1].stop();
    let reason = wait_health(
        &mut events,
        ms[1].addr(),
        Verdict::Down,
        Duration::from_secs(10),
    )
    .await;
    assert!(!reason.is_empty());
    let failures_at_detection = app.stats("s").expect("stats").connect_failures;

    let during = placement(CLIENTS, addr).await;
    for (b, d) in before.iter().zip(&during) {
        assert_ne!(
            d, "m2",
            "a new connection reached the dead member after detection"
        );
        if b != "m2" {
            assert_eq!(b, d, "a client of a healthy member changed member");
        }
    }
    assert_eq!(
        app.stats("s").expect("stats").connect_failures,
        failures_at_detection,
        "once detected, the dead member is not even tried"
    );

    ms[1].restart().await.expect("restarts");
    wait_health(
        &mut events,
        ms[1].addr(),
        Verdict::Up,
        Duration::from_secs(10),
    )
    .await;
    let after = placement(CLIENTS, addr).await;
    assert_eq!(
        before, after,
        "the revived member gets exactly its clients back"
    );

    let load = load.finish().await;
    assert!(load.ok > 0);
    assert_eq!(
        load.failed, 0,
        "client connections failed while a member died and returned: {load:?}"
    );
}

#[tokio::test]
async fn failed_connects_mark_a_member_down_before_the_next_probe() {
    let mut ms = members("m", 43, 2).await;
    // Probes every hour: only passive detection can notice the member dying.
    let check = "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"3600s\"\n  fall = 3\n";
    let toml = pool_toml("p", &ms) + check + &service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    ms[0].stop();
    // Clients come one at a time (so failures are counted exactly); every one succeeds thanks
    // to the retry, and after three failed connects to m1 it is down.
    for i in 0..100 {
        let served_by = who_serves(client_ip(i), addr).await.expect("client served");
        assert_eq!(served_by, "m2");
    }
    let reason = wait_health(
        &mut events,
        ms[0].addr(),
        Verdict::Down,
        Duration::from_secs(5),
    )
    .await;
    assert!(reason.starts_with("passive: 3 failed connects"), "{reason}");
    let failures = app.stats("s").expect("stats").connect_failures;
    assert_eq!(
        failures, 3,
        "exactly `fall` connects failed before the member was skipped"
    );
    placement(100, addr).await;
    assert_eq!(app.stats("s").expect("stats").connect_failures, failures);
}

#[tokio::test]
async fn member_down_at_start_is_never_tried() {
    let mut ms = members("m", 45, 3).await;
    ms[0].stop();
    let toml = pool_toml("p", &ms) + &fast_tcp_check(2, 3) + &service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let snapshot = app.snapshot();
    let pool = snapshot.pool("p").expect("pool");
    assert_eq!(
        pool.members[0].health.verdict(),
        Verdict::Down,
        "first round done before accepting"
    );
    assert_eq!(pool.healthy_count(), 2);
    let placed = placement(200, app.local_addr("s").expect("bound")).await;
    assert!(placed.iter().all(|p| p != "m1"));
    assert_eq!(app.stats("s").expect("stats").connect_failures, 0);
}

#[tokio::test]
async fn every_check_must_pass() {
    let ms = members("m", 48, 2).await;
    // A second port on m1's host that a second check probes; closing it takes m1 down even
    // though its service port still answers.
    let side = TcpListener::bind((ms[0].addr().ip(), 0))
        .await
        .expect("bind");
    let side_port = side.local_addr().expect("addr").port();
    let side_task = tokio::spawn(async move {
        loop {
            if side.accept().await.is_err() {
                break;
            }
        }
    });
    let toml = pool_toml("p", &ms)
        + &fast_tcp_check(1, 1)
        + &format!(
            "  [[pool.check]]\n  kind = \"tcp\"\n  port = {side_port}\n  interval = \"100ms\"\n  rise = 1\n  fall = 1\n"
        )
        + &service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let snapshot = app.snapshot();
    let m1 = &snapshot.pool("p").expect("pool").members[0];
    // m2 has no listener on side_port: it was down from the first round.
    assert_eq!(
        snapshot.pool("p").expect("pool").members[1]
            .health
            .verdict(),
        Verdict::Down
    );
    assert_eq!(m1.health.verdict(), Verdict::Up);
    side_task.abort();
    let _ = side_task.await;
    let reason = wait_health(
        &mut events,
        ms[0].addr(),
        Verdict::Down,
        Duration::from_secs(10),
    )
    .await;
    assert!(reason.contains("connect"), "{reason}");
    let details = m1.health.details();
    assert_eq!(
        details[0].verdict,
        Verdict::Up,
        "service port check still passes"
    );
    assert_eq!(details[1].verdict, Verdict::Down);
}

#[tokio::test]
async fn drained_and_maintained_members_get_no_new_connections() {
    let ms = members("m", 50, 3).await;
    let toml = format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{}\" }}, {{ addr = \"{}\", state = \"drain\" }}, {{ addr = \"{}\", state = \"maint\" }}]\n{}{}",
        ms[0].addr(),
        ms[1].addr(),
        ms[2].addr(),
        fast_tcp_check(2, 3),
        service_toml("s", "p", "")
    );
    let app = balancer(&toml).await;
    let placed = placement(200, app.local_addr("s").expect("bound")).await;
    assert!(placed.iter().all(|p| p == "m1"), "{:?}", counts(&placed));
    let snapshot = app.snapshot();
    let pool = snapshot.pool("p").expect("pool");
    // The drained member is still checked (it is up); the one in maintenance is not.
    assert_eq!(pool.members[1].health.verdict(), Verdict::Up);
    assert_eq!(pool.members[2].health.verdict(), Verdict::Unknown);
}
