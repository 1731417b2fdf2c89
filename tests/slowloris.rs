//! Slow clients (slowloris): on a service, a client that trickles bytes holds its connection only
//! while bytes move; once it goes quiet the connection ends one `idle_timeout` later (an L4
//! proxy cannot tell a slow client from a slow protocol, so silence is the bound), and hundreds
//! of them do not keep a normal client from being served. On the admin port, connections that
//! never finish their request head neither block `/healthz` nor outlive the head timeout (5 s),
//! even when they keep trickling bytes.
//!
//! Real time throughout (the admin test runs the real binary); every wait is bounded.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use process::Tandem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_trickling_client_is_closed_one_idle_timeout_after_its_last_byte() {
    let ms = members("m", 150, 1).await;
    let app =
        balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", "idle_timeout = \"500ms\"")))
            .await;
    let addr = app.local_addr("s").expect("bound");
    let (_, mut conn) = greeting_from(client_ip(4000), addr)
        .await
        .expect("connects");

    // One byte every 200 ms for 1.6 s: longer than the idle timeout in all, shorter between bytes.
    let opened = Instant::now();
    let mut last = opened;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = Instant::now();
        conn.write_all(b"x").await.expect("write while active");
        let mut echo = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo while active");
    }
    assert!(
        last - opened >= Duration::from_millis(1500),
        "the trickle kept the connection open past one idle timeout"
    );

    // Now silent: closed no sooner than 500 ms after the last byte (the 3 s wait only guards
    // against a connection that is never closed; how soon after 500 ms is not asserted).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
    let closed = last.elapsed();
    assert!(
        read.is_ok(),
        "connection still open {closed:?} after its last byte"
    );
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    assert!(
        closed >= Duration::from_millis(500),
        "closed {closed:?} after the last byte, before the 500 ms idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_clients_do_not_keep_a_normal_client_waiting() {
    let ms = members("m", 151, 1).await;
    let app =
        balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", "idle_timeout = \"500ms\"")))
            .await;
    let addr = app.local_addr("s").expect("bound");

    // 200 clients, each trickling one byte every 200 ms and reading the echo.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = Vec::new();
    for i in 0..200 {
        let (_, mut conn) = greeting_from(client_ip(4100 + i), addr)
            .await
            .expect("slow client connects");
        let stop = stop.clone();
        slow.push(tokio::spawn(async move {
            let mut echo = [0u8; 1];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if conn.write_all(b"s").await.is_err() || conn.read_exact(&mut echo).await.is_err()
                {
                    return false;
                }
            }
            true
        }));
    }

    // Meanwhile normal clients are served promptly, several times over a few idle timeouts.
    for round in 0..10 {
        let (name, mut conn) = tokio::time::timeout(
            Duration::from_secs(2),
            greeting_from(client_ip(4400 + round), addr),
        )
        .await
        .expect("normal client served within 2 s")
        .expect("normal client connects");
        assert_eq!(name, "m1");
        conn.write_all(b"hello").await.expect("write");
        let mut echo = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut echo))
            .await
            .expect("echo within 2 s")
            .expect("echo");
        assert_eq!(&echo, b"hello");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // The slow clients were never closed while they kept trickling (idle timeout = silence).
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut alive = 0;
    for task in slow {
        if task.await.expect("slow client task") {
            alive += 1;
        }
    }
    assert_eq!(alive, 200, "active slow clients were closed");
}

/// `GET /healthz` on a fresh connection; the status code.
async fn healthz(admin: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(admin).await.expect("connect admin");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_head_timeout_closes_slow_heads_and_healthz_still_answers() {
    let ms = members("m", 152, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n".to_string()
        + &pool_toml("p", &ms)
        + &service_toml("s", "p", "");
    std::fs::write(&path, config).expect("write");
    let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
    let admin = tandem.addr_of("admin API listening").await;

    let started = Instant::now();
    // 59 connections that send part of a request head and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..59 {
        let mut s = TcpStream::connect(admin).await.expect("connect");
        s.write_all(b"GET /status HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .expect("write");
        stalled.push(tokio::spawn(async move {
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw).await;
            Instant::now()
        }));
    }
    // One that keeps trickling a header byte every 250 ms: activity must not extend the deadline.
    let mut dripper = TcpStream::connect(admin).await.expect("connect");
    dripper
        .write_all(b"GET /status HTTP/1.1\r\nHost: t\r\nX-Drip: ")
        .await
        .expect("write");
    let (mut drip_read, mut drip_write) = dripper.into_split();
    let drip_closed = tokio::spawn(async move {
        let mut raw = Vec::new();
        let _ = drip_read.read_to_end(&mut raw).await;
        Instant::now()
    });
    let drip = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if drip_write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });

    // With 60 heads hanging, /healthz answers at once (the cap is 64 connections).
    // (Bounded well inside the 5 s head timeout, so it is not the timeout that freed a slot.)
    let answer = tokio::time::timeout(Duration::from_secs(3), healthz(admin))
        .await
        .expect("/healthz answered while 60 heads hang");
    assert_eq!(answer, 200);

    // Every slow head is closed by the 5 s head timeout, trickling or not.
    let limit = Duration::from_secs(9);
    for task in stalled {
        let at = tokio::time::timeout(limit, task)
            .await
            .expect("a stalled head outlived the head timeout")
            .expect("task");
        let after = at - started;
        assert!(
            after >= Duration::from_millis(4500),
            "stalled head closed after {after:?}, before the 5 s head timeout"
        );
    }
    let at = tokio::time::timeout(limit, drip_closed)
        .await
        .expect("a trickling head outlived the head timeout")
        .expect("task");
    let after = at - started;
    assert!(
        after < Duration::from_secs(8),
        "trickling head closed only after {after:?}"
    );
    drip.abort();
    assert_eq!(healthz(admin).await, 200);
}
