//! Limits per client address end to end: a source over its limit is closed at once and
//! counted while other sources are served; the rate limit; and 10,000 distinct sources (each a
//! 127.x.y.z address) are tracked within the table's bound and forgotten when they go idle.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

/// Whether a connection from `from` is closed by the balancer without a greeting.
async fn refused(from: IpAddr, addr: std::net::SocketAddr) -> bool {
    let mut s = connect_from(from, addr).await.expect("connect");
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn a_source_over_its_connection_limit_is_refused_while_others_are_served() {
    let m = members("m", 110, 1).await;
    let app =
        balancer(&(pool_toml("p", &m) + &service_toml("s", "p", "max_connections_per_source = 2")))
            .await;
    let addr = app.local_addr("s").expect("bound");
    let a = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1));
    let b = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 2));
    let (_, held1) = greeting_from(a, addr).await.expect("first");
    let (_, held2) = greeting_from(a, addr).await.expect("second");
    assert!(
        refused(a, addr).await,
        "a third connection of one source was served"
    );
    let (_, _other) = greeting_from(b, addr)
        .await
        .expect("another source is served");
    drop(held1);
    eventually(
        "the closed connection frees its slot",
        Duration::from_secs(10),
        || async { greeting_from(a, addr).await.is_ok() },
    )
    .await;
    drop(held2);
    // The refusal above, and any while the freed slot was awaited.
    let st = app.stats("s").expect("stats");
    assert!(st.rejected_per_source_connections >= 1, "{st:?}");
    let metrics = app.view().render_metrics();
    let line = format!(
        "tandem_connections_rejected_total{{service=\"s\",reason=\"per_source_connections\"}} {}",
        st.rejected_per_source_connections
    );
    assert!(metrics.contains(&line), "missing {line}");
}

#[tokio::test]
async fn a_source_over_its_rate_is_refused_while_others_are_served() {
    let m = members("m", 111, 1).await;
    // One new connection a minute after a burst of 3: nothing refills during the test.
    let app = balancer(
        &(pool_toml("p", &m) + &service_toml("s", "p", "max_rate_per_source = \"1/m burst 3\"")),
    )
    .await;
    let addr = app.local_addr("s").expect("bound");
    let a = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 11));
    for _ in 0..3 {
        who_serves(a, addr).await.expect("within the burst");
    }
    assert!(
        refused(a, addr).await,
        "a fourth connection within the minute was served"
    );
    who_serves(IpAddr::V4(Ipv4Addr::new(127, 0, 5, 12)), addr)
        .await
        .expect("another source is served");
    let st = app.stats("s").expect("stats");
    assert_eq!(st.rejected_per_source_rate, 1, "{st:?}");
}

#[tokio::test]
async fn ten_thousand_sources_are_tracked_within_bounds_and_forgotten() {
    let m = members("m", 112, 1).await;
    let app =
        balancer(&(pool_toml("p", &m) + &service_toml("s", "p", "max_connections_per_source = 4")))
            .await;
    let addr = app.local_addr("s").expect("bound");
    const SOURCES: u32 = 10_000;
    // 32 clients at a time, each connecting and closing: descriptors stay far below limits.
    let mut next = 0u32;
    let mut peak = 0u64;
    while next < SOURCES {
        let batch: Vec<_> = (next..(next + 32).min(SOURCES))
            .map(|i| {
                // 127.16.0.0 onwards: one distinct address per client.
                let ip = IpAddr::V4(Ipv4Addr::from(0x7f10_0000 + i));
                tokio::spawn(who_serves(ip, addr))
            })
            .collect();
        for t in batch {
            t.await.expect("task").expect("served");
        }
        next += 32;
        peak = peak.max(app.stats("s").expect("stats").sources_tracked);
    }
    let st = app.stats("s").expect("stats");
    assert_eq!(st.rejected_per_source_connections, 0);
    assert_eq!(st.sources_untracked, 0);
    assert!(peak <= u64::from(SOURCES) && peak <= tandem::limits::MAX_SOURCES as u64);
    // Sources with no connection open and no rate to remember are forgotten when their last
    // connection ends.
    eventually(
        "every source forgotten",
        Duration::from_secs(10),
        || async { app.stats("s").expect("stats").sources_tracked == 0 },
    )
    .await;
}
