//! Telling the running tandem to reload its config file after `tandem member set` wrote it.
//!
//! The admin API comes first, because it answers with the outcome: `POST /reload`, with the
//! bearer token from `[admin] token_file` when one is configured. When the API answers but
//! refuses the POST (the token file is unreadable to this user, or the token is refused), the
//! pid from `/status` gets a SIGHUP and `/status` is then watched for the reload's outcome. A
//! `--pid` given on the command line is signalled when the API cannot be used at all. Signals
//! go only to a process named `tandem`, since SIGHUP's default action kills most others.

use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;

use crate::admin::client::{self, FetchError, ReloadAnswer};
use crate::config::Config;

/// How often `/status` is read while waiting for the outcome of a SIGHUP reload. There is no
/// request-reply for a signal; the reload counters in `/status` are the observable.
const POLL: Duration = Duration::from_millis(50);

/// Where the running tandem is to be found.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Its admin API (`--admin`, else `[admin] listen` of the config).
    pub admin: Option<SocketAddr>,
    /// `[admin] token_file` of the config.
    pub token_file: Option<PathBuf>,
    /// `--pid`: signalled when the admin API cannot be used.
    pub pid: Option<u32>,
}

impl Target {
    /// The tandem running `config`: its `[admin]` API unless `admin` overrides the address,
    /// and `pid` to signal when that API cannot be used.
    pub fn of(config: &Config, admin: Option<SocketAddr>, pid: Option<u32>) -> Target {
        Target {
            admin: admin.or(config.admin.as_ref().map(|a| a.listen)),
            token_file: config.admin.as_ref().and_then(|a| a.token_file.clone()),
            pid,
        }
    }
}

/// A reload that reached the running tandem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new config serves.
    Applied {
        how: How,
        generation: u64,
        change: String,
    },
    /// The running tandem kept its config: every problem it found (a listener it could not
    /// bind, say; the text itself was validated before it was written).
    Rejected { how: How, error: String },
    /// SIGHUP was sent; with no admin API to watch, the outcome is in tandem's log.
    Signalled { pid: u32 },
}

/// How the reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Admin(SocketAddr),
    /// SIGHUP to this pid, outcome read from the admin API at this address.
    Signal {
        pid: u32,
        admin: SocketAddr,
    },
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            How::Admin(addr) => write!(f, "admin API {addr}"),
            How::Signal { pid, .. } => write!(f, "SIGHUP to pid {pid}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied {
                how,
                generation,
                change,
            } => write!(
                f,
                "reload applied ({how}): config generation {generation}, {change}"
            ),
            Outcome::Rejected { how, error } => write!(
                f,
                "reload rejected ({how}); the running tandem keeps its previous config:\n{error}"
            ),
            Outcome::Signalled { pid } => write!(
                f,
                "sent SIGHUP to pid {pid}; tandem logs whether the reload was applied"
            ),
        }
    }
}

/// No running tandem could be told to reload.
#[derive(Debug, thiserror::Error)]
#[error("no running tandem was told to reload: {}", tried.join("; "))]
pub struct NotReloaded {
    /// Each way tried, with why it failed.
    pub tried: Vec<String>,
}

/// Asks the tandem at `target` to reload; `timeout` bounds each admin exchange and the wait
/// for a signalled reload's outcome.
pub async fn trigger(target: &Target, timeout: Duration) -> Result<Outcome, NotReloaded> {
    let mut tried = Vec::new();
    if let Some(addr) = target.admin {
        match admin_reload(addr, target.token_file.as_ref(), timeout).await {
            Ok(outcome) => return Ok(outcome),
            Err(Refused { why, api_answers }) => {
                tried.push(why);
                // The API answers but will not reload for us: a signal can, and the API
                // still tells its outcome.
                if api_answers && target.pid.is_none() {
                    match signal_via_status(addr, timeout).await {
                        Ok(outcome) => return Ok(outcome),
                        Err(why) => tried.push(why),
                    }
                }
            }
        }
    } else {
        tried.push("the config has no [admin] listen (and no --admin was given)".into());
    }
    if let Some(pid) = target.pid {
        match signal(pid) {
            Ok(()) => return Ok(Outcome::Signalled { pid }),
            Err(why) => tried.push(why),
        }
    }
    Err(NotReloaded { tried })
}

/// The admin API would not reload: why, and whether it answered at all.
struct Refused {
    why: String,
    api_answers: bool,
}

