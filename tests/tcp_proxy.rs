//! The TCP data path over real loopback sockets: affinity, spread, stability, integrity,
//! half-close, retries, limits, PROXY headers, idle timeout and shutdown.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tandem::health::state::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLIENTS: u32 = 600;

#[tokio::test]
async fn one_source_address_always_reaches_the_same_member() {
    let ms = members("m", 1, 3).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    let client = client_ip(7);
    let first = who_serves(client, addr).await.expect("connects");
    for _ in 0..49 {
        assert_eq!(who_serves(client, addr).await.expect("connects"), first);
    }
}

#[tokio::test]
async fn source_ip_port_spreads_one_client() {
    let ms = members("m", 4, 3).await;
    let toml = pool_toml("p", &ms) + &service_toml("s", "p", "hash = \"source-ip-port\"");
    let app = balancer(&toml).await;
    let addr = app.local_addr("s").expect("bound");
    let mut seen = HashMap::new();
    for _ in 0..60 {
        *seen
            .entry(who_serves(client_ip(3), addr).await.expect("connects"))
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "one client's connections should reach all members: {seen:?}"
    );
}

#[tokio::test]
async fn distinct_clients_spread_within_maglev_band() {
    let ms = members("m", 7, 3).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let placed = placement(CLIENTS, app.local_addr("s").expect("bound")).await;
    let counts = counts(&placed);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (member, n) in counts {
        let share = n as f64 / CLIENTS as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "{member} got {share:.3} of the clients"
        );
    }
}

#[tokio::test]
async fn unavailable_member_moves_only_its_own_clients() {
    let mut ms = members("m", 10, 3).await;
    let toml = pool_toml("p", &ms) + &fast_tcp_check(1, 3) + &service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let before = placement(CLIENTS, addr).await;

    ms[1].stop();
    let during = placement(CLIENTS, addr).await;
    let mut moved_to = HashMap::new();
    for (b, d) in before.iter().zip(&during) {
        if b == "m2" {
            assert_ne!(d, "m2");
            *moved_to.entry(d.clone()).or_insert(0usize) += 1;
        } else {
            assert_eq!(b, d, "a client of a healthy member moved");
        }
    }
    // The stopped member's clients spread over both others, not all onto one.
    let orphans: usize = moved_to.values().sum();
    for (member, n) in &moved_to {
        let share = *n as f64 / orphans as f64;
        assert!(
            (0.3..=0.7).contains(&share),
            "{member} took {share:.2} of m2's clients"
        );
    }

    ms[1].restart().await.expect("restarts");
    let m2 = ms[1].addr();
    wait_health(&mut events, m2, Verdict::Up, Duration::from_secs(10)).await;
    let after = placement(CLIENTS, addr).await;
    assert_eq!(
        before, after,
        "clients must return to their member when it is back"
    );
}

#[tokio::test]
async fn removing_a_member_from_config_moves_few_others() {
    let ms = members("m", 13, 3).await;
    let full = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let toml = format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n{}",
        ms[0].addr(),
        ms[2].addr(),
        service_toml("s", "p", "")
    );
    let reduced = balancer(&toml).await;
    let before = placement(CLIENTS, full.local_addr("s").expect("bound")).await;
    let after = placement(CLIENTS, reduced.local_addr("s").expect("bound")).await;
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "m2" && b != a)
        .count();
    assert!(
        moved_others * 50 < CLIENTS as usize,
        "{moved_others} clients of remaining members moved (limit 2%)"
    );
    assert!(after.iter().all(|a| a != "m2"));
}

#[tokio::test]
async fn every_connection_succeeds_with_one_member_refusing() {
    let mut ms = members("m", 16, 3).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    ms[0].stop();
    let placed = placement(200, addr).await;
    assert!(placed.iter().all(|p| p != "m1"));
    let stats = app.stats("s").expect("stats");
    assert!(
        stats.connect_failures > 0,
        "no client was hashed to the stopped member first, so the retry path was not exercised"
    );
    assert_eq!(stats.rejected_no_member, 0);
    // Every failed connect was followed by a try of the next member.
    assert_eq!(stats.retries, stats.connect_failures);
}

#[tokio::test]
async fn all_members_down_closes_client_quickly() {
    let mut ms = members("m", 19, 2).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    for m in &mut ms {
        m.stop();
    }
    let err = who_serves(client_ip(1), addr)
        .await
        .expect_err("no member can answer");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(app.stats("s").expect("stats").rejected_no_member, 1);
}

#[tokio::test]
async fn eight_streams_of_4_mib_come_back_intact() {
    let ms = members("m", 22, 2).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        tasks.push(tokio::spawn(async move {
            let data = pseudo_random(u64::from(i) + 1, 4 << 20);
            let (_, stream) = greeting_from(client_ip(100 + i), addr)
                .await
                .expect("connects");
            let (mut r, mut w) = stream.into_split();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.expect("write");
                // Half-close: our FIN must reach the member while its echo keeps flowing back.
                w.shutdown().await.expect("shutdown");
            });
            let mut back = Vec::with_capacity(data.len());
            r.read_to_end(&mut back).await.expect("read to EOF");
            writer.await.expect("writer");
            assert!(
                back == data,
                "stream {i}: {} bytes back, corrupted or lost",
                back.len()
            );
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.bytes_to_members, 8 * (4 << 20));
}

