//! Shared test helpers: a balancer from a TOML string, demo members on distinct loopback hosts,
//! and clients bound to chosen loopback source addresses.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset of these helpers

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tandem::app::App;
use tandem::config;
pub use tandem::demo::{DemoMember, client_ip, connect_from, greeting_from, who_serves};
use tandem::events::{self, Event};

/// Starts a balancer from a TOML config text.
pub async fn balancer(toml: &str) -> App {
    let cfg = match config::parse(toml, "test.toml") {
        Ok(cfg) => cfg,
        Err(problems) => panic!("test config is invalid:\n{problems}\n---\n{toml}"),
    };
    App::start(cfg).await.expect("balancer starts")
}

/// `n` demo members named `{prefix}1..n` on hosts 127.0.1.{first_host}.., each on a free port.
pub async fn members(prefix: &str, first_host: u8, n: u8) -> Vec<DemoMember> {
    let mut out = Vec::new();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, first_host + i));
        let m = DemoMember::start(&format!("{prefix}{}", i + 1), SocketAddr::new(ip, 0))
            .await
            .expect("member starts");
        out.push(m);
    }
    out
}

/// A `[[pool]]` table listing `members` by address.
pub fn pool_toml(name: &str, members: &[DemoMember]) -> String {
    pool_toml_of(name, members.iter().map(|m| m.addr()), "")
}

/// A `[[pool]]` table listing the members at `addrs`, with extra lines (checks) after it.
pub fn pool_toml_of(
    name: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    extra: &str,
) -> String {
    let list: Vec<String> = addrs
        .into_iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nmembers = [{}]\n{extra}",
        list.join(", ")
    )
}

/// A `[[service]]` table on 127.0.0.1:0 in front of `pool`, with extra `key = value` lines.
pub fn service_toml(name: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"{pool}\"\n\
         connect_timeout = \"1s\"\n{extra}\n"
    )
}

/// Which member serves each of clients `0..n` (distinct source addresses), 16 at a time.
pub async fn placement(n: u32, addr: SocketAddr) -> Vec<String> {
    let mut out = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 16).min(n))
            .map(|c| tokio::spawn(who_serves(client_ip(c), addr)))
            .collect();
        for task in batch {
            let name = task
                .await
                .expect("client task")
                .unwrap_or_else(|e| panic!("client connection failed: {e}"));
            out.push(name);
        }
        i += 16;
    }
    out
}

/// How many clients each member got.
pub fn counts(placement: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in placement {
        *m.entry(p.clone()).or_default() += 1;
    }
    m
}

/// Asserts that, from placement `before` to placement `during`, no client went to `member` (the
/// `what` member, for the message) and every client of another member kept its member.
pub fn assert_only_clients_of_moved(
    before: &[String],
    during: &[String],
    member: &str,
    what: &str,
) {
    assert_eq!(before.len(), during.len(), "placements of different sizes");
    for (b, d) in before.iter().zip(during) {
        assert_ne!(d, member, "a new connection reached the {what} member");
        if b != member {
            assert_eq!(b, d, "a client of a healthy member changed member");
        }
    }
}

/// Asserts that `client`'s connection through `addr` is served by a member whose name starts
/// with `prefix` (which pool of a pair serves).
pub async fn assert_served_by(client: IpAddr, addr: SocketAddr, prefix: &str) {
    let name = who_serves(client, addr).await.expect("serves");
    assert!(
        name.starts_with(prefix),
        "{client} served by {name}, not by a {prefix}* member"
    );
}

/// Polls `cond` until it holds, for at most `limit`; panics with `what` otherwise.
///
/// For state that changes in another task with no event to await (counters of the balancer).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a test can send data no member could guess.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits (real time, at most `limit`) for `member` of any pool to reach verdict `to`; returns
/// the event (its time and reason).
pub async fn health_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    member: SocketAddr,
    to: tandem::health::state::Verdict,
    limit: Duration,
) -> tandem::events::HealthEvent {
    let want = member.to_string();
    let found = events::wait_for(
        rx,
        limit,
        |e| matches!(e, Event::Health(h) if *h.member == *want && h.to == to),
    );
    match found.await {
        Some(Event::Health(h)) => h,
        _ => panic!("{want} did not become {to} within {limit:?}"),
    }
}

/// [`health_event`], returning only the reason.
pub async fn wait_health(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    member: SocketAddr,
    to: tandem::health::state::Verdict,
    limit: Duration,
) -> String {
    health_event(rx, member, to, limit).await.reason
}

/// Waits (real time, at most `limit`) until every member of `members` has reached `to`, in any
/// order.
pub async fn wait_health_all(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    members: &[SocketAddr],
    to: tandem::health::state::Verdict,
    limit: Duration,
) {
    let mut missing: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    let done = events::wait_for(rx, limit, |e| {
        if let Event::Health(h) = e
            && h.to == to
        {
            missing.retain(|m| **m != *h.member);
        }
        missing.is_empty()
    });
    let done = done.await.is_some();
    assert!(done, "{missing:?} did not become {to} within {limit:?}");
}

