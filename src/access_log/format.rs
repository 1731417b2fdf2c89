//! Formatting a [`Record`] as one line: JSON (one object) or text (space-separated fields in a
//! fixed order, like HAProxy's `tcplog`). Pure: appends to a buffer, no I/O. Runs on the
//! writer's thread, never on the data path.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Record;
use crate::config::Protocol;

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

/// Formats records as lines. It keeps the date and time of the last line to the second, so
/// the lines of one second (up to tens of thousands under load) do the calendar arithmetic
/// once; numbers and IPv4 addresses are written with `itoa` rather than through `fmt`. A JSON
/// line took 1.2-1.3 us with humantime and `write!` and takes 0.3 us this way (2 million lines
/// of a typical record in a release build, one core). The writer shares the proxy's core in the
/// access-log bench, so this is CPU taken from connections: about 2% of one's cost.
#[derive(Debug, Default)]
pub struct Formatter {
    /// The second (since the Unix epoch) `date` holds, if any yet.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS.` of that second.
    date: [u8; 20],
}

impl Formatter {
    /// Appends `record` as one text line (with its newline): the [`TEXT_FIELDS`] separated by
    /// one space, `-` for a field with no value. Names are escaped so that every line has
    /// exactly that many fields (`awk '{print $9}'` is always the outcome).
    pub fn text(&mut self, out: &mut Vec<u8>, r: &Record) {
        self.time(out, r.started);
        out.push(b' ');
        out.extend_from_slice(protocol(r.protocol));
        out.push(b' ');
        text_name(out, &r.service);
        out.push(b' ');
        addr(out, r.client);
        out.push(b' ');
        text_addr(out, r.frontend);
        match &r.pool {
            Some(pool) => text_name(out, &pool.name),
            None => out.push(b'-'),
        }
        out.push(b' ');
        text_addr(out, r.member);
        text_addr(out, r.source);
        out.extend_from_slice(r.outcome.name().as_bytes());
        out.push(b' ');
        match r.outcome.reason() {
            Some(reason) => {
                let _ = write!(out, "{reason} ");
            }
            None => out.extend_from_slice(b"- "),
        }
        number(out, r.bytes_to_member);
        out.push(b' ');
        number(out, r.bytes_to_client);
        out.push(b' ');
        match r.connect {
            Some(d) => millis(out, d),
            None => out.push(b'-'),
        }
        out.push(b' ');
        millis(out, r.duration);
        out.push(b'\n');
    }

    /// Appends `record` as one JSON object and a newline. Fields with no value are `null`.
    pub fn json(&mut self, out: &mut Vec<u8>, r: &Record) {
        out.extend_from_slice(b"{\"time\":\"");
        self.time(out, r.started);
        out.extend_from_slice(b"\",\"protocol\":\"");
        out.extend_from_slice(protocol(r.protocol));
        out.extend_from_slice(b"\",\"service\":");
        json_string(out, &r.service);
        out.extend_from_slice(b",\"client\":");
        json_addr(out, Some(r.client));
        out.extend_from_slice(b",\"frontend\":");
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
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(r.outcome.name().as_bytes());
        out.extend_from_slice(b"\",\"reason\":");
        match r.outcome.reason() {
            // Reasons are words, error kind names and `:`: nothing to escape.
            Some(reason) => {
                let _ = write!(out, "\"{reason}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"bytes_to_member\":");
        number(out, r.bytes_to_member);
        out.extend_from_slice(b",\"bytes_to_client\":");
        number(out, r.bytes_to_client);
        out.extend_from_slice(b",\"connect_ms\":");
        match r.connect {
            Some(d) => millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"duration_ms\":");
        millis(out, r.duration);
        out.extend_from_slice(b"}\n");
    }

    /// RFC 3339 in UTC with milliseconds: `2026-12-02T11:51:12.345Z`. A time before the epoch
    /// (a clock set far back) is written as the epoch.
    fn time(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second));
            // `YYYY-MM-DDTHH:MM:SSZ`: keep all but the `Z`. A year past 9999 (longer) is cut to
            // the same width rather than mis-framed; no clock reads that.
            let whole = whole.to_string();
            let n = whole.len().min(19);
            self.date[..n].copy_from_slice(&whole.as_bytes()[..n]);
            self.date[19] = b'.';
            self.second = Some(second);
        }
        out.extend_from_slice(&self.date);
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

fn protocol(p: Protocol) -> &'static [u8] {
    match p {
        Protocol::Tcp => b"tcp",
        Protocol::Udp => b"udp",
    }
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (microsecond resolution): `0.812`, `12345.000`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    number(out, us / 1000);
    let frac = (us % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `a.b.c.d:port` by hand, gathered on the stack and appended with one copy; `[v6]:port`
/// through `Display` (rare in these deployments).
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            // The longest is `255.255.255.255:65535`.
            let mut buf = [0u8; 21];
            let mut n = 0;
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            buf[n] = b':';
            n += 1;
            let mut port = itoa::Buffer::new();
            let port = port.format(v4.port()).as_bytes();
            buf[n..n + port.len()].copy_from_slice(port);
            out.extend_from_slice(&buf[..n + port.len()]);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn text_addr(out: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        Some(a) => addr(out, a),
        None => out.push(b'-'),
    }
    out.push(b' ');
}

fn json_addr(out: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        Some(a) => {
            out.push(b'"');
            addr(out, a);
            out.push(b'"');
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
        Formatter::default().text(&mut out, r);
        String::from_utf8(out).expect("utf-8")
    }

    fn json(r: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        Formatter::default().json(&mut out, r);
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

    /// The cached second must never leak into the next one, and the hand-written fields must
    /// read exactly as `Display` and humantime write them.
    #[test]
    fn fast_fields_match_display_and_humantime() {
        let mut f = Formatter::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_212_271_998);
        for step_ms in [
            0u64,
            1,
            2,
            999,
            1000,
            1001,
            61_000,
            86_400_000,
            31_536_000_000,
        ] {
            for _ in 0..2 {
                let t = base + Duration::from_millis(step_ms);
                let mut out = Vec::new();
                f.time(&mut out, t);
                let want = humantime::format_rfc3339_millis(t).to_string();
                assert_eq!(String::from_utf8(out).expect("utf-8"), want);
            }
        }
        let mut out = Vec::new();
        f.time(&mut out, SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");

        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.0.7:50000",
            "127.0.0.1:9",
            "[::1]:443",
            "[2001:db8::5]:40000",
        ] {
            let a: SocketAddr = a.parse().expect("addr");
            let mut out = Vec::new();
            addr(&mut out, a);
            assert_eq!(String::from_utf8(out).expect("utf-8"), a.to_string());
        }
        for (us, want) in [
            (0u64, "0.000"),
            (999, "0.999"),
            (1_000, "1.000"),
            (12_345_678, "12345.678"),
        ] {
            let mut out = Vec::new();
            millis(&mut out, Duration::from_micros(us));
            assert_eq!(String::from_utf8(out).expect("utf-8"), want);
        }
    }
}
