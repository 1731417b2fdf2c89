//! Chaos soak: everything the other soaks do one at a time, at once, against the real binary.
//! While TCP clients stream checksummed data and UDP clients exchange numbered datagrams:
//! - local members (TCP and UDP) are killed and revived, and now and then the whole local pools;
//! - the config file is rewritten and `tandem run` reloaded with SIGHUP every second (a
//!   harmless change, the `failover = "remote"` drill, a weight change, a member drained);
//! - every few seconds a new `tandem run --upgrade-from` takes the listening sockets over, the
//!   old process drains and exits (a reload is requested of it at the same moment).
//!
//! At the end:
//! - TCP, by the soak's rules ([`churn::TcpVerdict`]): every byte of every connection whose
//!   member stayed up came back in order, and no new connection failed unless a member was being
//!   killed meanwhile; tandem's own counters of clients turned away (no member, limit,
//!   resources), summed over every process from the totals each logs when it stops, are zero;
//! - UDP: every reply came from the address the client wrote to and carries the datagram sent,
//!   byte for byte. A datagram may go unanswered only while its client was *moving*:
//!   - its member was dead (killed while the datagram was out, or not yet revived): tandem
//!     sends there until the checks mark the member down, then re-hashes the session;
//!   - or a member killed less than [`DETECT`] before was not yet marked down and the client's
//!     session was being re-hashed onto it (the client's own member went away first);
//!   - or an upgrade was under way: the old process owns the session, and when it stops
//!     accepting the session's upstream socket closes with it, so a reply still in flight
//!     has nowhere to go; the client's next datagram opens a session in the new process. Each
//!     client has one datagram out at a time, so at most one per client per upgrade.
//!
//!   A reload moves nobody: a session stays on its member while that member is available
//!   (the drill and weight changes steer new sessions only), and a drained member's sessions
//!   re-hash on their next datagram, with nothing in flight. No run of losses for one client
//!   is longer than [`MAX_LOSS_RUN`];
//! - every old process exited 0 with nothing cut at the end of its grace;
//! - the last process, once the clients are gone and its UDP sessions expired, holds no
//!   connection or session, and its descriptors, threads and anonymous memory are back at the
//!   first process's baseline (same binary, same config, before any traffic), memory within
//!   [`RSS_SLACK_KIB`]. Upgrades stop for the last quarter of the run so that process carries
//!   a real share of the load.
//!
//! It runs `CHAOS_SECONDS` (default 60), and is `#[ignore]`d for that length only: plain
//! `cargo test` lists it, CI runs it with `--include-ignored`. A longer run:
//!
//! ```text
//! CHAOS_SECONDS=600 cargo test --release --test chaos -- --include-ignored --nocapture
//! ```
//!
//! With `CHAOS_ACCESS_LOG=FILE`, every process of the chain appends its access log (JSON) to
//! `FILE`: the outcome, pool and member of each connection, to tell what a failure was.

#[path = "common/churn.rs"]
mod churn;
mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use churn::{Kill, TcpVerdict, tcp_clients};
use common::*;
use process::Tandem;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const LOCAL_MEMBERS: u8 = 4;
const BACKUP_MEMBERS: u8 = 2;
const TCP_CLIENTS: u32 = 16;
/// Distinct source addresses the TCP clients rotate through.
const SOURCES: u32 = 1024;
const UDP_CLIENTS: u32 = 16;
/// UDP clients' addresses come after the TCP clients'.
const UDP_FIRST_SOURCE: u32 = SOURCES;
/// How long a UDP client waits for the reply before sending its next datagram. A reply that
/// comes later still counts (late, not lost).
const UDP_WAIT: Duration = Duration::from_millis(250);
/// Pause between a reply and the next datagram: about 150 datagrams a second per client.
const UDP_PACE: Duration = Duration::from_millis(5);
/// After the clients stop, how long a UDP client listens for late replies.
const UDP_LINGER: Duration = Duration::from_secs(1);
/// UDP session idle timeout in the config: short, so the last process's sessions (each one an
/// upstream socket) have expired when its descriptors are counted.
const UDP_IDLE: &str = "2s";
/// A killed member is marked down within this (fall 2 at 100 ms, probes refused at once; the
/// rest is scheduling slack on a loaded machine).
const DETECT: Duration = Duration::from_secs(1);
/// Longest run of unanswered datagrams one client may see: [`DETECT`] at one datagram per
/// [`UDP_WAIT`], twice over (a re-hash can land on a second member killed at the same time,
/// as in a pool outage), plus one for the upgrade.
const MAX_LOSS_RUN: usize = 2 * 4 + 1;
const CHURN_PERIOD: Duration = Duration::from_millis(1500);
/// One churn tick in this many takes the whole local pools down.
const OUTAGE_EVERY: u64 = 8;
const RELOAD_PERIOD: Duration = Duration::from_secs(1);
/// One reload tick in this many is also an upgrade.
const UPGRADE_EVERY: u64 = 5;
/// The old processes' drain bound; every TCP connection here ends within a few seconds, so
/// none should reach it, and the old processes exit during the run.
const GRACE: &str = "10s";
/// How long the last process gets to settle once the clients are gone (polled).
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// Anonymous RSS the last process may hold above the first one's idle baseline at the end. What
/// remains after a run is cache, not data: up to 64 free 16 KiB relay buffers per worker
/// thread (4 MiB with 4 workers), the tops of glibc's per-thread arenas (which it does not
/// trim on its own) and the session table's capacity. Measured: see the README's figures.
const RSS_SLACK_KIB: u64 = 24 * 1024;

