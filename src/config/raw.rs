//! Raw config: serde structs that mirror the TOML file one to one.
//!
//! Every table rejects unknown keys. Values that need checking beyond their TOML type (durations,
//! addresses, percentages) stay strings here, wrapped in [`Spanned`] so validation can point at
//! the line they came from. Nothing here fills defaults or checks cross references: that is
//! `validate`'s job.

use serde::Deserialize;
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
    #[serde(default)]
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

/// One `[[pool.check]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub kind: RawCheckKind,
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    /// TLS (tls, https, sip over tls): server name sent and verified.
    pub sni: Option<Spanned<String>>,
    /// TLS: PEM file of the CA(s) the member's certificate must chain to.
    pub ca_file: Option<Spanned<String>>,
    /// TLS: `false` accepts any certificate (the handshake itself is the check).
    pub verify: Option<Spanned<bool>>,
    /// http/https: request path.
    pub path: Option<Spanned<String>>,
    /// http/https: Host header.
    pub host: Option<Spanned<String>>,
    /// http/https/sip: accepted status codes, e.g. `"200-399"`, `"200,204"` or `200`.
    pub expect_status: Option<Spanned<RawStatus>>,
    /// sip: `tcp` or `tls`.
    pub transport: Option<Spanned<String>>,
    /// send-expect and udp: bytes to send, as text or as hex.
    pub send: Option<Spanned<String>>,
    pub send_hex: Option<Spanned<String>>,
    /// send-expect and udp: bytes the reply must contain, as text or as hex.
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

/// Probe kinds, as written in the file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawCheckKind {
    Tcp,
    Tls,
    Http,
    Https,
    Sip,
    SendExpect,
    /// A datagram sent to the member's UDP port; up when a reply contains `expect`.
    Udp,
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
