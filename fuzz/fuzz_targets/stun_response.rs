//! The `udp` probe's verdict on an arbitrary reply datagram (a STUN binding response, say), with
//! an expected byte string of arbitrary length cut from the front of the input: never panics,
//! passes exactly when the reply contains the expected bytes, and reports a clean, bounded
//! reason.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tandem::config::{CheckKind, Exchange};
use tandem::health::probe::MAX_REASON;

/// The bytes of the reference config's STUN check; each input replaces its `expect`.
static EXCHANGE: LazyLock<Exchange> = LazyLock::new(|| {
    let text = r#"
[[pool]]
name = "edge"
members = [{ addr = "127.0.0.1:3478" }]
  [[pool.check]]
  kind = "udp"
  send_hex = "0001 0000 2112A442 74616E64656D2D70726F6265"
  expect_hex = "2112A442"

[[service]]
name = "edge-av"
listen = "127.0.0.1:3478"
protocol = "udp"
pool = "edge"
"#;
    match common::first_check(text).kind {
        CheckKind::Udp(exchange) => exchange,
        other => panic!("the STUN check is not a udp check: {other:?}"),
    }
});

/// An obviously right containment test, to hold the probe's against.
fn contains(reply: &[u8], expect: &[u8]) -> bool {
    (0..=reply.len()).any(|i| reply[i..].starts_with(expect))
}

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let mut exchange = EXCHANGE.clone();
    // 255: keep the config's STUN magic cookie, so plain STUN responses are useful inputs.
    let reply = if len == 255 {
        rest
    } else {
        let (expect, reply) = rest.split_at(usize::from(len % 32).min(rest.len()));
        exchange.expect = expect.to_vec();
        reply
    };
    let outcome = tandem::fuzzing::udp_reply(&exchange, reply);
    assert_eq!(outcome.ok, contains(reply, &exchange.expect), "{outcome:?}");
    assert!(!outcome.reason.chars().any(char::is_control), "{outcome:?}");
    assert!(
        outcome.reason.chars().count() <= MAX_REASON + 3,
        "{outcome:?}"
    );
});
