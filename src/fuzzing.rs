//! Entry points for the cargo-fuzz targets in `fuzz/`: the code that reads bytes a member or
//! an admin client chose, runnable on in-memory input. Hidden from the docs and not an API:
//! it exists for the targets and changes with them. Each function is a thin wrapper over the
//! code production runs, so a finding here is a finding in tandem.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Command, Options};
use crate::app::{AppView, ServeError};
use crate::config::{Check, CheckKind, Config, Exchange};
use crate::health::probe::tls::{self, TlsClient};
use crate::health::probe::{self, ProbeOutcome, ProbeSetupError, http, udp};

/// One `http`/`https` probe of `check` over `stream` (the member's side of the connection),
/// within the check's timeout, with the reason cleaned as `/status` would show it.
pub async fn http_probe<S>(check: &Check, stream: S, member: SocketAddr) -> ProbeOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (request, scheme) = match &check.kind {
        CheckKind::Http(request) => (request, http::Scheme::Http),
        CheckKind::Https { http, .. } => (http, http::Scheme::Https),
        other => {
            return ProbeOutcome {
                ok: false,
                reason: format!("not an http check: {}", other.as_str()),
            };
        }
    };
    probe::bounded(check.timeout, http::probe(request, scheme, stream, member)).await
}

/// A `tls` check's client, built once as the checker builds it (CA file read, SNI parsed),
/// for [`tls_probe`].
pub struct TlsProbeClient(TlsClient);

impl TlsProbeClient {
    /// The client of `check`, which must carry TLS settings (`ca_file` or `verify = false`).
    pub fn new(check: &Check) -> Result<TlsProbeClient, ProbeSetupError> {
        match check.kind.tls() {
            Some(settings) => TlsClient::new(settings).map(TlsProbeClient),
            None => Err(ProbeSetupError::Tls(
                "the check has no TLS settings".to_string(),
            )),
        }
    }
}

/// One `tls` probe of `check` over `stream` (the member's side of the connection): the
/// handshake and its verdict, within the check's timeout, with the reason cleaned as `/status`
/// would show it.
pub async fn tls_probe<S>(
    client: &TlsProbeClient,
    check: &Check,
    stream: S,
    member: SocketAddr,
) -> ProbeOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    probe::bounded(check.timeout, async {
        match client.0.handshake(stream, member.ip()).await {
            Ok(stream) => tls::finish(stream).await,
            Err(reason) => ProbeOutcome { ok: false, reason },
        }
    })
    .await
}

/// The `udp` probe's verdict on `reply`, the one datagram the member sent back (a STUN binding
/// response, say) to a check's `exchange`, with the reason cleaned as `/status` would show it.
pub fn udp_reply(exchange: &Exchange, reply: &[u8]) -> ProbeOutcome {
    let mut outcome = udp::judge(&exchange.expect, reply);
    outcome.reason = probe::clean_reason(&outcome.reason);
    outcome
}

/// A read-only view of `config` for [`admin_connection`], as right after start: no listener,
/// no check, no task; every member's health unknown.
pub fn admin_view(config: &Config) -> Result<AppView, ServeError> {
    AppView::detached(config)
}

/// Serves the admin API on one connection, `io`, as the admin server does for each accepted
/// socket. `POST /reload` sends on `commands`; `stop` ends `/events` streams.
pub async fn admin_connection<I>(
    io: I,
    view: AppView,
    commands: mpsc::Sender<Command>,
    options: Options,
    stop: CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = admin::Shared::new(view, commands, admin::Settings::new(options), stop);
    // A loopback peer in plain HTTP, as `tandem status` on the same host: every route is open.
    let peer = admin::Peer {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        tls: false,
    };
    admin::serve_connection(shared, io, peer).await
}
