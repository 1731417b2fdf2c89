//! The `http`/`https` probe on an arbitrary member reply, served in pieces whose size comes from
//! the input's first byte and then closed: never panics, ends on its own (the stream never
//! blocks, so a timeout would mean it waits on a closed connection), passes only on an accepted
//! status, and reports a clean, bounded reason.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tandem::config::{Check, CheckKind};
use tandem::health::probe::MAX_REASON;
use tokio::runtime::Runtime;

/// Paused clock: the probe's timeout costs no real time if it ever fires.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(common::paused_runtime);

static CHECK: LazyLock<Check> = LazyLock::new(|| {
    let text = r#"
[[pool]]
name = "web"
members = [{ addr = "127.0.0.1:8080" }]
  [[pool.check]]
  kind = "http"
  path = "/healthz"
  expect_status = "200-299,304"
  timeout = "1s"

[[service]]
name = "web"
listen = "127.0.0.1:8000"
pool = "web"
"#;
    common::first_check(text)
});

fuzz_target!(|data: &[u8]| {
    // The reply is readable once the request head is in.
    let Some(member) = common::CannedMember::from_input(data, |w| w.ends_with(b"\r\n\r\n")) else {
        return;
    };
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let outcome = RUNTIME.block_on(tandem::fuzzing::http_probe(&CHECK, member, addr));

    let reason = &outcome.reason;
    assert!(
        !reason.starts_with("timeout"),
        "hung on a closed stream: {reason}"
    );
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.chars().count() <= MAX_REASON + 3, "{reason:?}");
    if outcome.ok {
        let status: u16 = reason
            .strip_prefix("HTTP ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("pass without a status: {reason:?}"));
        let CheckKind::Http(http) = &CHECK.kind else {
            panic!("the check is not an http check: {:?}", CHECK.kind);
        };
        assert!(http.expect_status.accepts(status), "{reason:?}");
    }
});
