//! The `tls` probe's handshake against an arbitrary "member": the fuzzer's bytes are what the
//! member sends after the probe's ClientHello, served in pieces whose size comes from the input's
//! first byte, then end of stream. The check is `verify = false`, the most permissive setting,
//! so the most of rustls' client is reached (any certificate is taken; signatures still count).
//!
//! The probe never panics, ends on its own (the stream never blocks, so a timeout would mean it
//! waits on a closed connection), reports a clean, bounded reason, and never passes: completing
//! a handshake needs the member to sign this handshake's fresh client random and prove it holds
//! the key, which bytes fixed in advance cannot do. (That random also makes the probe's own
//! bytes differ from run to run; the member's bytes, which are what is parsed, do not.)
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tandem::config::Check;
use tandem::fuzzing::TlsProbeClient;
use tandem::health::probe::MAX_REASON;
use tokio::runtime::Runtime;

/// Paused clock: the probe's timeout costs no real time if it ever fires.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(common::paused_runtime);

static CHECK: LazyLock<Check> = LazyLock::new(|| {
    let text = r#"
[[pool]]
name = "edge"
members = [{ addr = "127.0.0.1:443" }]
  [[pool.check]]
  kind = "tls"
  sni = "edge.example.com"
  verify = false
  timeout = "1s"

[[service]]
name = "edge"
listen = "127.0.0.1:8443"
pool = "edge"
"#;
    common::first_check(text)
});

/// Built once, as the checker builds a check's client once for all its probes.
static CLIENT: LazyLock<TlsProbeClient> =
    LazyLock::new(|| TlsProbeClient::new(&CHECK).expect("TLS client"));

fuzz_target!(|data: &[u8]| {
    // The reply is readable once the ClientHello is in (any write).
    let Some(member) = common::CannedMember::from_input(data, |w| !w.is_empty()) else {
        return;
    };
    let addr: SocketAddr = "127.0.0.1:443".parse().expect("address");
    let outcome = RUNTIME.block_on(tandem::fuzzing::tls_probe(&CLIENT, &CHECK, member, addr));

    let reason = &outcome.reason;
    assert!(
        !reason.starts_with("timeout"),
        "hung on a closed stream: {reason}"
    );
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.chars().count() <= MAX_REASON + 3, "{reason:?}");
    assert!(
        !outcome.ok,
        "a handshake completed on canned bytes: {reason:?}"
    );
});
