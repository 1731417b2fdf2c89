//! Fault injection end to end: members in their own network namespaces (the harness is in
//! `netns/mod.rs`), so a test can cut a member off (its packets dropped: connects time out,
//! nothing is refused), lose or delay its packets, have it reset a connection mid-stream or
//! accept and never answer, and assert what clients see.
//!
//! Each test prints one line of figures (`fault | what the client saw | time to detect | bytes
//! lost`) for reports.
//!
//! They need root and `ip netns` (the loss and latency tests also `iptables-legacy`, which
//! `.ci/run` installs), so they are `#[ignore]`d: plain `cargo test` lists them as ignored, and
//! `cargo test -- --include-ignored` (what CI runs) runs them, failing with what is missing on a
//! machine that cannot.

mod common;
mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use netns::{NsMember, missing, ns_members, require_iptables};
use tandem::events::{self, Event, HealthEvent};
use tandem::failover::Side;
use tandem::health::state::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::Receiver;

/// A `[[pool]]` table for namespaced members with the fast check these tests use: probes every
/// 200 ms, a 300 ms timeout, rise 2, fall 2.
fn ns_pool_toml(name: &str, members: &[NsMember]) -> String {
    ns_pool_toml_with(name, members, CHECK)
}

/// A `[[pool]]` table for namespaced members with the given `[[pool.check]]` tables.
fn ns_pool_toml_with(name: &str, members: &[NsMember], checks: &str) -> String {
    pool_toml_of(name, members.iter().map(|m| m.addr()), checks)
}

const CHECK: &str = "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"300ms\"\n  rise = 2\n  fall = 2\n";
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);
const FALL: u32 = 2;
/// How long a test waits for a health or failover event that must come.
const EVENT_LIMIT: Duration = Duration::from_secs(10);

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

/// A TCP `[[service]]` named `name` on 127.0.0.1:0 with a 300 ms connect timeout and extra lines.
fn ns_service_toml(name: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"{pool}\"\n\
         connect_timeout = \"300ms\"\n{extra}\n"
    )
}

