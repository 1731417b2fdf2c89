//! A client that sends and never reads: tandem relays with back-pressure, not buffering. The
//! member's echo fills the client's receive window, tandem stops reading from the member, the
//! member (an echo server) stops reading from tandem, tandem stops reading from the client, and
//! the client's writes block. What tandem accepted stays within the sockets' kernel buffers and
//! its memory does not grow with what the client tries to send.

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::{Duration, Instant};

use common::*;
use process::Tandem;
use tokio::io::AsyncWriteExt;

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Writes `chunk` repeatedly for `time`, each write bounded by what is left of it; the bytes the
/// socket accepted.
async fn write_for(conn: &mut tokio::net::TcpStream, chunk: &[u8], time: Duration) -> u64 {
    let deadline = Instant::now() + time;
    let mut total = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return total;
        }
        match tokio::time::timeout(left, conn.write(chunk)).await {
            Ok(Ok(n)) => total += n as u64,
            Ok(Err(e)) => panic!("write failed after {total} bytes: {e}"),
            Err(_) => return total,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_held_back_not_buffered() {
    let ms = members("m", 160, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, pool_toml("p", &ms) + &service_toml("s", "p", "")).expect("write");
    let mut tandem = Tandem::spawn(&path, &["--no-watch"]);
    let addr = tandem.addr_of("listening").await;
    let pid = tandem.child.id();

    let (_, mut conn) = greeting_from(client_ip(5000), addr)
        .await
        .expect("connects");
    let before = rss(pid);
    let chunk = pseudo_random(5, 256 * 1024);

    // Write as fast as the socket takes it, never reading. Kernel buffers along the way
    // (client send, tandem receive/send on both legs, member receive/send) absorb some MiB.
    let first = write_for(&mut conn, &chunk, Duration::from_secs(3)).await;
    // Then the writes block: hardly anything more is accepted.
    let more = write_for(&mut conn, &chunk, Duration::from_secs(2)).await;
    let grown = rss(pid).saturating_sub(before);
    eprintln!(
        "accepted from a client that never reads: {} KiB in 3 s, then {more} bytes in 2 s; \
         tandem RSS +{} KiB",
        first >> 10,
        grown >> 10
    );
    assert!(
        first < 64 << 20,
        "tandem took {} MiB from a client that never reads",
        first >> 20
    );
    assert!(
        more < 1 << 20,
        "writes kept being accepted after the pipe filled: {more} more bytes (first {first})"
    );
    assert!(
        grown < 64 << 20,
        "tandem's RSS grew {} MiB while the client never read",
        grown >> 20
    );

    // A 256 MiB write_all does not complete: the client's writes block.
    let big = vec![0u8; 256 << 20];
    let done = tokio::time::timeout(Duration::from_secs(3), conn.write_all(&big)).await;
    assert!(
        done.is_err(),
        "a 256 MiB write completed against a client that never reads"
    );
    assert!(
        rss(pid).saturating_sub(before) < 64 << 20,
        "tandem's RSS grew past 64 MiB"
    );

    // Other clients are served meanwhile.
    assert_eq!(
        who_serves(client_ip(5001), addr).await.expect("served"),
        "m1"
    );
}
