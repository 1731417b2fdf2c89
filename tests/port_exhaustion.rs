//! Out of ephemeral ports: in a namespace whose `ip_local_port_range` holds 100 ports, 150
//! clients held through tandem to one member. With tandem's own address the excess is closed at
//! once and counted as a local error, the member is never blamed (neither by the data path nor
//! by its health check, whose probes fail the same way), and once the clients leave new ones are
//! served at once. With `source = [two addresses]` every address brings its own 100 ports, and
//! all 150 are held.

mod common;
mod topology;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem::events::Event;
use tandem::health::state::Verdict;
use tandem::local_error::LocalReason;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use topology::Ns;

const CLIENTS: u16 = 150;
/// Client source ports: outside the namespace's ephemeral range, so the clients (in the same
/// namespace) take none of tandem's 100 ports.
const CLIENT_PORTS: u16 = 20000;

/// Connects from `client_ip(0)` on port `CLIENT_PORTS + i`; `Some(stream)` when a member greeted it, `None`
/// when tandem closed it.
async fn client(i: u16, addr: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        // One client IP for all: it hashes to one source address of a pool, so holding them
        // all needs the pool to fall back to its other address when that one is out of ports.
        .bind(SocketAddr::new(client_ip(0), CLIENT_PORTS + i))
        .expect("bind client");
    let stream = socket.connect(addr).await.expect("tandem accepts");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("served or closed, not left hanging");
    match read {
        Ok(n) if n > 0 && line.ends_with('\n') => Some(reader.into_inner()),
        _ => None,
    }
}

/// Leaves with a reset, which tandem passes on to the member: no TIME_WAIT socket keeps the
/// member-side port, so the port is free at once (a FIN close would hold it for 60 s in
/// TIME_WAIT on tandem's side, the kernel's rule for whoever closes first).
fn leave(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

struct Outcome {
    held: usize,
    closed: usize,
}

/// Runs the scenario in namespace `ns`, tandem's service having the extra lines `source`.
async fn scenario(source: &'static str) -> Outcome {
    let member = DemoMember::start("m1", "127.0.1.1:0".parse().expect("addr"))
        .await
        .expect("member");
    let toml = format!(
        "{}{}",
        pool_toml_of("p", [member.addr()], &fast_tcp_check(1, 1)),
        service_toml("s", "p", source)
    );
    let app = balancer(&toml).await;
    let mut events = app.view().subscribe();
    let view = app.view();
    let addr = view.services()[0].local_addr;
    let stats = view.services()[0].stats.clone();

    let mut held = Vec::new();
    let mut closed = 0;
    for i in 0..CLIENTS {
        match client(i, addr).await {
            Some(s) => held.push(s),
            None => closed += 1,
        }
    }
    let outcome = Outcome {
        held: held.len(),
        closed,
    };
    let st = stats.snapshot();
    assert_eq!(
        st.rejected_resources, closed as u64,
        "every client closed was counted as a local error"
    );
    assert_eq!(
        stats.local_errors.count(LocalReason::Ports),
        closed as u64,
        "by reason: ports"
    );
    assert_eq!(
        st.connect_failures, 0,
        "no connect counted against the member"
    );
    assert_eq!(st.rejected_no_member, 0);

    // The health check probes at least three times while the ports are gone (interval 100 ms).
    let probes = || check_results(&view.render_metrics());
    let before = probes();
    eventually(
        "the member's check runs three times while the ports are gone",
        Duration::from_secs(10),
        || {
            let now = probes();
            async move { now >= before + 3 }
        },
    )
    .await;
    let metrics = view.render_metrics();

    // The clients leave; new ones are served at once.
    for s in held.drain(..) {
        leave(s);
    }
    eventually(
        "tandem closes the member side of every client that left",
        Duration::from_secs(10),
        || {
            let stats = stats.clone();
            async move { stats.snapshot().active == 0 }
        },
    )
    .await;
    for i in 0..20 {
        let s = client(CLIENTS + i, addr)
            .await
            .expect("a new client is served right after the others left");
        leave(s);
    }

    // The member was never reported down, by passive detection or by its check.
    while let Ok(e) = events.try_recv() {
        if let Event::Health(h) = e {
            assert_ne!(h.to, Verdict::Down, "member reported down: {}", h.reason);
        }
    }
    let snapshot = view.snapshot();
    let m = &snapshot.pools().next().expect("pool").members[0];
    assert_eq!(m.health.verdict(), Verdict::Up);
    if outcome.closed > 0 {
        assert!(
            metrics.contains("tandem_local_errors_total{service=\"s\",reason=\"ports\"}"),
            "{metrics}"
        );
    }
    app.shutdown(Duration::from_secs(1)).await;
    outcome
}

/// Health check results so far, every result and member summed (`tandem_check_results_total`).
fn check_results(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tandem_check_results_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A namespace whose ephemeral range holds 100 ports, with 127.0.0.2 as a second source address.
fn narrow_namespace(test: &str) -> Ns {
    let ns = Ns::new(test, "ports");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    ns
}

#[test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
fn out_of_ports_closes_the_excess_and_never_blames_the_member() {
    let ns = narrow_namespace("out_of_ports_closes_the_excess_and_never_blames_the_member");
    let outcome = ns
        .block_on(|| scenario(""))
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    // 100 ports, less the member's and tandem's listening ports.
    assert!(
        (90..=98).contains(&outcome.held),
        "held {} clients with 100 ephemeral ports",
        outcome.held
    );
    assert_eq!(outcome.held + outcome.closed, usize::from(CLIENTS));
}

#[test]
#[ignore = "needs root and ip netns (CI runs it: cargo test -- --include-ignored)"]
fn a_source_pool_of_two_addresses_holds_every_client() {
    let ns = narrow_namespace("a_source_pool_of_two_addresses_holds_every_client");
    let outcome = ns
        .block_on(|| scenario("source = [\"127.0.0.1\", \"127.0.0.2\"]"))
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert_eq!(outcome.held, usize::from(CLIENTS));
    assert_eq!(outcome.closed, 0);
}