/// Config variants the reloads rotate through.
const VARIANTS: u64 = 5;

/// The config in one of the reload variants: TCP service `s` over pools `dc1`/`dc2`, UDP
/// service `u` over `u1`/`u2`, both failing over below 2 healthy local members.
fn config_text(
    local: &[DemoMember],
    backup: &[DemoMember],
    ulocal: &[UdpMember],
    ubackup: &[UdpMember],
    variant: u64,
) -> String {
    let local_addrs: Vec<SocketAddr> = local.iter().map(|m| m.addr()).collect();
    let ulocal_addrs: Vec<SocketAddr> = ulocal.iter().map(|m| m.addr()).collect();
    let mut local_pool = pool_toml("dc1", local);
    let mut ulocal_pool = pool_toml_of("u1", ulocal_addrs.iter().copied(), "");
    let mut tcp = "backup_pool = \"dc2\"\nmin_healthy = 2\nfailback_after = \"1s\"\n".to_string();
    let mut udp = format!(
        "backup_pool = \"u2\"\nmin_healthy = 2\nfailback_after = \"1s\"\nidle_timeout = \"{UDP_IDLE}\"\n"
    );
    // Member `i` of a pool written with `extra` keys.
    let with = |pool: String, addr: SocketAddr, extra: &str| {
        pool.replacen(
            &format!("{{ addr = \"{addr}\" }}"),
            &format!("{{ addr = \"{addr}\", {extra} }}"),
            1,
        )
    };
    match variant % VARIANTS {
        0 => {}
        // A harmless service change.
        1 => tcp.push_str("idle_timeout = \"900s\"\n"),
        // The drill: new connections and sessions go to the paired pools.
        2 => {
            tcp.push_str("failover = \"remote\"\n");
            udp.push_str("failover = \"remote\"\n");
        }
        // A weight change rebuilds the local pools' tables.
        3 => {
            local_pool = with(local_pool, local_addrs[0], "weight = 2");
            ulocal_pool = with(ulocal_pool, ulocal_addrs[0], "weight = 2");
        }
        // A member drained: no new connections; UDP sessions on it re-hash.
        _ => {
            local_pool = with(local_pool, local_addrs[1], "state = \"drain\"");
            ulocal_pool = with(ulocal_pool, ulocal_addrs[1], "state = \"drain\"");
        }
    }
    let access = std::env::var("CHAOS_ACCESS_LOG")
        .map(|p| format!("[access_log]\npath = \"{p}\"\nformat = \"json\"\n\n"))
        .unwrap_or_default();
    "[admin]\nlisten = \"127.0.0.1:0\"\n\n".to_string()
        + &access
        + &local_pool
        + &fast_tcp_check(2, 2)
        + &pool_toml("dc2", backup)
        + &fast_tcp_check(2, 2)
        + &ulocal_pool
        + &fast_tcp_check(2, 2)
        + &udp_pool_toml("u2", ubackup, &fast_tcp_check(2, 2))
        + &service_toml("s", "dc1", &tcp)
        + &udp_service_toml("u", "u1", &udp)
}

/// A `tandem run` of the chain, with what its log has said so far.
struct Proc {
    tandem: Tandem,
    pid: u32,
    log: LogTally,
}