/// A `[[pool.check]]` table for a fast TCP check (for tests that wait on health transitions).
pub fn fast_tcp_check(rise: u32, fall: u32) -> String {
    format!(
        "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"500ms\"\n  rise = {rise}\n  fall = {fall}\n"
    )
}

/// Clients connecting in a loop from rotating source addresses until stopped; counts outcomes
/// and which member answered.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Of `failed`: connects refused.
    pub refused: u64,
    /// Of `failed`: connections reset or closed before the member's greeting.
    pub reset: u64,
    pub by_member: HashMap<String, u64>,
}

impl Load {
    /// Starts connecting to `addr` from clients `first..first + spread`.
    pub fn start(addr: SocketAddr, first: u32, spread: u32) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut i = 0u32;
            while !s.load(Ordering::Relaxed) {
                match who_serves(client_ip(first + i % spread), addr).await {
                    Ok(name) => {
                        report.ok += 1;
                        *report.by_member.entry(name).or_default() += 1;
                    }
                    Err(e) => {
                        report.failed += 1;
                        match e.kind() {
                            std::io::ErrorKind::ConnectionRefused => report.refused += 1,
                            std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::UnexpectedEof => report.reset += 1,
                            _ => {}
                        }
                    }
                }
                i += 1;
            }
            report
        });
        Load { stop, task }
    }

    /// Stops the clients and returns what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// A long-lived connection that streams pseudo-random chunks through a member and checks every
/// echoed byte, until stopped.
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
    /// The member serving it.
    pub member: String,
}

impl Stream {
    /// Connects from `client` to `addr` and starts streaming.
    pub async fn start(client: IpAddr, addr: SocketAddr, seed: u64) -> Stream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (member, mut conn) = greeting_from(client, addr).await.expect("stream connects");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut total = 0u64;
            let mut round = 0u64;
            let mut back = vec![0u8; 16 * 1024];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let chunk = pseudo_random(seed * 1_000_003 + round, 4096 + (round as usize % 8192));
                conn.write_all(&chunk)
                    .await
                    .map_err(|e| format!("write after {total} bytes: {e}"))?;
                let got = &mut back[..chunk.len()];
                conn.read_exact(got)
                    .await
                    .map_err(|e| format!("read after {total} bytes: {e}"))?;
                if got != &chunk[..] {
                    return Err(format!("corrupted echo after {total} bytes"));
                }
                total += chunk.len() as u64;
                round += 1;
            }
            conn.shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest)
                .await
                .map_err(|e| format!("final read: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("{} unexpected bytes at the end", rest.len()));
            }
            Ok(total)
        });
        Stream { stop, task, member }
    }

    /// Stops streaming, closes cleanly, and returns the bytes verified (or what went wrong).
    pub async fn finish(self) -> Result<u64, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("stream task")
    }
}

/// Waits (real time, at most `limit`) for service `service` to move to `to`; returns the event
/// (its time and reason).
pub async fn failover_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    service: &str,
    to: tandem::failover::Side,
    limit: Duration,
) -> tandem::events::FailoverEvent {
    let found = events::wait_for(
        rx,
        limit,
        |e| matches!(e, Event::Failover(f) if &*f.service == service && f.to == to),
    );
    match found.await {
        Some(Event::Failover(f)) => f,
        _ => panic!("{service} did not fail over to {to} within {limit:?}"),
    }
}

/// [`failover_event`], returning only the reason.
pub async fn wait_failover(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    service: &str,
    to: tandem::failover::Side,
    limit: Duration,
) -> String {
    failover_event(rx, service, to, limit).await.reason
}

/// A UDP echo member for the UDP tests: answers every datagram with `name|payload`, and a STUN
/// binding request (RFC 8489 header) with a binding success response carrying the same
/// transaction id. It also listens on TCP at the same address, so a `tcp` check on the member's
/// own port follows its life. `stop` closes both sockets; `restart` opens them again.
pub struct UdpMember {
    name: String,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Source addresses the member has heard from (tandem's upstream sockets), latest last.
    pub peers: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

/// STUN magic cookie (RFC 8489 §5).
pub const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The reply a STUN server gives `request`: a binding success response with the request's
/// transaction id, or `None` when `request` is not a binding request.
pub fn stun_response(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 20 || request[0..2] != [0x00, 0x01] || request[4..8] != STUN_COOKIE {
        return None;
    }
    let mut out = vec![0x01, 0x01, 0x00, 0x00];
    out.extend_from_slice(&STUN_COOKIE);
    out.extend_from_slice(&request[8..20]);
    Some(out)
}

impl UdpMember {
    /// Starts a member named `name` on `ip` with a port free for both UDP and TCP.
    pub async fn start(name: &str, ip: IpAddr) -> UdpMember {
        let mut member = UdpMember {
            name: name.to_string(),
            addr: SocketAddr::new(ip, 0),
            task: None,
            peers: Default::default(),
        };
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
                .await
                .expect("bind udp member");
            let addr = udp.local_addr().expect("udp member addr");
            // The same port on TCP is almost always free; try another when it is not.
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                member.addr = addr;
                member.run(udp, tcp);
                return member;
            }
        }
        panic!("no port free for both UDP and TCP on {ip}");
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes both sockets: datagrams get ICMP port unreachable, TCP connects are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// [`UdpMember::stop`], returning only once both sockets are closed (an abort takes effect
    /// at the task's next poll), so a test knows the moment after which the member is gone.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Opens both sockets again on the same address.
    pub async fn restart(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let udp = tokio::net::UdpSocket::bind(self.addr)
            .await
            .expect("rebind udp member");
        let tcp = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind tcp member");
        self.run(udp, tcp);
    }

    fn run(&mut self, udp: tokio::net::UdpSocket, tcp: tokio::net::TcpListener) {
        let prefix = format!("{}|", self.name).into_bytes();
        let peers = self.peers.clone();
        self.task = Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        if let Ok(mut p) = peers.lock() {
                            p.push(from);
                        }
                        let reply = match stun_response(&buf[..n]) {
                            Some(r) => r,
                            None => [&prefix[..], &buf[..n]].concat(),
                        };
                        let _ = udp.send_to(&reply, from).await;
                    }
                    // Accepted and dropped: a tcp check only needs the connect to succeed.
                    _ = tcp.accept() => {}
                }
            }
        }));
    }
}

