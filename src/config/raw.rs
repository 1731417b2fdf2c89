//! Raw config: serde structs that mirror the TOML file one to one.
//!
//! Every table rejects unknown keys. Values that need checking beyond their TOML type (durations,
//! addresses, percentages) stay strings here, wrapped in [`Spanned`] so validation can point at
//! the line they came from. Nothing here fills defaults or checks cross references: that is
//! `validate`'s job.
//!
//! A `[[pool.check]]` table is the one place serde cannot pick the struct by itself: its `kind`
//! decides which keys are allowed. See [`RawCheck`] for how that is done without losing the
//! position of a bad key.

use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    /// PEM certificate chain (leaf first) served over TLS; with `tls_key` or not at all.
    pub tls_cert: Option<Spanned<String>>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<Spanned<String>>,
    /// PEM CA(s): when set, every client must present a certificate signed by one of them.
    pub client_ca: Option<Spanned<String>>,
    /// Accept `POST` over plain HTTP from a peer that is not on loopback.
    pub allow_plain_post: Option<Spanned<bool>>,
}

/// One `[[pool]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Spanned<String>,
    pub members: Spanned<Vec<Spanned<RawMember>>>,
    /// The `[[pool.check]]` tables. Not read with the rest of the pool: `validate` takes the
    /// `check` key out of the pool table and reads each check by its kind (see [`RawCheck`]).
    #[serde(skip)]
    pub check: Vec<Spanned<RawCheck>>,
}

/// One member of a pool: `{ addr = "10.1.0.11", weight = 2, state = "drain" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub state: Option<RawMemberState>,
}

/// Operator state of a member, as written in the file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMemberState {
    Up,
    Drain,
    Maint,
}

/// One `[[pool.check]]` entry, read as the struct of its `kind`.
///
/// Not `Deserialize` itself, on purpose. Serde's internally tagged enums
/// (`#[serde(tag = "kind")]`) buffer the whole table before they pick a variant, and that loses
/// every position inside it: toml then reports an unknown key or a wrong type at the
/// `[[pool.check]]` header rather than at the key, and `Spanned` fields fail outright. So
/// `validate` reads the tag first ([`RawCheckTag`]), then the same table without `kind` as that
/// kind's struct ([`RawCheck::deserialize_as`]). Serde still rejects a key the kind does not take,
/// by construction, and points at it.
///
/// The keys every kind takes (`port`, `interval`, `timeout`, `rise`, `fall`) are repeated in each
/// kind's struct. `#[serde(flatten)]` would share them, but serde does not support it together
/// with `deny_unknown_fields`, and it buffers the table the same way a tagged enum does.
/// Repeated, each struct is the complete list of what its kind takes, serde's "expected one of"
/// names exactly those keys, and [`RawCheck::common`] makes the compiler hold every struct to the
/// shared five.
#[derive(Debug)]
pub enum RawCheck {
    Tcp(RawTcpCheck),
    Tls(RawTlsCheck),
    Http(RawHttpCheck),
    Https(RawHttpsCheck),
    Sip(RawSipCheck),
    SendExpect(RawExchangeCheck),
    Udp(RawExchangeCheck),
}

/// The settings every check kind takes, borrowed from the kind's struct.
#[derive(Debug, Clone, Copy)]
pub struct RawCheckCommon<'a> {
    pub port: &'a Option<Spanned<i64>>,
    pub interval: &'a Option<Spanned<String>>,
    pub timeout: &'a Option<Spanned<String>>,
    pub rise: &'a Option<Spanned<i64>>,
    pub fall: &'a Option<Spanned<i64>>,
}

impl RawCheck {
    /// Reads a check table whose `kind` has been read already, and with `kind` taken out of it,
    /// as that kind's struct.
    pub fn deserialize_as<'de, D: Deserializer<'de>>(
        kind: RawCheckKind,
        table: D,
    ) -> Result<RawCheck, D::Error> {
        Ok(match kind {
            RawCheckKind::Tcp => RawCheck::Tcp(RawTcpCheck::deserialize(table)?),
            RawCheckKind::Tls => RawCheck::Tls(RawTlsCheck::deserialize(table)?),
            RawCheckKind::Http => RawCheck::Http(RawHttpCheck::deserialize(table)?),
            RawCheckKind::Https => RawCheck::Https(RawHttpsCheck::deserialize(table)?),
            RawCheckKind::Sip => RawCheck::Sip(RawSipCheck::deserialize(table)?),
            RawCheckKind::SendExpect => RawCheck::SendExpect(RawExchangeCheck::deserialize(table)?),
            RawCheckKind::Udp => RawCheck::Udp(RawExchangeCheck::deserialize(table)?),
        })
    }

