//! `tandem status`: fetches `/status` from a running tandem's admin API and prints it as
//! tables; `tandem member set` also POSTs `/reload` through it. The formatting is pure and tested; the fetch is one HTTP/1.1 GET through hyper's
//! client (so chunked bodies, status lines and header framing are hyper's business, not ours),
//! in plain HTTP or over TLS ([`ClientTls`]: the admin API's CA, and a client certificate when
//! the admin API asks for one).

use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{self, TlsError};

/// Largest `/status` body read: 16 MiB. A tandem with a thousand members answers well under 1 MiB.
const MAX_BODY: usize = 16 << 20;
/// How much of an unexpected answer's body an error quotes.
const EXCERPT_CHARS: usize = 200;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the admin API at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed: an untrusted or misnamed certificate, a client certificate
    /// refused, or an admin API that does not speak TLS.
    #[error("TLS with the admin API at {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("admin API at {addr} did not answer within {}", humantime::format_duration(*after))]
    Timeout { addr: SocketAddr, after: Duration },
    /// Not an HTTP response, cut short, or too large.
    #[error("admin API at {addr} answered badly: {reason}")]
    Answer { addr: SocketAddr, reason: String },
    #[error("admin API at {addr} answered {status}: {excerpt}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
        /// The start of the body, on one line.
        excerpt: String,
    },
    #[error("admin API at {addr} answered with something that is not JSON: {source}")]
    NotJson {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// How `tandem status` speaks TLS to the admin API.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// The name the admin API's certificate must carry.
    name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts the CA(s) in `ca`, presents `identity` (certificate, key) if given, and expects
    /// the certificate to name `server_name` (a DNS name or an IP address).
    pub fn new(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<ClientTls, ClientTlsError> {
        let config = tls::client_config(ca, identity)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientTlsError::Name(server_name.to_string()))?;
        Ok(ClientTls {
            connector: TlsConnector::from(config),
            name,
        })
    }
}

/// Why `tandem status` cannot set up TLS.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Files(#[from] TlsError),
    #[error("{0:?} is not a valid DNS name or IP address")]
    Name(String),
}

/// GETs `/status` from the admin API at `addr` in plain HTTP; `timeout` bounds the whole
/// exchange, connecting included.
pub async fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<Value, FetchError> {
    fetch_status_with(addr, timeout, None).await
}

/// [`fetch_status`], over TLS when `tls` is given.
pub async fn fetch_status_with(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Value, FetchError> {
    let (status, body) = tokio::time::timeout(timeout, get(addr, "/status", tls))
        .await
        .map_err(|_| FetchError::Timeout {
            addr,
            after: timeout,
        })??;
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            addr,
            status,
            excerpt: excerpt(&body),
        });
    }
    serde_json::from_slice(&body).map_err(|source| FetchError::NotJson { addr, source })
}

/// What `POST /reload` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadAnswer {
    /// The new config serves: its generation and what changed.
    Applied { generation: u64, change: String },
    /// The running config keeps serving: every problem found.
    Rejected { error: String },
}

/// POSTs `/reload` to the admin API at `addr`, with `token` as the bearer token when given;
/// `timeout` bounds the whole exchange. Any status other than 200 (applied) and 422 (rejected)
/// is a [`FetchError::Status`], so a caller can tell a refused token (401) apart.
pub async fn reload(
    addr: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<ReloadAnswer, FetchError> {
    let mut request = Request::post("/reload");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let (status, body) = tokio::time::timeout(timeout, send(addr, request, None))
        .await
        .map_err(|_| FetchError::Timeout {
            addr,
            after: timeout,
        })??;
    if status != StatusCode::OK && status != StatusCode::UNPROCESSABLE_ENTITY {
        return Err(FetchError::Status {
            addr,
            status,
            excerpt: excerpt(&body),
        });
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|source| FetchError::NotJson { addr, source })?;
    Ok(if v["applied"].as_bool() == Some(true) {
        ReloadAnswer::Applied {
            generation: v["generation"].as_u64().unwrap_or(0),
            change: v["change"].as_str().unwrap_or("").to_string(),
        }
    } else {
        ReloadAnswer::Rejected {
            error: v["error"]
                .as_str()
                .unwrap_or("(no reason given)")
                .to_string(),
        }
    })
}

/// One `GET path` on a new connection (TLS with `tls`): the status and the whole body.
async fn get(
    addr: SocketAddr,
    path: &str,
    tls: Option<&ClientTls>,
) -> Result<(StatusCode, Bytes), FetchError> {
    send(addr, Request::get(path), tls).await
}

/// One bodiless request on a new connection (TLS with `tls`): the status and the whole body.
async fn send(
    addr: SocketAddr,
    request: hyper::http::request::Builder,
    tls: Option<&ClientTls>,
) -> Result<(StatusCode, Bytes), FetchError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| FetchError::Connect { addr, source })?;
    match tls {
        None => exchange(addr, request, stream).await,
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|e| FetchError::Tls {
                    addr,
                    reason: chain(&e),
                })?;
            exchange(addr, request, stream).await
        }
    }
}