/// Lines of interest in one process's log.
#[derive(Debug, Default)]
struct LogTally {
    failovers: u64,
    reloads_applied: u64,
    reloads_rejected: Vec<String>,
    /// `service totals` lines, by service.
    totals: HashMap<String, Value>,
    /// `forced` of the `stopped` line.
    forced: Option<u64>,
    grace_over: bool,
}

impl LogTally {
    fn note(&mut self, v: &Value) {
        match v["message"].as_str().unwrap_or_default() {
            "failover state changed" => self.failovers += 1,
            "config reload applied" => self.reloads_applied += 1,
            "config reload rejected; the running config keeps serving" => {
                self.reloads_rejected.push(v.to_string())
            }
            "service totals" => {
                let service = v["service"].as_str().unwrap_or_default().to_string();
                self.totals.insert(service, v.clone());
            }
            "stopped" => self.forced = v["forced"].as_u64(),
            "shutdown grace over; closing remaining connections" => self.grace_over = true,
            _ => {}
        }
    }
}

impl Proc {
    fn spawn(config: &Path, socket: &Path, successor: bool) -> Proc {
        let flag = if successor {
            "--upgrade-from"
        } else {
            "--upgrade-socket"
        };
        let tandem = Tandem::spawn(
            config,
            &[
                "--shutdown-grace",
                GRACE,
                "--no-watch",
                flag,
                socket.to_str().expect("utf-8 path"),
            ],
        );
        let pid = tandem.child.id();
        Proc {
            tandem,
            pid,
            log: LogTally::default(),
        }
    }

    /// The next line with `message`, noting every line on the way.
    async fn expect(&mut self, message: &str) -> Value {
        let log = &mut self.log;
        let line = self
            .tandem
            .expect_log_noting(message, |v| log.note(v))
            .await;
        self.log.note(&line);
        line
    }

    /// The services' addresses and the admin API's, once it serves and listens for upgrades.
    async fn serving(&mut self) -> (HashMap<String, SocketAddr>, SocketAddr) {
        let mut services = HashMap::new();
        for _ in 0..2 {
            let line = self.expect("listening").await;
            let addr = line["listen"].as_str().and_then(|s| s.parse().ok());
            let name = line["service"].as_str().map(str::to_string);
            services.insert(name.expect("service"), addr.expect("listen address"));
        }
        // Bound before the admin API starts, so a successor is ready to be upgraded in turn.
        self.expect("upgrade socket listening").await;
        let admin = self.expect("admin API listening").await["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("admin address");
        (services, admin)
    }

    /// Waits for the process to exit by itself and reads the rest of its log.
    async fn finish(mut self, limit: Duration) -> Retired {
        let status = self.tandem.exit(limit).await;
        let exited = Instant::now();
        for line in self.tandem.rest_of_log().await {
            let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
            self.log.note(&v);
        }
        Retired {
            pid: self.pid,
            status,
            exited,
            log: self.log,
        }
    }
}

/// A process of the chain after it exited.
#[derive(Debug)]
struct Retired {
    pid: u32,
    status: std::process::ExitStatus,
    exited: Instant,
    log: LogTally,
}

/// What a process holds, read from /proc.
#[derive(Debug, Clone, Copy)]
struct Resources {
    fds: usize,
    threads: u64,
    rss_anon_kib: u64,
}

impl Resources {
    fn of(pid: u32) -> Resources {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        };
        Resources {
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("read /proc/PID/fd")
                .count(),
            threads: field("Threads:"),
            rss_anon_kib: field("RssAnon:"),
        }
    }
}

impl Resources {
    /// The least of a few samples over half a second: health checks open and close a socket
    /// every few milliseconds, and a sample that catches one in flight is not the baseline.
    async fn idle(pid: u32) -> Resources {
        let mut least = Resources::of(pid);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = Resources::of(pid);
            least = Resources {
                fds: least.fds.min(now.fds),
                threads: least.threads.min(now.threads),
                rss_anon_kib: least.rss_anon_kib.min(now.rss_anon_kib),
            };
        }
        least
    }
}

/// `GET path` on the admin API: the body.
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of series `series` (name and labels, as rendered) in a Prometheus exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The datagram client `c` sends as number `seq`: client, number, then seeded bytes of a
/// length chosen by the seed. A reply is checked against it byte for byte.
fn datagram(c: u32, seq: u64) -> Vec<u8> {
    let seed = (u64::from(c) << 40) ^ seq;
    let len = 16 + (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize; // 16..1039
    let mut out = Vec::with_capacity(12 + len);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&pseudo_random(seed, len));
    out
}

