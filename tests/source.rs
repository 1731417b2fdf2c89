//! `source` without root: a pool of loopback addresses is what members see (each client keeps
//! one), and an address that is not on this machine fails the start and a reload with a message
//! naming it.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use tandem::config;

#[tokio::test]
async fn members_see_the_source_pool_and_each_client_keeps_its_address() {
    let ms = udp_members("u", 110, 1).await;
    let toml = format!(
        "{}{}",
        udp_pool_toml("p", &ms, ""),
        udp_service_toml("s", "p", "source = [\"127.0.0.2\", \"127.0.0.3\"]")
    );
    let app = balancer(&toml).await;
    let addr = app.view().services()[0].local_addr;
    let mut seen_per_client = Vec::new();
    for c in 0..16 {
        let client = udp_client(client_ip(700 + c)).await;
        // Two sessions of one client (two ports), hashed by its IP alone: one source address.
        let other = udp_client(client_ip(700 + c)).await;
        let before = ms[0].peers.lock().expect("peers").len();
        udp_who(&client, addr).await;
        udp_who(&other, addr).await;
        let peers = ms[0].peers.lock().expect("peers");
        let ips: HashSet<IpAddr> = peers[before..].iter().map(|p| p.ip()).collect();
        assert_eq!(ips.len(), 1, "client {c} kept one source: {ips:?}");
        seen_per_client.extend(ips);
    }
    let all: HashSet<IpAddr> = seen_per_client.into_iter().collect();
    let pool: HashSet<IpAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    assert_eq!(
        all, pool,
        "clients spread over both addresses, and only those"
    );
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_source_address_not_on_this_machine_fails_start_and_reload() {
    let ms = members("m", 120, 1).await;
    let good = format!("{}{}", pool_toml("p", &ms), service_toml("s", "p", ""));
    // 192.0.2.0/24 (TEST-NET-1) is never local.
    let bad = good.replace(
        "connect_timeout",
        "source = [\"192.0.2.1\"]\nconnect_timeout",
    );
    let cfg = config::parse(&bad, "test.toml").expect("valid config");
    let err = match tandem::app::App::start(cfg).await {
        Ok(_) => panic!("started with a source address that is not local"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("source address 192.0.2.1 cannot be bound"),
        "{err}"
    );
    let mut app = balancer(&good).await;
    let cfg = config::parse(&bad, "test.toml").expect("valid config");
    let err = app
        .reload(cfg)
        .await
        .expect_err("reload refused")
        .to_string();
    assert!(err.contains("192.0.2.1"), "{err}");
    // Still serving, from tandem's own address.
    let addr = app.view().services()[0].local_addr;
    assert_eq!(
        who_serves(client_ip(800), addr).await.expect("served"),
        "m1"
    );
    app.shutdown(Duration::from_secs(1)).await;
}
