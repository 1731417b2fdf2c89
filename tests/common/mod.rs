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
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("{{ addr = \"{}\" }}", m.addr()))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nmembers = [{}]\n",
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

/// Waits (real time, at most `limit`) for `member` of any pool to reach verdict `to`; returns the
/// event's reason.
pub async fn wait_health(
    rx: &mut tokio::sync::broadcast::Receiver<tandem::events::Event>,
    member: SocketAddr,
    to: tandem::health::state::Verdict,
    limit: Duration,
) -> String {
    let want = member.to_string();
    let found = tokio::time::timeout(limit, async {
        loop {
            match rx.recv().await {
                Ok(tandem::events::Event::Health(e)) if *e.member == *want && e.to == to => {
                    return e.reason;
                }
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{want} did not become {to} within {limit:?}"))
}

/// A `[[pool.check]]` table for a fast TCP check (for tests that wait on health transitions).
pub fn fast_tcp_check(rise: u32, fall: u32) -> String {
    format!(
        "  [[pool.check]]\n  kind = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"500ms\"\n  rise = {rise}\n  fall = {fall}\n"
    )
}
