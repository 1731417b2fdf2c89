//! UDP services over loopback: echo integrity, affinity and spread, member loss, failover, idle
//! expiry, and the `udp` (STUN) probe. Members are UDP echo servers on 127.0.1.200+, clients are
//! bound to distinct 127.0.2.x/127.0.3.x sources, every port is 0. One test, of a member whose
//! socket's send buffer is full, runs in a network namespace of its own (root; ignored unless asked for).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use tandem::config::HashMode;
use tandem::failover::Side;
use tandem::health::probe::Prober;
use tandem::health::state::Verdict;
use tandem::pool::ClientKey;

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// A fast TCP check on the members' own port (the UDP members listen on TCP there too).
fn fast_check() -> String {
    fast_tcp_check(1, 1)
}

/// A balancer with one UDP service `s` in front of one pool `p` of `members`; returns it and the
/// service's address.
async fn one_pool_udp_balancer(
    members: &[UdpMember],
    pool_extra: &str,
    service_extra: &str,
) -> (tandem::app::App, SocketAddr) {
    let app = balancer(&format!(
        "{}{}",
        udp_pool_toml("p", members, pool_extra),
        udp_service_toml("s", "p", service_extra)
    ))
    .await;
    let addr = app.local_addr("s").expect("udp service");
    (app, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_integrity_200_clients_x_200_datagrams() {
    let members = udp_members("e", 200, 3).await;
    let (app, addr) = one_pool_udp_balancer(&members, "", "").await;
    let mut tasks = Vec::new();
    for c in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            let socket = udp_client(client_ip(c)).await;
            let mut buf = vec![0u8; 65535];
            let (mut lost, mut corrupted, mut resent) = (0u32, 0u32, 0u32);
            let mut member = None;
            for d in 0..200u64 {
                // 8 bytes of sequence number, then pseudo-random bytes: sizes 8..=1472.
                let len = 8 + ((c as usize * 7919 + d as usize * 104_729) % 1465);
                let mut payload = d.to_be_bytes().to_vec();
                payload.extend(pseudo_random(u64::from(c) << 32 | d, len - 8));
                let mut answered = false;
                'tries: for _ in 0..4 {
                    socket.send_to(&payload, addr).await.expect("send");
                    loop {
                        let wait = Duration::from_millis(500);
                        let Ok(r) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await
                        else {
                            resent += 1;
                            continue 'tries;
                        };
                        let (n, from) = r.expect("recv");
                        assert_eq!(from, addr, "reply from the listening address");
                        let reply = &buf[..n];
                        let Some(bar) = reply.iter().position(|&b| b == b'|') else {
                            corrupted += 1;
                            continue;
                        };
                        let body = &reply[bar + 1..];
                        // A late reply to an earlier try of an earlier datagram: skip it.
                        if body.len() >= 8 && body[..8] < payload[..8] {
                            continue;
                        }
                        if body != payload {
                            corrupted += 1;
                            continue;
                        }
                        let name = reply[..bar].to_vec();
                        if member.get_or_insert_with(|| name.clone()) != &name {
                            corrupted += 1; // a session must stay on its member
                        }
                        answered = true;
                        break 'tries;
                    }
                }
                if !answered {
                    lost += 1;
                }
            }
            (lost, corrupted, resent)
        }));
    }
    let (mut lost, mut corrupted, mut resent) = (0, 0, 0);
    for t in tasks {
        let (l, c, r) = t.await.expect("client task");
        lost += l;
        corrupted += c;
        resent += r;
    }
    assert_eq!(corrupted, 0, "corrupted or misrouted replies");
    assert!(
        lost <= 4,
        "{lost} of 40000 datagrams lost after 4 tries ({resent} resends)"
    );
    // Counters are added once per batch, just after the batch's datagrams went out.
    eventually("counters caught up", Duration::from_secs(5), || async {
        let s = app.stats("s").expect("stats");
        s.datagrams_to_members >= 40_000 && s.datagrams_to_clients >= 40_000
    })
    .await;
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.sessions_created, 200);
    assert_eq!(stats.sessions_active, 200);
    eprintln!("echo integrity: {lost} lost, {resent} resends, {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_one_member_and_600_clients_spread_over_3() {
    let members = udp_members("a", 203, 3).await;
    let (app, addr) = one_pool_udp_balancer(&members, "", "").await;
    let mut placement = Vec::new();
    for batch in (0..600u32).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&c| {
                tokio::spawn(async move {
                    let socket = udp_client(client_ip(c)).await;
                    let first = udp_who(&socket, addr).await;
                    // Affinity: more datagrams, and other ports of the same IP (each its own
                    // session and upstream socket), all reach the same member.
                    if c % 10 == 0 {
                        for _ in 0..5 {
                            assert_eq!(udp_who(&socket, addr).await, first);
                        }
                        for _ in 0..3 {
                            let other = udp_client(client_ip(c)).await;
                            assert_eq!(udp_who(&other, addr).await, first, "client {c}");
                        }
                    }
                    first
                })
            })
            .collect();
        for t in tasks {
            placement.push(t.await.expect("client"));
        }
    }
    let counts = counts(&placement);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (member, n) in &counts {
        let share = *n as f64 / 600.0;
        assert!(
            (0.25..=0.42).contains(&share),
            "{member} got {share:.3} of clients: {counts:?}"
        );
    }
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.sessions_created, 600 + 60 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_moves_only_its_clients() {
    let mut members = udp_members("d", 206, 3).await;
    let (app, addr) = one_pool_udp_balancer(&members, &fast_check(), "").await;
    let mut clients = Vec::new();
    for c in 1000..1090u32 {
        let socket = udp_client(client_ip(c)).await;
        let who = udp_who(&socket, addr).await;
        clients.push((socket, who));
    }
    let victim = members[0].name().to_string();
    let moved = clients.iter().filter(|(_, w)| *w == victim).count();
    assert!(moved > 0, "the victim had clients");

    let mut events = app.events();
    members[0].stop();
    wait_health(
        &mut events,
        members[0].addr(),
        Verdict::Down,
        Duration::from_secs(5),
    )
    .await;

    let mut after = HashMap::new();
    for (i, (socket, before)) in clients.iter().enumerate() {
        let now = udp_who(socket, addr).await;
        if *before == victim {
            assert_ne!(now, victim, "client {i} still on the dead member");
        } else {
            assert_eq!(&now, before, "client {i} moved although its member is up");
        }
        after.insert(i, now);
    }
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.sessions_rehashed, moved as u64);
    // The dead member's clients spread over both survivors (Maglev's fallback order).
    let survivors: std::collections::HashSet<_> = clients
        .iter()
        .enumerate()
        .filter(|(_, (_, b))| *b == victim)
        .map(|(i, _)| after[&i].clone())
        .collect();
    assert!(moved < 4 || survivors.len() == 2, "{survivors:?}");

    // The member comes back: moved sessions stay where they are (no flapping of live sessions).
    members[0].restart().await;
    wait_health(
        &mut events,
        members[0].addr(),
        Verdict::Up,
        Duration::from_secs(5),
    )
    .await;
    for (i, (socket, _)) in clients.iter().enumerate() {
        assert_eq!(udp_who(socket, addr).await, after[&i], "client {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pool_down_fails_over_to_backup() {
    let mut local = udp_members("l", 210, 2).await;
    let backup = udp_members("b", 212, 2).await;
    let app = balancer(&format!(
        "{}{}{}",
        udp_pool_toml("local", &local, &fast_check()),
        udp_pool_toml("backup", &backup, &fast_check()),
        udp_service_toml(
            "s",
            "local",
            "backup_pool = \"backup\"\nfailback_after = \"60s\""
        )
    ))
    .await;
    let addr = app.local_addr("s").expect("udp service");
    let mut clients = Vec::new();
    for c in 2000..2020u32 {
        let socket = udp_client(client_ip(c)).await;
        let who = udp_who(&socket, addr).await;
        assert!(who.starts_with('l'), "{who} is not a local member");
        clients.push(socket);
    }
    let mut events = app.events();
    for m in &mut local {
        m.stop();
    }
    wait_failover(&mut events, "s", Side::Backup, Duration::from_secs(5)).await;
    for socket in &clients {
        let who = udp_who(socket, addr).await;
        assert!(who.starts_with('b'), "existing session went to {who}");
    }
    for c in 2100..2110u32 {
        let socket = udp_client(client_ip(c)).await;
        let who = udp_who(&socket, addr).await;
        assert!(who.starts_with('b'), "new session went to {who}");
    }
    assert_eq!(
        app.snapshot().route("s").expect("route").active_pool().name,
        "backup"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_and_close_their_socket() {
    let member = UdpMember::start("i1", ip(1, 214)).await;
    let (app, addr) =
        one_pool_udp_balancer(std::slice::from_ref(&member), "", "idle_timeout = \"10s\"").await;
    let client = udp_client(client_ip(3000)).await;
    // No timeouts here: with the clock paused they would fire while datagrams are in flight;
    // and the runtime is kept busy meanwhile, so the clock cannot jump to the session's idle
    // deadline before the proxy has seen the datagram.
    let ask = |payload: &'static [u8]| {
        let client = &client;
        without_clock_jumps(async move {
            client.send_to(payload, addr).await.expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = client.recv_from(&mut buf).await.expect("recv");
            assert_eq!(from, addr);
            buf[..n].to_vec()
        })
    };
    assert_eq!(ask(b"one").await, b"i1|one");
    let upstream = *member
        .peers
        .lock()
        .expect("peers")
        .last()
        .expect("member heard the session");

    // Traffic within the timeout keeps the session.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(ask(b"two").await, b"i1|two");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let stats = app.stats("s").expect("stats");
    assert_eq!((stats.sessions_created, stats.sessions_active), (1, 1));

    // Silence past the timeout ends it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    eventually("session expired", Duration::from_secs(5), || async {
        app.stats("s").expect("stats").sessions_active == 0
    })
    .await;
    assert_eq!(app.stats("s").expect("stats").sessions_expired, 1);

    // Its upstream socket is closed: a datagram to it is refused (ICMP port unreachable).
    let refused = tokio::task::spawn_blocking(move || {
        let probe = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        probe.connect(upstream).expect("connect");
        probe
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        probe.send(b"anyone?").expect("send");
        let mut buf = [0u8; 16];
        probe.recv(&mut buf).map_err(|e| e.kind())
    })
    .await
    .expect("probe task");
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));

    // The client's next datagram opens a new session.
    assert_eq!(ask(b"three").await, b"i1|three");
    let stats = app.stats("s").expect("stats");
    assert_eq!((stats.sessions_created, stats.sessions_active), (2, 1));
}

