//! The TCP side of the churn soaks (`tests/soak.rs`, `tests/chaos.rs`): clients that stream
//! checksummed data through the balancer and check every echoed byte, the record of member
//! kills, and the rules that judge each connection against those kills. Only the test binaries
//! that need it include this file (it needs `mod common;` at the crate root).
#![allow(dead_code)] // each including test uses its own subset

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::{client_ip, connect_from, pseudo_random};

/// Bytes per connection: between these, chosen by the connection's seed.
pub const MIN_BYTES: usize = 64 * 1024;
pub const MAX_BYTES: usize = 384 * 1024;
/// Hang guard for one connection: a stall is a failure, not a wait.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// One member kill: from the moment it started to the moment the member refused new connects
/// and its task was gone (`done`: `DemoMember::kill` shuts the listening socket down, so a
/// process forked meanwhile cannot keep it listening), and to the moment it listened again
/// (`revived`, once known).
#[derive(Debug, Clone)]
pub struct Kill {
    pub member: String,
    pub started: Instant,
    pub done: Instant,
    pub revived: Option<Instant>,
}

impl Kill {
    /// Whether the kill itself (not the time the member stayed dead) overlaps `start..=end`.
    pub fn overlaps(&self, start: Instant, end: Instant) -> bool {
        self.started <= end && self.done >= start
    }

    /// Whether the member was dead (being killed, or not yet listening again) at `t`.
    pub fn dead_at(&self, t: Instant) -> bool {
        self.started <= t && self.revived.is_none_or(|r| t <= r)
    }
}

/// One client connection, from its connect to its close.
#[derive(Debug)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    /// The client's address, once connected: what the access log names it by.
    pub client: Option<SocketAddr>,
    /// The member that greeted, if one did.
    pub member: Option<String>,
    /// Bytes sent, and bytes echoed back that matched, in order.
    pub sent: usize,
    pub verified: usize,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Connects from `source`, streams `len` seeded pseudo-random bytes while reading the echo
/// back, checks every byte in order, and closes.
pub async fn one_connection(source: IpAddr, addr: SocketAddr, seed: u64, len: usize) -> Attempt {
    let start = Instant::now();
    let mut attempt = Attempt {
        start,
        end: start,
        client: None,
        member: None,
        sent: 0,
        verified: 0,
        error: None,
    };
    let data = pseudo_random(seed, len);
    let result = tokio::time::timeout(CONNECTION_LIMIT, async {
        let conn = connect_from(source, addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        attempt.client = conn.local_addr().ok();
        // The greeting, read as `greeting_from` does, with the client's port known first.
        let mut reader = BufReader::new(conn);
        let mut member = String::new();
        match reader.read_line(&mut member).await {
            Ok(_) if member.ends_with('\n') => {}
            Ok(_) => return Err("greeting: closed before a greeting".to_string()),
            Err(e) => return Err(format!("greeting: {e}")),
        }
        member.pop();
        attempt.member = Some(member);
        // The member sends nothing after its greeting until we send, so nothing is buffered.
        let mut conn = reader.into_inner();
        let (mut r, mut w) = conn.split();
        // Writes in chunks of varying size, then passes the FIN on.
        let write = async {
            let mut chunk = 1 + (seed as usize % 32_768);
            while attempt.sent < len {
                let end = (attempt.sent + chunk).min(len);
                w.write_all(&data[attempt.sent..end])
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                attempt.sent = end;
                chunk = 1 + (chunk * 7919 + 13) % 32_768;
            }
            w.shutdown().await.map_err(|e| format!("shutdown: {e}"))
        };
        let read = async {
            let mut verified = 0;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return (verified, Err(format!("read: {e}"))),
                };
                if n == 0 {
                    break;
                }
                if verified + n > len || buf[..n] != data[verified..verified + n] {
                    let at = (0..n)
                        .find(|&i| data.get(verified + i) != Some(&buf[i]))
                        .map_or(verified + n, |i| verified + i);
                    return (verified, Err(format!("corrupted echo at byte {at}")));
                }
                verified += n;
            }
            if verified < len {
                return (
                    verified,
                    Err(format!("closed after {verified} of {len} bytes")),
                );
            }
            (verified, Ok(()))
        };
        let (written, (verified, read)) = tokio::join!(write, read);
        attempt.verified = verified;
        written.and(read)
    })
    .await;
    attempt.end = Instant::now();
    attempt.error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("stalled for {CONNECTION_LIMIT:?}")),
    };
    attempt
}