/// `request` on an open connection.
async fn exchange<S>(
    addr: SocketAddr,
    request: hyper::http::request::Builder,
    stream: S,
) -> Result<(StatusCode, Bytes), FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answer = |reason: String| FetchError::Answer { addr, reason };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| answer(chain(&e)))?;
    let request = request
        .header(header::HOST, addr.to_string())
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| answer(format!("cannot build the request: {e}")))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| answer(chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| answer(chain(&*e)))?
            .to_bytes();
        Ok((status, body))
    };
    // The connection is driven here rather than spawned, so that when the timeout drops this
    // future the socket goes with it instead of lingering in a detached task.
    let mut conn = pin!(conn);
    let mut exchange = pin!(exchange);
    tokio::select! {
        biased;
        result = exchange.as_mut() => result,
        // The connection ended first (closed or broken): the exchange then finishes with what
        // arrived, or with the reason.
        _ = conn.as_mut() => exchange.await,
    }
}

/// The start of `body` on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None if line.is_empty() => "(empty body)".to_string(),
        None => line,
    }
}

/// An error with its causes: hyper's own message is generic ("connection closed before message
/// completed"), the cause says what happened.
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Renders the status document as tables.
pub fn format_status(s: &Value) -> String {
    let mut out = String::new();
    let str_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "tandem {} · config generation {} · {}",
        str_of(&s["version"]),
        str_of(&s["generation"]),
        if s["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "starting"
        }
    );
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "LISTEN".to_string(),
        "ACTIVE POOL".to_string(),
        "FAILOVER".to_string(),
        "HEALTHY L/B (MIN)".to_string(),
        "CONNS".to_string(),
    ]];
    for v in s["services"].as_array().into_iter().flatten() {
        let f = &v["failover"];
        rows.push(vec![
            str_of(&v["name"]),
            format!("{} {}", str_of(&v["listen"]), str_of(&v["protocol"])),
            str_of(&v["active_pool"]),
            format!(
                "{} / {} for {}s",
                str_of(&f["mode"]),
                str_of(&f["side"]),
                f["for_seconds"].as_f64().unwrap_or(0.0).round()
            ),
            format!(
                "{}/{} ({})",
                str_of(&f["local_healthy"]),
                str_of(&f["backup_healthy"]),
                str_of(&f["min_healthy"])
            ),
            str_of(&v["connections"]["active"]),
        ]);
    }
    table(&mut out, &rows);
    for p in s["pools"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\npool {} ({} of {} healthy)",
            str_of(&p["name"]),
            str_of(&p["healthy"]),
            str_of(&p["size"])
        );
        let mut rows = vec![vec![
            "  MEMBER".to_string(),
            "STATE".to_string(),
            "HEALTH".to_string(),
            "CONNS".to_string(),
            "LAST CHECK".to_string(),
        ]];
        for m in p["members"].as_array().into_iter().flatten() {
            let checks: Vec<String> = m["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}: {} ({})",
                        str_of(&c["kind"]),
                        str_of(&c["verdict"]),
                        str_of(&c["reason"])
                    )
                })
                .collect();
            rows.push(vec![
                format!("  {}", str_of(&m["addr"])),
                str_of(&m["state"]),
                str_of(&m["health"]),
                str_of(&m["connections_active"]),
                if checks.is_empty() {
                    "-".to_string()
                } else {
                    checks.join("; ")
                },
            ]);
        }
        table(&mut out, &rows);
    }
    out
}