#[tokio::test]
async fn max_connections_caps_sessions() {
    let member = UdpMember::start("c1", ip(1, 215)).await;
    let (app, addr) =
        one_pool_udp_balancer(std::slice::from_ref(&member), "", "max_connections = 2").await;
    let a = udp_client(client_ip(4000)).await;
    let b = udp_client(client_ip(4001)).await;
    let c = udp_client(client_ip(4002)).await;
    udp_who(&a, addr).await;
    udp_who(&b, addr).await;
    let refused = udp_ask(&c, addr, b"x", Duration::from_millis(200), 2).await;
    assert_eq!(refused, Err(2));
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.rejected_limit, 2);
    assert_eq!(stats.sessions_active, 2);
    // Existing sessions still flow.
    udp_who(&a, addr).await;
}

/// A STUN binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
const BINDING_REQUEST_HEX: &str = "0001 0000 2112A442 74616e64656d2d70726f6265";

fn udp_check_config(member: SocketAddr, extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"{member}\" }}]\n  [[pool.check]]\n  \
         kind = \"udp\"\n  send_hex = \"{BINDING_REQUEST_HEX}\"\n  expect_hex = \"0101 0000 2112A442\"\n  \
         interval = \"100ms\"\n  timeout = \"300ms\"\n  rise = 1\n  fall = 1\n{extra}\
         [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"p\"\n"
    )
}

