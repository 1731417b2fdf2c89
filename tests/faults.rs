//! Fault injection end to end: members in their own network namespaces, joined to the test's
//! namespace by veth pairs, so a test can cut a member off (its packets dropped: connects time
//! out, nothing is refused) and assert what clients see.
//!
//! Each member is a small greeting-and-echo server (the protocol of `tandem::demo::DemoMember`)
//! run by `ip netns exec NS python3 -c ...` on 198.18.N.2 (the benchmarking range, RFC 2544),
//! with 198.18.N.1 on the test's side of a /30 veth pair; nothing is routed anywhere else. The
//! cut is a `tc` qdisc on the test-side veth that drops every packet: `netem loss 100%` where
//! the kernel has netem, else `pfifo limit 0` (a queue that holds nothing).
//!
//! Without root or `ip netns` the tests print "skipped: ..." and pass; with `CI` set and root
//! they must run.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tandem::events::{self, Event, FailoverEvent};
use tandem::failover::Side;
use tandem::health::state::Verdict;
use tokio::sync::broadcast::Receiver;

const IP: &str = "/usr/sbin/ip";
const TC: &str = "/usr/sbin/tc";
const PORT: u16 = 7000;

/// The member: greets with its name line, then echoes until the client half-closes.
const MEMBER_PY: &str = r#"
import socket, sys, threading
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1024)
def serve(c):
    try:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall((name + "\n").encode())
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Subnets handed out in this process (several tests run at once).
static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A member in its own namespace: the namespace, the veth pair and the server process.
struct NsMember {
    name: String,
    ns: String,
    host_if: String,
    addr: SocketAddr,
    child: Option<Child>,
    cut: bool,
}

impl NsMember {
    fn create(name: &str) -> Result<NsMember, String> {
        let pid = std::process::id();
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        assert!(n < 64, "too many namespaced members in one process");
        // 198.18.0.0/15 holds 32768 /30s: 64 per process, spread by pid.
        let subnet = (pid % 512) * 64 + n;
        let base = 0xC612_0000u32 + subnet * 4; // 198.18.0.0
        let host_ip = Ipv4Addr::from(base + 1);
        let member_ip = Ipv4Addr::from(base + 2);
        let mut m = NsMember {
            name: name.to_string(),
            ns: format!("tandem-fault-{pid}-{n}"),
            host_if: format!("tf{pid}x{n}a"),
            addr: SocketAddr::new(IpAddr::V4(member_ip), PORT),
            child: None,
            cut: false,
        };
        // From here on, Drop cleans up whatever part was made.
        let peer_if = format!("tf{pid}x{n}b");
        let (ns, host_if) = (m.ns.clone(), m.host_if.clone());
        run(IP, &["netns", "add", &ns])?;
        run(
            IP,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ],
        )?;
        run(IP, &["link", "set", &peer_if, "netns", &ns])?;
        run(
            IP,
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        )?;
        run(IP, &["link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, IP];
            all.extend_from_slice(args);
            run(IP, &all)
        };
        in_ns(&["link", "set", "lo", "up"])?;
        in_ns(&["addr", "add", &format!("{member_ip}/30"), "dev", &peer_if])?;
        in_ns(&["link", "set", &peer_if, "up"])?;
        let child = Command::new(IP)
            .args(["netns", "exec", &ns, "python3", "-c", MEMBER_PY, name])
            .arg(member_ip.to_string())
            .arg(PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 in {ns}: {e}"))?;
        m.child = Some(child);
        Ok(m)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every packet the test's side sends to the member: connects time out.
    fn cut(&mut self) {
        let netem = run(
            TC,
            &[
                "qdisc",
                "add",
                "dev",
                &self.host_if,
                "root",
                "netem",
                "loss",
                "100%",
            ],
        );
        if netem.is_err() {
            run(
                TC,
                &[
                    "qdisc",
                    "add",
                    "dev",
                    &self.host_if,
                    "root",
                    "pfifo",
                    "limit",
                    "0",
                ],
            )
            .unwrap_or_else(|e| panic!("cannot cut {} off: {e}", self.name));
        }
        self.cut = true;
    }

    /// Undoes [`NsMember::cut`].
    fn restore(&mut self) {
        run(TC, &["qdisc", "del", "dev", &self.host_if, "root"])
            .unwrap_or_else(|e| panic!("cannot restore {}: {e}", self.name));
        self.cut = false;
    }

    /// Waits (at most 10 s) until the member greets with its name.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tried = tokio::time::timeout(
                Duration::from_millis(500),
                greeting_from(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.addr),
            )
            .await;
            match tried {
                Ok(Ok((name, _))) if name == self.name => return,
                Ok(Ok((name, _))) => panic!("{} greeted as {name}", self.name),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "member {} in {} did not start",
                self.name,
                self.ns
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NsMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The peer end lives in the namespace: deleting it deletes the pair. The explicit link
        // delete covers a failure between creating the pair and moving its peer.
        let _ = run(IP, &["netns", "del", &self.ns]);
        let _ = run(IP, &["link", "del", &self.host_if]);
    }
}

/// `n` namespaced members named `{prefix}1..n`, started and answering; `None` (after printing
/// why) where namespaces cannot be made and the tests may skip.
async fn ns_members(test: &str, prefix: &str, n: usize) -> Option<Vec<NsMember>> {
    let must_run = std::env::var_os("CI").is_some() && is_root();
    let skip = |why: String| -> Option<Vec<NsMember>> {
        assert!(!must_run, "{test}: CI is set and we are root, yet {why}");
        eprintln!("{test}: skipped: {why}");
        None
    };
    if !is_root() {
        return skip("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if !std::path::Path::new(IP).exists() || !std::path::Path::new(TC).exists() {
        return skip(format!("{IP} or {TC} is missing (iproute2)"));
    }
    let mut out = Vec::new();
    for i in 1..=n {
        match NsMember::create(&format!("{prefix}{i}")) {
            Ok(m) => out.push(m),
            Err(e) => return skip(format!("cannot make a namespaced member: {e}")),
        }
    }
    for m in &out {
        m.ready().await;
    }
    Some(out)
}

/// A `[[pool]]` table for namespaced members with the fast check these tests use: probes every
/// 200 ms, a 300 ms timeout, rise 2, fall 2.
fn ns_pool_toml(name: &str, members: &[NsMember]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("{{ addr = \"{}\" }}", m.addr()))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nmembers = [{}]\n{CHECK}",
        list.join(", ")
    )
}

