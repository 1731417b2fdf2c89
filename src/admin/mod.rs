//! The admin API (hyper, HTTP/1.1): `/metrics`, `/status`, `/history`, `/events`,
//! `POST /reload`, `/healthz`, `/readyz` and an HTML status page at `/`, in plain HTTP or over
//! TLS.
//!
//! It reads the running state through an [`AppView`] and asks for reloads through a command
//! channel that the process's main loop serves, so it never holds the app itself. Requests are
//! bounded (header size, header read time, no request bodies, a cap on connections) so a slow
//! or hostile client can neither stall nor crash it, and it never touches the data path.
//!
//! Its [`Options`] live in a [`Settings`] handle that the process swaps on every applied reload:
//! each new connection takes the current ones, so a rotated certificate, key or client CA is
//! served to the next connection without a restart, while open connections keep theirs. With a
//! `client_ca`, the certificate is required in the handshake of every connection, before any
//! HTTP is read. Over plain HTTP, `POST` is refused from peers that are not on loopback unless
//! `allow_plain_post` says otherwise: a reload is a change to the running balancer, and a token
//! sent in clear across a network can be replayed.
//!
//! The server also runs the sampler of [`crate::history`] (the charts' data), for as long as it
//! serves: the history exists for the page and `/history`, so it lives and stops with them.

pub mod client;
pub mod status;

use std::convert::Infallible;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::app::{AppView, ReloadError, ReloadReport};
use crate::config;
use crate::history::{self, History};
use crate::tls::{self, TlsError};

/// Concurrent admin connections; beyond it new ones are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (no endpoint needs one).
const MAX_BODY: u64 = 64 * 1024;
/// A client must send its request head within this, and finish a TLS handshake within it too.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

/// What the admin API asks of the process's main loop.
#[derive(Debug)]
pub enum Command {
    /// Reload the config file; the reply is the change applied or every problem found.
    Reload {
        reply: oneshot::Sender<Result<ReloadOutcome, String>>,
    },
}

/// An applied reload, as the API reports it.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub change: String,
}

impl ReloadOutcome {
    /// The reply to a reload request: the change applied, or every problem found.
    pub fn of(result: &Result<ReloadReport, ReloadError>) -> Result<ReloadOutcome, String> {
        match result {
            Ok(r) => Ok(ReloadOutcome {
                generation: r.generation,
                change: r.diff.to_string(),
            }),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Settings of the admin server. The default is plain HTTP, no token, no plain POST from
/// beyond loopback, the charts sampled every 5 s.
#[derive(Debug, Clone)]
pub struct Options {
    /// File holding the bearer token POST requests must carry; `None`: no token needed.
    pub token_file: Option<PathBuf>,
    /// Accept POST over plain HTTP from a peer that is not on loopback.
    pub allow_plain_post: bool,
    /// `Some`: every connection is TLS (with a client certificate if the config asks for one).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time between two samples of the status page's charts (`/history`); they keep
    /// [`history::SAMPLES`] samples. Default [`history::DEFAULT_INTERVAL`] (5 s: 15 minutes).
    /// Read when the server starts; a reload does not change it.
    pub history_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token_file: None,
            allow_plain_post: false,
            tls: None,
            history_interval: history::DEFAULT_INTERVAL,
        }
    }
}

impl Options {
    /// The options `[admin]` asks for; reads the TLS files.
    pub fn from_config(admin: &config::Admin) -> Result<Options, TlsError> {
        let tls = match &admin.tls {
            Some(t) => Some(tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())?),
            None => None,
        };
        Ok(Options {
            token_file: admin.token_file.clone(),
            allow_plain_post: admin.allow_plain_post,
            tls,
            ..Options::default()
        })
    }
}

/// The admin server's current [`Options`], shared by its accept loop and whoever applies
/// reloads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Settings(Arc<ArcSwap<Options>>);

impl Settings {
    pub fn new(options: Options) -> Settings {
        Settings(Arc::new(ArcSwap::from_pointee(options)))
    }

