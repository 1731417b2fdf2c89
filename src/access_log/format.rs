//! Formatting a [`Record`] as one line: JSON (one object) or text (space-separated fields in a
//! fixed order, like HAProxy's `tcplog`). Pure: appends to a buffer, no I/O. Runs on the
//! writer's thread, never on the data path.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use super::Record;

/// The fields of the text format, in order (the README documents them).
pub const TEXT_FIELDS: [&str; 14] = [
    "time",
    "protocol",
    "service",
    "client",
    "frontend",
    "pool",
    "member",
    "source",
    "outcome",
    "reason",
    "bytes_to_member",
    "bytes_to_client",
    "connect_ms",
    "duration_ms",
];

/// Appends `record` as one text line (with its newline): the [`TEXT_FIELDS`] separated by one
/// space, `-` for a field with no value. Names are escaped so that every line has exactly
/// that many fields (`awk '{print $9}'` is always the outcome).
pub fn write_text(out: &mut Vec<u8>, r: &Record) {
    let _ = write!(
        out,
        "{} {} ",
        humantime::format_rfc3339_millis(r.started),
        r.protocol
    );
    text_name(out, &r.service);
    out.push(b' ');
    let _ = write!(out, "{} ", r.client);
    text_addr(out, r.frontend);
    match &r.pool {
        Some(pool) => text_name(out, &pool.name),
        None => out.push(b'-'),
    }
    out.push(b' ');
    text_addr(out, r.member);
    text_addr(out, r.source);
    let _ = write!(out, "{} ", r.outcome.name());
    match r.outcome.reason() {
        Some(reason) => {
            let _ = write!(out, "{reason} ");
        }
        None => out.extend_from_slice(b"- "),
    }
    let _ = write!(out, "{} {} ", r.bytes_to_member, r.bytes_to_client);
    match r.connect {
        Some(d) => millis(out, d),
        None => out.push(b'-'),
    }
    out.push(b' ');
    millis(out, r.duration);
    out.push(b'\n');
}

/// Appends `record` as one JSON object and a newline. Fields with no value are `null`.
pub fn write_json(out: &mut Vec<u8>, r: &Record) {
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"protocol\":\"{}\",\"service\":",
        humantime::format_rfc3339_millis(r.started),
        r.protocol
    );
    json_string(out, &r.service);
    let _ = write!(out, ",\"client\":\"{}\",\"frontend\":", r.client);
    json_addr(out, r.frontend);
    out.extend_from_slice(b",\"pool\":");
    match &r.pool {
        Some(pool) => json_string(out, &pool.name),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"member\":");
    json_addr(out, r.member);
    out.extend_from_slice(b",\"source\":");
    json_addr(out, r.source);
    let _ = write!(out, ",\"outcome\":\"{}\",\"reason\":", r.outcome.name());
    match r.outcome.reason() {
        // Reasons are words, error kind names and `:`: nothing to escape.
        Some(reason) => {
            let _ = write!(out, "\"{reason}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"bytes_to_member\":{},\"bytes_to_client\":{},\"connect_ms\":",
        r.bytes_to_member, r.bytes_to_client
    );
    match r.connect {
        Some(d) => millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, r.duration);
    out.extend_from_slice(b"}\n");
}

/// Milliseconds with three decimals (microsecond resolution): `0.812`, `12345.000`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

fn text_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(a) => {
            let _ = write!(out, "{a} ");
        }
        None => out.extend_from_slice(b"- "),
    }
}

fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A config name as one text field: spaces, control characters and `\` become `\xNN`, so a
/// name can neither split a field nor forge a line. An empty name is `-`.
fn text_name(out: &mut Vec<u8>, name: &str) {
    if name.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in name.as_bytes() {
        if b <= b' ' || b == b'\\' || b == 0x7f {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
    }
}

/// A JSON string literal (RFC 8259 escaping).
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::access_log::{ConnectFailure, Outcome, Peer};
    use crate::config::Protocol;

    fn record() -> Record {
        let mut r = Record::new(
            Protocol::Tcp,
            Arc::from("fe-sip"),
            "10.2.0.7:50000".parse().expect("addr"),
        );
        r.started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_212_272_345);
        r.frontend = Some("10.0.0.1:5061".parse().expect("addr"));
        r.member = Some("10.1.0.11:5061".parse().expect("addr"));
        r.source = Some("[2001:db8::5]:40000".parse().expect("addr"));
        r.outcome = Outcome::ClientClosed;
        r.bytes_to_member = 1200;
        r.bytes_to_client = 5400;
        r.connect = Some(Duration::from_micros(812));
        r.duration = Duration::from_micros(12_345_678);
        r
    }

    fn text(r: &Record) -> String {
        let mut out = Vec::new();
        write_text(&mut out, r);
        String::from_utf8(out).expect("utf-8")
    }

    fn json(r: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        write_json(&mut out, r);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).expect("one JSON object")
    }

    /// Pinned: the text format is parsed by operators' scripts, so its order is a contract.
    #[test]
    fn text_lines_have_the_documented_fields_in_order() {
        assert_eq!(
            text(&record()),
            "2026-12-02T11:51:12.345Z tcp fe-sip 10.2.0.7:50000 10.0.0.1:5061 - 10.1.0.11:5061 \
             [2001:db8::5]:40000 client_closed - 1200 5400 0.812 12345.678\n"
        );
        let mut r = record();
        r.outcome = Outcome::Error(Peer::Member, io::ErrorKind::TimedOut);
        r.connect = None;
        r.frontend = None;
        let line = text(&r);
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(fields.len(), TEXT_FIELDS.len());
        assert_eq!(fields[4], "-");
        assert_eq!(fields[8], "error");
        assert_eq!(fields[9], "member:TimedOut");
        assert_eq!(fields[12], "-");
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let mut r = record();
        r.outcome = Outcome::ConnectFailed(ConnectFailure::Refused);
        let v = json(&r);
        assert_eq!(v["time"], "2026-12-02T11:51:12.345Z");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["service"], "fe-sip");
        assert_eq!(v["client"], "10.2.0.7:50000");
        assert_eq!(v["frontend"], "10.0.0.1:5061");
        assert_eq!(v["pool"], serde_json::Value::Null);
        assert_eq!(v["member"], "10.1.0.11:5061");
        assert_eq!(v["source"], "[2001:db8::5]:40000");
        assert_eq!(v["outcome"], "connect_failed");
        assert_eq!(v["reason"], "refused");
        assert_eq!(v["bytes_to_member"], 1200);
        assert_eq!(v["bytes_to_client"], 5400);
        assert_eq!(v["connect_ms"], 0.812);
        assert_eq!(v["duration_ms"], 12345.678);
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), TEXT_FIELDS.len(), "{keys:?}");
    }

    #[test]
    fn odd_names_stay_one_field_and_valid_json() {
        let mut r = record();
        r.service = Arc::from("fe sip\n\"x\"\\é\u{1}");
        let line = text(&r);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(line.trim_end().split(' ').count(), TEXT_FIELDS.len());
        assert!(line.contains(" fe\\x20sip\\x0a\"x\"\\x5cé\\x01 "), "{line}");
        assert_eq!(json(&r)["service"], "fe sip\n\"x\"\\é\u{1}");
    }
}
