//! Out of file descriptors: tandem under a low open-file limit keeps serving the connections it
//! has, does not spin on the accept errors (EMFILE) while clients wait, does not blame members
//! for its own exhaustion, and serves clients again by itself once descriptors are free.

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use common::*;
use process::Tandem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU time (user + system, in clock ticks) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn accept_errors_neither_spin_nor_stop_the_listener() {
    let ms = members("m", 140, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, pool_toml("p", &ms) + &service_toml("s", "p", "")).expect("write");
    // 48 descriptors: the runtime, logging and the listener take a few dozen less; every
    // relayed connection costs two.
    let script = format!(
        "ulimit -n 48 && exec {} run --no-watch --log-format json -c {}",
        env!("CARGO_BIN_EXE_tandem"),
        path.display()
    );
    let mut tandem = Tandem::spawn_shell(&script);
    let addr = tandem.addr_of("listening").await;
    let pid = tandem.child.id();
    let idle_fds = open_fds(pid);

    // Fill the descriptor table with held connections (each answered: greeting read).
    let mut held = Vec::new();
    for i in 0..40 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            greeting_from(client_ip(2000 + i), addr),
        )
        .await
        {
            Ok(Ok((_, conn))) => held.push(conn),
            _ => break,
        }
    }
    assert!(held.len() >= 5, "served only {} connections", held.len());
    assert!(held.len() < 40, "the descriptor limit was never reached");
    // One more client: the kernel completes its handshake, tandem cannot accept it yet.
    let waiting = tokio::spawn(greeting_from(client_ip(3000), addr));

    // Measure CPU over a second while accept keeps failing: a spinning loop would burn ~100 ticks.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 30,
        "tandem used {spent} ticks of CPU in 1 s while out of descriptors"
    );

    // The held connections still work.
    let conn = held.last_mut().expect("held");
    conn.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf)
        .await
        .expect("echo while out of descriptors");
    assert_eq!(&buf, b"ping");

    // Free descriptors. The waiting client is served, or was closed at once if tandem accepted
    // it with no descriptor left for the member side; either way it does not hang. New clients
    // are served without anyone restarting anything, and the member was never blamed.
    held.clear();
    eventually(
        "tandem closes the relayed connections",
        Duration::from_secs(10),
        || async { open_fds(pid) <= idle_fds + 2 },
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client does not hang")
        .expect("task");
    if let Ok((name, _)) = &outcome {
        assert_eq!(name, "m1");
    }
    for i in 0..20 {
        who_serves(client_ip(3001 + i), addr)
            .await
            .expect("new clients served again");
    }
}