const CHECK: &str = "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"300ms\"\n  rise = 2\n  fall = 2\n";
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);
const FALL: u32 = 2;

/// The longest a cut-off member may stay up after the cut: the checker's bound
/// (`fall x interval + timeout` after the last good probe began, plus a phase of up to 10% of
/// the interval), where a probe that overran its interval (timeout > interval here) is followed
/// at once, so each failing probe takes max(interval, timeout); plus 500 ms of slack.
/// Scheduling slack on top of the configured detection bound: a loaded CI machine delays the
/// probe tasks, and the bound is about the configured timing, not about the machine's speed.
const SCHEDULING_SLACK: Duration = Duration::from_millis(1500);

fn detection_bound() -> Duration {
    INTERVAL + INTERVAL.max(TIMEOUT) * FALL + INTERVAL / 10 + SCHEDULING_SLACK
}

/// A TCP `[[service]]` on 127.0.0.1:0 with a 300 ms connect timeout and extra lines.
fn ns_service_toml(pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"{pool}\"\n\
         connect_timeout = \"300ms\"\n{extra}\n"
    )
}

/// The failover event of service `s` to `to` (real time, at most `limit`).
async fn failover_event(rx: &mut Receiver<Event>, to: Side, limit: Duration) -> FailoverEvent {
    let found = events::wait_for(
        rx,
        limit,
        |e| matches!(e, Event::Failover(f) if &*f.service == "s" && f.to == to),
    );
    match found.await {
        Some(Event::Failover(f)) => f,
        _ => panic!("s did not fail over to {to} within {limit:?}"),
    }
}

fn since(at: SystemTime, earlier: SystemTime) -> Duration {
    at.duration_since(earlier).unwrap_or_default()
}

