//! `[[pool.check]]`: reading each table as the struct of its kind, then validating it into a
//! [`Check`] whose [`CheckKind`] carries only what that kind uses.
//!
//! Which keys a kind takes is settled by serde (each kind's raw struct denies unknown keys); this
//! file only words the rejection of a key that belongs to another kind, and checks what the types
//! cannot say (values, and the keys `transport` switches on or off). Pure: no I/O.

use std::ops::Range;
use std::path::PathBuf;

use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::DeValue;

use super::Cx;
use crate::config::raw::*;
use crate::config::*;

/// The TLS keys of a kind that speaks TLS, borrowed from its struct.
struct TlsKeys<'r> {
    sni: &'r Option<Spanned<String>>,
    ca_file: &'r Option<Spanned<String>>,
    verify: &'r Option<Spanned<bool>>,
}

impl<'a> Cx<'a> {
    /// Reads the `check` value of pool `pool` (an array of tables), each table as its kind's
    /// struct; records the problems of those that cannot be read.
    pub(super) fn raw_checks(
        &mut self,
        value: Option<Spanned<DeValue<'a>>>,
        pool: &str,
    ) -> Vec<Spanned<RawCheck>> {
        let Some(value) = value else {
            return Vec::new();
        };
        self.entries(&value, pool, "pool.check")
            .iter()
            .enumerate()
            .filter_map(|(i, table)| self.raw_check(table, pool, i))
            .collect()
    }

    /// Reads one check table: `kind` first, then the rest as that kind's struct (see
    /// [`RawCheck`] for why serde is not left to do both).
    ///
    /// A key serde rejects that another kind takes is reported as misplaced, then left out and the
    /// table read again, so every misplaced key and the problems of the rest are all reported.
    /// The config is invalid by then; the check read without those keys only carries on the
    /// search for problems.
    fn raw_check(
        &mut self,
        table: &Spanned<DeValue<'a>>,
        pool: &str,
        index: usize,
    ) -> Option<Spanned<RawCheck>> {
        // Serde's problems keep the pool's path and the key path inside it
        // (`pool "p": check[1].kind: unknown variant ...`), as for any other key of the pool.
        let within = format!("check[{}]", index + 1);
        let kind = self.entry_within::<RawCheckTag>(table, pool, &within)?.kind;
        let mut rest = table.clone();
        let mut left_out = vec!["kind"];
        loop {
            if let DeValue::Table(t) = rest.get_mut() {
                t.remove(left_out[left_out.len() - 1]);
            }
            let e = match RawCheck::deserialize_as(kind, rest.clone().into_deserializer()) {
                Ok(check) => return Some(Spanned::new(table.span(), check)),
                Err(e) => e,
            };
            // Checked against this kind's own keys too: a wrong value under a dotted key
            // (`path.x = 1`) is placed on the key. And never the same key twice, so this ends.
            let misplaced = rejected_key(table, &e).filter(|(key, _)| {
                !kind.keys().contains(key)
                    && RawCheckKind::any_takes(key)
                    && !left_out.contains(key)
            });
            let Some((key, value)) = misplaced else {
                self.serde_problem(&e, table, pool, &within);
                return None;
            };
            self.problem(
                value,
                &check_path(pool, index),
                format!("{key} does not apply to a {} check", kind.as_str()),
            );
            left_out.push(key);
        }
    }

    /// Validates one check read by [`Cx::raw_check`]; `None` when it has a problem.
    pub(super) fn check(&mut self, raw: &Spanned<RawCheck>, path: &str) -> Option<Check> {
        let entry = raw.span();
        let common = raw.get_ref().common();
        let port = match common.port {
            None => Some(None),
            Some(p) => self.port(p, path, "port", false).map(Some),
        };
        let interval = self.duration(
            common.interval,
            path,
            "interval",
            DEFAULT_CHECK_INTERVAL,
            false,
        );
        let timeout = self.duration(
            common.timeout,
            path,
            "timeout",
            DEFAULT_CHECK_TIMEOUT,
            false,
        );
        let rise = self.count(common.rise, path, "rise", DEFAULT_RISE, 1..=100);
        let fall = self.count(common.fall, path, "fall", DEFAULT_FALL, 1..=100);
        let kind = self.check_kind(raw.get_ref(), path, entry);
        Some(Check {
            port: port?,
            interval: interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
            kind: kind?,
        })
    }