/// A datagram that got no reply.
#[derive(Debug, Clone)]
struct Unanswered {
    seq: u64,
    at: Instant,
    /// The member of the client's last reply before it was sent.
    member: Option<String>,
}

/// What one UDP client saw.
#[derive(Debug, Default)]
struct UdpTally {
    client: u32,
    sent: u64,
    replied: u64,
    /// Answered after the client had stopped waiting.
    late: u64,
    /// The longest a reply took (late ones included).
    slowest: Duration,
    bytes: u64,
    /// Replies that were wrong (source, content, number): one line each.
    bad: Vec<String>,
    lost: Vec<Unanswered>,
}

/// Checks one reply of client `c` and returns (member, number).
fn check_reply(
    c: u32,
    reply: &[u8],
    from: SocketAddr,
    addr: SocketAddr,
) -> Result<(String, u64), String> {
    if from != addr {
        return Err(format!("reply from {from}, not from {addr}"));
    }
    let bar = reply
        .iter()
        .position(|&b| b == b'|')
        .ok_or("reply without a member prefix")?;
    let (name, payload) = (&reply[..bar], &reply[bar + 1..]);
    if payload.len() < 12 || payload[..4] != c.to_be_bytes() {
        return Err(format!(
            "reply of {} bytes not of this client",
            payload.len()
        ));
    }
    let seq = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
    if payload != datagram(c, seq) {
        return Err(format!("reply to datagram {seq} corrupted"));
    }
    Ok((String::from_utf8_lossy(name).into_owned(), seq))
}