pub(crate) fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(10);

    /// An admin API stand-in on loopback that answers one request with `response`, verbatim.
    async fn answering(response: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            assert!(request.starts_with(b"GET /status HTTP/1.1\r\n"));
            let _ = stream.write_all(response).await;
            let _ = stream.shutdown().await;
        });
        addr
    }

    #[tokio::test]
    async fn reads_a_chunked_json_body() {
        let addr = answering(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
              9\r\n{\"ready\":\r\n5\r\ntrue}\r\n0\r\n\r\n",
        )
        .await;
        let status = fetch_status(addr, LIMIT).await.expect("status");
        assert_eq!(status, serde_json::json!({ "ready": true }));
    }

    #[tokio::test]
    async fn another_status_is_reported_with_the_start_of_its_body() {
        let addr = answering(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\n\r\nnot ready\n  at all\n",
        )
        .await;
        let e = fetch_status(addr, LIMIT).await.expect_err("503");
        assert!(matches!(e, FetchError::Status { status, .. } if status == 503));
        assert_eq!(
            e.to_string(),
            format!("admin API at {addr} answered 503 Service Unavailable: not ready at all")
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_says_so() {
        let addr = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        let e = fetch_status(addr, LIMIT).await.expect_err("not JSON");
        assert!(matches!(e, FetchError::NotJson { .. }), "{e}");
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[tokio::test]
    async fn something_that_is_not_http_is_an_answer_error() {
        let addr = answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let e = fetch_status(addr, LIMIT).await.expect_err("not HTTP");
        assert!(matches!(e, FetchError::Answer { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        // A port that was just free; nothing listens on it once the listener is gone.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let e = fetch_status(addr, LIMIT).await.expect_err("refused");
        assert!(
            matches!(&e, FetchError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach the admin API at {addr}"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and reads, never answers (the paused clock jumps to the deadline once
        // everyone waits).
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let e = fetch_status(addr, Duration::from_secs(3))
            .await
            .expect_err("timeout");
        assert!(matches!(e, FetchError::Timeout { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("admin API at {addr} did not answer within 3s")
        );
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"a\n b\tc"), "a b c");
        let long = "x".repeat(500);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.len(), EXCERPT_CHARS + 3);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn formats_services_pools_and_members() {
        let s = serde_json::json!({
            "version": "0.1.0", "generation": 3, "ready": true,
            "services": [{ "name": "fe-sip", "listen": "0.0.0.0:5061", "protocol": "tcp",
                "active_pool": "fe-dc2",
                "failover": { "mode": "auto", "side": "backup", "for_seconds": 12.4,
                              "local_healthy": 1, "backup_healthy": 3, "min_healthy": 2 },
                "connections": { "active": 7 } }],
            "pools": [{ "name": "fe-dc1", "healthy": 1, "size": 3, "members": [
                { "addr": "10.1.0.11", "state": "up", "health": "down", "connections_active": 0,
                  "checks": [{ "kind": "sip", "verdict": "down", "reason": "SIP/2.0 503 Service Unavailable" }] }
            ]}]
        });
        let text = format_status(&s);
        assert!(
            text.starts_with("tandem 0.1.0 · config generation 3 · ready"),
            "{text}"
        );
        assert!(text.contains("fe-sip   0.0.0.0:5061 tcp  fe-dc2"), "{text}");
        assert!(text.contains("auto / backup for 12s"), "{text}");
        assert!(text.contains("1/3 (2)"), "{text}");
        assert!(text.contains("pool fe-dc1 (1 of 3 healthy)"), "{text}");
        assert!(
            text.contains(
                "10.1.0.11  up     down    0      sip: down (SIP/2.0 503 Service Unavailable)"
            ),
            "{text}"
        );
    }
}
