//! Probes against real loopback members: every kind, passing and failing, over TCP and TLS.
//! Servers bind port 0 on 127.0.1.77; nothing sleeps to synchronise (the two timeout cases wait
//! out a 200 ms check timeout in real time, which is what they test).

// Beside the shared helpers, but not one of them: only this test binary uses these servers.
#[path = "common/probe_servers.rs"]
mod servers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tandem::config::{Check, CheckKind, CheckTls, Exchange, HttpCheck, StatusRanges};
use tandem::health::probe::{ProbeOutcome, Prober};

use servers::{MEMBER_NAME, Received};

/// A check of `kind` with the validated defaults and a timeout generous enough for slow CI.
fn check(kind: CheckKind) -> Check {
    Check {
        port: None,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        rise: 2,
        fall: 3,
        kind,
    }
}

/// An `http` request with the validated defaults.
fn http() -> HttpCheck {
    HttpCheck {
        path: "/".to_string(),
        host: None,
        expect_status: StatusRanges(vec![(200, 399)]),
    }
}

fn https(tls: CheckTls) -> CheckKind {
    CheckKind::Https { http: http(), tls }
}

/// A `sip` check over TCP with the validated defaults.
fn sip() -> CheckKind {
    CheckKind::Sip {
        expect_status: StatusRanges(vec![(200, 299)]),
    }
}

fn sip_tls(tls: CheckTls) -> CheckKind {
    CheckKind::SipTls {
        expect_status: StatusRanges(vec![(200, 299)]),
        tls,
    }
}

/// A check of the TLS kind `kind` makes of its settings.
fn tls_check(kind: fn(CheckTls) -> CheckKind, ca_file: Option<&Path>, sni: Option<&str>) -> Check {
    check(kind(CheckTls {
        sni: sni.map(str::to_string),
        ca_file: ca_file.map(Path::to_path_buf),
    }))
}

/// A short timeout for the cases that wait for a silent member.
fn impatient(check: Check) -> Check {
    Check {
        timeout: Duration::from_millis(200),
        ..check
    }
}

async fn probe(check: &Check, addr: SocketAddr) -> ProbeOutcome {
    let outcome = Prober::new(check).expect("prober set up").probe(addr).await;
    assert!(outcome.reason.len() <= 130, "{outcome:?}");
    assert!(!outcome.reason.chars().any(char::is_control), "{outcome:?}");
    outcome
}

#[track_caller]
fn assert_up(outcome: &ProbeOutcome) {
    assert!(outcome.ok, "expected up: {outcome:?}");
}

#[track_caller]
fn assert_down(outcome: &ProbeOutcome, reason_contains: &str) {
    assert!(!outcome.ok, "expected down: {outcome:?}");
    assert!(
        outcome.reason.contains(reason_contains),
        "reason {:?} should contain {reason_contains:?}",
        outcome.reason
    );
}

/// The one request a member received.
async fn received(rx: &mut Received) -> String {
    let raw = rx.recv().await.expect("the member received a request");
    String::from_utf8(raw).expect("request is UTF-8")
}

/// The checker spawns probes on the runtime and shares a prober between members.
#[test]
fn prober_and_probe_future_are_send() {
    fn shareable<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn sendable<T: Send>(_: &T) {}
    let pki = servers::pki();
    let check = tls_check(sip_tls, Some(pki.ca_file.path()), None);
    let prober = Prober::new(&check).expect("prober set up");
    shareable(&prober);
    sendable(&prober.probe("127.0.0.1:5061".parse().expect("addr")));
}

// ---- tcp -------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_listening_member_is_up() {
    let member = servers::silent(None).await;
    let outcome = probe(&check(CheckKind::Tcp), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: true,
            reason: "connected".to_string()
        }
    );
}

#[tokio::test]
async fn tcp_closed_port_is_down() {
    let addr = servers::closed_port().await;
    let outcome = probe(&check(CheckKind::Tcp), addr).await;
    assert_down(&outcome, "connection refused");
}

// ---- tls -------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_verified_against_ca_with_sni_is_up() {
    let pki = servers::pki();
    let member = servers::silent(Some(pki.acceptor)).await;
    let check = tls_check(CheckKind::Tls, Some(pki.ca_file.path()), Some(MEMBER_NAME));
    let outcome = probe(&check, member.addr).await;
    assert_up(&outcome);
    assert!(outcome.reason.contains("handshake ok"), "{outcome:?}");
}

