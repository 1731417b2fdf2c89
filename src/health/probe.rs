//! Active probes: one attempt of one `[[pool.check]]` against one member address.
//!
//! A [`Prober`] is built once per check (loading its CA file and TLS settings) and then run as
//! often as the checker likes. Each run is bounded by the check's `timeout` as a whole (connect,
//! handshake, request and response) and returns a verdict with a short reason for `/status`.
//!
//! This module owns the dispatch on the check kind, the timeout and the reasons; the kinds live in
//! the private `tls`, `http`, `sip`, `send_expect` and `udp` submodules. It decides nothing about rise/fall
//! and keeps no state between runs; it never reads more from a member than a small fixed bound.

pub(crate) mod http;
mod send_expect;
mod sip;
pub(crate) mod tls;
pub(crate) mod udp;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{Check, CheckKind};
use crate::local_error::LocalError;

use self::http::Scheme;
use self::tls::TlsClient;

/// `User-Agent` of HTTP and SIP probes: `tandem/<version>`.
pub const USER_AGENT: &str = concat!("tandem/", env!("CARGO_PKG_VERSION"));

/// Longest reason a probe reports, in characters; longer ones are cut with `...`.
pub const MAX_REASON: usize = 120;

/// Why a check cannot be set up (a bad CA file, for example).
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("cannot read ca_file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file {path}: {reason}")]
    CaInvalid { path: String, reason: String },
    /// `sni` is neither a DNS name nor an IP address.
    #[error("sni {sni:?} is not a valid DNS name or IP address")]
    Sni { sni: String },
    /// The TLS client cannot be built (a crypto provider without usable protocol versions).
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The member passed this check.
    pub ok: bool,
    /// A short human reason: "connected", "connection refused", "timeout after 1s",
    /// "HTTP 500", "SIP/2.0 503 Service Unavailable", ...
    pub reason: String,
}

impl ProbeOutcome {
    fn pass(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// A ready-to-run check.
#[derive(Clone)]
pub struct Prober {
    check: Arc<Check>,
    /// Built from [`CheckKind::tls`]: present exactly for the kinds that speak TLS (`tls`,
    /// `https`, `sip` over TLS).
    tls: Option<TlsClient>,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The TLS client holds keys and config internals; the check says all that matters.
        f.debug_struct("Prober")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Prepares `check` (reads its CA file, builds the TLS client config).
    pub fn new(check: &Check) -> Result<Prober, ProbeSetupError> {
        let tls = check.kind.tls().map(TlsClient::new).transpose()?;
        Ok(Prober {
            check: Arc::new(check.clone()),
            tls,
        })
    }

    /// The check this prober runs.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Probes the member at `addr` (already the probe port), within the check's timeout. A
    /// local failure (see [`Prober::try_probe`]) is reported as a failed probe.
    pub async fn probe(&self, addr: SocketAddr) -> ProbeOutcome {
        self.try_probe(addr).await.unwrap_or_else(|local| {
            ProbeOutcome::fail(clean_reason(&format!("local error: {local}")))
        })
    }

    /// Probes the member at `addr` as [`Prober::probe`] does, except that a failure of this
    /// machine to open the probe's socket (no ephemeral port, descriptor or memory) is an
    /// error rather than a verdict: it says nothing about the member.
    pub async fn try_probe(&self, addr: SocketAddr) -> Result<ProbeOutcome, LocalError> {
        let timeout = self.check.timeout;
        match tokio::time::timeout(timeout, self.run(addr)).await {
            Ok(Err(local)) => Err(local),
            Ok(Ok(outcome)) => Ok(cleaned(outcome)),
            Err(_) => Ok(cleaned(timed_out(timeout))),
        }
    }

    async fn run(&self, addr: SocketAddr) -> Result<ProbeOutcome, LocalError> {
        let kind = &self.check.kind;
        if let CheckKind::Udp(exchange) = kind {
            return udp::probe(exchange, addr).await;
        }
        let tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                return LocalError::from_io(e).map(Err).unwrap_or_else(|e| {
                    Ok(ProbeOutcome::fail(format!("connect: {}", io_reason(&e))))
                });
            }
        };
        // A probe is a few small writes; waiting to coalesce them only adds latency.
        let _ = tcp.set_nodelay(true);
        Ok(match kind {
            CheckKind::Tcp => {
                // Close with a reset, as HAProxy does for connect-only checks: a plain close
                // would leave a TIME_WAIT socket per probe (3,000 at 100 members / 2 s).
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                ProbeOutcome::pass("connected")
            }
            CheckKind::Http(request) => http::probe(request, Scheme::Http, tcp, addr).await,
            CheckKind::SendExpect(exchange) => send_expect::probe(exchange, tcp).await,
            CheckKind::Sip { expect_status } => match tcp.local_addr() {
                Ok(local) => sip::probe(expect_status, tcp, addr, local, sip::Transport::Tcp).await,
                Err(e) => ProbeOutcome::fail(format!("local address: {}", io_reason(&e))),
            },
            CheckKind::Tls(_) | CheckKind::Https { .. } | CheckKind::SipTls { .. } => {
                self.run_tls(tcp, addr).await
            }
            // Handled above, before any TCP connect.
            CheckKind::Udp(_) => ProbeOutcome::fail("udp check over tcp"),
        })
    }