fn udp_prober(member: SocketAddr) -> Prober {
    let config = tandem::config::parse(&udp_check_config(member, ""), "t.toml").expect("valid");
    Prober::new(&config.pools[0].checks[0]).expect("prober")
}

#[tokio::test]
async fn stun_probe_up_against_a_responder_down_when_silent_or_closed() {
    let responder = UdpMember::start("stun", ip(1, 216)).await;
    let outcome = udp_prober(responder.addr()).probe(responder.addr()).await;
    assert!(outcome.ok, "{outcome:?}");

    // A socket that never answers: the timeout decides.
    let silent = tokio::net::UdpSocket::bind((ip(1, 217), 0))
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let outcome = udp_prober(silent_addr).probe(silent_addr).await;
    assert!(!outcome.ok);
    assert!(outcome.reason.contains("timeout"), "{}", outcome.reason);

    // Nothing listening: ICMP port unreachable fails it at once.
    drop(silent);
    let outcome = udp_prober(silent_addr).probe(silent_addr).await;
    assert!(!outcome.ok);
    assert!(
        outcome.reason.contains("port unreachable"),
        "{}",
        outcome.reason
    );

    // A member answering something else: down, quoting the reply.
    let echo_only = tokio::net::UdpSocket::bind((ip(1, 218), 0))
        .await
        .expect("bind");
    let echo_addr = echo_only.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = echo_only.recv_from(&mut buf).await {
            let _ = echo_only.send_to(b"nope", from).await;
        }
    });
    let outcome = udp_prober(echo_addr).probe(echo_addr).await;
    assert!(!outcome.ok);
    assert!(outcome.reason.contains("nope"), "{}", outcome.reason);
}

