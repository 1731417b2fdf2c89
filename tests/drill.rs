//! The operator's drill with the real binary: edit the config file, send SIGHUP, watch new
//! connections move to the paired pool while long-lived ones stream on; a broken edit is
//! rejected with its location and the old config keeps serving; saving the file alone reloads
//! it too; SIGTERM exits 0.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

/// `tandem run` as a child process with JSON logs streamed back line by line.
struct Tandem {
    child: Child,
    logs: mpsc::UnboundedReceiver<Value>,
}

impl Tandem {
    fn spawn(config: &Path) -> Tandem {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["run", "-c"])
            .arg(config)
            .args(["--log-format", "json", "--shutdown-grace", "5s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tandem starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, logs) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Tandem { child, logs }
    }

    /// The next log line whose message is `message` (at most 10 s away).
    async fn expect_log(&mut self, message: &str) -> Value {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(v) = self.logs.recv().await {
                if v.get("message").and_then(Value::as_str) == Some(message) {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "tandem's log ended before {message:?}; exit status: {:?}",
                self.child.try_wait()
            ),
            Err(_) => panic!("tandem did not log {message:?} within 10 s"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

    let mut tandem = Tandem::spawn(&path);
    let listening = tandem.expect_log("listening").await;
    let addr: SocketAddr = listening["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {listening}"));

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
    let status = tokio::task::spawn_blocking(move || {
        let status = tandem.child.wait();
        (status, tandem)
    })
    .await
    .expect("wait");
    assert!(status.0.expect("exit status").success());
}
