//! Validated configuration: the types the rest of tandem runs on.
//!
//! A file goes through two stages: [`raw`] (serde, one struct per TOML table, unknown keys
//! rejected) and [`validate`] (every value checked, cross references resolved, defaults filled).
//! Runtime code only ever sees [`Config`], where nothing validation could settle is left as an
//! `Option`. Loading performs file I/O only; it never binds a socket.

mod files;
pub mod raw;
pub mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sni::names::Pattern;

pub use validate::{PathKind, parse, parse_with};

/// Default `[admin] listen`: loopback, so the admin API is never exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";
/// Default `[[pool.check]]` timings, HAProxy's (`inter 2s`, `rise 2`, `fall 3`).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default probe timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive successes to mark a member up.
pub const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures to mark a member down.
pub const DEFAULT_FALL: u32 = 3;
/// Default TCP idle timeout: Lync / Skype for Business asks its load balancers for 1800 s.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Default UDP session idle timeout.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a member has to accept a connection before the next one is tried.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time the local pool must stay healthy before traffic returns to it.
pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(60);
/// Default time connections to removed or drained members may live on.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cap on concurrent connections (TCP) or sessions (UDP) per service.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Largest accepted member weight; beyond it a weight is almost certainly a typo.
pub const MAX_WEIGHT: u32 = 1000;

/// A whole, validated tandem configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin API listener; `None` when the file has no `[admin]` table.
    pub admin: Option<Admin>,
    /// Pools in file order; names are unique.
    pub pools: Vec<Pool>,
    /// Services in file order; names and listen addresses are unique.
    pub services: Vec<Service>,
    /// One line per connection or session; `None` when the file has no `[access_log]`.
    pub access_log: Option<AccessLog>,
    /// The BGP speaker; `None` when the file has no `[bgp]` table.
    pub bgp: Option<Bgp>,
}

impl Config {
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// A one-line summary for `tandem check` and the start-up log.
    pub fn summary(&self) -> String {
        let members: usize = self.pools.iter().map(|p| p.members.len()).sum();
        format!(
            "{} service(s), {} pool(s), {} member(s)",
            self.services.len(),
            self.pools.len(),
            members
        )
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Address of the admin HTTP listener (default 127.0.0.1:9900).
    pub listen: SocketAddr,
    /// File holding the bearer token required for POST requests, if any.
    pub token_file: Option<PathBuf>,
    /// TLS for the admin API; `None`: plain HTTP.
    pub tls: Option<AdminTls>,
    /// Accept `POST` (reload) over plain HTTP from a peer that is not on loopback (default
    /// false). Irrelevant with TLS.
    pub allow_plain_post: bool,
}

impl Admin {
    /// The start-up and `tandem check` warning for an admin API that others can reach in plain
    /// HTTP. It is allowed (Prometheus on a management network often scrapes plain HTTP), but
    /// then anything on that network can read `/status` and, with `allow_plain_post`, reload.
    pub fn warning(&self) -> Option<String> {
        // `to_canonical`: `[::ffff:127.0.0.1]` is loopback too.
        if self.tls.is_some() || self.listen.ip().to_canonical().is_loopback() {
            return None;
        }
        Some(format!(
            "[admin] listen = \"{}\" is not loopback and the admin API has no TLS (tls_cert, \
             tls_key): /metrics, /status and /events are readable in plain HTTP from the network{}",
            self.listen,
            if self.allow_plain_post {
                ", and allow_plain_post = true accepts POST /reload from it"
            } else {
                "; POST /reload from a non-loopback peer is refused"
            }
        ))
    }
}

/// `[admin]` TLS: the files are read when the config loads (so `tandem check` and a reload
/// reject files that do not load) and again by the admin API on start and on every reload, so a
/// rotated certificate is served without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA(s) client certificates must chain to; `None`: no client certificate asked for.
    pub client_ca: Option<PathBuf>,
}

/// `[access_log]`: one line per TCP connection and UDP session when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Where lines go (default stderr).
    pub target: LogTarget,
    /// How a line is written (default JSON).
    pub format: LogFormat,
    /// `Some(d)`: a progress line for connections open `d`, and every `d` after; `None` (the
    /// file's `"0s"`, the default): lines at the end only.
    pub interval: Option<Duration>,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `path = "-"`: standard error (the journal under systemd).
    Stderr,
    /// An absolute file path, opened for append and reopened on SIGUSR1.
    File(PathBuf),
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Space-separated fields in a fixed order (README "Access log").
    Text,
}

/// A named set of members in one site.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// At least one member; addresses are unique within the pool.
    pub members: Vec<Member>,
    /// Health checks; a member is up only when all of them pass. Empty: members count as up.
    pub checks: Vec<Check>,
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub addr: MemberAddr,
    /// Relative share of new connections, 1..=1000 (default 1).
    pub weight: u32,
    pub state: OperatorState,
}