    /// The settings every kind takes.
    pub fn common(&self) -> RawCheckCommon<'_> {
        // Each kind's struct has the five under the same names; one missing fails to compile.
        macro_rules! common_of {
            ($c:expr) => {
                RawCheckCommon {
                    port: &$c.port,
                    interval: &$c.interval,
                    timeout: &$c.timeout,
                    rise: &$c.rise,
                    fall: &$c.fall,
                }
            };
        }
        match self {
            RawCheck::Tcp(c) => common_of!(c),
            RawCheck::Tls(c) => common_of!(c),
            RawCheck::Http(c) => common_of!(c),
            RawCheck::Https(c) => common_of!(c),
            RawCheck::Sip(c) => common_of!(c),
            RawCheck::SendExpect(c) | RawCheck::Udp(c) => common_of!(c),
        }
    }
}

/// The `kind` of a check table, read before the rest of it. Not `deny_unknown_fields`: the other
/// keys are the kind's, checked by its own struct.
#[derive(Debug, Deserialize)]
pub struct RawCheckTag {
    pub kind: RawCheckKind,
}

/// Probe kinds, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawCheckKind {
    Tcp,
    Tls,
    Http,
    Https,
    Sip,
    SendExpect,
    Udp,
}

impl RawCheckKind {
    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            RawCheckKind::Tcp => "tcp",
            RawCheckKind::Tls => "tls",
            RawCheckKind::Http => "http",
            RawCheckKind::Https => "https",
            RawCheckKind::Sip => "sip",
            RawCheckKind::SendExpect => "send-expect",
            RawCheckKind::Udp => "udp",
        }
    }

    /// The keys a check of this kind takes besides `kind`, as its struct declares them.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            RawCheckKind::Tcp => serde_names::<RawTcpCheck>(),
            RawCheckKind::Tls => serde_names::<RawTlsCheck>(),
            RawCheckKind::Http => serde_names::<RawHttpCheck>(),
            RawCheckKind::Https => serde_names::<RawHttpsCheck>(),
            RawCheckKind::Sip => serde_names::<RawSipCheck>(),
            RawCheckKind::SendExpect | RawCheckKind::Udp => serde_names::<RawExchangeCheck>(),
        }
    }

    /// Whether some kind takes `key`: a key its own kind rejects is then misplaced, not a typo.
    pub fn any_takes(key: &str) -> bool {
        serde_names::<RawCheckKind>()
            .iter()
            .filter_map(|name| {
                RawCheckKind::deserialize(StrDeserializer::<serde::de::value::Error>::new(name))
                    .ok()
            })
            .any(|kind| kind.keys().contains(&key))
    }
}

/// `kind = "tcp"`: a connect, nothing more.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

/// `kind = "tls"`: a connect and a complete TLS handshake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    /// Server name sent and verified.
    pub sni: Option<Spanned<String>>,
    /// PEM file of the CA(s) the member's certificate must chain to.
    pub ca_file: Option<Spanned<String>>,
    /// `false` accepts any certificate (the handshake itself is the check).
    pub verify: Option<Spanned<bool>>,
}

/// `kind = "http"`: one `GET`, judged on the status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    /// Request path.
    pub path: Option<Spanned<String>>,
    /// Host header.
    pub host: Option<Spanned<String>>,
    /// Accepted status codes, e.g. `"200-399"`, `"200,204"` or `200`.
    pub expect_status: Option<Spanned<RawStatus>>,
}

/// `kind = "https"`: `http`'s keys and `tls`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpsCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<RawStatus>>,
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<Spanned<bool>>,
}

/// `kind = "sip"`: OPTIONS over `transport`. The TLS keys are `tls`'s and apply with
/// `transport = "tls"` only, which `validate` checks: one key's value decides, not the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSipCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub transport: Option<RawSipTransport>,
    /// Accepted final response codes, as for `http`.
    pub expect_status: Option<Spanned<RawStatus>>,
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<Spanned<bool>>,
}

/// `transport = "tcp" | "tls"` of a sip check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSipTransport {
    Tcp,
    Tls,
}

/// `kind = "send-expect"` (over TCP) and `kind = "udp"` (one datagram): bytes to send and bytes
/// the reply must contain, each as text or as hex.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchangeCheck {
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub send: Option<Spanned<String>>,
    pub send_hex: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub expect_hex: Option<Spanned<String>>,
}

/// `expect_status = 200` or `expect_status = "200-399"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a status code (integer) or ranges such as \"200-399\" or \"200,204\""
)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

/// One `[[service]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub protocol: Option<RawProtocol>,
    pub port: Option<Spanned<i64>>,
    pub pool: Spanned<String>,
    pub backup_pool: Option<Spanned<String>>,
    pub failover: Option<RawFailover>,
    pub min_healthy: Option<Spanned<RawMinHealthy>>,
    pub failback_after: Option<Spanned<String>>,
    pub hash: Option<RawHash>,
    pub idle_timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub drain_timeout: Option<Spanned<String>>,
    /// Announce the listen address over BGP while the service can serve.
    pub announce: Option<Spanned<bool>>,
    /// With routes: clients without SNI, or not speaking TLS, are closed.
    pub sni_required: Option<Spanned<bool>>,
    /// Open connections per client address (0: no limit).
    pub max_connections_per_source: Option<Spanned<i64>>,
    /// New connections per client address, e.g. `"20/s"` or `"20/s burst 40"`.
    pub max_rate_per_source: Option<Spanned<String>>,
    /// Prefix length that makes one IPv6 source (default 64).
    pub source_prefix_v6: Option<Spanned<i64>>,
    /// The `[[service.route]]` tables.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    /// `source = "auto" | "client" | ["10.1.0.5", ...]`: a string or a list, told apart in
    /// validation (an untagged enum would lose the spans).
    pub source: Option<Spanned<toml::Value>>,
}