    /// Replaces the options for connections accepted from now on.
    pub fn store(&self, options: Options) {
        self.0.store(Arc::new(options));
    }

    fn load(&self) -> Arc<Options> {
        self.0.load_full()
    }
}

/// What the admin API knows of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    /// The connection is TLS.
    pub(crate) tls: bool,
}

/// Whether a POST may be served to `peer`: over TLS always (the token, if any, then decides),
/// over plain HTTP only from loopback (127.0.0.0/8, ::1, and those as IPv4-mapped IPv6 on a
/// dual-stack listener) unless `allow_plain_post`. Pure, so it is tested with addresses no test
/// machine has.
pub(crate) fn plain_post_allowed(peer: Peer, allow_plain_post: bool) -> bool {
    peer.tls || allow_plain_post || peer.ip.to_canonical().is_loopback()
}

pub(crate) struct Shared {
    view: AppView,
    commands: mpsc::Sender<Command>,
    settings: Settings,
    stop: CancellationToken,
    history: Arc<Mutex<History>>,
}

/// Serves the admin API on `listener` until `stop` fires, always with `options`; the history
/// sampler runs as long.
pub async fn serve(
    listener: TcpListener,
    view: AppView,
    commands: mpsc::Sender<Command>,
    options: Options,
    stop: CancellationToken,
) {
    serve_with(listener, view, commands, Settings::new(options), stop).await;
}