/// A member's address: an IP, with a port or taking the service's port.
///
/// The canonical text form (`10.1.0.11`, `10.1.0.11:5061`, `[2001:db8::1]:5061`) is the member's
/// identity: it names the member in hashing, health and status, so reordering the config moves
/// nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl MemberAddr {
    /// The socket address to connect to for a service whose default member port is `port`.
    pub fn socket_addr(&self, service_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(service_port))
    }

    /// Reads a member address as the config writes it: `IP`, `[IPv6]`, `IP:port` or
    /// `[IPv6]:port`. Host names are refused rather than resolved, so what a file means never
    /// depends on DNS. The validator and `tandem member` both read addresses with this.
    pub fn parse(text: &str) -> Result<MemberAddr, MemberAddrError> {
        let s = text.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(MemberAddr { ip, port: None });
        }
        // `[v6]` without a port is accepted too, for symmetry with `[v6]:port`.
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && let Ok(ip) = inner.parse::<IpAddr>()
        {
            return Ok(MemberAddr { ip, port: None });
        }
        match s.parse::<SocketAddr>() {
            Ok(sa) if sa.port() == 0 => Err(MemberAddrError::PortZero),
            Ok(sa) => Ok(MemberAddr {
                ip: sa.ip(),
                port: Some(sa.port()),
            }),
            Err(_) => Err(MemberAddrError::NotAnAddress),
        }
    }
}

/// Why a text is not a member address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemberAddrError {
    #[error("port 0 is not a member port")]
    PortZero,
    #[error(
        "not an IP address or IP:port (host names are not resolved; IPv6 with a port is written [addr]:port)"
    )]
    NotAnAddress,
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
        }
    }
}

/// Operator state of a member, set in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OperatorState {
    /// In service (health permitting).
    #[default]
    Up,
    /// No new connections; existing ones stay; still checked.
    Drain,
    /// No new connections and no checks.
    Maint,
}

impl OperatorState {
    /// The name used in the config file and in status.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorState::Up => "up",
            OperatorState::Drain => "drain",
            OperatorState::Maint => "maint",
        }
    }
}

/// One `[[pool.check]]`: the settings every kind shares, and the kind with its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Probe port; `None` probes the member's own port.
    pub port: Option<u16>,
    /// Time between probes of one member (default 2 s).
    pub interval: Duration,
    /// Bound on one whole probe: connect, handshake, request and reply (default 1 s).
    pub timeout: Duration,
    /// Consecutive successes before a down member is marked up.
    pub rise: u32,
    /// Consecutive failures before an up member is marked down.
    pub fall: u32,
    pub kind: CheckKind,
}

/// What a check does, with exactly the settings that kind uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect, nothing more.
    Tcp,
    /// A TCP connect and a complete TLS handshake.
    Tls(CheckTls),
    /// One `GET` over TCP, judged on the status.
    Http(HttpCheck),
    /// One `GET` over TLS, judged on the status.
    Https { http: HttpCheck, tls: CheckTls },
    /// SIP OPTIONS over TCP, judged on the final response's status (default 200-299).
    Sip { expect_status: StatusRanges },
    /// SIP OPTIONS over TLS (`kind = "sip"`, `transport = "tls"`).
    SipTls {
        expect_status: StatusRanges,
        tls: CheckTls,
    },
    /// Bytes written after the TCP connect, and bytes the reply must contain.
    SendExpect(Exchange),
    /// One datagram to the probe port over UDP; up when a reply datagram contains `expect` (a
    /// STUN binding request, for example).
    Udp(Exchange),
}

impl CheckKind {
    /// The name used in status and messages (`kind` in the file; SIP over TLS is
    /// `kind = "sip"` with `transport = "tls"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Tls(_) => "tls",
            CheckKind::Http(_) => "http",
            CheckKind::Https { .. } => "https",
            CheckKind::Sip { .. } => "sip",
            CheckKind::SipTls { .. } => "sip-tls",
            CheckKind::SendExpect(_) => "send-expect",
            CheckKind::Udp(_) => "udp",
        }
    }

    /// The TLS settings of the kinds that speak TLS (`tls`, `https`, `sip` over TLS).
    pub fn tls(&self) -> Option<&CheckTls> {
        match self {
            CheckKind::Tls(tls) | CheckKind::Https { tls, .. } | CheckKind::SipTls { tls, .. } => {
                Some(tls)
            }
            CheckKind::Tcp
            | CheckKind::Http(_)
            | CheckKind::Sip { .. }
            | CheckKind::SendExpect(_)
            | CheckKind::Udp(_) => None,
        }
    }
}