    /// The kind's own settings, validated.
    fn check_kind(&mut self, raw: &RawCheck, path: &str, entry: Range<usize>) -> Option<CheckKind> {
        match raw {
            RawCheck::Tcp(_) => Some(CheckKind::Tcp),
            RawCheck::Tls(c) => {
                let keys = TlsKeys {
                    sni: &c.sni,
                    ca_file: &c.ca_file,
                    verify: &c.verify,
                };
                self.tls(keys, "tls", path, entry).map(CheckKind::Tls)
            }
            RawCheck::Http(c) => self
                .http(&c.path, &c.host, &c.expect_status, path)
                .map(CheckKind::Http),
            RawCheck::Https(c) => {
                let http = self.http(&c.path, &c.host, &c.expect_status, path);
                let keys = TlsKeys {
                    sni: &c.sni,
                    ca_file: &c.ca_file,
                    verify: &c.verify,
                };
                let tls = self.tls(keys, "https", path, entry);
                Some(CheckKind::Https {
                    http: http?,
                    tls: tls?,
                })
            }
            RawCheck::Sip(c) => self.sip(c, path, entry),
            RawCheck::SendExpect(c) => self
                .exchange(c, RawCheckKind::SendExpect, path, entry)
                .map(CheckKind::SendExpect),
            RawCheck::Udp(c) => self
                .exchange(c, RawCheckKind::Udp, path, entry)
                .map(CheckKind::Udp),
        }
    }

    /// `kind = "sip"`: over TCP, or over TLS with `transport = "tls"`.
    fn sip(&mut self, c: &RawSipCheck, path: &str, entry: Range<usize>) -> Option<CheckKind> {
        let expect_status = self.expect_status(&c.expect_status, (200, 299), path);
        match c.transport {
            Some(RawSipTransport::Tls) => {
                let keys = TlsKeys {
                    sni: &c.sni,
                    ca_file: &c.ca_file,
                    verify: &c.verify,
                };
                let tls = self.tls(keys, "sip-tls", path, entry);
                Some(CheckKind::SipTls {
                    expect_status: expect_status?,
                    tls: tls?,
                })
            }
            None | Some(RawSipTransport::Tcp) => {
                // Serde lets these through because sip takes them, but only over TLS.
                let tls_keys = [
                    ("sni", c.sni.as_ref().map(Spanned::span)),
                    ("ca_file", c.ca_file.as_ref().map(Spanned::span)),
                    ("verify", c.verify.as_ref().map(Spanned::span)),
                ];
                let mut ok = true;
                for (key, span) in tls_keys {
                    if let Some(span) = span {
                        self.problem(
                            span,
                            path,
                            format!(
                                "{key} does not apply to a sip check over tcp; \
                                 it needs transport = \"tls\""
                            ),
                        );
                        ok = false;
                    }
                }
                let expect_status = expect_status?;
                ok.then_some(CheckKind::Sip { expect_status })
            }
        }
    }

    /// The TLS settings of a `kind` check: a CA to verify against, or `verify = false`.
    fn tls(
        &mut self,
        keys: TlsKeys<'_>,
        kind: &str,
        path: &str,
        entry: Range<usize>,
    ) -> Option<CheckTls> {
        let verify = keys.verify.as_ref().is_none_or(|v| *v.get_ref());
        let sni = keys.sni.as_ref().map(|s| s.get_ref().clone());
        match (keys.ca_file, verify) {
            (Some(ca), true) => Some(CheckTls {
                sni,
                ca_file: Some(PathBuf::from(ca.get_ref())),
            }),
            (None, false) => Some(CheckTls { sni, ca_file: None }),
            (Some(ca), false) => {
                self.problem(
                    ca.span(),
                    path,
                    "ca_file is set but verify = false; keep one of them",
                );
                None
            }
            (None, true) => {
                let at = keys.verify.as_ref().map_or(entry, |v| v.span());
                self.problem(
                    at,
                    path,
                    format!(
                        "a {kind} check needs ca_file (the CA that signed the members' certificates), \
                         or verify = false to accept any certificate"
                    ),
                );
                None
            }
        }
    }