/// The `[bgp]` table: the built-in announce-only speaker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgp {
    pub asn: Spanned<i64>,
    pub router_id: Spanned<String>,
    pub hold_time: Option<Spanned<String>>,
    /// The `[[bgp.peer]]` tables.
    pub peer: Option<Spanned<Vec<Spanned<RawBgpPeer>>>>,
}

/// One `[[bgp.peer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgpPeer {
    pub address: Spanned<String>,
    pub asn: Spanned<i64>,
    pub port: Option<Spanned<i64>>,
}

/// One `[[service.route]]`: server names, and the pool pair their connections go to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name in metrics, status and logs; default: the first `sni` pattern.
    pub name: Option<Spanned<String>>,
    pub sni: Spanned<Vec<Spanned<String>>>,
    pub pool: Spanned<String>,
    pub backup_pool: Option<Spanned<String>>,
    pub failover: Option<Spanned<RawFailover>>,
    pub min_healthy: Option<Spanned<RawMinHealthy>>,
    pub failback_after: Option<Spanned<String>>,
}

/// `protocol = "tcp" | "udp"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Tcp,
    Udp,
}

/// `failover = "auto" | "local" | "remote"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawFailover {
    Auto,
    Local,
    Remote,
}

/// `hash = "source-ip" | "source-ip-port"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawHash {
    SourceIp,
    SourceIpPort,
}

/// `proxy_protocol = "off" | "v1" | "v2"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProxyProtocol {
    Off,
    V1,
    V2,
}

/// `min_healthy = 2` or `min_healthy = "50%"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a member count (integer) or a percentage such as \"50%\""
)]
pub enum RawMinHealthy {
    Count(i64),
    Text(String),
}

/// The `[access_log]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `"-"` (stderr) or a file path.
    pub path: Option<Spanned<String>>,
    pub format: Option<RawLogFormat>,
    /// Progress line interval; `"0s"` is off.
    pub interval: Option<Spanned<String>>,
}

/// `format = "json" | "text"` of `[access_log]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawLogFormat {
    Json,
    Text,
}

/// The names serde's derive hands the deserializer for `T`: a struct's keys, or an enum's
/// variants (renamed as in the file). Asked of a deserializer that only listens and then stops,
/// so the lists are the very ones serde enforces and nothing in this module repeats them.
fn serde_names<T: DeserializeOwned>() -> &'static [&'static str] {
    /// The deserializer that listens.
    struct Listen;

    /// How it stops: with the names it heard (none for a type that is neither).
    #[derive(Debug)]
    struct Heard(&'static [&'static str]);

    impl fmt::Display for Heard {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "heard {:?}", self.0)
        }
    }

    impl std::error::Error for Heard {}

    impl serde::de::Error for Heard {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Heard(&[])
        }
    }

    impl<'de> Deserializer<'de> for Listen {
        type Error = Heard;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Heard> {
            Err(Heard(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Heard> {
            Err(Heard(fields))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Heard> {
            Err(Heard(variants))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
            ignored_any
        }
    }

    match T::deserialize(Listen) {
        Ok(_) => &[],
        Err(Heard(names)) => names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_ones_serde_enforces() {
        assert_eq!(
            RawCheckKind::Tls.keys(),
            [
                "port", "interval", "timeout", "rise", "fall", "sni", "ca_file", "verify"
            ]
        );
        assert_eq!(
            serde_names::<RawCheckKind>(),
            ["tcp", "tls", "http", "https", "sip", "send-expect", "udp"]
        );
    }

    #[test]
    fn a_key_of_another_kind_is_known() {
        assert!(RawCheckKind::any_takes("path"));
        assert!(RawCheckKind::any_takes("expect_hex"));
        assert!(RawCheckKind::any_takes("transport"));
        assert!(!RawCheckKind::any_takes("pth"));
        assert!(!RawCheckKind::any_takes("kind"));
    }

    #[test]
    fn every_kind_takes_the_common_keys() {
        for name in serde_names::<RawCheckKind>() {
            let kind =
                RawCheckKind::deserialize(StrDeserializer::<serde::de::value::Error>::new(name))
                    .expect("a kind");
            assert_eq!(kind.as_str(), *name);
            assert_eq!(
                kind.keys()[..5],
                ["port", "interval", "timeout", "rise", "fall"]
            );
        }
    }
}