/// How a check does TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTls {
    /// Server name to send (SNI) and verify; default: the member's IP.
    pub sni: Option<String>,
    /// `Some(ca_file)`: verify the chain against it. `None`: `verify = false`, any certificate
    /// is accepted (the handshake is still required to complete).
    pub ca_file: Option<PathBuf>,
}

/// The request and the verdict of an `http` or `https` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request path, starting with `/` (default `/`).
    pub path: String,
    /// Host header; default: the member's IP, with its port unless the scheme's default.
    pub host: Option<String>,
    /// Accepted statuses (default 200-399).
    pub expect_status: StatusRanges,
}

/// Accepted status codes, as inclusive ranges: `200-399` is `[(200, 399)]`, `200,204` is
/// `[(200, 200), (204, 204)]`. Never empty once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    /// Whether `status` is one of these.
    pub fn accepts(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl fmt::Display for StatusRanges {
    /// As written in the config: `200-399`, `200,204`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// The bytes of a `send-expect` or `udp` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Sent first. `send-expect`: may be empty (the member speaks first); `udp`: the datagram,
    /// never empty.
    pub send: Vec<u8>,
    /// Bytes the reply must contain; never empty.
    pub expect: Vec<u8>,
}

/// One listener in front of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// Member port for members configured without one (default: the listen port).
    pub port: u16,
    /// Name of the local pool (exists in [`Config::pools`]).
    pub pool: String,
    /// Name of the paired pool in the other site (exists, differs from `pool`).
    pub backup_pool: Option<String>,
    pub failover: FailoverMode,
    /// The local pool counts as down below this many healthy members (resolved from a count or a
    /// percentage of the pool's members, rounded up; at least 1, at most the pool size).
    pub min_healthy: usize,
    pub failback_after: Duration,
    pub hash: HashMode,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub proxy_protocol: ProxyProtocol,
    pub drain_timeout: Duration,
    /// Announce the listen address (/32 or /128) over BGP while the active pool has a member
    /// up (default off). Validation ensures `[bgp]` exists and the address is not a wildcard.
    pub announce: bool,
    /// Routing by TLS server name (TCP only; empty for UDP).
    pub sni: SniRouting,
    /// Limits per client address (TCP only; none for UDP).
    pub per_source: SourceLimits,
    /// Source address of the connections (TCP) and sockets (UDP) to members.
    pub source: Source,
}

/// Default `[bgp] hold_time`: short enough that a hung tandem loses its routes within seconds
/// (the RFC's suggested 90 s would keep a black hole that long), long enough to ride out a
/// scheduling hiccup.
pub const DEFAULT_BGP_HOLD_TIME: Duration = Duration::from_secs(9);
/// Default `[[bgp.peer]] port`.
pub const DEFAULT_BGP_PORT: u16 = 179;

/// `[bgp]`: the announce-only speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    /// Our AS number (1..=4294967295, not 23456).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: std::net::Ipv4Addr,
    /// Proposed hold time, whole seconds: 0 (no keepalives) or 3..=65535 s (default 9 s).
    pub hold_time: Duration,
    /// At least one; addresses are unique.
    pub peers: Vec<BgpPeer>,
}

/// One `[[bgp.peer]]`: a router tandem connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub asn: u32,
    /// TCP port (default 179).
    pub port: u16,
}

impl BgpPeer {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// `[[service.route]]` entries and `sni_required` of a TCP service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SniRouting {
    /// In file order; patterns are unique across them.
    pub routes: Vec<SniRoute>,
    /// Clients without SNI, or not speaking TLS, are closed rather than sent to the service's
    /// own pool.
    pub required: bool,
}

impl SniRouting {
    /// Whether connections start with reading the ClientHello.
    pub fn reads_hello(&self) -> bool {
        self.required || !self.routes.is_empty()
    }
}

/// One `[[service.route]]`: connections whose ClientHello names one of `patterns` go to `pool`,
/// failing over to `backup_pool` as a service's pools do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Unique in the service; the `route` label of metrics (default: the first pattern).
    pub name: String,
    /// At least one.
    pub patterns: Vec<Pattern>,
    pub pool: String,
    pub backup_pool: Option<String>,
    /// Default: the service's `failover` (a drill on the service moves its routes too).
    pub failover: FailoverMode,
    /// Default 1 (a count of the service's pool says nothing about this one).
    pub min_healthy: usize,
    /// Default: the service's `failback_after`.
    pub failback_after: Duration,
}

/// Limits per client address of a TCP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Open connections per source; 0 = no limit (default).
    pub max_connections: u32,
    /// New connections per source; `None` = no limit (default, `"0/s"`).
    pub rate: Option<Rate>,
    /// IPv6 clients in one prefix of this length count as one source (default 64); IPv4
    /// clients are one source per address.
    pub prefix_v6: u8,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_connections: 0,
            rate: None,
            prefix_v6: DEFAULT_SOURCE_PREFIX_V6,
        }
    }
}