#[tokio::test]
async fn member_cut_off_times_out_and_clients_never_notice() {
    let Some(mut ms) = ns_members("cut_off", "m", 3).await else {
        return;
    };
    let toml = ns_pool_toml("p", &ms) + &ns_service_toml("p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let before = placement(100, addr).await;
    assert_eq!(counts(&before).len(), 3, "{:?}", counts(&before));

    // Long-lived streams; those on m2 are closed before the cut (they would hang, not fail).
    let mut streams = Vec::new();
    for i in 0..8 {
        let s = Stream::start(client_ip(500 + i), addr, u64::from(i)).await;
        if s.member == "m2" {
            s.finish().await.expect("stream to m2 before the cut");
        } else {
            streams.push(s);
        }
    }
    assert!(!streams.is_empty(), "no stream landed on a healthy member");

    let load = Load::start(addr, 1000, 300);
    let cut_at = SystemTime::now();
    ms[1].cut();
    let down = health_event(
        &mut events,
        ms[1].addr(),
        Verdict::Down,
        Duration::from_secs(10),
    )
    .await;
    let detected = since(down.at, cut_at);
    eprintln!(
        "cut_off: m2 down {detected:?} after the cut ({})",
        down.reason
    );
    assert!(
        detected <= detection_bound(),
        "m2 seen down {detected:?} after the cut; bound {:?}",
        detection_bound()
    );

    let during = placement(100, addr).await;
    for (b, d) in before.iter().zip(&during) {
        assert_ne!(d, "m2", "a new connection reached the cut-off member");
        if b != "m2" {
            assert_eq!(b, d, "a client of a healthy member changed member");
        }
    }

    let restored_at = SystemTime::now();
    ms[1].restore();
    let up = health_event(
        &mut events,
        ms[1].addr(),
        Verdict::Up,
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "cut_off: m2 up {:?} after the restore",
        since(up.at, restored_at)
    );
    let after = placement(100, addr).await;
    assert_eq!(before, after, "m2 gets exactly its clients back");

    let load = load.finish().await;
    eprintln!("cut_off: load {load:?}");
    assert!(load.ok > 0);
    assert_eq!(
        load.failed, 0,
        "client connections failed while a member was cut off: {load:?}"
    );
    let stats = app.stats("s").expect("stats");
    assert!(
        stats.connect_failures > 0,
        "the cut was never felt: no connect timed out"
    );
    for s in streams {
        let member = s.member.clone();
        let bytes = s
            .finish()
            .await
            .unwrap_or_else(|e| panic!("stream to {member} harmed by the cut: {e}"));
        assert!(bytes > 0, "stream to {member} moved no bytes");
    }
}

#[tokio::test]
async fn whole_local_pool_cut_off_fails_over_and_back_after_hold_down() {
    let Some(mut local) = ns_members("pool_cut_off", "local", 3).await else {
        return;
    };
    let backup = members("backup", 230, 3).await;
    let toml = ns_pool_toml("dc1", &local)
        + &pool_toml("dc2", &backup)
        + &fast_tcp_check(2, 2)
        + &ns_service_toml(
            "dc1",
            "backup_pool = \"dc2\"\nfailback_after = \"1s\"\nmin_healthy = 3",
        );
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let placed = placement(50, addr).await;
    assert!(
        placed.iter().all(|p| p.starts_with("local")),
        "{:?}",
        counts(&placed)
    );

    let cut_at = SystemTime::now();
    for m in &mut local {
        m.cut();
    }
    let failover = failover_event(&mut events, Side::Backup, Duration::from_secs(10)).await;
    let took = since(failover.at, cut_at);
    eprintln!(
        "pool_cut_off: failover {took:?} after the cut ({})",
        failover.reason
    );
    assert!(
        failover.reason.contains("below min_healthy"),
        "{}",
        failover.reason
    );
    assert!(
        took <= detection_bound(),
        "failed over {took:?} after the cut; bound {:?}",
        detection_bound()
    );

    // From here on every client is served, by the backup pool.
    let load = Load::start(addr, 2000, 200);
    let placed = placement(100, addr).await;
    assert!(
        placed.iter().all(|p| p.starts_with("backup")),
        "{:?}",
        counts(&placed)
    );

    for m in &mut local {
        m.restore();
    }
    let addrs: Vec<_> = local.iter().map(|m| m.addr()).collect();
    wait_health_all(&mut events, &addrs, Verdict::Up, Duration::from_secs(10)).await;
    let healthy_at = Instant::now();
    // Healthy again, but inside the hold-down: still on the backup pool.
    assert!(
        who_serves(client_ip(1), addr)
            .await
            .expect("serves")
            .starts_with("backup")
    );
    let failback = failover_event(&mut events, Side::Local, Duration::from_secs(10)).await;
    let held = healthy_at.elapsed();
    eprintln!(
        "pool_cut_off: failback {held:?} after the local pool was all up ({})",
        failback.reason
    );
    assert!(
        held >= Duration::from_millis(900),
        "failed back {held:?} after the local pool recovered; hold-down is 1 s"
    );
    assert!(
        failback.reason.contains("healthy for 1s"),
        "{}",
        failback.reason
    );
    assert!(
        who_serves(client_ip(1), addr)
            .await
            .expect("serves")
            .starts_with("local")
    );
    let load = load.finish().await;
    eprintln!("pool_cut_off: load after the failover {load:?}");
    assert!(load.ok > 0);
    assert_eq!(
        load.failed, 0,
        "a client failed after the failover: {load:?}"
    );
}