    /// The kinds that speak TLS over the connected `tcp`.
    async fn run_tls(&self, tcp: TcpStream, addr: SocketAddr) -> ProbeOutcome {
        let Some(tls) = &self.tls else {
            // `new` builds the client for every kind that has TLS settings, so this is never
            // reached.
            return ProbeOutcome::fail("TLS is not set up for this check");
        };
        // Taken before the stream disappears into the TLS session; only SIP needs it.
        let local = tcp.local_addr();
        let stream = match tls.handshake(tcp, addr.ip()).await {
            Ok(stream) => stream,
            Err(reason) => return ProbeOutcome::fail(reason),
        };
        match (&self.check.kind, local) {
            (CheckKind::Https { http: request, .. }, _) => {
                http::probe(request, Scheme::Https, stream, addr).await
            }
            (CheckKind::SipTls { expect_status, .. }, Ok(local)) => {
                sip::probe(expect_status, stream, addr, local, sip::Transport::Tls).await
            }
            (CheckKind::SipTls { .. }, Err(e)) => {
                ProbeOutcome::fail(format!("local address: {}", io_reason(&e)))
            }
            _ => tls::finish(stream).await,
        }
    }
}

/// Runs one probe attempt within `timeout` and cleans its reason: what every probe goes through,
/// kept apart from [`Prober::run`] so the fuzz targets run the same path on in-memory streams.
pub(crate) async fn bounded(
    timeout: Duration,
    attempt: impl Future<Output = ProbeOutcome>,
) -> ProbeOutcome {
    let outcome = match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => timed_out(timeout),
    };
    cleaned(outcome)
}

fn timed_out(timeout: Duration) -> ProbeOutcome {
    ProbeOutcome::fail(format!(
        "timeout after {}",
        humantime::format_duration(timeout)
    ))
}

fn cleaned(mut outcome: ProbeOutcome) -> ProbeOutcome {
    outcome.reason = clean_reason(&outcome.reason);
    outcome
}

/// A short form of a network error: the kind alone where it says it all ("connection refused"),
/// else the full message (which carries the OS error or the TLS alert).
fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable => {
            e.kind().to_string()
        }
        _ => e.to_string(),
    }
}

/// Makes a reason safe for a status page and a log line: control characters escaped (they may
/// come from a member's bytes or a TLS library's message) and at most [`MAX_REASON`] characters.
pub(crate) fn clean_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.chars().count() > MAX_REASON {
        out = out.chars().take(MAX_REASON).chain("...".chars()).collect();
    }
    out
}

/// Quotes received bytes for a reason: at most `max` of them, anything not printable ASCII
/// escaped (`\x1b`, `\r`, ...), with `...` when cut.
fn quote_bytes(bytes: &[u8], max: usize) -> String {
    let mut out = bytes[..bytes.len().min(max)].escape_ascii().to_string();
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_printable_and_bounded() {
        assert_eq!(clean_reason("HTTP 200"), "HTTP 200");
        assert_eq!(clean_reason("a\nb\x1b"), "a\\nb\\u{1b}");
        let long = "é".repeat(500);
        let cut = clean_reason(&long);
        assert_eq!(cut.chars().count(), MAX_REASON + 3);
        assert!(cut.ends_with("..."));
        let controls = "\x07".repeat(200);
        assert!(clean_reason(&controls).chars().count() <= MAX_REASON + 3);
    }

    #[test]
    fn received_bytes_are_quoted() {
        assert_eq!(quote_bytes(b"ok\r\n\xff", 10), "ok\\r\\n\\xff");
        assert_eq!(quote_bytes(b"abcdef", 3), "abc...");
    }

    proptest::proptest! {
        /// Whatever a member or a library said, the reason is one printable line of bounded
        /// length.
        #[test]
        fn any_reason_is_cleaned(reason in proptest::prelude::any::<String>()) {
            let clean = clean_reason(&reason);
            proptest::prop_assert!(!clean.chars().any(char::is_control), "{:?}", clean);
            proptest::prop_assert!(clean.chars().count() <= MAX_REASON + 3);
        }

        /// Any received bytes quote as printable ASCII, at most four characters a byte.
        #[test]
        fn any_bytes_are_quoted(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            max in 0usize..64,
        ) {
            let quoted = quote_bytes(&bytes, max);
            proptest::prop_assert!(quoted.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            proptest::prop_assert!(quoted.len() <= 4 * max + 3);
        }
    }

    #[test]
    fn short_io_reasons() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&refused), "connection refused");
        let other = io::Error::other("tls alert");
        assert_eq!(io_reason(&other), "tls alert");
    }
}
