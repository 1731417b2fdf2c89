//! `tandem status`: fetches `/status` from a running tandem's admin API and prints it as
//! tables. The formatting is pure and tested; the fetch is one plain HTTP/1.1 GET.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the admin API at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API at {addr} answered badly: {reason}")]
    Answer { addr: SocketAddr, reason: String },
}

/// GETs `/status` from the admin API at `addr`.
pub fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<Value, FetchError> {
    let connect = |source| FetchError::Connect { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect)?;
    stream
        .write_all(
            format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(connect)?;
    let mut raw = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(connect)?;
    let answer = |reason: String| FetchError::Answer { addr, reason };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP response".to_string()))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        return Err(answer(status_line.to_string()));
    }
    serde_json::from_str(body).map_err(|e| answer(format!("not JSON: {e}")))
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

fn table(out: &mut String, rows: &[Vec<String>]) {
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
