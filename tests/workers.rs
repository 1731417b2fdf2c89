//! Several data-path workers (`--workers`): every service has one `SO_REUSEPORT` socket per
//! worker. New connections spread over the workers' sockets; a UDP client keeps its session on
//! the socket (and worker) that has it; a binary upgrade hands over every socket of a group and
//! keeps every connection, also to a process with another worker count.

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use process::Tandem;
use tandem::app::App;
use tandem::upgrade::Inherited;
use tandem::workers::Workers;

/// A balancer from `toml` with its data path on `workers` threads.
async fn balancer_on(toml: &str, workers: usize) -> App {
    let cfg = tandem::config::parse(toml, "test.toml").expect("valid test config");
    let workers = Workers::start(workers).expect("worker threads");
    App::start_on(cfg, &mut Inherited::default(), workers)
        .await
        .expect("balancer starts")
}

/// `tandem_worker_connections_total` by worker, from the metrics page.
fn per_worker(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("tandem_worker_connections_total{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("a count")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_both_workers_within_10_percent() {
    let members = members("sp", 120, 2).await;
    let app = balancer_on(&(pool_toml("p", &members) + &service_toml("s", "p", "")), 2).await;
    let addr = app.local_addr("s").expect("service");
    // 2,000 connections from 2,000 loopback sources, each on an ephemeral port: the kernel
    // hashes the 4-tuple over the group's two sockets.
    let served = placement(2000, addr).await;
    assert_eq!(served.len(), 2000);
    let counts = per_worker(&app.view().render_metrics());
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 2000, "{counts:?}");
    // An even share is 1,000; a fair hash lands within 100 of it (4.5 standard deviations of
    // a binomial(2000, 0.5)).
    for n in &counts {
        assert!(n.abs_diff(1000) <= 100, "uneven spread: {counts:?}");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_client_keeps_its_session_on_its_socket() {
    let members = udp_members("us", 124, 2).await;
    let app = balancer_on(
        &(udp_pool_toml("p", &members, &fast_tcp_check(1, 1)) + &udp_service_toml("s", "p", "")),
        2,
    )
    .await;
    let addr = app.local_addr("s").expect("service");
    let mut tasks = Vec::new();
    for c in 0..40u32 {
        tasks.push(tokio::spawn(async move {
            let socket = udp_client(client_ip(600 + c)).await;
            let mut members = Vec::new();
            for d in 0..20u32 {
                let payload = format!("{c}/{d}");
                // Replies come from the service's address (udp_ask checks it).
                let (member, echo) =
                    udp_ask(&socket, addr, payload.as_bytes(), Duration::from_secs(2), 3)
                        .await
                        .unwrap_or_else(|n| panic!("client {c}: no reply after {n} tries"));
                assert_eq!(echo, payload.as_bytes());
                members.push(member);
            }
            members
        }));
    }
    let mut by_client = HashMap::new();
    for (c, t) in tasks.into_iter().enumerate() {
        let members = t.await.expect("client task");
        assert!(
            members.windows(2).all(|w| w[0] == w[1]),
            "client {c} changed member: {members:?}"
        );
        by_client.insert(c, members[0].clone());
    }
    // One session per client: a datagram that reached the other socket of the group would have
    // opened a second session there.
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.sessions_created, 40, "{stats:?}");
    assert_eq!(stats.datagrams_to_members, 40 * 20, "{stats:?}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// The drain after a handoff is bounded by this (the streams end long before).
const GRACE: &str = "20s";

fn tandem(config: &Path, socket: &Path, workers: &str, upgrade_from: bool) -> Tandem {
    let flag = if upgrade_from {
        "--upgrade-from"
    } else {
        "--upgrade-socket"
    };
    Tandem::spawn(
        config,
        &[
            "--shutdown-grace",
            GRACE,
            "--no-watch",
            "--workers",
            workers,
            flag,
            socket.to_str().expect("utf-8 path"),
        ],
    )
}

/// The `sockets` of the `listening` line, with its address.
async fn group(t: &mut Tandem) -> (SocketAddr, u64) {
    let line = t.expect_log("listening").await;
    let addr = line["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("listen address");
    (addr, line["sockets"].as_u64().expect("sockets"))
}

/// Hands over from `old` to a new process with `workers` workers; returns the new one and the
/// size of the group it serves once `old` has stopped accepting (it may still be draining).
async fn upgrade(
    old: &mut Tandem,
    config: &Path,
    socket: &Path,
    workers: &str,
    addr: SocketAddr,
) -> (Tandem, u64) {
    let mut new = tandem(config, socket, workers, true);
    let (new_addr, sockets) = group(&mut new).await;
    assert_eq!(new_addr, addr, "same address");
    old.expect_log("upgrade: new process serving; stopping accepting and draining")
        .await;
    new.expect_log("upgrade socket listening").await;
    (new, sockets)
}

/// 2 workers -> 3 (the group is topped up) -> 1 (it keeps all three sockets, each with its
/// accept loop): no connection refused, reset or left unanswered in a socket nobody accepts
/// from, and the long-lived streams on each old process run on while it drains.
#[tokio::test]
async fn upgrades_across_worker_counts_keep_every_connection() {
    let members = members("ug", 128, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    let toml = pool_toml("dc1", &members) + &fast_tcp_check(2, 2) + &service_toml("fe", "dc1", "");
    std::fs::write(&path, toml).expect("write");

    let mut first = tandem(&path, &socket, "2", false);
    let (addr, sockets) = group(&mut first).await;
    assert_eq!(sockets, 2);
    first.expect_log("upgrade socket listening").await;
    let loads: Vec<Load> = (0..8)
        .map(|i| Load::start(addr, 5000 + i * 50, 50))
        .collect();

    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(Stream::start(client_ip(5900 + i), addr, 170 + u64::from(i)).await);
    }
    let (mut second, sockets) = upgrade(&mut first, &path, &socket, "3", addr).await;
    assert_eq!(sockets, 3, "topped up to one socket per worker");
    for s in streams {
        s.finish()
            .await
            .expect("stream on the first process unharmed");
    }
    assert!(first.exit(Duration::from_secs(15)).await.success());

    let (mut third, sockets) = upgrade(&mut second, &path, &socket, "1", addr).await;
    assert_eq!(sockets, 3, "every inherited socket keeps its accept loop");
    assert!(second.exit(Duration::from_secs(15)).await.success());
    // Every socket of the group is accepted from: a connection hashed to one nobody served
    // would wait in its queue and time out here.
    let served = tokio::time::timeout(Duration::from_secs(30), placement(300, addr))
        .await
        .expect("every connection answered");
    assert_eq!(served.len(), 300);

    let mut total = LoadReport::default();
    for l in loads {
        let r = l.finish().await;
        total.ok += r.ok;
        total.failed += r.failed;
    }
    eprintln!("upgrades 2 -> 3 -> 1 workers: {total:?}");
    assert!(total.ok > 0, "{total:?}");
    assert_eq!(total.failed, 0, "{total:?}");
    third.signal("TERM");
    assert!(third.exit(Duration::from_secs(10)).await.success());
}