#[tokio::test]
async fn tls_verified_against_member_ip_without_sni_is_up() {
    let pki = servers::pki();
    let member = servers::silent(Some(pki.acceptor)).await;
    let check = tls_check(CheckKind::Tls, Some(pki.ca_file.path()), None);
    assert_up(&probe(&check, member.addr).await);
}

#[tokio::test]
async fn tls_without_verification_is_up() {
    let pki = servers::pki();
    let member = servers::silent(Some(pki.acceptor)).await;
    assert_up(&probe(&tls_check(CheckKind::Tls, None, None), member.addr).await);
    let check = tls_check(CheckKind::Tls, None, Some("anything.example"));
    assert_up(&probe(&check, member.addr).await);
}

#[tokio::test]
async fn tls12_member_is_up_with_and_without_verification() {
    let pki = servers::pki_tls12();
    let member = servers::silent(Some(pki.acceptor)).await;
    let outcome = probe(&tls_check(CheckKind::Tls, None, None), member.addr).await;
    assert_eq!(outcome.reason, "TLS 1.2 handshake ok");
    let check = tls_check(CheckKind::Tls, Some(pki.ca_file.path()), Some(MEMBER_NAME));
    assert_up(&probe(&check, member.addr).await);
}

#[tokio::test]
async fn tls_with_the_wrong_ca_is_down() {
    let pki = servers::pki();
    let member = servers::silent(Some(pki.acceptor)).await;
    let other = servers::unrelated_ca_file();
    let check = tls_check(CheckKind::Tls, Some(other.path()), Some(MEMBER_NAME));
    assert_down(&probe(&check, member.addr).await, "certificate");
}

#[tokio::test]
async fn tls_with_a_name_the_certificate_lacks_is_down() {
    let pki = servers::pki();
    let member = servers::silent(Some(pki.acceptor)).await;
    let check = tls_check(CheckKind::Tls, Some(pki.ca_file.path()), Some("other.test"));
    assert_down(&probe(&check, member.addr).await, "certificate");
}

#[tokio::test]
async fn tls_against_a_plain_tcp_member_is_down() {
    let member = servers::serve(None, |mut conn| async move {
        use tokio::io::AsyncWriteExt;
        let _ = conn
            .write_all(b"220 mail.example ESMTP\r\n\x00\xff garbage")
            .await;
        let _ = conn.shutdown().await;
    })
    .await;
    let outcome = probe(&tls_check(CheckKind::Tls, None, None), member.addr).await;
    assert_down(&outcome, "TLS handshake");
}