fn since(at: SystemTime, earlier: SystemTime) -> Duration {
    at.duration_since(earlier).unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
async fn member_cut_off_times_out_and_clients_never_notice() {
    let mut ms = ns_members("cut_off", "m", 3).await;
    let toml = ns_pool_toml("p", &ms) + &ns_service_toml("s", "p", "");
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
    let down = health_event(&mut events, ms[1].addr(), Verdict::Down, EVENT_LIMIT).await;
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
    assert_only_clients_of_moved(&before, &during, "m2", "cut-off");

    let restored_at = SystemTime::now();
    ms[1].restore();
    let up = health_event(&mut events, ms[1].addr(), Verdict::Up, EVENT_LIMIT).await;
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
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
async fn whole_local_pool_cut_off_fails_over_and_back_after_hold_down() {
    let mut local = ns_members("pool_cut_off", "local", 3).await;
    let backup = members("backup", 230, 3).await;
    let toml = ns_pool_toml("dc1", &local)
        + &pool_toml("dc2", &backup)
        + &fast_tcp_check(2, 2)
        + &ns_service_toml(
            "s",
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
    let failover = failover_event(&mut events, "s", Side::Backup, EVENT_LIMIT).await;
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
    wait_health_all(&mut events, &addrs, Verdict::Up, EVENT_LIMIT).await;
    let healthy_at = Instant::now();
    // Healthy again, but inside the hold-down: still on the backup pool.
    assert_served_by(client_ip(1), addr, "backup").await;
    let failback = failover_event(&mut events, "s", Side::Local, EVENT_LIMIT).await;
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
    assert_served_by(client_ip(1), addr, "local").await;
    let load = load.finish().await;
    eprintln!("pool_cut_off: load after the failover {load:?}");
    assert!(load.ok > 0);
    assert_eq!(
        load.failed, 0,
        "a client failed after the failover: {load:?}"
    );
}

/// The health event of `member` in pool `pool` reaching `to`, if one comes within `limit`.
async fn pool_health(
    rx: &mut Receiver<Event>,
    pool: &str,
    member: SocketAddr,
    to: Verdict,
    limit: Duration,
) -> Option<HealthEvent> {
    let want = member.to_string();
    let found = events::wait_for(
        rx,
        limit,
        |e| matches!(e, Event::Health(h) if &*h.pool == pool && *h.member == *want && h.to == to),
    );
    match found.await {
        Some(Event::Health(h)) => Some(h),
        _ => None,
    }
}

/// How long a test watches for a health change that must not come: long enough for `fall`
/// failed probes in a row and the verdict after them.
fn quiet_window() -> Duration {
    INTERVAL + INTERVAL.max(TIMEOUT) * FALL + INTERVAL
}

/// Long-lived streams through `addr` from clients `first..`, until every member of `members`
/// serves at least `per` of them (at most 64 clients are tried).
async fn streams_on_every_member(
    addr: SocketAddr,
    first: u32,
    members: &[NsMember],
    per: usize,
) -> Vec<Stream> {
    let mut streams: Vec<Stream> = Vec::new();
    for i in 0..64 {
        let short = members
            .iter()
            .any(|m| streams.iter().filter(|s| s.member == m.name()).count() < per);
        if !short {
            return streams;
        }
        streams.push(Stream::start(client_ip(first + i), addr, u64::from(first + i)).await);
    }
    panic!("64 clients did not give every member {per} streams");
}

/// Stops `streams` and checks every byte came back; returns (streams, bytes) per outcome:
/// those served by `member` and those served by the others.
async fn finish_streams(streams: Vec<Stream>, member: &str) -> ((usize, u64), (usize, u64)) {
    let (mut on, mut off) = ((0, 0), (0, 0));
    for s in streams {
        let name = s.member.clone();
        let bytes = s
            .finish()
            .await
            .unwrap_or_else(|e| panic!("stream to {name} harmed: {e}"));
        assert!(bytes > 0, "stream to {name} moved no bytes");
        let slot = if name == member { &mut on } else { &mut off };
        slot.0 += 1;
        slot.1 += bytes;
    }
    (on, off)
}

#[tokio::test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
async fn member_reset_mid_stream_reaches_its_client_and_nobody_else() {
    let ms = ns_members("reset", "r", 3).await;
    let toml = ns_pool_toml("p", &ms) + &ns_service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let before = placement(100, addr).await;
    let streams = streams_on_every_member(addr, 500, &ms, 2).await;

    // The victim: a connection through tandem that echoes some bytes, then has its member
    // abort it (SO_LINGER 0: the member's kernel sends a reset).
    let (victim, mut conn) = greeting_from(client_ip(700), addr)
        .await
        .expect("victim connects");
    let data = pseudo_random(700, 16 * 1024);
    conn.write_all(&data).await.expect("victim writes");
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).await.expect("victim's echo");
    assert!(back == data, "victim's echo corrupted");
    conn.write_all(b"RST\n").await.expect("send RST");
    let reset_at = Instant::now();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("the client's connection still open 5 s after its member reset it");
    let took = reset_at.elapsed();
    let seen = match &ended {
        Ok(n) => format!("EOF after {n} more bytes"),
        Err(e) => format!("{:?}", e.kind()),
    };
    assert!(rest.is_empty(), "{} bytes after the reset", rest.len());
    assert!(
        matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the member's reset reached the client as {seen}, not as a reset"
    );
    assert!(
        took < Duration::from_secs(1),
        "the client saw the reset only {took:?} after it"
    );

    // A reset of an established connection is not a failed connect: the member stays up and
    // keeps every one of its clients.
    let victim_addr = ms
        .iter()
        .find(|m| m.name() == victim)
        .expect("victim is a member")
        .addr();
    let down = pool_health(&mut events, "p", victim_addr, Verdict::Down, quiet_window()).await;
    assert!(
        down.is_none(),
        "{victim} marked down after a reset: {down:?}"
    );
    let after = placement(100, addr).await;
    assert_eq!(
        before, after,
        "a client moved after {victim} reset a connection"
    );
    let stats = app.stats("s").expect("stats");
    assert_eq!(
        stats.connect_failures, 0,
        "a reset counted as a connect failure"
    );

    let ((same, same_bytes), (other, other_bytes)) = finish_streams(streams, &victim).await;
    eprintln!(
        "reset: fault={victim} resets one connection after {} echoed bytes | client saw {seen} \
         {took:?} after the reset; {same} other streams on {victim} ({same_bytes} B) and {other} \
         on other members ({other_bytes} B) untouched | detect: none needed, {victim} stayed up, \
         100/100 clients kept their member | bytes lost: 0",
        data.len()
    );
}

/// An application check: the member must echo what it is sent.
const APP_CHECK: &str = "  [[pool.check]]\n  kind = \"send-expect\"\n  send = \"ping\\n\"\n  expect = \"ping\"\n  interval = \"200ms\"\n  timeout = \"300ms\"\n  rise = 2\n  fall = 2\n";

#[tokio::test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
async fn member_that_accepts_and_never_answers_fails_app_checks_not_tcp_checks() {
    let ms = ns_members("silent", "q", 3).await;
    // The same members behind two pools: `app` checked with send-expect, `plain` with tcp.
    let toml = ns_pool_toml_with("app", &ms, APP_CHECK)
        + &ns_pool_toml("plain", &ms)
        + &ns_service_toml("s", "app", "")
        + &ns_service_toml("t", "plain", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let mut plain_events = app.events();
    let s_addr = app.local_addr("s").expect("bound");
    let t_addr = app.local_addr("t").expect("bound");
    let before = placement(100, s_addr).await;
    let before_t = placement(100, t_addr).await;
    let streams = streams_on_every_member(s_addr, 500, &ms, 1).await;

    let silent = &ms[1];
    let muted_at = SystemTime::now();
    silent.mute().await;
    let down = pool_health(
        &mut events,
        "app",
        silent.addr(),
        Verdict::Down,
        EVENT_LIMIT,
    )
    .await
    .expect("the silent member did not fail its send-expect check within 10 s");
    let detected = since(down.at, muted_at);
    assert!(
        detected <= detection_bound(),
        "silent member seen down {detected:?} after it went silent; bound {:?}",
        detection_bound()
    );
    // A tcp check only sees the handshake, which the member's kernel still completes.
    let plain_down = pool_health(
        &mut plain_events,
        "plain",
        silent.addr(),
        Verdict::Down,
        quiet_window(),
    )
    .await;
    assert!(
        plain_down.is_none(),
        "the tcp check took the silent member down: {plain_down:?}"
    );

    let during = placement(100, s_addr).await;
    assert_only_clients_of_moved(&before, &during, silent.name(), "silent");
    // Through the tcp-checked service, the silent member's clients connect and hear nothing.
    let stuck = before_t
        .iter()
        .position(|p| p == silent.name())
        .expect("a client of the silent member on t") as u32;
    let waited = Duration::from_secs(1);
    let heard = tokio::time::timeout(waited, who_serves(client_ip(stuck), t_addr)).await;
    assert!(
        heard.is_err(),
        "a client of the silent member via the tcp-checked service heard {heard:?}"
    );

    let ((on, on_bytes), (off, off_bytes)) = finish_streams(streams, silent.name()).await;
    eprintln!(
        "silent: fault={} accepts, never answers | send-expect check: 0/100 new clients on it, \
         healthy clients kept; tcp check: its clients connect and get no byte in {waited:?} | \
         detect: send-expect down after {detected:?} (bound {:?}; {}), tcp check still up \
         {:?} later | bytes lost: 0 ({off} streams on healthy members {off_bytes} B, {on} \
         earlier streams on it {on_bytes} B)",
        silent.name(),
        detection_bound(),
        down.reason,
        quiet_window()
    );
}

/// A check that rides out random loss: a lost SYN is sent again after 1 s (the initial
/// retransmission timeout), so a 1.5 s timeout turns it into a slow probe rather than a failed
/// one, and fall 3 needs three failed probes in a row.
const LOSSY_CHECK: &str = "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"1500ms\"\n  rise = 2\n  fall = 3\n";
const LOSS: f64 = 0.05;
/// How long the streams run through the lossy member.
const LOSS_WINDOW: Duration = Duration::from_secs(3);

#[tokio::test]
#[ignore = "needs root, ip netns and iptables-legacy (CI runs it: cargo test -- --include-ignored)"]
async fn packet_loss_is_repaired_by_tcp_and_does_not_flap_health() {
    require_iptables("loss");
    let ms = ns_members("loss", "l", 3).await;
    let toml = ns_pool_toml_with("p", &ms, LOSSY_CHECK) + &ns_service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let streams = streams_on_every_member(addr, 500, &ms, 2).await;

    let lossy = &ms[1];
    let retransmits = lossy.retransmits();
    lossy
        .add_loss(LOSS)
        .unwrap_or_else(|e| panic!("cannot add loss: {e}"));
    // The streams run through the loss meanwhile.
    let down = pool_health(&mut events, "p", lossy.addr(), Verdict::Down, LOSS_WINDOW).await;
    let ((on, on_bytes), (off, off_bytes)) = finish_streams(streams, lossy.name()).await;
    let dropped = lossy.dropped();
    let retransmits = lossy.retransmits() - retransmits;
    assert!(
        down.is_none(),
        "{} flapped down under loss: {down:?}",
        lossy.name()
    );
    assert!(
        dropped > 0,
        "no packet was dropped: the loss was never felt"
    );
    let stats = app.stats("s").expect("stats");
    eprintln!(
        "loss: fault={:.0}% of {}'s packets dropped each way for {LOSS_WINDOW:?} ({dropped} \
         dropped, {retransmits} segments retransmitted by the member) | {on} streams via it \
         moved {on_bytes} B, every byte echoed in order; {off} on other members {off_bytes} B \
         | detect: none, it stayed up (tcp check, timeout 1.5 s, fall 3); {} connect failures \
         | bytes lost: 0",
        LOSS * 100.0,
        lossy.name(),
        stats.connect_failures
    );
}

/// Latencies either side of the check timeout (300 ms).
const SHORT_DELAY: Duration = Duration::from_millis(100);
const LONG_DELAY: Duration = Duration::from_millis(400);

#[tokio::test]
#[ignore = "needs root, ip netns and iptables-legacy (CI runs it: cargo test -- --include-ignored)"]
async fn latency_below_the_check_timeout_is_ridden_out_above_it_takes_the_member_down() {
    require_iptables("latency");
    let ms = ns_members("latency", "d", 3).await;
    let toml = ns_pool_toml("p", &ms) + &ns_service_toml("s", "p", "");
    let app = balancer(&toml).await;
    let mut events = app.events();
    let addr = app.local_addr("s").expect("bound");
    let before = placement(100, addr).await;
    let slow = &ms[1];
    let (slow_streams, streams): (Vec<_>, Vec<_>) = streams_on_every_member(addr, 500, &ms, 1)
        .await
        .into_iter()
        .partition(|s| s.member == slow.name());

    let delayer = slow.delay(SHORT_DELAY).unwrap_or_else(|e| {
        missing(
            "latency",
            &format!("a way to delay packets with NFQUEUE ({e})"),
        )
    });
    // Below the check timeout: the member's clients wait longer, and that is all.
    let client = before
        .iter()
        .position(|p| p == slow.name())
        .expect("a client of the slow member") as u32;
    let asked = Instant::now();
    let greeter = who_serves(client_ip(client), addr)
        .await
        .expect("the slow member's client is served");
    let greeting = asked.elapsed();
    assert_eq!(greeter, slow.name());
    assert!(
        greeting >= SHORT_DELAY,
        "greeting after {greeting:?}: the delay did not act"
    );
    let down = pool_health(&mut events, "p", slow.addr(), Verdict::Down, quiet_window()).await;
    assert!(
        down.is_none(),
        "{SHORT_DELAY:?} of latency took the member down: {down:?}"
    );
    let ((slow_count, slow_bytes), _) = finish_streams(slow_streams, slow.name()).await;

    // Above it: every probe times out.
    let raised_at = SystemTime::now();
    delayer.set(LONG_DELAY);
    let down = health_event(&mut events, slow.addr(), Verdict::Down, EVENT_LIMIT).await;
    let detected = since(down.at, raised_at);
    assert!(
        detected <= detection_bound(),
        "slow member seen down {detected:?} after the latency rose; bound {:?}",
        detection_bound()
    );
    let during = placement(100, addr).await;
    assert_only_clients_of_moved(&before, &during, slow.name(), "slow");
    let (_, (count, bytes)) = finish_streams(streams, slow.name()).await;

    let lowered_at = SystemTime::now();
    delayer.set(Duration::ZERO);
    let up = health_event(&mut events, slow.addr(), Verdict::Up, EVENT_LIMIT).await;
    eprintln!(
        "latency: fault={}'s packets held {SHORT_DELAY:?}, then {LONG_DELAY:?} (check timeout \
         {TIMEOUT:?}) | at {SHORT_DELAY:?}: greeting after {greeting:?}, {slow_count} streams \
         via it moved {slow_bytes} B intact; at {LONG_DELAY:?}: 0/100 new clients on it, \
         healthy clients kept | detect: stayed up at {SHORT_DELAY:?}; down {detected:?} after \
         the rise (bound {:?}; {}), up {:?} after the delay went | bytes lost: 0 ({count} \
         streams on healthy members {bytes} B)",
        slow.name(),
        detection_bound(),
        down.reason,
        since(up.at, lowered_at)
    );
}