impl Drop for UdpMember {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` UDP members named `{prefix}1..n` on hosts 127.0.1.{first_host}..
pub async fn udp_members(prefix: &str, first_host: u8, n: u8) -> Vec<UdpMember> {
    let mut out = Vec::new();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, first_host + i));
        out.push(UdpMember::start(&format!("{prefix}{}", i + 1), ip).await);
    }
    out
}

/// A `[[pool]]` table listing UDP `members` by address, with extra lines (checks) after it.
pub fn udp_pool_toml(name: &str, members: &[UdpMember], extra: &str) -> String {
    pool_toml_of(name, members.iter().map(|m| m.addr()), extra)
}

/// A UDP `[[service]]` table on 127.0.0.1:0 in front of `pool`, with extra `key = value` lines.
pub fn udp_service_toml(name: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"{pool}\"\n{extra}\n"
    )
}

/// A UDP client socket on `ip` (any port).
pub async fn udp_client(ip: IpAddr) -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .expect("bind udp client")
}

/// Sends `payload` to `to` and returns (member name, echoed payload) of the reply, which must
/// come from `to`. Waits `wait` per try and sends again up to `tries` times; `Err` counts tries
/// that got no reply.
pub async fn udp_ask(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    wait: Duration,
    tries: u32,
) -> Result<(String, Vec<u8>), u32> {
    let mut buf = vec![0u8; 65535];
    for _ in 0..tries {
        socket.send_to(payload, to).await.expect("client send");
        let Ok(r) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await else {
            continue;
        };
        let (n, from) = r.expect("client recv");
        assert_eq!(from, to, "reply must come from the listening address");
        let reply = &buf[..n];
        let bar = reply
            .iter()
            .position(|&b| b == b'|')
            .expect("reply has a member prefix");
        let name = String::from_utf8_lossy(&reply[..bar]).into_owned();
        return Ok((name, reply[bar + 1..].to_vec()));
    }
    Err(tries)
}

/// Which member answers `socket` (one small datagram).
pub async fn udp_who(socket: &tokio::net::UdpSocket, to: SocketAddr) -> String {
    udp_ask(socket, to, b"who", Duration::from_secs(2), 3)
        .await
        .unwrap_or_else(|n| panic!("no reply after {n} tries"))
        .0
}

/// Awaits `f` while keeping the runtime busy, so that under tokio's paused clock time cannot
/// jump to the next timer while bytes are in flight through real sockets (auto-advance happens
/// only when every task is idle; a yielding task still lets the runtime poll I/O).
pub async fn without_clock_jumps<F: Future>(f: F) -> F::Output {
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinner = {
        let busy = busy.clone();
        tokio::spawn(async move {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        })
    };
    let out = f.await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = spinner.await;
    out
}

/// The admin API served in-process on `127.0.0.1:0` for a test (no binary, so the paused clock
/// and the app's own view apply). Reload commands are accepted and never answered.
pub struct AdminApi {
    pub addr: SocketAddr,
    pub stop: tokio_util::sync::CancellationToken,
    /// The server task: it ends, with its history sampler, once `stop` fires.
    pub task: tokio::task::JoinHandle<()>,
    _commands: tokio::sync::mpsc::Receiver<tandem::admin::Command>,
}

impl AdminApi {
    pub async fn start(view: tandem::app::AppView, options: tandem::admin::Options) -> AdminApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the admin API");
        let addr = listener.local_addr().expect("admin addr");
        let (commands, rx) = tokio::sync::mpsc::channel(1);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(tandem::admin::serve(
            listener,
            view,
            commands,
            options,
            stop.clone(),
        ));
        AdminApi {
            addr,
            stop,
            task,
            _commands: rx,
        }
    }
}
