//! The `http` and `https` probes: one `GET` over a connected stream (TCP, or TLS for https),
//! judged on the response status alone.
//!
//! Reads the response head only, bounded by [`MAX_HEAD`]; the body is dropped unread with the
//! connection (the request says `Connection: close`, so the member expects that). Never follows
//! redirects: a 3xx is a status like any other, accepted by the default `200-399`.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ProbeOutcome, USER_AGENT};
use crate::config::HttpCheck;

/// Largest response head read (status line and headers): 16 KiB, hyper's smallest allowed read
/// buffer is 8 KiB. A health endpoint's head is a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Whether the request goes over TLS; it decides the port the Host header may leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Sends the check's request over `stream` (already TLS for https) to the member at `member`
/// and judges the status.
pub(crate) async fn probe<S>(
    check: &HttpCheck,
    scheme: Scheme,
    stream: S,
    member: SocketAddr,
) -> ProbeOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = match request(check, scheme, member) {
        Ok(request) => request,
        Err(e) => return ProbeOutcome::fail(format!("cannot build request: {e}")),
    };
    let mut builder = hyper::client::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD);
    let (mut sender, conn) = match builder
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return ProbeOutcome::fail(format!("HTTP: {}", chain(&e))),
    };
    // The connection is driven here rather than spawned: when the probe times out and is
    // dropped, the socket goes with it instead of lingering in a detached task.
    let mut conn = pin!(conn);
    let mut response = pin!(sender.send_request(request));
    let first = tokio::select! {
        biased;
        r = response.as_mut() => Some(r),
        _ = conn.as_mut() => None,
    };
    // The connection ended first (closed or broken): the request then resolves with the
    // response if one arrived just before, else with the reason.
    let result = match first {
        Some(r) => r,
        None => response.await,
    };
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            if check.expect_status.accepts(status) {
                ProbeOutcome::pass(format!("HTTP {status}"))
            } else {
                ProbeOutcome::fail(format!("HTTP {status} (expected {})", check.expect_status))
            }
        }
        Err(e) => ProbeOutcome::fail(format!("HTTP: {}", chain(&e))),
    }
}

/// The probe request: `GET <path>` with Host, `Connection: close` and our User-Agent.
fn request(
    check: &HttpCheck,
    scheme: Scheme,
    member: SocketAddr,
) -> Result<Request<Empty<Bytes>>, hyper::http::Error> {
    Request::builder()
        .method(Method::GET)
        .uri(check.path.as_str())
        .header(header::HOST, host(check, scheme, member))
        .header(header::CONNECTION, "close")
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::new())
}

/// The Host header: the configured one, else the member's IP, with the port unless it is the
/// scheme's default (RFC 9110 7.2).
fn host(check: &HttpCheck, scheme: Scheme, member: SocketAddr) -> String {
    if let Some(host) = &check.host {
        return host.clone();
    }
    match member.ip() {
        _ if member.port() != scheme.default_port() => member.to_string(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// An error with its causes: hyper's own message is generic ("error trying to connect"), the
/// I/O or TLS cause says what happened.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusRanges;

    fn check(host: Option<&str>) -> HttpCheck {
        HttpCheck {
            path: "/health?deep=1".to_string(),
            host: host.map(str::to_string),
            expect_status: StatusRanges(vec![(200, 399)]),
        }
    }

    #[test]
    fn host_header_omits_the_default_port() {
        let plain = check(None);
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let http = |s: &str| host(&plain, Scheme::Http, at(s));
        let https = |s: &str| host(&plain, Scheme::Https, at(s));
        assert_eq!(http("10.1.0.11:80"), "10.1.0.11");
        assert_eq!(http("10.1.0.11:8080"), "10.1.0.11:8080");
        assert_eq!(http("10.1.0.11:443"), "10.1.0.11:443");
        assert_eq!(https("10.1.0.11:443"), "10.1.0.11");
        assert_eq!(https("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(https("[2001:db8::1]:4443"), "[2001:db8::1]:4443");
        let named = check(Some("fe.example.com"));
        assert_eq!(
            host(&named, Scheme::Http, at("10.1.0.11:8080")),
            "fe.example.com"
        );
    }

    #[test]
    fn request_carries_path_and_headers() {
        let r = request(&check(None), Scheme::Http, "10.1.0.11:80".parse().unwrap()).unwrap();
        assert_eq!(r.uri(), "/health?deep=1");
        assert_eq!(r.headers()[header::HOST], "10.1.0.11");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.headers()[header::USER_AGENT], USER_AGENT);
    }

    #[test]
    fn expected_ranges_read_like_the_config() {
        assert_eq!(StatusRanges(vec![(200, 399)]).to_string(), "200-399");
        assert_eq!(
            StatusRanges(vec![(200, 200), (204, 204), (300, 302)]).to_string(),
            "200,204,300-302"
        );
    }
}