/// Client `c` sends numbered datagrams to `addr`, one at a time, until `stop`; then listens
/// [`UDP_LINGER`] for late replies.
async fn udp_client_loop(c: u32, addr: SocketAddr, stop: Arc<AtomicBool>) -> UdpTally {
    let socket = udp_client(client_ip(UDP_FIRST_SOURCE + c)).await;
    let mut buf = vec![0u8; 65535];
    let mut t = UdpTally {
        client: c,
        ..UdpTally::default()
    };
    let mut waiting: HashMap<u64, Unanswered> = HashMap::new();
    let mut member: Option<String> = None;
    let mut seq = 0u64;
    // One reply: Some(true) when it answers `current`.
    let take = |t: &mut UdpTally,
                waiting: &mut HashMap<u64, Unanswered>,
                member: &mut Option<String>,
                n: usize,
                from: SocketAddr,
                buf: &[u8],
                (current, sent): (u64, Instant)| {
        match check_reply(c, &buf[..n], from, addr) {
            Ok((name, s)) if s == current => {
                t.replied += 1;
                t.bytes += n as u64;
                t.slowest = t.slowest.max(sent.elapsed());
                *member = Some(name);
                true
            }
            Ok((_, s)) => {
                if let Some(l) = waiting.remove(&s) {
                    t.late += 1;
                    t.bytes += n as u64;
                    t.slowest = t.slowest.max(l.at.elapsed());
                } else {
                    t.bad
                        .push(format!("client {c}: reply to datagram {s} not awaited"));
                }
                false
            }
            Err(e) => {
                t.bad.push(format!("client {c}: {e}"));
                false
            }
        }
    };
    while !stop.load(Relaxed) {
        seq += 1;
        let at = Instant::now();
        socket
            .send_to(&datagram(c, seq), addr)
            .await
            .expect("client send");
        t.sent += 1;
        let deadline = tokio::time::Instant::now() + UDP_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Err(_) => {
                    let lost = Unanswered {
                        seq,
                        at,
                        member: member.clone(),
                    };
                    waiting.insert(seq, lost);
                    break;
                }
                Ok(Err(e)) => t.bad.push(format!("client {c}: recv: {e}")),
                Ok(Ok((n, from))) => {
                    if take(&mut t, &mut waiting, &mut member, n, from, &buf, (seq, at)) {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(UDP_PACE).await;
    }
    while !waiting.is_empty() {
        match tokio::time::timeout(UDP_LINGER, socket.recv_from(&mut buf)).await {
            Err(_) => break,
            Ok(Err(e)) => t.bad.push(format!("client {c}: recv: {e}")),
            Ok(Ok((n, from))) => {
                take(
                    &mut t,
                    &mut waiting,
                    &mut member,
                    n,
                    from,
                    &buf,
                    (0, Instant::now()),
                );
            }
        }
    }
    t.lost = waiting.into_values().collect();
    t.lost.sort_by_key(|l| l.seq);
    t
}

/// The members after the churn, and every kill.
struct Churned {
    tcp: Vec<DemoMember>,
    udp: Vec<UdpMember>,
    tcp_kills: Vec<Kill>,
    udp_kills: Vec<Kill>,
    outages: u64,
}

/// Kills and revives local members (the TCP and the UDP member of one index together) every
/// [`CHURN_PERIOD`]: one at a time, sometimes two, and every [`OUTAGE_EVERY`] ticks all of
/// them, each down for one period.
async fn churn(
    mut tcp: Vec<DemoMember>,
    mut udp: Vec<UdpMember>,
    stop: CancellationToken,
) -> Churned {
    let (mut tcp_kills, mut udp_kills) = (Vec::new(), Vec::new());
    let mut outages = 0;
    // (member index, its kill in tcp_kills and in udp_kills)
    let mut down: Vec<(usize, usize, usize)> = Vec::new();
    let n = tcp.len();
    let mut tick = tokio::time::interval(CHURN_PERIOD);
    tick.tick().await;
    let revive = async |tcp: &mut Vec<DemoMember>,
                        udp: &mut Vec<UdpMember>,
                        tcp_kills: &mut Vec<Kill>,
                        udp_kills: &mut Vec<Kill>,
                        (m, tk, uk): (usize, usize, usize)| {
        tcp[m].restart().await.expect("member revives");
        tcp_kills[tk].revived = Some(Instant::now());
        udp[m].restart().await;
        udp_kills[uk].revived = Some(Instant::now());
    };
    for i in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        for d in std::mem::take(&mut down) {
            revive(&mut tcp, &mut udp, &mut tcp_kills, &mut udp_kills, d).await;
        }
        let victims: Vec<usize> = if i % OUTAGE_EVERY == OUTAGE_EVERY - 3 {
            outages += 1;
            (0..n).collect()
        } else if i % 3 == 2 {
            vec![i as usize % n, (i as usize + 1) % n]
        } else {
            vec![i as usize % n]
        };
        for m in victims {
            let started = Instant::now();
            tcp[m].kill().await;
            tcp_kills.push(Kill {
                member: tcp[m].name().to_string(),
                started,
                done: Instant::now(),
                revived: None,
            });
            let started = Instant::now();
            udp[m].kill().await;
            udp_kills.push(Kill {
                member: udp[m].name().to_string(),
                started,
                done: Instant::now(),
                revived: None,
            });
            down.push((m, tcp_kills.len() - 1, udp_kills.len() - 1));
        }
    }
    for d in down {
        revive(&mut tcp, &mut udp, &mut tcp_kills, &mut udp_kills, d).await;
    }
    Churned {
        tcp,
        udp,
        tcp_kills,
        udp_kills,
        outages,
    }
}

/// Why an unanswered datagram was allowed, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LossReason {
    /// Its client's member was dead.
    MemberDead,
    /// Another member, killed less than [`DETECT`] before, was not yet marked down.
    RehashedOntoDead,
    /// During an upgrade (the first such loss of its client in that upgrade).
    Upgrade,
    Unjustified,
}

/// Judges every unanswered datagram of every client; returns the count per reason, the
/// unjustified ones described, and the longest run of consecutive losses of one client.
fn judge_udp(
    clients: &[UdpTally],
    kills: &[Kill],
    upgrades: &[(Instant, Instant)],
    origin: Instant,
) -> (HashMap<LossReason, u64>, Vec<String>, usize) {
    let mut counts = HashMap::new();
    let mut unjustified = Vec::new();
    let mut longest = 0;
    for t in clients {
        let mut upgrades_used = vec![false; upgrades.len()];
        let mut run = 0;
        let mut previous = None;
        for l in &t.lost {
            run = if previous == Some(l.seq - 1) {
                run + 1
            } else {
                1
            };
            longest = longest.max(run);
            previous = Some(l.seq);
            let out_until = l.at + UDP_WAIT;
            let own_dead = l.member.as_deref().is_some_and(|m| {
                kills.iter().any(|k| {
                    k.member == m && k.started <= out_until && k.revived.is_none_or(|r| r >= l.at)
                })
            });
            let other_unnoticed = kills.iter().any(|k| {
                k.started <= out_until
                    && k.started + DETECT >= l.at
                    && k.revived.is_none_or(|r| r >= l.at)
            });
            let upgrade = upgrades
                .iter()
                .position(|&(from, to)| from <= out_until && l.at <= to);
            let reason = if own_dead {
                LossReason::MemberDead
            } else if other_unnoticed {
                LossReason::RehashedOntoDead
            } else if let Some(u) = upgrade.filter(|&u| !upgrades_used[u]) {
                upgrades_used[u] = true;
                LossReason::Upgrade
            } else {
                unjustified.push(format!(
                    "\n  client {} datagram {} at +{:?} (member {:?}), upgrade window {:?}",
                    t.client,
                    l.seq,
                    l.at - origin,
                    l.member,
                    upgrade
                ));
                LossReason::Unjustified
            };
            *counts.entry(reason).or_default() += 1;
        }
    }
    (counts, unjustified, longest)
}