async fn admin_reload(
    addr: SocketAddr,
    token_file: Option<&PathBuf>,
    timeout: Duration,
) -> Result<Outcome, Refused> {
    let token = match token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => {
                return Err(Refused {
                    why: format!("admin token file {} is empty", path.display()),
                    api_answers: true,
                });
            }
            Err(e) => {
                return Err(Refused {
                    why: format!("cannot read admin token file {}: {e}", path.display()),
                    api_answers: true,
                });
            }
        },
    };
    match client::reload(addr, token.as_deref(), timeout).await {
        Ok(ReloadAnswer::Applied { generation, change }) => Ok(Outcome::Applied {
            how: How::Admin(addr),
            generation,
            change,
        }),
        Ok(ReloadAnswer::Rejected { error }) => Ok(Outcome::Rejected {
            how: How::Admin(addr),
            error,
        }),
        Err(e) => {
            let api_answers = matches!(
                &e,
                FetchError::Status { status, .. }
                    if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN
            );
            Err(Refused {
                why: e.to_string(),
                api_answers,
            })
        }
    }
}

/// SIGHUPs the pid `/status` gives, then waits for `/status` to count a reload.
async fn signal_via_status(addr: SocketAddr, timeout: Duration) -> Result<Outcome, String> {
    if !is_local(addr.ip()) {
        return Err(format!(
            "the admin API {addr} is not on this host, so its pid cannot be signalled from here"
        ));
    }
    let before = client::fetch_status(addr, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let pid = before["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("the admin API {addr} does not tell its pid"))?;
    let seen = reloads(&before);
    signal(pid)?;
    let how = How::Signal { pid, admin: addr };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(POLL).await;
        if let Ok(now) = client::fetch_status(addr, timeout).await
            && reloads(&now) > seen
        {
            return Ok(last_reload(&now, how));
        }
        if tokio::time::Instant::now() >= deadline {
            // The signal went out; only its outcome is unknown.
            return Ok(Outcome::Signalled { pid });
        }
    }
}

/// Reloads attempted so far, applied or rejected, per `/status`.
fn reloads(status: &Value) -> u64 {
    let r = &status["reloads"];
    r["applied"].as_u64().unwrap_or(0) + r["rejected"].as_u64().unwrap_or(0)
}

/// The outcome of the latest reload in `/status`'s recent events.
fn last_reload(status: &Value, how: How) -> Outcome {
    let event = status["recent_events"]
        .as_array()
        .and_then(|events| events.iter().rev().find(|e| e["kind"] == "reload"));
    let message = event
        .and_then(|e| e["message"].as_str())
        .unwrap_or("")
        .to_string();
    match event {
        Some(e) if e["applied"] == false => Outcome::Rejected {
            how,
            error: message,
        },
        _ => Outcome::Applied {
            how,
            generation: status["generation"].as_u64().unwrap_or(0),
            change: message,
        },
    }
}

/// Whether `ip` is an address of this host (a pid from its admin API means a process here).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind((ip, 0)).is_ok()
}

/// Sends SIGHUP to `pid` after checking it is a tandem.
fn signal(pid: u32) -> Result<(), String> {
    // Linux names the process in /proc; elsewhere the check is skipped.
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let comm = comm.trim();
        if comm != "tandem" {
            return Err(format!(
                "pid {pid} is \"{comm}\", not tandem; not signalled"
            ));
        }
    }
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{pid} is not a process id"))?;
    rustix::process::kill_process(raw, rustix::process::Signal::HUP)
        .map_err(|e| format!("cannot send SIGHUP to pid {pid}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOW: How = How::Signal {
        pid: 7,
        admin: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9900),
    };

    #[test]
    fn the_latest_reload_event_is_the_outcome() {
        let status = json!({
            "generation": 4,
            "reloads": { "applied": 2, "rejected": 1 },
            "recent_events": [
                { "kind": "reload", "applied": false, "message": "old problem" },
                { "kind": "health", "member": "10.0.0.1" },
                { "kind": "reload", "applied": true, "message": "pool p changed" },
            ],
        });
        assert_eq!(reloads(&status), 3);
        assert_eq!(
            last_reload(&status, HOW),
            Outcome::Applied {
                how: HOW,
                generation: 4,
                change: "pool p changed".into()
            }
        );
        let rejected = json!({ "recent_events": [
            { "kind": "reload", "applied": false, "message": "cannot bind" },
        ]});
        assert_eq!(
            last_reload(&rejected, HOW),
            Outcome::Rejected {
                how: HOW,
                error: "cannot bind".into()
            }
        );
    }

    #[test]
    fn only_a_tandem_is_signalled() {
        // This test process is not named tandem.
        let e = signal(std::process::id()).expect_err("not tandem");
        assert!(e.contains("not tandem; not signalled"), "{e}");
    }

    #[tokio::test]
    async fn nothing_to_reach_is_reported_with_every_reason() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let target = Target {
            admin: Some(addr),
            ..Target::default()
        };
        let e = trigger(&target, Duration::from_secs(5))
            .await
            .expect_err("nobody there");
        assert_eq!(e.tried.len(), 1, "{e}");
        assert!(
            e.to_string()
                .starts_with("no running tandem was told to reload: cannot reach the admin API"),
            "{e}"
        );
        let none = trigger(&Target::default(), Duration::from_secs(5))
            .await
            .expect_err("no target");
        assert!(none.to_string().contains("no [admin] listen"), "{none}");
    }
}