/// `clients` tasks, each opening one connection after another to `addr` until `stop`, from
/// `sources` rotating addresses starting at [`client_ip`]`(first_source)`. Each returns its
/// attempts.
pub fn tcp_clients(
    addr: SocketAddr,
    clients: u32,
    first_source: u32,
    sources: u32,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut k = 0u32;
                while !stop.load(Relaxed) {
                    let seed = (u64::from(c) << 32) | u64::from(k);
                    let spread = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize;
                    let len = MIN_BYTES + spread % (MAX_BYTES - MIN_BYTES);
                    let source = client_ip(first_source + (c + k * clients) % sources);
                    mine.push(one_connection(source, addr, seed, len).await);
                    k += 1;
                }
                mine
            })
        })
        .collect()
}

/// Every connection judged against the kills.
#[derive(Debug, Default)]
pub struct TcpVerdict {
    pub connections: usize,
    /// Completed with every byte back in order.
    pub ok: u64,
    /// Failed on a member that was being killed while the connection lived.
    pub cut: u64,
    /// Never greeted, while some member was being killed (it may have been in the dying
    /// member's accept queue).
    pub raced: u64,
    pub slowest_race: Duration,
    /// Bytes echoed back intact.
    pub bytes: u64,
    /// Failed although their member stayed up: lost, reordered or corrupted bytes, or an early
    /// close. One line each.
    pub broken: Vec<String>,
    /// Never greeted, with no kill going on.
    pub unserved: Vec<String>,
}

impl TcpVerdict {
    /// The rules of the soak: a connection may fail only when its own member was being killed
    /// during its life, or, before any member greeted, when some member was being killed (a
    /// connect that lands in a dying member's accept queue is handed to that member by tandem,
    /// and the client cannot tell a member's close from tandem's). `origin` is the start of the
    /// run, for the descriptions.
    pub fn judge(attempts: &[Attempt], kills: &[Kill], origin: Instant) -> TcpVerdict {
        let killed_during = |member: &str, a: &Attempt| {
            kills
                .iter()
                .any(|k| k.member == member && k.overlaps(a.start, a.end))
        };
        let any_kill_during = |a: &Attempt| kills.iter().any(|k| k.overlaps(a.start, a.end));
        let describe = |a: &Attempt| {
            format!(
                "\n  {:?} from {:?} at +{:?} for {:?}: sent {} verified {}: {}",
                a.member,
                a.client,
                a.start.saturating_duration_since(origin),
                a.end - a.start,
                a.sent,
                a.verified,
                a.error.as_deref().unwrap_or("-")
            )
        };
        let mut v = TcpVerdict {
            connections: attempts.len(),
            ..TcpVerdict::default()
        };
        for a in attempts {
            v.bytes += a.verified as u64;
            match (&a.member, &a.error) {
                (_, None) => v.ok += 1,
                (Some(m), Some(_)) if killed_during(m, a) => v.cut += 1,
                (Some(_), Some(_)) => v.broken.push(describe(a)),
                (None, Some(_)) if any_kill_during(a) => {
                    v.raced += 1;
                    v.slowest_race = v.slowest_race.max(a.end - a.start);
                }
                (None, Some(_)) => v.unserved.push(describe(a)),
            }
        }
        v
    }

    /// Panics with the first few failures if any connection broke or went unserved.
    pub fn assert_clean(&self) {
        assert!(
            self.broken.is_empty(),
            "{} connections lost or corrupted bytes while their member stayed up:{}",
            self.broken.len(),
            self.broken.iter().take(10).cloned().collect::<String>()
        );
        assert!(
            self.unserved.is_empty(),
            "{} new connections failed with no member being killed:{}",
            self.unserved.len(),
            self.unserved.iter().take(10).cloned().collect::<String>()
        );
    }
}