/// Sum of field `key` of the `service totals` lines for `service` over every process.
fn total(processes: &[Retired], service: &str, key: &str) -> u64 {
    processes
        .iter()
        .filter_map(|p| p.log.totals.get(service))
        .map(|v| v[key].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a 60 s soak (CHAOS_SECONDS) against the real binary (CI runs it: cargo test -- \
            --include-ignored)"]
async fn chaos_soak() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let duration = Duration::from_secs(seconds);
    // Upgrades stop for the last quarter (at least 15 s) so the last process carries load.
    let upgrades_until = duration.saturating_sub((duration / 4).max(Duration::from_secs(15)));

    let local = members("local", 180, LOCAL_MEMBERS).await;
    let backup = members("backup", 180 + LOCAL_MEMBERS, BACKUP_MEMBERS).await;
    let ulocal = udp_members("ulocal", 190, LOCAL_MEMBERS).await;
    let ubackup = udp_members("ubackup", 190 + LOCAL_MEMBERS, BACKUP_MEMBERS).await;
    // Member addresses never change (a revived member rebinds its own): every variant can be
    // written now, before the churn task takes the local members.
    let variants: Vec<String> = (0..VARIANTS)
        .map(|v| config_text(&local, &backup, &ulocal, &ubackup, v))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    let socket = dir.path().join("upgrade.sock");
    std::fs::write(&path, &variants[0]).expect("write config");

    let mut current = Proc::spawn(&path, &socket, false);
    let (services, admin) = current.serving().await;
    let (tcp_addr, udp_addr) = (services["s"], services["u"]);
    // One scrape first: rendering registers the series, which is memory the process keeps.
    let _ = admin_get(admin, "/metrics").await;
    let baseline = Resources::idle(current.pid).await;

    let stop = CancellationToken::new();
    let clients_stop = Arc::new(AtomicBool::new(false));
    let tcp = tcp_clients(tcp_addr, TCP_CLIENTS, 0, SOURCES, clients_stop.clone());
    let udp: Vec<_> = (0..UDP_CLIENTS)
        .map(|c| tokio::spawn(udp_client_loop(c, udp_addr, clients_stop.clone())))
        .collect();
    let churner = tokio::spawn(churn(local, ulocal, stop.clone()));

    // Reloads and upgrades from this task, one after the other, as an operator's tooling would.
    let started = Instant::now();
    // The same moment on the wall clock, which the access log's times are in.
    let started_wall = std::time::SystemTime::now();
    let mut retiring = Vec::new();
    let mut upgrade_windows = Vec::new();
    let mut reloads = 0u64;
    let mut slowest_upgrade = Duration::ZERO;
    let mut tick = tokio::time::interval(RELOAD_PERIOD);
    tick.tick().await;
    while started.elapsed() < duration {
        tick.tick().await;
        reloads += 1;
        std::fs::write(&path, &variants[(reloads % VARIANTS) as usize]).expect("write config");
        current.tandem.signal("HUP");
        if !reloads.is_multiple_of(UPGRADE_EVERY) || started.elapsed() >= upgrades_until {
            current.expect("config reload applied").await;
            continue;
        }
        // An upgrade, requested while the old process reloads.
        let from = Instant::now();
        let mut next = Proc::spawn(&path, &socket, true);
        let (now_serving, now_admin) = next.serving().await;
        assert_eq!(
            now_serving, services,
            "the new process took the same sockets"
        );
        assert_eq!(now_admin, admin, "the admin API keeps its socket");
        current
            .expect("upgrade: new process serving; stopping accepting and draining")
            .await;
        let handed = Instant::now();
        slowest_upgrade = slowest_upgrade.max(handed - from);
        // The old process's UDP sessions end a moment after it says so; a datagram sent before
        // that may lose its reply. A second of margin for the scheduling of a loaded machine.
        upgrade_windows.push((from, handed + Duration::from_secs(1)));
        let old = std::mem::replace(&mut current, next);
        retiring.push(tokio::spawn(old.finish(Duration::from_secs(30))));
    }
    let ran = started.elapsed();

    stop.cancel();
    let churned = churner.await.expect("churn task");
    clients_stop.store(true, Relaxed);
    let mut attempts = Vec::new();
    for c in tcp {
        attempts.extend(c.await.expect("tcp client task"));
    }
    let mut udp_tallies = Vec::new();
    for c in udp {
        udp_tallies.push(c.await.expect("udp client task"));
    }
    let mut processes = Vec::new();
    for r in retiring {
        processes.push(r.await.expect("old process watcher"));
    }
    let last_retired_at = processes.iter().map(|p| p.exited).max();

    // The last process: nothing open once its sessions have expired, then its resources back.
    let settle_until = Instant::now() + SETTLE_LIMIT;
    let (end, metrics) = loop {
        let metrics = admin_get(admin, "/metrics").await;
        let open = sample(&metrics, "tandem_connections_active{service=\"s\"}").zip(sample(
            &metrics,
            "tandem_udp_sessions_active{service=\"u\"}",
        ));
        let now = Resources::of(current.pid);
        let settled = open == Some((0.0, 0.0))
            && now.fds <= baseline.fds
            && now.threads <= baseline.threads
            && now.rss_anon_kib <= baseline.rss_anon_kib + RSS_SLACK_KIB;
        if settled || Instant::now() >= settle_until {
            break (now, metrics);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let open_fds_metric = sample(&metrics, "process_open_fds");
    let connections_open = sample(&metrics, "tandem_connections_active{service=\"s\"}");
    let sessions_open = sample(&metrics, "tandem_udp_sessions_active{service=\"u\"}");
    current.tandem.signal("TERM");
    processes.push(current.finish(Duration::from_secs(30)).await);
    drop(churned.tcp);
    drop(churned.udp);
    drop(backup);
    drop(ubackup);

    let tcp_verdict = TcpVerdict::judge(&attempts, &churned.tcp_kills, started);
    drop(attempts);
    let (losses, unjustified, longest_run) =
        judge_udp(&udp_tallies, &churned.udp_kills, &upgrade_windows, started);
    let count = |f: fn(&UdpTally) -> u64| udp_tallies.iter().map(f).sum::<u64>();
    let (sent, replied, late, udp_bytes) = (
        count(|t| t.sent),
        count(|t| t.replied),
        count(|t| t.late),
        count(|t| t.bytes),
    );
    let lost = count(|t| t.lost.len() as u64);
    let slowest_reply = udp_tallies
        .iter()
        .map(|t| t.slowest)
        .max()
        .unwrap_or_default();
    let bad: Vec<String> = udp_tallies.iter().flat_map(|t| t.bad.clone()).collect();
    let reason = |r| losses.get(&r).copied().unwrap_or(0);
    let upgrades = upgrade_windows.len();
    let failovers: u64 = processes.iter().map(|p| p.log.failovers).sum();
    let applied: u64 = processes.iter().map(|p| p.log.reloads_applied).sum();
    let rejected: Vec<&String> = processes
        .iter()
        .flat_map(|p| &p.log.reloads_rejected)
        .collect();
    let kills = churned.tcp_kills.len() + churned.udp_kills.len();

    println!(
        "chaos: {}s tcp connections={} ok={} cut_by_kill={} raced_kill={} (slowest {:?}) \
         broken={} unserved={} bytes={} ({} MiB) | udp datagrams={sent} replied={replied} \
         late={late} (slowest reply {slowest_reply:?}) lost={lost} (member_dead={} rehashed_onto_dead={} upgrade={} \
         unjustified={}) longest_loss_run={longest_run} bad={} bytes={udp_bytes} | \
         upgrades={upgrades} (slowest {slowest_upgrade:?}) processes={} reloads={reloads} \
         applied={applied} kills={kills} outages={} failovers={failovers} | \
         rejected (no member/limit/resources) tcp={}/{}/{} udp={}/{}/{} retries={} rehashed={} | last process fds={}->{} \
         (metric {:?}) threads={}->{} rss_anon_kib={}->{}",
        ran.as_secs(),
        tcp_verdict.connections,
        tcp_verdict.ok,
        tcp_verdict.cut,
        tcp_verdict.raced,
        tcp_verdict.slowest_race,
        tcp_verdict.broken.len(),
        tcp_verdict.unserved.len(),
        tcp_verdict.bytes,
        tcp_verdict.bytes >> 20,
        reason(LossReason::MemberDead),
        reason(LossReason::RehashedOntoDead),
        reason(LossReason::Upgrade),
        reason(LossReason::Unjustified),
        bad.len(),
        processes.len(),
        churned.outages,
        total(&processes, "s", "rejected_no_member"),
        total(&processes, "s", "rejected_max_connections"),
        total(&processes, "s", "rejected_resources"),
        total(&processes, "u", "rejected_no_member"),
        total(&processes, "u", "rejected_max_connections"),
        total(&processes, "u", "rejected_resources"),
        total(&processes, "s", "connect_retries"),
        total(&processes, "u", "udp_sessions_rehashed"),
        baseline.fds,
        end.fds,
        open_fds_metric,
        baseline.threads,
        end.threads,
        baseline.rss_anon_kib,
        end.rss_anon_kib,
    );

    // Every process of the chain: exited 0, nothing cut by the grace, its totals logged.
    for p in &processes {
        assert!(
            p.status.success(),
            "process {} exited with {}",
            p.pid,
            p.status
        );
        assert_eq!(
            (p.log.forced, p.log.grace_over),
            (Some(0), false),
            "process {} cut connections at the end of its grace",
            p.pid
        );
        for service in ["s", "u"] {
            assert!(
                p.log.totals.contains_key(service),
                "process {} logged no totals for {service}",
                p.pid
            );
        }
    }
    if let Some(at) = last_retired_at {
        assert!(at < started + ran, "old processes must exit during the run");
    }
    assert!(rejected.is_empty(), "reloads rejected: {rejected:?}");

    for service in ["s", "u"] {
        for key in [
            "rejected_no_member",
            "rejected_max_connections",
            "rejected_resources",
        ] {
            assert_eq!(
                total(&processes, service, key),
                0,
                "service {service}: tandem turned clients away ({key}) with the backup pool up"
            );
        }
    }

    if !(tcp_verdict.broken.is_empty() && tcp_verdict.unserved.is_empty()) {
        // What a failure is matched against in the access log: the run's start on the wall
        // clock, and the kills around the failures.
        println!(
            "chaos: run started at {} (wall clock); kills started +s, done +s, revived +s:",
            humantime::format_rfc3339_millis(started_wall)
        );
        let at = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
        for k in churned.tcp_kills.iter().chain(&churned.udp_kills) {
            println!(
                "  {} {:.4} {:.4} {:?}",
                k.member,
                at(k.started),
                at(k.done),
                k.revived.map(at)
            );
        }
    }
    tcp_verdict.assert_clean();
    assert!(
        bad.is_empty(),
        "{} wrong UDP replies:\n  {}",
        bad.len(),
        bad.iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert!(
        unjustified.is_empty(),
        "{} datagrams unanswered while their client was not moving:{}",
        unjustified.len(),
        unjustified.iter().take(10).cloned().collect::<String>()
    );
    assert!(
        longest_run <= MAX_LOSS_RUN,
        "a client lost {longest_run} datagrams in a row (at most {MAX_LOSS_RUN})"
    );

    assert!(
        tcp_verdict.ok > 0 && replied > 0 && kills > 0 && upgrades > 0 && churned.outages > 0,
        "the chaos did nothing"
    );
    assert_eq!(
        (connections_open, sessions_open),
        (Some(0.0), Some(0.0)),
        "the last process still holds connections or sessions"
    );
    assert!(
        end.fds <= baseline.fds,
        "descriptors leaked: {} at the first process's start, {} in the last at the end",
        baseline.fds,
        end.fds
    );
    assert!(
        end.threads <= baseline.threads,
        "threads: {} at the start, {} at the end",
        baseline.threads,
        end.threads
    );
    assert!(
        end.rss_anon_kib <= baseline.rss_anon_kib + RSS_SLACK_KIB,
        "anonymous RSS {} KiB at the end, baseline {} KiB + {RSS_SLACK_KIB} KiB slack",
        end.rss_anon_kib,
        baseline.rss_anon_kib
    );
}