#[tokio::test]
async fn member_half_close_leaves_client_to_member_open() {
    // A member that says "bye", closes its sending side, then counts what it still receives.
    let listener = TcpListener::bind("127.0.1.30:0").await.expect("bind");
    let member_addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(b"bye").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        let _ = tx.send(got);
    });
    let toml = format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member_addr}\" }}]\n{}",
        service_toml("s", "p", "")
    );
    let app = balancer(&toml).await;
    let mut client = connect_from(client_ip(1), app.local_addr("s").expect("bound"))
        .await
        .expect("connects");
    let mut first = Vec::new();
    client
        .read_to_end(&mut first)
        .await
        .expect("EOF from member");
    assert_eq!(first, b"bye");
    let data = pseudo_random(9, 1 << 20);
    client
        .write_all(&data)
        .await
        .expect("client still sends after member FIN");
    client.shutdown().await.expect("shutdown");
    let got = rx.await.expect("member reports");
    assert!(got == data, "member got {} bytes", got.len());
}

#[tokio::test]
async fn max_connections_closes_excess_at_once() {
    let ms = members("m", 31, 1).await;
    let toml = pool_toml("p", &ms) + &service_toml("s", "p", "max_connections = 2");
    let app = balancer(&toml).await;
    let addr = app.local_addr("s").expect("bound");
    let (_, held1) = greeting_from(client_ip(1), addr).await.expect("first");
    let (_, held2) = greeting_from(client_ip(2), addr).await.expect("second");
    let err = greeting_from(client_ip(3), addr)
        .await
        .expect_err("third is over the limit");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    assert_eq!(app.stats("s").expect("stats").rejected_limit, 1);
    drop(held1);
    eventually("a permit is released", Duration::from_secs(10), || async {
        app.stats("s").expect("stats").active < 2
    })
    .await;
    greeting_from(client_ip(4), addr)
        .await
        .expect("room again after a close");
    drop(held2);
}

/// A member that reads the PROXY header (up to the first `\r\n` for v1, 28 bytes for v2 TCP4)
/// and reports it.
async fn header_member(
    ip: &str,
    v2: bool,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind(format!("{ip}:0")).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            s.read_exact(&mut byte).await.expect("header bytes");
            got.push(byte[0]);
            if (!v2 && got.ends_with(b"\r\n")) || (v2 && got.len() == 28) {
                break;
            }
        }
        let _ = tx.send(got);
    });
    (addr, rx)
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_headers_reach_the_member() {
    for (version, v2) in [("v1", false), ("v2", true)] {
        let (member, rx) = header_member("127.0.1.32", v2).await;
        let toml = format!(
            "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member}\" }}]\n{}",
            service_toml("s", "p", &format!("proxy_protocol = \"{version}\""))
        );
        let app = balancer(&toml).await;
        let listen = app.local_addr("s").expect("bound");
        let client = connect_from(client_ip(9), listen).await.expect("connects");
        let client_addr = client.local_addr().expect("addr");
        let got = rx.await.expect("member got a header");
        if v2 {
            let mut want = vec![
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            ];
            want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 2, 10, 127, 0, 0, 1]);
            want.extend_from_slice(&client_addr.port().to_be_bytes());
            want.extend_from_slice(&listen.port().to_be_bytes());
            assert_eq!(got, want);
        } else {
            let want = format!(
                "PROXY TCP4 127.0.2.10 127.0.0.1 {} {}\r\n",
                client_addr.port(),
                listen.port()
            );
            assert_eq!(String::from_utf8_lossy(&got), want);
        }
    }
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout_and_activity_resets_it() {
    let ms = members("m", 33, 1).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    let (_, mut quiet) = greeting_from(client_ip(1), addr).await.expect("connects");
    let (_, mut chatty) = greeting_from(client_ip(2), addr).await.expect("connects");

    // From here on the clock only moves when every task is waiting, straight to the next timer.
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1000)).await;
    // The echo crosses real sockets: keep the runtime busy meanwhile, or the paused clock could
    // jump to the idle deadlines while a byte is in flight (see `without_clock_jumps`).
    without_clock_jumps(async {
        chatty.write_all(b"x").await.expect("write");
        let mut echo = [0u8; 1];
        chatty.read_exact(&mut echo).await.expect("echo");
    })
    .await;
    // (The timer wheel rounds to the millisecond; a jump would be to the 1800 s deadlines.)
    assert!(
        start.elapsed() < Duration::from_secs(1001),
        "the clock jumped during the echo"
    );

    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest).await.expect("EOF");
    let quiet_at = start.elapsed();
    // The quiet connection's timer started on the real clock before the pause, a few real
    // milliseconds before `start` on a loaded machine: its deadline may fall just short of 1800 s.
    assert!(
        quiet_at >= Duration::from_secs(1799) && quiet_at < Duration::from_secs(1801),
        "quiet connection closed after {quiet_at:?}, expected the default 1800 s"
    );
    chatty.read_to_end(&mut rest).await.expect("EOF");
    let chatty_at = start.elapsed();
    assert!(
        chatty_at >= Duration::from_secs(2800) && chatty_at < Duration::from_secs(2801),
        "active connection closed after {chatty_at:?}, expected 1800 s after its last byte"
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_and_waits_for_open_connections() {
    let ms = members("m", 34, 1).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    let (_, mut open) = greeting_from(client_ip(1), addr).await.expect("connects");

    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = tokio::spawn(async move {
        let _ = started_tx.send(());
        app.shutdown(Duration::from_secs(3600)).await
    });
    started_rx.await.expect("shutdown task runs");
    // The listener closes: new clients are refused.
    let mut refused = false;
    for _ in 0..1000 {
        match connect_from(client_ip(2), addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::task::yield_now().await,
        }
    }
    assert!(refused, "listener still accepting after shutdown began");
    // The open connection still works, and shutdown ends when it closes.
    open.write_all(b"still here").await.expect("write");
    let mut buf = [0u8; 10];
    open.read_exact(&mut buf).await.expect("echo during drain");
    assert_eq!(&buf, b"still here");
    assert!(!shutdown.is_finished());
    drop(open);
    let report = shutdown.await.expect("shutdown task");
    assert_eq!(report.forced, 0);
}

#[tokio::test]
async fn shutdown_grace_closes_lingering_connections() {
    let ms = members("m", 35, 1).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let addr = app.local_addr("s").expect("bound");
    let (_, mut open) = greeting_from(client_ip(1), addr).await.expect("connects");
    tokio::time::pause();
    let report = app.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.forced, 1);
    // The balancer closed its side: the client sees the end of the stream, with nothing more.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "client connection still open after the grace period"
    );
    assert!(rest.is_empty());
}