#[tokio::test]
async fn udp_check_drives_member_health_in_a_running_balancer() {
    let mut member = UdpMember::start("stun", ip(1, 219)).await;
    let app = balancer(&udp_check_config(member.addr(), "")).await;
    assert!(
        app.snapshot().pool("p").expect("pool").members[0].available(),
        "up after the first round"
    );
    let mut events = app.events();
    member.stop();
    wait_health(
        &mut events,
        member.addr(),
        Verdict::Down,
        Duration::from_secs(5),
    )
    .await;
    member.restart().await;
    wait_health(
        &mut events,
        member.addr(),
        Verdict::Up,
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn removed_udp_service_closes_its_socket_and_kept_one_keeps_sessions() {
    let member = UdpMember::start("r1", ip(1, 220)).await;
    let pool = udp_pool_toml("p", std::slice::from_ref(&member), "");
    let both = format!(
        "{pool}{}{}",
        udp_service_toml("keep", "p", ""),
        udp_service_toml("gone", "p", "")
    );
    let mut app = balancer(&both).await;
    let keep = app.local_addr("keep").expect("keep");
    let gone = app.local_addr("gone").expect("gone");
    let a = udp_client(client_ip(5000)).await;
    udp_who(&a, keep).await;
    udp_who(&a, gone).await;

    // Same text for the kept service (port 0 and all): the diff sees it unchanged.
    let only_keep = format!("{pool}{}", udp_service_toml("keep", "p", ""));
    let config = tandem::config::parse(&only_keep, "t.toml").expect("valid");
    app.reload(config).await.expect("reload");

    assert_eq!(udp_who(&a, keep).await, "r1");
    let stats = app.stats("keep").expect("stats");
    assert_eq!(stats.sessions_created, 1, "the kept session carried on");
    // The removed service's port is free again: it can be bound.
    eventually("removed socket closed", Duration::from_secs(5), || async {
        std::net::UdpSocket::bind(gone).is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_drained_by_reload_loses_its_sessions_to_the_others() {
    let members = udp_members("r", 221, 3).await;
    let text = |drained: bool| {
        let mut pool = udp_pool_toml("p", &members, "");
        if drained {
            let first = format!("{{ addr = \"{}\" }}", members[0].addr());
            let drain = format!("{{ addr = \"{}\", state = \"drain\" }}", members[0].addr());
            pool = pool.replace(&first, &drain);
        }
        format!("{pool}{}", udp_service_toml("s", "p", ""))
    };
    let mut app = balancer(&text(false)).await;
    let addr = app.local_addr("s").expect("udp service");
    let mut clients = Vec::new();
    for c in 6000..6060u32 {
        let socket = udp_client(client_ip(c)).await;
        let who = udp_who(&socket, addr).await;
        clients.push((socket, who));
    }
    let victim = members[0].name();
    let on_victim = clients.iter().filter(|(_, w)| w == victim).count();
    assert!(on_victim > 0);
    let config = tandem::config::parse(&text(true), "t.toml").expect("valid");
    app.reload(config).await.expect("reload");
    for (socket, before) in &clients {
        let now = udp_who(socket, addr).await;
        if before == victim {
            assert_ne!(now, victim, "a drained member keeps no UDP session");
        } else {
            assert_eq!(&now, before, "sessions of other members stay");
        }
    }
    let stats = app.stats("s").expect("stats");
    assert_eq!(stats.sessions_rehashed, on_victim as u64);
    assert_eq!(stats.sessions_active, 60);
}

/// A network namespace of one test, removed when dropped: `v0` (198.18.99.1/30) and `v1` form a
/// veth pair and nobody owns 198.18.99.2, so datagrams sent there wait in the kernel's ARP queue,
/// still charged to the sending socket, until that socket's send buffer is full.
///
/// Loopback cannot show a full send buffer (it frees a datagram's memory as it sends it), hence
/// the namespace; one of its own, so the test changes nothing on the host.
struct PrivateNet {
    name: String,
}

impl PrivateNet {
    const IP: &str = "/usr/sbin/ip";

    /// Makes the namespace; panics naming the step that failed (no root, no iproute2): the test
    /// is ignored by default and run where it can be (CI: `cargo test -- --include-ignored`).
    fn create() -> PrivateNet {
        let net = PrivateNet {
            name: format!("tandem-udp-{}", std::process::id()),
        };
        let steps: &[&[&str]] = &[
            &["netns", "add", &net.name],
            &["-n", &net.name, "link", "set", "lo", "up"],
            &[
                "-n", &net.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ],
            &[
                "-n",
                &net.name,
                "addr",
                "add",
                "198.18.99.1/30",
                "dev",
                "v0",
            ],
            &["-n", &net.name, "link", "set", "v0", "up"],
            &["-n", &net.name, "link", "set", "v1", "up"],
            // The queue of an unresolved neighbour must outgrow a socket's send buffer (both
            // default to 208 KiB, and the queue drops its oldest datagram first), and the
            // resolution must not give up (3 tries a second apart by default) while the test runs.
            &[
                "netns",
                "exec",
                &net.name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.neigh.v0.unres_qlen_bytes=16777216",
                "net.ipv4.neigh.v0.retrans_time_ms=60000",
            ],
        ];
        for args in steps {
            let done = std::process::Command::new(Self::IP)
                .args(*args)
                .stdin(std::process::Stdio::null())
                .output();
            match done {
                Ok(out) if out.status.success() => {}
                other => {
                    let why = match other {
                        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                        Err(e) => e.to_string(),
                    };
                    panic!(
                        "this test needs root and iproute2 (a network namespace of its own): `ip {}` failed: {why}",
                        args.join(" ")
                    );
                }
            }
        }
        net
    }

    /// Moves the calling thread (only it) into the namespace.
    fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::IP)
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A member whose socket cannot take more datagrams must not stall the service: the receive
/// loop drops that member's datagrams (counted as `datagrams_dropped_send_blocked`) and the
/// other member's clients are answered at once. Before, the loop waited for room, here for as
/// long as the address stays unresolved.
#[test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
fn a_member_whose_sends_block_does_not_stall_the_others() {
    let net = PrivateNet::create();
    // A thread of its own: setns moves one thread, and the test harness may reuse this one.
    let run = std::thread::spawn(move || {
        net.enter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(one_member_blocks());
        net // dropped (and deleted) after the runtime closed every socket
    });
    match run.join() {
        Ok(net) => drop(net),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn one_member_blocks() {
    let fast = UdpMember::start("fast", ip(1, 240)).await;
    let stuck: SocketAddr = "198.18.99.2:9".parse().expect("addr");
    let app = balancer(&format!(
        "{}{}",
        pool_toml_of("p", [stuck, fast.addr()].into_iter(), ""),
        udp_service_toml("s", "p", "hash = \"source-ip\"")
    ))
    .await;
    let addr = app.local_addr("s").expect("udp service");
    // A client of each member, as the pool itself picks (member 0 is the stuck one).
    let snapshot = app.snapshot();
    let pool = snapshot.pool("p").expect("pool p");
    let client_of = |member: usize| {
        (0..1000u32)
            .map(client_ip)
            .find(|&ip| {
                let key = ClientKey::new(SocketAddr::new(ip, 0), HashMode::SourceIp);
                pool.pick(key.as_bytes(), &[]) == Some(member)
            })
            .expect("a client of each member")
    };
    let (to_stuck, to_fast) = (client_of(0), client_of(1));

    let a = udp_client(to_stuck).await;
    let datagram = [0u8; 1400];
    eventually(
        "a datagram dropped on a full member socket (not the receive loop waiting for room)",
        Duration::from_secs(10),
        || async {
            for _ in 0..16 {
                a.send_to(&datagram, addr).await.expect("client send");
            }
            app.stats("s")
                .expect("stats")
                .datagrams_dropped_send_blocked
                > 0
        },
    )
    .await;

    // The stuck member's socket is still full (its address stays unresolved for minutes).
    let b = udp_client(to_fast).await;
    let answer = udp_ask(&b, addr, b"still there?", Duration::from_secs(2), 1).await;
    assert_eq!(
        answer,
        Ok(("fast".to_string(), b"still there?".to_vec())),
        "the other member's client waited for the stuck one"
    );
    let stats = app.stats("s").expect("stats");
    assert!(stats.datagrams_dropped >= stats.datagrams_dropped_send_blocked);
    let metrics = app.view().render_metrics();
    assert!(
        metrics.contains("tandem_udp_datagrams_dropped_send_blocked_total{service=\"s\"}"),
        "{metrics}"
    );
}