    /// The request and accepted statuses of an `http` or `https` check.
    fn http(
        &mut self,
        request_path: &Option<Spanned<String>>,
        host: &Option<Spanned<String>>,
        expect_status: &Option<Spanned<RawStatus>>,
        path: &str,
    ) -> Option<HttpCheck> {
        let expect_status = self.expect_status(expect_status, (200, 399), path);
        let request_path = match request_path {
            None => Some("/".to_string()),
            Some(p) if p.get_ref().starts_with('/') => Some(p.get_ref().clone()),
            Some(p) => {
                self.problem(p.span(), path, "path must start with `/`");
                None
            }
        };
        Some(HttpCheck {
            path: request_path?,
            host: host.as_ref().map(|h| h.get_ref().clone()),
            expect_status: expect_status?,
        })
    }

    /// `expect_status`, or `default` when it is not set.
    fn expect_status(
        &mut self,
        raw: &Option<Spanned<RawStatus>>,
        default: (u16, u16),
        path: &str,
    ) -> Option<StatusRanges> {
        let Some(raw) = raw else {
            return Some(StatusRanges(vec![default]));
        };
        let ranges = parse_status(raw.get_ref());
        if ranges.is_none() {
            self.problem(
                raw.span(),
                path,
                "expect_status must be status codes 100..=699 or ranges, e.g. \"200-399\" or \"200,204\"",
            );
        }
        ranges.map(StatusRanges)
    }

    /// The bytes of a `send-expect` or `udp` check.
    fn exchange(
        &mut self,
        c: &RawExchangeCheck,
        kind: RawCheckKind,
        path: &str,
        entry: Range<usize>,
    ) -> Option<Exchange> {
        let send = self.bytes(&c.send, &c.send_hex, path, "send");
        let expect = self.bytes(&c.expect, &c.expect_hex, path, "expect");
        let mut ok = true;
        if kind == RawCheckKind::Udp && send.as_ref().is_some_and(|s| s.is_empty()) {
            // Over UDP nothing comes back unless something is sent first.
            let at = c
                .send
                .as_ref()
                .or(c.send_hex.as_ref())
                .map_or(entry.clone(), |v| v.span());
            self.problem(
                at,
                path,
                "a udp check needs `send` (or `send_hex`): the datagram to send",
            );
            ok = false;
        }
        if expect.as_ref().is_some_and(|e| e.is_empty()) {
            // An empty `expect` is in any reply: the check would pass whatever the member says.
            let at = c
                .expect
                .as_ref()
                .or(c.expect_hex.as_ref())
                .map_or(entry, |v| v.span());
            self.problem(
                at,
                path,
                format!(
                    "a {} check needs `expect` (or `expect_hex`): the bytes the reply must contain",
                    kind.as_str()
                ),
            );
            ok = false;
        }
        let exchange = Exchange {
            send: send?,
            expect: expect?,
        };
        ok.then_some(exchange)
    }

    /// Text or hex bytes from a `key` / `key_hex` pair (at most one of them); empty when neither.
    fn bytes(
        &mut self,
        text: &Option<Spanned<String>>,
        hex: &Option<Spanned<String>>,
        path: &str,
        key: &str,
    ) -> Option<Vec<u8>> {
        match (text, hex) {
            (Some(t), Some(_)) => {
                self.problem(t.span(), path, format!("set {key} or {key}_hex, not both"));
                None
            }
            (Some(t), None) => Some(t.get_ref().as_bytes().to_vec()),
            (None, Some(h)) => match decode_hex(h.get_ref()) {
                Some(b) => Some(b),
                None => {
                    self.problem(
                        h.span(),
                        path,
                        format!("{key}_hex is not an even number of hex digits (spaces allowed)"),
                    );
                    None
                }
            },
            (None, None) => Some(Vec::new()),
        }
    }
}

