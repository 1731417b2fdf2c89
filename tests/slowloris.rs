//! Slow clients (slowloris): on a service, a client that trickles bytes holds its connection only
//! while bytes move; once it goes quiet the connection ends one `idle_timeout` later (an L4
//! proxy cannot tell a slow client from a slow protocol, so silence is the bound), and hundreds
//! of them do not keep a normal client from being served. On the admin port, connections that
//! never finish their request head neither block `/healthz` nor outlive the head timeout (5 s),
//! even when they keep trickling bytes.
//!
//! The single-connection and admin tests run on tokio's paused clock, so their timings are exact;
//! the test with hundreds of clients needs a multi-threaded runtime and real time, and leaves
//! wide margins for a loaded machine (its comments say which).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem::admin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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

    // From here on the clock only moves when every task is waiting, straight to the next timer.
    tokio::time::pause();
    // One byte every 200 ms for 1.6 s: longer than the idle timeout in all, shorter between bytes.
    let opened = Instant::now();
    let mut last = opened;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = Instant::now();
        // The echo crosses real sockets: keep the runtime busy meanwhile, so the clock cannot
        // jump to the idle deadline while the byte is in flight (see `without_clock_jumps`).
        without_clock_jumps(async {
            conn.write_all(b"x").await.expect("write while active");
            let mut echo = [0u8; 1];
            conn.read_exact(&mut echo).await.expect("echo while active");
        })
        .await;
        assert_eq!(
            last.elapsed(),
            Duration::ZERO,
            "the clock jumped during the echo"
        );
    }
    // (Each sleep ends on the next millisecond tick of the timer wheel, so slightly over 1.6 s.)
    assert!(
        last - opened >= Duration::from_millis(1600),
        "the trickle kept the connection open past one idle timeout"
    );

    // Now silent: closed one idle timeout after the last byte (give or take the timer wheel's
    // rounding up to the millisecond).
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("closed");
    let closed = last.elapsed();
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    assert!(
        closed >= Duration::from_millis(500) && closed < Duration::from_millis(505),
        "closed {closed:?} after the last byte, expected the 500 ms idle timeout"
    );
}

/// Idle timeout of the service the many slow clients hold (real time).
const SLOW_IDLE: Duration = Duration::from_secs(2);
/// Between two bytes of a slow client: a tenth of `SLOW_IDLE`, so that only a stall of nearly
/// two seconds (in the client or in tandem) would idle a trickling connection out, which a
/// loaded 2-core machine running other tests does not reach.
const TRICKLE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_clients_do_not_keep_a_normal_client_waiting() {
    let ms = members("m", 151, 1).await;
    let idle = format!("idle_timeout = \"{}ms\"", SLOW_IDLE.as_millis());
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", &idle))).await;
    let addr = app.local_addr("s").expect("bound");

    // 200 clients, each trickling one byte every TRICKLE and reading the echo.
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
                tokio::time::sleep(TRICKLE).await;
                if conn.write_all(b"s").await.is_err() || conn.read_exact(&mut echo).await.is_err()
                {
                    return false;
                }
            }
            true
        }));
    }

    // Meanwhile normal clients are served, ten of them over 2.5 idle timeouts (so the slow
    // clients live past several). How long one takes is not the point, that it is served at all
    // is: the 5 s bound only turns a hang into a failure.
    let served = Duration::from_secs(5);
    let started = std::time::Instant::now();
    for round in 0..10 {
        let (name, mut conn) =
            tokio::time::timeout(served, greeting_from(client_ip(4400 + round), addr))
                .await
                .unwrap_or_else(|_| panic!("normal client not served within {served:?}"))
                .expect("normal client connects");
        assert_eq!(name, "m1");
        conn.write_all(b"hello").await.expect("write");
        let mut echo = [0u8; 5];
        tokio::time::timeout(served, conn.read_exact(&mut echo))
            .await
            .unwrap_or_else(|_| panic!("no echo within {served:?}"))
            .expect("echo");
        assert_eq!(&echo, b"hello");
        tokio::time::sleep(SLOW_IDLE / 4).await;
    }
    assert!(started.elapsed() >= SLOW_IDLE * 2);

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

/// The admin server's head timeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn admin_head_timeout_closes_slow_heads_and_healthz_still_answers() {
    let ms = members("m", 152, 1).await;
    let app = balancer(&(pool_toml("p", &ms) + &service_toml("s", "p", ""))).await;
    let api = AdminApi::start(app.view(), admin::Options::default()).await;
    let (admin, stop) = (api.addr, api.stop.clone());

    // From here on the clock only moves when every task is waiting, straight to the next timer;
    // `without_clock_jumps` holds it still while requests cross the sockets.
    tokio::time::pause();
    let started = Instant::now();
    let (stalled, drip_closed, drip) = without_clock_jumps(async {
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
        // One that keeps trickling a header byte every 250 ms for 15 s: activity must not
        // extend the deadline.
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

        // With 60 heads hanging, /healthz answers (the cap is 64 connections).
        assert_eq!(healthz(admin).await, 200);
        (stalled, drip_closed, drip)
    })
    .await;
    // The clock has not moved: no head timed out, so it is not the timeout that freed a slot.
    assert!(
        started.elapsed() < HEAD_TIMEOUT,
        "/healthz answered only after {:?}",
        started.elapsed()
    );

    // Every slow head is closed by the head timeout, trickling or not: not before it (each was
    // accepted after `started`), and the trickler not 5 s after its last byte either (that
    // would be 20 s). The timer wheel rounds deadlines up to the millisecond.
    for task in stalled {
        let after = task.await.expect("task") - started;
        assert!(
            after >= HEAD_TIMEOUT && after < HEAD_TIMEOUT + Duration::from_millis(5),
            "stalled head closed after {after:?}, expected the 5 s head timeout"
        );
    }
    let after = drip_closed.await.expect("task") - started;
    assert!(
        after >= HEAD_TIMEOUT && after < HEAD_TIMEOUT + Duration::from_millis(5),
        "trickling head closed after {after:?}, expected the 5 s head timeout"
    );
    drip.abort();
    assert_eq!(without_clock_jumps(healthz(admin)).await, 200);
    stop.cancel();
}