impl SourceLimits {
    /// Whether any limit is set (otherwise sources are not tracked at all).
    pub fn is_active(&self) -> bool {
        self.max_connections > 0 || self.rate.is_some()
    }
}

/// Default `source_prefix_v6`: one customer site or host usually holds a whole /64.
pub const DEFAULT_SOURCE_PREFIX_V6: u8 = 64;

/// `max_rate_per_source`: `count` new connections per `per`, at most `burst` at once.
/// Written `"20/s"`, `"600/m"`, `"20/s burst 40"`; the burst defaults to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At least 1.
    pub count: u32,
    /// One second or one minute.
    pub per: Duration,
    /// At least 1.
    pub burst: u32,
}

impl Rate {
    /// Reads `"N/s"`, `"N/m"`, optionally followed by `" burst B"`. `Ok(None)` for a zero
    /// rate (no limit).
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        const FORM: &str = "write it as \"N/s\" or \"N/m\", optionally with \" burst B\", e.g. \"20/s burst 40\"; \"0/s\" is no limit";
        let mut words = text.split_whitespace();
        let (Some(rate), burst) = (words.next(), (words.next(), words.next(), words.next())) else {
            return Err(format!("is empty; {FORM}"));
        };
        let burst = match burst {
            (None, _, _) => None,
            (Some("burst"), Some(b), None) => Some(
                b.parse::<u32>()
                    .ok()
                    .filter(|b| (1..=1_000_000).contains(b))
                    .ok_or_else(|| format!("burst \"{b}\" is not a count from 1 to 1000000"))?,
            ),
            _ => return Err(format!("has unexpected words; {FORM}")),
        };
        let Some((count, unit)) = rate.split_once('/') else {
            return Err(format!("has no unit; {FORM}"));
        };
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(format!("unit \"/{unit}\" is not /s or /m; {FORM}")),
        };
        let count = count
            .parse::<u32>()
            .ok()
            .filter(|c| *c <= 1_000_000)
            .ok_or_else(|| format!("count \"{count}\" is not a number from 0 to 1000000"))?;
        if count == 0 {
            return match burst {
                None => Ok(None),
                Some(_) => Err("has a burst but a rate of 0 (no limit)".to_string()),
            };
        }
        Ok(Some(Rate {
            count,
            per,
            burst: burst.unwrap_or(count),
        }))
    }
}

/// `source`: where the member side of a service's connections comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// tandem's own address, as the route to the member picks it (the default).
    #[default]
    Auto,
    /// The client's address (transparent proxying, IP_TRANSPARENT): members see the client.
    /// Needs CAP_NET_ADMIN and the routing of README "Edge A/V without SNAT".
    Client,
    /// A pool of local addresses (SNAT pool): each client takes one by the hash of its IP, so
    /// it keeps its source while that address has ports; each address brings a whole ephemeral
    /// port range per member. Unique, none unspecified, at least one per member family.
    Pool(Vec<IpAddr>),
}

impl fmt::Display for Source {
    /// As written in the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Auto => f.write_str("auto"),
            Source::Client => f.write_str("client"),
            Source::Pool(addrs) => {
                f.write_str("[")?;
                for (i, a) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Transport of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Which pool a service sends new connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    /// Local pool while it has `min_healthy` members up, else the backup pool.
    Auto,
    /// Pinned to the local pool (drill or maintenance).
    Local,
    /// Pinned to the backup pool (drill or maintenance).
    Remote,
}

impl FailoverMode {
    /// The name used in the config file and in status.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Auto => "auto",
            FailoverMode::Local => "local",
            FailoverMode::Remote => "remote",
        }
    }
}

/// What a client's hash key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMode {
    /// Client IP only: every connection of a client lands on the same member (affinity).
    SourceIp,
    /// Client IP and port: connections of one client spread over members.
    SourceIpPort,
}

/// PROXY protocol header sent to members at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// One problem found in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file as given on the command line.
    pub file: String,
    /// 1-based line and column of the offending value (0 when unknown).
    pub line: usize,
    pub column: usize,
    /// Where in the config it is, e.g. `service "fe-sip"` or `pool "fe-dc1" member 2`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblems(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigProblems),
}

/// Reads and validates a config file, then the files it names (the admin TLS certificate, key
/// and client CA; the access log's directory), which [`parse`] leaves alone as it performs no
/// I/O.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: name.clone(),
        source,
    })?;
    let config = parse_with(&text, &name, Some(&path_kind)).map_err(ConfigError::Invalid)?;
    let problems = files::check(&text, &name, &config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(ConfigProblems(problems)))
    }
}

/// What is at `path` on this machine, for the checks of paths tandem will write to.
fn path_kind(path: &Path) -> PathKind {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => PathKind::Directory,
        Ok(_) => PathKind::Other,
        Err(_) => PathKind::Missing,
    }
}
