//! Validated configuration: the types the rest of tandem runs on.
//!
//! A file goes through two stages: [`raw`] (serde, one struct per TOML table, unknown keys
//! rejected) and [`validate`] (every value checked, cross references resolved, defaults filled).
//! Runtime code only ever sees [`Config`], where nothing validation could settle is left as an
//! `Option`. Loading performs file I/O only; it never binds a socket.

pub mod raw;
pub mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::parse;

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
    /// Source address of the connections (TCP) and sockets (UDP) to members.
    pub source: Source,
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

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: name.clone(),
        source,
    })?;
    parse(&text, &name).map_err(ConfigError::Invalid)
}