/// One kill switch per connection carries both kinds of end: a reload that removes a service
/// lets its connections drain for its `drain_timeout` while another service's stay untouched,
/// and shutdown grace over cuts what is left.
#[tokio::test]
async fn removed_service_drains_then_shutdown_forces_the_rest() {
    let ms = members("m", 37, 1).await;
    let pool = pool_toml("p", &ms);
    let kept = service_toml("kept", "p", "");
    let toml = pool.clone() + &service_toml("gone", "p", "drain_timeout = \"1s\"") + &kept;
    let mut app = balancer(&toml).await;
    let (gone, kept_addr) = (
        app.local_addr("gone").expect("bound"),
        app.local_addr("kept").expect("bound"),
    );
    let (_, mut draining) = greeting_from(client_ip(1), gone).await.expect("connects");
    let (_, mut staying) = greeting_from(client_ip(2), kept_addr)
        .await
        .expect("connects");
    let config = tandem::config::parse(&(pool + &kept), "t.toml").expect("valid");
    app.reload(config).await.expect("reload");
    let removed_at = std::time::Instant::now();

    draining.write_all(b"still here").await.expect("write");
    let mut buf = [0u8; 10];
    draining
        .read_exact(&mut buf)
        .await
        .expect("the removed service's connection still flows");
    assert_eq!(&buf, b"still here");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), draining.read_to_end(&mut rest))
        .await
        .expect("closed when its drain_timeout is over")
        .expect("a clean end");
    assert!(
        removed_at.elapsed() >= Duration::from_millis(900),
        "closed {:?} after removal; drain_timeout is 1 s",
        removed_at.elapsed()
    );
    staying.write_all(b"kept").await.expect("write");
    let mut buf = [0u8; 4];
    staying
        .read_exact(&mut buf)
        .await
        .expect("the kept service's connection is untouched");

    tokio::time::pause();
    let report = app.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        report.forced, 1,
        "only the kept service's connection was left"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), staying.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after the grace period");
}

#[tokio::test]
#[ignore = "needs IPv6 loopback (::1), which containers often lack (CI runs it: cargo test -- --include-ignored)"]
async fn ipv6_loopback_service() {
    let m = DemoMember::start("v6", "[::1]:0".parse().expect("addr"))
        .await
        .unwrap_or_else(|e| {
            panic!("this machine lacks IPv6 loopback: cannot listen on [::1] ({e})")
        });
    let toml = format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{}\" }}]\n[[service]]\nname = \"s\"\nlisten = \"[::1]:0\"\npool = \"p\"\n",
        m.addr()
    );
    let app = balancer(&toml).await;
    let addr = app.local_addr("s").expect("bound");
    let name = who_serves(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), addr)
        .await
        .expect("connects");
    assert_eq!(name, "v6");
}