/// Serves the admin API on `listener` until `stop` fires, with the [`Options`] `settings`
/// holds when each connection is accepted.
pub async fn serve_with(
    listener: TcpListener,
    view: AppView,
    commands: mpsc::Sender<Command>,
    settings: Settings,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        let tls = settings.load().tls.is_some();
        info!(listen = %addr, tls, "admin API listening");
    }
    let shared = Shared::new(view, commands, settings, stop.clone());
    let sampler = tokio::spawn(history::run(
        shared.view.clone(),
        shared.view.subscribe(),
        shared.history.clone(),
        stop.clone(),
    ));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or similar: pause instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many admin connections; closed");
            continue;
        };
        let shared = shared.clone();
        // Taken now: a reload after this accept applies from the next connection.
        let tls = shared.settings.load().tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let ip = peer.ip();
            let served = match tls {
                None => serve_connection(shared, stream, Peer { ip, tls: false }).await,
                Some(config) => {
                    // Bounded like a request head, so a stalled handshake cannot hold a slot.
                    let handshake = TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(HEAD_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(shared, stream, Peer { ip, tls: true }).await
                        }
                        Ok(Err(e)) => {
                            // Debug, as other connection errors: scanners would flood the log.
                            debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    // The sampler stops on the same token; waiting for it means nothing outlives the server.
    let _ = sampler.await;
}

/// Serves the admin API on one open connection until the client is done, its head is late, or
/// `stop` ends an event stream. [`serve`] runs it per accepted socket; the fuzz targets run it
/// on in-memory streams through [`crate::fuzzing`], which is why it takes any byte stream.
pub(crate) async fn serve_connection<I>(
    shared: Arc<Shared>,
    io: I,
    peer: Peer,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(&shared, peer, req).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await
}

impl Shared {
    /// What every connection of one admin server shares: [`serve`] makes one per listener,
    /// [`crate::fuzzing`] one per in-memory connection.
    pub(crate) fn new(
        view: AppView,
        commands: mpsc::Sender<Command>,
        settings: Settings,
        stop: CancellationToken,
    ) -> Arc<Shared> {
        let history = Arc::new(Mutex::new(History::new(settings.load().history_interval)));
        Arc::new(Shared {
            view,
            commands,
            settings,
            stop,
            history,
        })
    }
}

/// The bound address helper for callers that bind first.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn route(shared: &Shared, peer: Peer, req: Request<Incoming>) -> Response<Body> {
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_big {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let path = req.uri().path();
    let allowed: &[Method] = match path {
        "/" | "/metrics" | "/status" | "/history" | "/events" | "/healthz" | "/readyz" => {
            &[Method::GET, Method::HEAD]
        }
        "/reload" => &[Method::POST],
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if !allowed.contains(req.method()) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    match path {
        "/" => with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(page(&status::status(&shared.view), &history_json(shared))),
        ),
        "/metrics" => with_type(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(shared.view.render_metrics()),
        ),
        "/status" => json(StatusCode::OK, &status::status(&shared.view)),
        // Compact: pretty-printing puts each of the series' numbers on a line of its own,
        // which triples the document for no reader's benefit.
        "/history" => with_type(
            StatusCode::OK,
            "application/json",
            Bytes::from(history_json(shared).to_string()),
        ),
        "/events" => events(shared),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.view.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => reload(shared, peer, &req).await,
    }
}

async fn reload(shared: &Shared, peer: Peer, req: &Request<Incoming>) -> Response<Body> {
    let options = shared.settings.load();
    if !plain_post_allowed(peer, options.allow_plain_post) {
        warn!(peer = %peer.ip, path = %req.uri().path(),
              "admin request refused: POST over plain HTTP from a non-loopback peer");
        return text(
            StatusCode::FORBIDDEN,
            "POST over plain HTTP is accepted from loopback only: serve the admin API over TLS \
             (tls_cert, tls_key) or set allow_plain_post = true in [admin]\n",
        );
    }
    if let Some(refusal) = authorize(&options, req) {
        return refusal;
    }
    let (reply, answer) = oneshot::channel();
    if shared
        .commands
        .send(Command::Reload { reply })
        .await
        .is_err()
    {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match answer.await {
        Ok(Ok(outcome)) => json(
            StatusCode::OK,
            &serde_json::json!({
                "applied": true,
                "generation": outcome.generation,
                "change": outcome.change,
            }),
        ),
        Ok(Err(problems)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "applied": false, "error": problems }),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// Checks the bearer token when one is configured; returns the refusal to send, if any. The
/// token file is read per request, so a rotated token applies at once.
fn authorize(options: &Options, req: &Request<Incoming>) -> Option<Response<Body>> {
    let Some(path) = &options.token_file else {
        return None;
    };
    let expected = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            warn!(token_file = %path.display(), "admin token file is empty; refusing POST");
            return Some(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admin token not configured\n",
            ));
        }
        Err(e) => {
            warn!(token_file = %path.display(), error = %e, "cannot read admin token file; refusing POST");
            return Some(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admin token unreadable\n",
            ));
        }
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => None,
        _ => {
            // Logged (without what was sent, which may be a near miss of the token) so that
            // an operator sees attempts.
            warn!(path = %req.uri().path(), "admin request refused: missing or wrong bearer token");
            let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server-sent events: one `event: <kind>` / `data: <json>` block per transition.
fn events(shared: &Shared) -> Response<Body> {
    let stream = SseStream {
        inner: BroadcastStream::new(shared.view.subscribe()),
        stop: Box::pin(shared.stop.clone().cancelled_owned()),
        hello: true,
    };
    let body = StreamBody::new(stream).boxed();
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

struct SseStream {
    inner: BroadcastStream<crate::events::Event>,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    hello: bool,
}

impl Stream for SseStream {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.hello {
            // A comment first, so clients (and proxies) see the stream open at once.
            self.hello = false;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b": tandem events\n\n",
            )))));
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                let block = format!("event: {}\ndata: {}\n\n", event.kind(), event.to_json());
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(block)))))
            }
            Poll::Ready(Some(Err(lagged))) => {
                let block = format!("event: lagged\ndata: {{\"missed\": \"{lagged}\"}}\n\n");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(block)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    with_type(status, "application/json", Bytes::from(body))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The status page: one self-contained file (no external assets, for air-gapped networks).
const PAGE: &str = include_str!("page.html");

/// The page with the current status and history embedded, so it renders complete on load.
/// `</` is escaped so no value (a member's check reason, say) can close the script element.
/// Each placeholder is replaced in the template itself, so text inside one document (a check
/// reason quoting a member's reply, say) is never taken for the other's placeholder.
fn page(status: &serde_json::Value, history: &serde_json::Value) -> String {
    let embed = |v: &serde_json::Value| v.to_string().replace("</", "<\\/");
    let mut out = String::with_capacity(PAGE.len() + 64 * 1024);
    let mut rest = PAGE;
    for (placeholder, value) in [("/*STATUS*/null", status), ("/*HISTORY*/null", history)] {
        if let Some((before, after)) = rest.split_once(placeholder) {
            out.push_str(before);
            out.push_str(&embed(value));
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The `/history` document (see [`History::to_json`]).
fn history_json(shared: &Shared) -> serde_json::Value {
    let now = tokio::time::Instant::now();
    let wall = std::time::SystemTime::now();
    shared
        .history
        .lock()
        .map(|h| h.to_json(now, wall))
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOOPBACK_PLAIN: Peer = Peer {
        ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        tls: false,
    };

    fn peer(ip: &str, tls: bool) -> Peer {
        Peer {
            ip: ip.parse().expect("an IP"),
            tls,
        }
    }

    #[test]
    fn plain_post_is_for_loopback_unless_allowed() {
        // Loopback is all of 127.0.0.0/8 and ::1, also IPv4-mapped (a dual-stack listener).
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(plain_post_allowed(peer(ip, false), false), "{ip}");
        }
        // Documentation and benchmarking addresses: values only, never contacted.
        for ip in [
            "198.18.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "::ffff:192.0.2.1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!plain_post_allowed(peer(ip, false), false), "{ip}");
            assert!(plain_post_allowed(peer(ip, false), true), "{ip} allowed");
            assert!(plain_post_allowed(peer(ip, true), false), "{ip} over TLS");
        }
    }

    /// A POST from beyond loopback over plain HTTP is refused before the token is looked at;
    /// the same request from loopback reaches the token check.
    #[tokio::test]
    async fn plain_post_from_a_remote_peer_is_forbidden() {
        async fn post(from: Peer, allow_plain_post: bool) -> String {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (commands, _rx) = mpsc::channel(1);
            let options = Options {
                // Unreadable on purpose: reaching the token check answers 500.
                token_file: Some(PathBuf::from("/nonexistent/tandem-token")),
                allow_plain_post,
                ..Options::default()
            };
            let shared = Shared::new(
                view(),
                commands,
                Settings::new(options),
                CancellationToken::new(),
            );
            let conn = tokio::spawn(serve_connection(shared, server, from));
            client
                .write_all(b"POST /reload HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = String::new();
            client.read_to_string(&mut out).await.expect("read");
            assert!(conn.await.expect("joined").is_ok());
            out
        }
        let out = post(peer("192.0.2.1", false), false).await;
        assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
        assert!(out.contains("allow_plain_post"), "{out}");
        let out = post(peer("192.0.2.1", false), true).await;
        assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
        let out = post(peer("192.0.2.1", true), false).await;
        assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
        let out = post(LOOPBACK_PLAIN, false).await;
        assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
    }

    fn view() -> AppView {
        let text = "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.1.1:80\" }]\n\n\
                    [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";
        let config = crate::config::parse(text, "t.toml").expect("valid config");
        AppView::detached(&config).expect("view")
    }

    /// One connection on an in-memory stream, as the fuzz target runs it: pipelined requests
    /// each get their response, and the connection ends after the one that asks to close.
    #[tokio::test]
    async fn one_connection_serves_pipelined_requests_then_ends() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (commands, _rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let shared = Shared::new(view(), commands, Settings::new(Options::default()), stop);
        let conn = tokio::spawn(serve_connection(shared, server, LOOPBACK_PLAIN));
        // No half-close: hyper drops a connection whose client shuts down its write side
        // before the pipelined responses are out (its `half_close` is off).
        client
            .write_all(
                b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n\
                  PUT /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("write");
        let mut out = String::new();
        client.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("HTTP/1.1 405 Method Not Allowed\r\n"), "{out}");
        assert!(conn.await.expect("joined").is_ok());
    }
}