/// `pool "fe-dc1" check 2`: where a check's own problems are reported.
pub(super) fn check_path(pool: &str, index: usize) -> String {
    format!("{pool} check {}", index + 1)
}

/// The key of `table` that serde's error points at, and the span of its value. Serde points at a
/// key (rather than a value) only when the struct does not take it.
fn rejected_key<'t>(
    table: &'t Spanned<DeValue<'_>>,
    e: &toml::de::Error,
) -> Option<(&'t str, Range<usize>)> {
    let at = e.span()?.start;
    let DeValue::Table(t) = table.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, _)| k.span().contains(&at))
        .map(|(k, v)| (k.get_ref().as_ref(), v.span()))
}

/// `200`, `"200-399"`, `"200,204,300-399"` -> ranges; `None` when malformed or out of 100..=699.
fn parse_status(raw: &RawStatus) -> Option<Vec<(u16, u16)>> {
    let valid = |c: u16| (100..=699).contains(&c);
    match raw {
        RawStatus::Code(c) => u16::try_from(*c)
            .ok()
            .filter(|c| valid(*c))
            .map(|c| vec![(c, c)]),
        RawStatus::Text(t) => {
            let mut out = Vec::new();
            for part in t.split(',') {
                let part = part.trim();
                let (lo, hi) = match part.split_once('-') {
                    Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
                    None => {
                        let c = part.parse().ok()?;
                        (c, c)
                    }
                };
                if !valid(lo) || !valid(hi) || lo > hi {
                    return None;
                }
                out.push((lo, hi));
            }
            Some(out)
        }
    }
}

