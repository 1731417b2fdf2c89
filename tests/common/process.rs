//! `tandem run` as a child process, with its JSON log lines streamed back, for tests of the
//! real binary (signals, admin API). Only the test binaries that need it include this file.
#![allow(dead_code)] // each including test uses its own subset

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// A running `tandem run -c CONFIG --log-format json ...`; killed when dropped.
pub struct Tandem {
    pub child: Child,
    logs: mpsc::UnboundedReceiver<Value>,
}

impl Tandem {
    /// Starts tandem on `config` with `extra` arguments after `run`.
    pub fn spawn(config: &Path, extra: &[&str]) -> Tandem {
        Tandem::spawn_with_env(config, extra, &[])
    }

    /// [`Tandem::spawn`] with extra environment variables.
    pub fn spawn_with_env(config: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Tandem {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .envs(env.iter().copied())
            .arg("run")
            .args(extra)
            .args(["--log-format", "json", "-c"])
            .arg(config);
        Tandem::start(command)
    }

    /// Starts a shell script that `exec`s tandem with JSON logs (for limits set by `ulimit`).
    pub fn spawn_shell(script: &str) -> Tandem {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Tandem::start(command)
    }

    fn start(mut command: Command) -> Tandem {
        // `info` unless the caller chose a level.
        if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tandem starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, logs) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Tandem { child, logs }
    }

    /// The next log line whose message is `message` (at most 10 s away).
    pub async fn expect_log(&mut self, message: &str) -> Value {
        self.expect_log_noting(message, |_| {}).await
    }

    /// [`Tandem::expect_log`], handing every line passed over on the way to `note`, so a test
    /// that waits for one message can still count the others.
    pub async fn expect_log_noting(
        &mut self,
        message: &str,
        mut note: impl FnMut(&Value),
    ) -> Value {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(v) = self.logs.recv().await {
                if v.get("message").and_then(Value::as_str) == Some(message) {
                    return Some(v);
                }
                note(&v);
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

    /// The `listen` address of the next log line with `message`.
    pub async fn addr_of(&mut self, message: &str) -> SocketAddr {
        let line = self.expect_log(message).await;
        line["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {line}"))
    }

    /// Waits (at most `limit`) for tandem to exit by itself. Polled: a std child has no exit
    /// event to await.
    pub async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tandem did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log line not yet consumed, up to the end of the log (the process has exited or
    /// closed stderr; at most 10 s away).
    pub async fn rest_of_log(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(v) = self.logs.recv().await {
                lines.push(v.to_string());
            }
        })
        .await;
        assert!(ended.is_ok(), "tandem's log did not end within 10 s");
        lines
    }

    /// Sends a signal (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
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