#[tokio::test]
async fn ca_file_without_a_certificate_is_a_setup_error() {
    let not_pem = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(not_pem.path(), "hello\n").expect("write");
    let check = tls_check(CheckKind::Tls, Some(not_pem.path()), None);
    let err = Prober::new(&check).expect_err("setup fails");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

// ---- http / https ----------------------------------------------------------------------------

/// Header names (lower-cased) to values of an HTTP request head.
fn http_headers(head: &str) -> HashMap<String, String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn http_200_is_up_and_the_request_is_as_documented() {
    let (member, mut rx) =
        servers::http(None, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let check = check(CheckKind::Http(HttpCheck {
        path: "/health".to_string(),
        ..http()
    }));
    let outcome = probe(&check, member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: true,
            reason: "HTTP 200".to_string()
        }
    );

    let head = received(&mut rx).await;
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    let headers = http_headers(&head);
    assert_eq!(headers["host"], member.addr.to_string());
    assert_eq!(headers["connection"], "close");
    assert!(headers["user-agent"].starts_with("tandem/"), "{head}");
}

#[tokio::test]
async fn http_host_header_can_be_configured() {
    let (member, mut rx) = servers::http(None, b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let check = check(CheckKind::Http(HttpCheck {
        host: Some("fe.example.com".to_string()),
        ..http()
    }));
    assert_up(&probe(&check, member.addr).await);
    assert_eq!(
        http_headers(&received(&mut rx).await)["host"],
        "fe.example.com"
    );
}

#[tokio::test]
async fn http_500_is_down() {
    let (member, _rx) = servers::http(
        None,
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let outcome = probe(&check(CheckKind::Http(http())), member.addr).await;
    assert_eq!(outcome.reason, "HTTP 500 (expected 200-399)");
    assert!(!outcome.ok);
}

#[tokio::test]
async fn http_status_outside_expect_status_is_down() {
    let (member, _rx) = servers::http(None, b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n").await;
    let check = check(CheckKind::Http(HttpCheck {
        expect_status: StatusRanges(vec![(200, 200)]),
        ..http()
    }));
    assert_down(&probe(&check, member.addr).await, "HTTP 301 (expected 200)");
}

#[tokio::test]
async fn http_garbage_reply_is_down() {
    let (member, _rx) = servers::http(None, b"SSH-2.0-OpenSSH_9.6\r\n").await;
    assert_down(
        &probe(&check(CheckKind::Http(http())), member.addr).await,
        "HTTP: ",
    );
}

#[tokio::test]
async fn http_silent_member_times_out() {
    let member = servers::silent(None).await;
    let outcome = probe(&impatient(check(CheckKind::Http(http()))), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: false,
            reason: "timeout after 200ms".to_string()
        }
    );
}

#[tokio::test]
async fn https_200_is_up() {
    let pki = servers::pki();
    let (member, mut rx) = servers::http(
        Some(pki.acceptor),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let check = tls_check(https, Some(pki.ca_file.path()), Some(MEMBER_NAME));
    assert_eq!(probe(&check, member.addr).await.reason, "HTTP 200");
    let head = received(&mut rx).await;
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
}

// ---- sip -------------------------------------------------------------------------------------

/// Asserts that `raw` is a well-formed SIP OPTIONS to `member` over `transport` ("tcp"/"tls"),
/// with its own small parser so the probe's SIP code is not checking itself.
fn assert_valid_options(raw: &str, member: SocketAddr, transport: &str) {
    assert!(
        raw.ends_with("\r\n\r\n"),
        "request must end with CRLFCRLF: {raw:?}"
    );
    let head = &raw[..raw.len() - 4];
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert!(
        lines.iter().all(|l| !l.contains(['\r', '\n'])),
        "every line ends with CRLF: {raw:?}"
    );
    assert_eq!(
        lines[0],
        format!("OPTIONS sip:{member};transport={transport} SIP/2.0")
    );
    let mut headers = HashMap::new();
    for line in &lines[1..] {
        let (name, value) = line.split_once(':').expect("header line is `Name: value`");
        assert!(
            !name.is_empty() && !name.contains(' '),
            "header name in {line:?}"
        );
        let previous = headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
        assert!(previous.is_none(), "{name} appears once");
    }
    let via = &headers["via"];
    let via_prefix = format!("SIP/2.0/{} ", transport.to_ascii_uppercase());
    assert!(via.starts_with(&via_prefix), "Via: {via}");
    let branch = via.split(";branch=").nth(1).expect("Via has a branch");
    assert!(
        branch.starts_with("z9hG4bK") && branch.len() > 7,
        "Via: {via}"
    );
    assert_eq!(headers["max-forwards"], "70");
    let from = &headers["from"];
    assert!(from.starts_with("<sip:tandem@"), "From: {from}");
    let tag = from.split(";tag=").nth(1).expect("From has a tag");
    assert!(!tag.is_empty(), "From: {from}");
    assert_eq!(headers["to"], format!("<sip:{member}>"));
    let call_id = &headers["call-id"];
    assert!(
        call_id.contains('@') && !call_id.starts_with('@'),
        "Call-ID: {call_id}"
    );
    assert_eq!(headers["cseq"], "1 OPTIONS");
    assert!(headers["contact"].starts_with("<sip:tandem@"));
    assert_eq!(headers["accept"], "application/sdp");
    assert!(headers["user-agent"].starts_with("tandem/"));
    assert_eq!(headers["content-length"], "0");
}

const SIP_200: &[u8] =
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP x;branch=z9hG4bKx\r\nCSeq: 1 OPTIONS\r\n\
      Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0";

#[tokio::test]
async fn sip_200_is_up_and_the_options_request_is_valid() {
    let (member, mut rx) = servers::sip(None, vec![SIP_200]).await;
    let outcome = probe(&check(sip()), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: true,
            reason: "SIP/2.0 200 OK".to_string()
        }
    );
    assert_valid_options(&received(&mut rx).await, member.addr, "tcp");
}

#[tokio::test]
async fn sip_final_response_after_100_trying_is_up() {
    let trying: &[u8] = b"SIP/2.0 100 Trying\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let (member, mut rx) = servers::sip(None, vec![trying, SIP_200]).await;
    assert_eq!(
        probe(&check(sip()), member.addr).await.reason,
        "SIP/2.0 200 OK"
    );
    assert_valid_options(&received(&mut rx).await, member.addr, "tcp");
}

#[tokio::test]
async fn sip_503_is_down() {
    let unavailable: &[u8] =
        b"SIP/2.0 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n";
    let (member, _rx) = servers::sip(None, vec![unavailable]).await;
    let outcome = probe(&check(sip()), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: false,
            reason: "SIP/2.0 503 Service Unavailable".to_string()
        }
    );
}

#[tokio::test]
async fn sip_garbage_reply_is_down() {
    let (member, _rx) = servers::sip(None, vec![b"HTTP/1.1 400 Bad Request\r\n\r\n"]).await;
    let outcome = probe(&check(sip()), member.addr).await;
    assert_down(&outcome, "not a SIP response: \"HTTP/1.1 400 Bad Request\"");

    let (member, _rx) =
        servers::sip(None, vec![b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]).await;
    assert_down(
        &probe(&check(sip()), member.addr).await,
        "not a SIP response",
    );
}

#[tokio::test]
async fn sip_close_before_a_final_response_is_down() {
    let member = servers::serve(None, |mut conn| async move {
        use tokio::io::AsyncWriteExt;
        let _ = servers::read_head(&mut conn).await;
        let _ = conn
            .write_all(b"SIP/2.0 100 Trying\r\n\r\nSIP/2.0 200")
            .await;
        let _ = conn.shutdown().await;
    })
    .await;
    let outcome = probe(&check(sip()), member.addr).await;
    assert_down(&outcome, "connection closed before a final SIP response");
    assert!(outcome.reason.contains("SIP/2.0 200"), "{outcome:?}");
}

#[tokio::test]
async fn sip_silent_member_times_out() {
    let (member, _rx) = servers::sip(None, vec![]).await;
    let outcome = probe(&impatient(check(sip())), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: false,
            reason: "timeout after 200ms".to_string()
        }
    );
}

#[tokio::test]
async fn sip_over_tls_200_is_up() {
    let pki = servers::pki();
    let (member, mut rx) = servers::sip(Some(pki.acceptor), vec![SIP_200]).await;
    let check = tls_check(sip_tls, Some(pki.ca_file.path()), Some(MEMBER_NAME));
    assert_eq!(probe(&check, member.addr).await.reason, "SIP/2.0 200 OK");
    assert_valid_options(&received(&mut rx).await, member.addr, "tls");
}

// ---- send-expect -----------------------------------------------------------------------------

fn send_expect(send: &[u8], expect: &[u8]) -> Check {
    check(CheckKind::SendExpect(Exchange {
        send: send.to_vec(),
        expect: expect.to_vec(),
    }))
}

#[tokio::test]
async fn send_expect_text_match_is_up() {
    let (member, mut rx) = servers::exchange(6, b"+PONG\r\n").await;
    let outcome = probe(&send_expect(b"PING\r\n", b"PONG"), member.addr).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            ok: true,
            reason: "matched".to_string()
        }
    );
    assert_eq!(
        rx.recv().await.expect("member got the send bytes"),
        b"PING\r\n"
    );
}

#[tokio::test]
async fn send_expect_reply_without_the_bytes_is_down() {
    let (member, _rx) = servers::exchange(6, b"-ERR unknown\r\n\x1b[0m").await;
    let outcome = probe(&send_expect(b"PING\r\n", b"PONG"), member.addr).await;
    assert_down(&outcome, "closed without a match");
    assert!(
        outcome.reason.contains("-ERR unknown\\r\\n\\x1b[0m"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn send_expect_binary_match_is_up() {
    let (member, mut rx) = servers::exchange(4, b"\x00\x01\xde\xad\xbe\xef\xff").await;
    let check = send_expect(b"\x00\xff\x10\x80", b"\xde\xad\xbe\xef");
    assert_up(&probe(&check, member.addr).await);
    assert_eq!(
        rx.recv().await.expect("member got the send bytes"),
        b"\x00\xff\x10\x80"
    );
}