/// Hex digits (whitespace ignored) -> bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::parse;

    /// A valid config whose one pool has the check `check` (TOML lines, `kind` included).
    fn with_check(check: &str) -> String {
        format!(
            "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"10.1.0.11:5061\" }}]\n\
             [[pool.check]]\n{check}\n"
        )
    }

    fn check_of(check: &str) -> Check {
        let config = parse(&with_check(check), "t.toml").expect("valid");
        config.pools[0].checks[0].clone()
    }

    fn problems_of(check: &str) -> String {
        parse(&with_check(check), "t.toml")
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn each_kind_gets_its_own_settings_and_defaults() {
        let c = check_of("kind = \"tcp\"\nport = 80\nrise = 1");
        assert_eq!(
            (c.port, c.interval, c.timeout, c.rise, c.fall),
            (
                Some(80),
                DEFAULT_CHECK_INTERVAL,
                DEFAULT_CHECK_TIMEOUT,
                1,
                DEFAULT_FALL
            )
        );
        assert_eq!(c.kind, CheckKind::Tcp);

        let http = HttpCheck {
            path: "/".to_string(),
            host: None,
            expect_status: StatusRanges(vec![(200, 399)]),
        };
        assert_eq!(
            check_of("kind = \"http\"").kind,
            CheckKind::Http(http.clone())
        );
        let tls = CheckTls {
            sni: Some("fe.example.com".to_string()),
            ca_file: None,
        };
        assert_eq!(
            check_of("kind = \"https\"\nverify = false\nsni = \"fe.example.com\"").kind,
            CheckKind::Https {
                http,
                tls: tls.clone()
            }
        );
        assert_eq!(
            check_of(
                "kind = \"sip\"\ntransport = \"tls\"\nverify = false\nsni = \"fe.example.com\""
            )
            .kind,
            CheckKind::SipTls {
                expect_status: StatusRanges(vec![(200, 299)]),
                tls,
            }
        );
        assert_eq!(
            check_of("kind = \"sip\"\nexpect_status = \"200,204\"").kind,
            CheckKind::Sip {
                expect_status: StatusRanges(vec![(200, 200), (204, 204)])
            }
        );
        assert_eq!(
            check_of("kind = \"send-expect\"\nexpect = \"+PONG\"").kind,
            CheckKind::SendExpect(Exchange {
                send: Vec::new(),
                expect: b"+PONG".to_vec()
            })
        );
    }

    #[test]
    fn udp_check_needs_send_and_expect() {
        let c = check_of(
            "kind = \"udp\"\nsend_hex = \"0001 0000 2112A442 000000000000000000000000\"\n\
             expect_hex = \"2112A442\"",
        );
        let CheckKind::Udp(exchange) = c.kind else {
            panic!("not a udp check: {c:?}");
        };
        assert_eq!(exchange.send.len(), 20);
        assert_eq!(exchange.expect, vec![0x21, 0x12, 0xA4, 0x42]);

        let problems = problems_of("kind = \"udp\"\nexpect = \"x\"");
        assert!(problems.contains("a udp check needs `send`"), "{problems}");
        let problems = problems_of("kind = \"udp\"\nsend = \"x\"");
        assert!(
            problems.contains("a udp check needs `expect`"),
            "{problems}"
        );
    }

    #[test]
    fn a_key_of_another_kind_does_not_apply() {
        for (check, want) in [
            (
                "kind = \"udp\"\nsend = \"x\"\nexpect = \"y\"\npath = \"/\"",
                "t.toml:8:8 pool \"p\" check 1: path does not apply to a udp check",
            ),
            (
                "kind = \"tcp\"\nsni = \"a\"",
                "t.toml:6:7 pool \"p\" check 1: sni does not apply to a tcp check",
            ),
            (
                "kind = \"http\"\nexpect = \"ok\"",
                "t.toml:6:10 pool \"p\" check 1: expect does not apply to a http check",
            ),
            (
                "kind = \"sip\"\nsni = \"a\"",
                "t.toml:6:7 pool \"p\" check 1: sni does not apply to a sip check over tcp",
            ),
        ] {
            let problems = problems_of(check);
            assert!(problems.starts_with(want), "{check}: {problems}");
        }
    }

    #[test]
    fn every_misplaced_key_and_the_rest_s_problems_are_reported() {
        let problems = problems_of("kind = \"tcp\"\npath = \"/\"\nsni = \"a\"\nrise = 0");
        assert!(
            problems.contains("6:8 pool \"p\" check 1: path does not apply to a tcp check"),
            "{problems}"
        );
        assert!(
            problems.contains("7:7 pool \"p\" check 1: sni does not apply to a tcp check"),
            "{problems}"
        );
        assert!(
            problems.contains("8:8 pool \"p\" check 1: rise 0 is out of range"),
            "{problems}"
        );
        assert_eq!(problems.lines().count(), 3, "{problems}");
    }

    #[test]
    fn an_unknown_key_or_kind_is_serde_s_message_at_its_place() {
        let problems = problems_of("kind = \"tcp\"\npth = \"/\"");
        assert!(
            problems.starts_with(
                "t.toml:6:1 pool \"p\": check[1]: unknown field `pth`, expected one of `port`"
            ),
            "{problems}"
        );
        let problems = problems_of("kind = \"icmp\"");
        assert!(
            problems.starts_with("t.toml:5:8 pool \"p\": check[1].kind: unknown variant `icmp`"),
            "{problems}"
        );
        let problems = problems_of("port = 80");
        assert!(
            problems.contains("pool \"p\": check[1]: missing field `kind`"),
            "{problems}"
        );
        let problems = problems_of("kind = \"http\"\npath.x = 1");
        assert!(
            problems.starts_with("t.toml:6:1 pool \"p\": check[1]: invalid type: map"),
            "{problems}"
        );
        let problems = problems_of("kind = \"http\"\nport = \"80\"");
        assert!(
            problems.starts_with(
                "t.toml:6:8 pool \"p\": check[1].port: invalid type: string \"80\", expected i64"
            ),
            "{problems}"
        );
    }

    #[test]
    fn every_problem_of_a_check_is_reported() {
        let problems = problems_of(
            "kind = \"https\"\ninterval = \"soon\"\npath = \"health\"\nca_file = \"ca.pem\"\nverify = false",
        );
        assert!(
            problems.contains("interval \"soon\" is not a duration"),
            "{problems}"
        );
        assert!(problems.contains("path must start with `/`"), "{problems}");
        assert!(
            problems.contains("ca_file is set but verify = false"),
            "{problems}"
        );
    }
}
