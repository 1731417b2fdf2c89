//! Second config stage: TOML text -> [`Config`], collecting every problem with its place.
//!
//! The document is parsed into spanned TOML values first, then each `[admin]`, `[[pool]]` and
//! `[[service]]` entry is deserialized on its own, so one broken entry does not hide the
//! problems of the others. Semantic checks (references, duplicates, ranges) run on whatever
//! entries deserialized. Pure: no I/O.
//!
//! `[[pool.check]]` tables are read and validated in `checks`, one by one and by kind;
//! `[access_log]` in `access_log`.

mod access_log;
mod bgp;
mod checks;
mod routes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::*;
use super::*;
use crate::hash::maglev;

/// Parses and validates a whole config. `file` names the source in problem messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigProblems> {
    parse_with(text, file, None)
}

/// What is at a path tandem will write to, as [`parse_with`]'s caller finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Directory,
    /// A file, a FIFO, a device: something that can be opened for writing.
    Other,
}

/// [`parse`], also checking paths tandem will write to (the access log's) with `probe`, which
/// says what is at a path. The file system stays the caller's: validation itself does no I/O.
pub fn parse_with(
    text: &str,
    file: &str,
    probe: Option<&dyn Fn(&Path) -> PathKind>,
) -> Result<Config, ConfigProblems> {
    let mut cx = Cx::new(text, file);
    cx.probe = probe;
    let config = cx.config();
    if cx.problems.is_empty() {
        Ok(config)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.column));
        Err(ConfigProblems(cx.problems))
    }
}

/// Collects problems while walking the document.
struct Cx<'a> {
    text: &'a str,
    file: &'a str,
    problems: Vec<ConfigProblem>,
    /// What is at a path on this machine; `None`: paths are not looked at.
    probe: Option<&'a dyn Fn(&Path) -> PathKind>,
    /// Whether the file has a `[bgp]` table, valid or not, so a service with `announce` is
    /// not also reported for a broken one.
    has_bgp: bool,
    /// Addresses of services with `announce = true`, with the span and path of their `listen`,
    /// checked against the peers' families once both are read.
    announced: Vec<(std::net::IpAddr, Range<usize>, String)>,
}

impl<'a> Cx<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        Cx {
            text,
            file,
            problems: Vec::new(),
            probe: None,
            has_bgp: false,
            announced: Vec::new(),
        }
    }

    fn problem(&mut self, span: Range<usize>, path: &str, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(ConfigProblem {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn config(&mut self) -> Config {
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        if !errors.is_empty() {
            // A syntax error leaves the document's shape uncertain: report the syntax problems
            // alone rather than a cascade of follow-on ones.
            for e in errors {
                self.problem(e.span().unwrap_or(0..0), "", e.message().to_string());
            }
            return empty_config();
        }

        let mut admin = None;
        let mut access_log = None;
        let mut raw_bgp = None;
        let mut raw_pools = Vec::new();
        let mut raw_services = Vec::new();
        // Names of every pool entry, valid or not, so a service naming a broken pool is not
        // also reported as naming an undefined one.
        let mut declared_pools = HashSet::new();
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "admin" => {
                    admin = self
                        .entry::<RawAdmin>(value, "admin")
                        .map(|a| self.admin(a));
                }
                "access_log" => {
                    access_log = self
                        .entry::<RawAccessLog>(value, "access_log")
                        .and_then(|a| self.access_log(a));
                }
                "bgp" => {
                    self.has_bgp = true;
                    raw_bgp = self
                        .entry::<RawBgp>(value, "bgp")
                        .map(|b| (b, value.span()));
                }
                "pool" => {
                    for (i, entry) in self.entries(value, "pool", "pool").into_iter().enumerate() {
                        let path = entry_path("pool", &entry, i);
                        if let Some(name) = entry
                            .get_ref()
                            .get("name")
                            .and_then(|n| n.get_ref().as_str())
                        {
                            declared_pools.insert(name.to_string());
                        }
                        // Checks are read apart from the rest of the pool: their kind decides
                        // which keys they take (see `RawCheck`).
                        let mut entry = entry;
                        let checks = match entry.get_mut() {
                            DeValue::Table(t) => t.remove("check"),
                            _ => None,
                        };
                        let checks = self.raw_checks(checks, &path);
                        if let Some(mut p) = self.entry::<RawPool>(&entry, &path) {
                            p.check = checks;
                            raw_pools.push((path, p));
                        }
                    }
                }
                "service" => {
                    for (i, entry) in self
                        .entries(value, "service", "service")
                        .into_iter()
                        .enumerate()
                    {
                        let path = entry_path("service", &entry, i);
                        if let Some(s) = self.entry::<RawService>(&entry, &path) {
                            raw_services.push((path, s));
                        }
                    }
                }
                other => self.problem(
                    key.span(),
                    "",
                    format!(
                        "unknown key `{other}`, expected one of `access_log`, `admin`, `bgp`, `pool`, `service`"
                    ),
                ),
            }
        }

        let pools = self.pools(raw_pools);
        let services = self.services(raw_services, &pools, &declared_pools);
        let bgp = raw_bgp.and_then(|(b, span)| self.bgp(b, span));
        self.announced_families(bgp.as_ref());
        Config {
            admin: admin.flatten(),
            pools,
            services,
            access_log,
            bgp,
        }
    }

    /// The elements of an array of tables (`[[pool]]`, `[[pool.check]]`), or a problem at `path`
    /// if it is something else.
    fn entries(
        &mut self,
        value: &Spanned<DeValue<'a>>,
        path: &str,
        what: &str,
    ) -> Vec<Spanned<DeValue<'a>>> {
        match value.get_ref() {
            DeValue::Array(items) => items.iter().cloned().collect(),
            other => {
                self.problem(
                    value.span(),
                    path,
                    format!(
                        "expected an array of tables (`[[{what}]]`), found {}",
                        other.type_str()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Deserializes one table, recording serde's problem (unknown key, wrong type) with its place.
    fn entry<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: &Spanned<DeValue<'a>>,
        path: &str,
    ) -> Option<T> {
        self.entry_within(value, path, "")
    }

    /// [`Cx::entry`] for a table that sits at key path `within` of the entry `path` names, such
    /// as `check[2]` of a pool.
    fn entry_within<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: &Spanned<DeValue<'a>>,
        path: &str,
        within: &str,
    ) -> Option<T> {
        match T::deserialize(value.clone().into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.serde_problem(&e, value, path, within);
                None
            }
        }
    }

    /// Records serde's error `e` on `value` (at key path `within`), prefixed with the key path
    /// of the value it is about unless the message names that key already.
    fn serde_problem(
        &mut self,
        e: &toml::de::Error,
        value: &Spanned<DeValue<'a>>,
        path: &str,
        within: &str,
    ) {
        let span = e.span().unwrap_or(value.span());
        let key = match (within, key_path_at(value, span.start)) {
            (within, inner) if inner.is_empty() => within.to_string(),
            ("", inner) => inner,
            (within, inner) => format!("{within}.{inner}"),
        };
        let message = if key.is_empty() || e.message().contains(&format!("`{key}`")) {
            e.message().to_string()
        } else {
            format!("{key}: {}", e.message())
        };
        self.problem(span, path, message);
    }

    fn admin(&mut self, raw: RawAdmin) -> Option<Admin> {
        // First, so its problems are reported even when `listen` is bad too.
        let tls = self.admin_tls(&raw);
        let listen = match raw.listen {
            Some(l) => self.listen_addr(&l, "admin", "listen")?,
            None => DEFAULT_ADMIN_LISTEN.parse().ok()?,
        };
        Some(Admin {
            listen,
            token_file: raw.token_file.map(|t| PathBuf::from(t.into_inner())),
            tls,
            allow_plain_post: raw.allow_plain_post.is_some_and(|a| a.into_inner()),
        })
    }

    /// `tls_cert` and `tls_key` come together; `client_ca` needs them. Whether the files load
    /// is checked by `config::load`, not here: parsing performs no I/O.
    fn admin_tls(&mut self, raw: &RawAdmin) -> Option<AdminTls> {
        let path = |v: &Spanned<String>| PathBuf::from(v.get_ref());
        match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => {
                let mut ok = true;
                for (name, v) in [("tls_cert", cert), ("tls_key", key)]
                    .into_iter()
                    .chain(raw.client_ca.as_ref().map(|c| ("client_ca", c)))
                {
                    if v.get_ref().trim().is_empty() {
                        self.problem(v.span(), "admin", format!("{name} must not be empty"));
                        ok = false;
                    }
                }
                ok.then(|| AdminTls {
                    cert: path(cert),
                    key: path(key),
                    client_ca: raw.client_ca.as_ref().map(path),
                })
            }
            (Some(cert), None) => {
                self.problem(
                    cert.span(),
                    "admin",
                    "tls_cert is set but tls_key is not; set both (TLS) or neither (plain HTTP)",
                );
                None
            }
            (None, Some(key)) => {
                self.problem(
                    key.span(),
                    "admin",
                    "tls_key is set but tls_cert is not; set both (TLS) or neither (plain HTTP)",
                );
                None
            }
            (None, None) => {
                if let Some(ca) = &raw.client_ca {
                    self.problem(
                        ca.span(),
                        "admin",
                        "client_ca needs TLS: set tls_cert and tls_key too",
                    );
                }
                None
            }
        }
    }

    fn pools(&mut self, raw: Vec<(String, RawPool)>) -> Vec<Pool> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut pools = Vec::new();
        for (path, rp) in raw {
            let name = rp.name.get_ref().clone();
            if !self.name_is_usable(&rp.name, &path, "pool", &mut seen) {
                continue;
            }
            let members = self.members(&rp, &path);
            let checks: Vec<Check> = rp
                .check
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.check(c, &checks::check_path(&path, i)))
                .collect();
            // Health belongs to the member, not to a service port: a check must know where to
            // probe a member that has no port of its own.
            if let Some(members) = &members
                && let Some(portless) = members.iter().find(|m| m.addr.port.is_none())
            {
                for (i, c) in rp.check.iter().enumerate() {
                    if c.get_ref().common().port.is_none() {
                        self.problem(
                            c.span(),
                            &checks::check_path(&path, i),
                            format!(
                                "port: member {} has no port, so the check needs one",
                                portless.addr
                            ),
                        );
                    }
                }
            }
            if let Some(members) = members {
                pools.push(Pool {
                    name,
                    members,
                    checks,
                });
            }
        }
        pools
    }

    /// Checks a pool or service name; records the problem and returns `false` when the entry
    /// must be skipped (empty, or a duplicate).
    fn name_is_usable(
        &mut self,
        name: &Spanned<String>,
        path: &str,
        what: &str,
        seen: &mut HashMap<String, usize>,
    ) -> bool {
        let n = name.get_ref();
        if n.trim().is_empty() {
            self.problem(name.span(), path, format!("{what} name must not be empty"));
            return false;
        }
        let (line, _) = line_col(self.text, name.span().start);
        if let Some(first) = seen.get(n) {
            let first = *first;
            self.problem(
                name.span(),
                path,
                format!("duplicate {what} name \"{n}\" (first defined on line {first})"),
            );
            return false;
        }
        seen.insert(n.clone(), line);
        true
    }

    fn members(&mut self, rp: &RawPool, path: &str) -> Option<Vec<Member>> {
        if rp.members.get_ref().is_empty() {
            self.problem(
                rp.members.span(),
                path,
                "members: a pool needs at least one member",
            );
            return None;
        }
        let mut out: Vec<Member> = Vec::new();
        let mut ok = true;
        for (i, m) in rp.members.get_ref().iter().enumerate() {
            let mpath = format!("{path} member {}", i + 1);
            let m = m.get_ref();
            let Some(addr) = self.member_addr(&m.addr, &mpath) else {
                ok = false;
                continue;
            };
            let weight = match &m.weight {
                None => 1,
                Some(w) => match u32::try_from(*w.get_ref()) {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                    _ => {
                        self.problem(
                            w.span(),
                            &mpath,
                            format!(
                                "weight {} is out of range, expected 1..={MAX_WEIGHT}",
                                w.get_ref()
                            ),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            if out.iter().any(|o| o.addr == addr) {
                self.problem(
                    m.addr.span(),
                    &mpath,
                    format!("duplicate member {addr} in this pool"),
                );
                ok = false;
                continue;
            }
            let state = match m.state {
                None | Some(RawMemberState::Up) => OperatorState::Up,
                Some(RawMemberState::Drain) => OperatorState::Drain,
                Some(RawMemberState::Maint) => OperatorState::Maint,
            };
            out.push(Member {
                addr,
                weight,
                state,
            });
        }
        let total: u64 = out.iter().map(|m| u64::from(m.weight)).sum();
        if ok && total > maglev::DEFAULT_TABLE_SIZE as u64 {
            // Every unit of weight needs a slot of the hash table.
            self.problem(
                rp.members.span(),
                path,
                format!(
                    "members: total weight {total} exceeds {}; lower the weights",
                    maglev::DEFAULT_TABLE_SIZE
                ),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    fn member_addr(&mut self, raw: &Spanned<String>, path: &str) -> Option<MemberAddr> {
        let s = raw.get_ref().trim();
        match MemberAddr::parse(s) {
            Ok(addr) => Some(addr),
            Err(MemberAddrError::PortZero) => {
                self.problem(
                    raw.span(),
                    path,
                    format!("addr \"{s}\": port 0 is not a member port"),
                );
                None
            }
            Err(MemberAddrError::NotAnAddress) => {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "addr \"{s}\" is not an IP address or IP:port \
                         (host names are not resolved; IPv6 with a port is written [addr]:port)"
                    ),
                );
                None
            }
        }
    }

    fn services(
        &mut self,
        raw: Vec<(String, RawService)>,
        pools: &[Pool],
        declared: &HashSet<String>,
    ) -> Vec<Service> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut listens: Vec<(Protocol, SocketAddr, String, usize)> = Vec::new();
        let mut out = Vec::new();
        for (path, rs) in raw {
            if !self.name_is_usable(&rs.name, &path, "service", &mut seen) {
                continue;
            }
            if let Some(s) = self.service(&rs, &path, pools, declared) {
                let (line, _) = line_col(self.text, rs.listen.span().start);
                if let Some((_, _, other, other_line)) =
                    listens.iter().find(|(proto, addr, _, _)| {
                        *proto == s.protocol && listen_overlap(*addr, s.listen)
                    })
                {
                    let msg = format!(
                        "listen {} ({}) overlaps service \"{other}\" on line {other_line}",
                        s.listen, s.protocol
                    );
                    self.problem(rs.listen.span(), &path, msg);
                    continue;
                }
                listens.push((s.protocol, s.listen, s.name.clone(), line));
                out.push(s);
            }
        }
        out
    }

    fn service(
        &mut self,
        rs: &RawService,
        path: &str,
        pools: &[Pool],
        declared: &HashSet<String>,
    ) -> Option<Service> {
        let mut ok = true;
        let listen = self.listen_addr(&rs.listen, path, "listen");
        let protocol = match rs.protocol {
            None | Some(RawProtocol::Tcp) => Protocol::Tcp,
            Some(RawProtocol::Udp) => Protocol::Udp,
        };
        let port = match &rs.port {
            Some(p) => self.port(p, path, "port", false),
            None => listen.map(|l| l.port()),
        };
        if rs.port.is_none()
            && listen.is_some_and(|l| l.port() == 0)
            && self.members_without_port(rs, pools)
        {
            self.problem(
                rs.listen.span(),
                path,
                "port: listen port is 0 and some members have no port; set `port` for them",
            );
            ok = false;
        }

        let pool = self.pool_ref(&rs.pool, path, "pool", pools, declared);
        let backup_pool = match &rs.backup_pool {
            None => None,
            Some(b) => {
                let found = self.pool_ref(b, path, "backup_pool", pools, declared);
                if found.is_some() && b.get_ref() == rs.pool.get_ref() {
                    self.problem(
                        b.span(),
                        path,
                        format!("backup_pool \"{}\" is the same as pool", b.get_ref()),
                    );
                    ok = false;
                }
                ok &= found.is_some();
                found.map(|p| p.name.clone())
            }
        };
        let min_healthy = match (&rs.min_healthy, pool) {
            (None, _) => Some(1),
            (Some(m), Some(pool)) => self.min_healthy(m, path, pool),
            (Some(_), None) => None,
        };

        let udp = protocol == Protocol::Udp;
        let idle_default = if udp {
            DEFAULT_UDP_IDLE_TIMEOUT
        } else {
            DEFAULT_TCP_IDLE_TIMEOUT
        };
        let failback_after = self.duration(
            &rs.failback_after,
            path,
            "failback_after",
            DEFAULT_FAILBACK_AFTER,
            true,
        );
        let idle_timeout =
            self.duration(&rs.idle_timeout, path, "idle_timeout", idle_default, false);
        let connect_timeout = self.duration(
            &rs.connect_timeout,
            path,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let drain_timeout = self.duration(
            &rs.drain_timeout,
            path,
            "drain_timeout",
            DEFAULT_DRAIN_TIMEOUT,
            true,
        );
        let max_connections = match &rs.max_connections {
            None => Some(DEFAULT_MAX_CONNECTIONS),
            Some(m) => match usize::try_from(*m.get_ref()) {
                Ok(v) if (1..=10_000_000).contains(&v) => Some(v),
                _ => {
                    self.problem(
                        m.span(),
                        path,
                        format!(
                            "max_connections {} is out of range, expected 1..=10000000",
                            m.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let proxy_protocol = match rs.proxy_protocol {
            None | Some(RawProxyProtocol::Off) => ProxyProtocol::Off,
            Some(RawProxyProtocol::V1) => ProxyProtocol::V1,
            Some(RawProxyProtocol::V2) => ProxyProtocol::V2,
        };
        if udp && proxy_protocol != ProxyProtocol::Off {
            self.problem(
                rs.name.span(),
                path,
                "proxy_protocol: PROXY protocol headers are only sent on tcp services",
            );
            ok = false;
        }
        let failover = match rs.failover {
            None | Some(RawFailover::Auto) => FailoverMode::Auto,
            Some(RawFailover::Local) => FailoverMode::Local,
            Some(RawFailover::Remote) => FailoverMode::Remote,
        };
        if failover == FailoverMode::Remote && rs.backup_pool.is_none() {
            self.problem(
                rs.name.span(),
                path,
                "failover = \"remote\" needs a backup_pool to send traffic to",
            );
            ok = false;
        }
        let hash = match rs.hash {
            None | Some(RawHash::SourceIp) => HashMode::SourceIp,
            Some(RawHash::SourceIpPort) => HashMode::SourceIpPort,
        };
        let announce = rs.announce.as_ref().is_some_and(|a| *a.get_ref());
        if let Some(a) = rs.announce.as_ref().filter(|_| announce) {
            ok &= self.announce(a, &rs.listen, listen, path);
        }
        let inherited = routes::Inherited {
            protocol,
            failover,
            failback_after: failback_after.unwrap_or(DEFAULT_FAILBACK_AFTER),
        };
        let sni = self.sni_routing(rs, path, pools, declared, &inherited);
        let per_source = self.source_limits(rs, path, protocol);
        let source = match &rs.source {
            None => Some(Source::Auto),
            Some(raw) => self.source(raw, path, rs, pools),
        };

        if !ok {
            return None;
        }
        Some(Service {
            name: rs.name.get_ref().clone(),
            listen: listen?,
            protocol,
            port: port?,
            pool: pool?.name.clone(),
            backup_pool,
            failover,
            min_healthy: min_healthy?,
            failback_after: failback_after?,
            hash,
            idle_timeout: idle_timeout?,
            connect_timeout: connect_timeout?,
            max_connections: max_connections?,
            proxy_protocol,
            drain_timeout: drain_timeout?,
            announce,
            sni: sni?,
            per_source: per_source?,
            source: source?,
        })
    }

    /// `source`: "auto", "client", or a list of local addresses covering every member family.
    fn source(
        &mut self,
        raw: &Spanned<toml::Value>,
        path: &str,
        rs: &RawService,
        pools: &[Pool],
    ) -> Option<Source> {
        const EXPECTED: &str =
            "expected \"auto\", \"client\" or a list of local addresses (e.g. [\"10.1.0.5\"])";
        let list = match raw.get_ref() {
            toml::Value::String(s) if s == "auto" => return Some(Source::Auto),
            toml::Value::String(s) if s == "client" => return Some(Source::Client),
            toml::Value::String(s) => {
                self.problem(raw.span(), path, format!("source \"{s}\": {EXPECTED}"));
                return None;
            }
            toml::Value::Array(list) => list,
            other => {
                self.problem(
                    raw.span(),
                    path,
                    format!("source is a {}: {EXPECTED}", other.type_str()),
                );
                return None;
            }
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut ok = true;
        for item in list {
            let parsed = item.as_str().and_then(|s| s.trim().parse::<IpAddr>().ok());
            match parsed {
                Some(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    self.problem(
                        raw.span(),
                        path,
                        format!("source address {ip} cannot be a connection's source"),
                    );
                    ok = false;
                }
                Some(ip) if addrs.contains(&ip) => {
                    self.problem(
                        raw.span(),
                        path,
                        format!("source address {ip} is listed twice"),
                    );
                    ok = false;
                }
                Some(ip) => addrs.push(ip),
                None => {
                    self.problem(
                        raw.span(),
                        path,
                        format!("source: {item} is not an IP address"),
                    );
                    ok = false;
                }
            }
        }
        if addrs.is_empty() && ok {
            self.problem(
                raw.span(),
                path,
                format!("source is an empty list: {EXPECTED}"),
            );
            return None;
        }
        // Every member must be reachable from some source address of its family.
        let members = [Some(&rs.pool), rs.backup_pool.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|name| pools.iter().find(|p| &p.name == name.get_ref()))
            .flat_map(|p| p.members.iter());
        for family_v4 in [true, false] {
            let needed = members.clone().find(|m| m.addr.ip.is_ipv4() == family_v4);
            if let Some(m) = needed
                && ok
                && !addrs.iter().any(|a| a.is_ipv4() == family_v4)
            {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "source has no IPv{} address for member {}",
                        if family_v4 { 4 } else { 6 },
                        m.addr
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(Source::Pool(addrs))
    }

    fn members_without_port(&self, rs: &RawService, pools: &[Pool]) -> bool {
        [Some(&rs.pool), rs.backup_pool.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|name| pools.iter().find(|p| &p.name == name.get_ref()))
            .any(|p| p.members.iter().any(|m| m.addr.port.is_none()))
    }

    fn pool_ref<'p>(
        &mut self,
        name: &Spanned<String>,
        path: &str,
        key: &str,
        pools: &'p [Pool],
        declared: &HashSet<String>,
    ) -> Option<&'p Pool> {
        let found = pools.iter().find(|p| &p.name == name.get_ref());
        if found.is_none() && !declared.contains(name.get_ref()) {
            self.problem(
                name.span(),
                path,
                format!("{key} \"{}\" is not a defined pool", name.get_ref()),
            );
        }
        found
    }

    fn min_healthy(
        &mut self,
        m: &Spanned<RawMinHealthy>,
        path: &str,
        pool: &Pool,
    ) -> Option<usize> {
        let size = pool.members.len();
        let count = match m.get_ref() {
            RawMinHealthy::Count(c) => usize::try_from(*c).ok().filter(|c| *c >= 1),
            RawMinHealthy::Text(t) => t
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| (1..=100).contains(p))
                // Rounded up: "50%" of a 3-member pool is 2, a Lync Front End quorum.
                .map(|p| (size * p as usize).div_ceil(100).max(1)),
        };
        let Some(count) = count else {
            self.problem(
                m.span(),
                path,
                "min_healthy must be a count of at least 1 or a percentage from \"1%\" to \"100%\"",
            );
            return None;
        };
        if count > size {
            self.problem(
                m.span(),
                path,
                format!(
                    "min_healthy {count} is above the size of pool \"{}\" ({size} member(s))",
                    pool.name
                ),
            );
            return None;
        }
        Some(count)
    }

    fn listen_addr(&mut self, raw: &Spanned<String>, path: &str, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "{key} \"{}\" is not an IP:port address (e.g. \"0.0.0.0:5061\" or \"[::]:5061\")",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn port(&mut self, raw: &Spanned<i64>, path: &str, key: &str, allow_zero: bool) -> Option<u16> {
        let lo = if allow_zero { 0 } else { 1 };
        match u16::try_from(*raw.get_ref()) {
            Ok(p) if p >= lo => Some(p),
            _ => {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "{key} {} is not a port number ({lo}..=65535)",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        path: &str,
        key: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.problem(raw.span(), path, format!("{key} must be longer than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "{key} \"{}\" is not a duration ({e}); write it with a unit, e.g. \"2s\", \"500ms\", \"30m\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn count(
        &mut self,
        raw: &Option<Spanned<i64>>,
        path: &str,
        key: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match u32::try_from(*raw.get_ref()) {
            Ok(v) if range.contains(&v) => Some(v),
            _ => {
                self.problem(
                    raw.span(),
                    path,
                    format!(
                        "{key} {} is out of range, expected {}..={}",
                        raw.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }
}

fn empty_config() -> Config {
    Config {
        bgp: None,
        admin: None,
        pools: Vec::new(),
        services: Vec::new(),
        access_log: None,
    }
}

/// `pool "fe-dc1"` when the entry has a string name, else `pool #2`.
fn entry_path(what: &str, entry: &Spanned<DeValue<'_>>, index: usize) -> String {
    match entry
        .get_ref()
        .get("name")
        .and_then(|n| n.get_ref().as_str())
    {
        Some(name) => format!("{what} \"{name}\""),
        None => format!("{what} #{}", index + 1),
    }
}

/// The dotted key path (`members[2].weight`) of the innermost value containing byte offset `at`.
fn key_path_at(value: &Spanned<DeValue<'_>>, at: usize) -> String {
    let mut path = String::new();
    let mut current = value;
    loop {
        let next = match current.get_ref() {
            DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                if k.span().contains(&at) {
                    // The key itself (an unknown field): serde's message names it already.
                    None
                } else if contains(v, at) {
                    Some((
                        format!("{}{}", if path.is_empty() { "" } else { "." }, k.get_ref()),
                        v,
                    ))
                } else {
                    None
                }
            }),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .find(|(_, v)| contains(v, at))
                .map(|(i, v)| (format!("[{}]", i + 1), v)),
            _ => None,
        };
        match next {
            Some((step, v)) => {
                path.push_str(&step);
                current = v;
            }
            None => return path,
        }
    }
}

/// Whether `v` or anything inside it spans byte offset `at`. Arrays of tables (`[[pool.check]]`)
/// do not always span their elements, so the elements are asked too.
fn contains(v: &Spanned<DeValue<'_>>, at: usize) -> bool {
    v.span().contains(&at)
        || match v.get_ref() {
            DeValue::Array(items) => items.iter().any(|i| contains(i, at)),
            DeValue::Table(t) => t.iter().any(|(_, i)| contains(i, at)),
            _ => false,
        }
}

/// Whether two listeners of the same protocol would fight over a port.
fn listen_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[pool]]
name = "fe-dc1"
members = [{ addr = "10.1.0.11" }, { addr = "10.1.0.12", weight = 2 }, { addr = "10.1.0.13", state = "drain" }]
[[pool]]
name = "fe-dc2"
members = [{ addr = "[2001:db8::1]:5061" }, { addr = "2001:db8::2" }]
[[service]]
name = "fe-sip"
listen = "0.0.0.0:5061"
pool = "fe-dc1"
backup_pool = "fe-dc2"
"#;

    #[test]
    fn defaults_are_filled() {
        let c = parse(MINIMAL, "t.toml").expect("valid");
        assert!(c.admin.is_none());
        let s = &c.services[0];
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.port, 5061);
        assert_eq!(s.failover, FailoverMode::Auto);
        assert_eq!(s.min_healthy, 1);
        assert_eq!(s.hash, HashMode::SourceIp);
        assert_eq!(s.idle_timeout, Duration::from_secs(1800));
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.failback_after, Duration::from_secs(60));
        assert_eq!(s.drain_timeout, Duration::from_secs(300));
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.proxy_protocol, ProxyProtocol::Off);
        let p = &c.pools[0];
        assert_eq!(p.members[1].weight, 2);
        assert_eq!(p.members[2].state, OperatorState::Drain);
        assert_eq!(c.pools[1].members[0].addr.to_string(), "[2001:db8::1]:5061");
        assert_eq!(c.pools[1].members[1].addr.to_string(), "2001:db8::2");
    }

    #[test]
    fn udp_idle_default_and_admin_default() {
        let text = MINIMAL.replace("pool = \"fe-dc1\"", "pool = \"fe-dc1\"\nprotocol = \"udp\"")
            + "[admin]\n";
        let c = parse(&text, "t.toml").expect("valid");
        assert_eq!(c.services[0].idle_timeout, Duration::from_secs(60));
        let admin = c.admin.expect("admin table present");
        assert_eq!(admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    }

    #[test]
    fn min_healthy_percent_rounds_up_to_a_quorum() {
        for (value, want) in [
            ("\"50%\"", 2),
            ("\"34%\"", 2),
            ("\"33%\"", 1),
            ("\"100%\"", 3),
            ("3", 3),
        ] {
            let text = MINIMAL.replace(
                "backup_pool = \"fe-dc2\"",
                &format!("backup_pool = \"fe-dc2\"\nmin_healthy = {value}"),
            );
            let c = parse(&text, "t.toml").expect("valid");
            assert_eq!(c.services[0].min_healthy, want, "min_healthy = {value}");
        }
    }

    #[test]
    fn tcp_and_udp_may_share_a_port() {
        let text = MINIMAL.to_string()
            + "[[service]]\nname = \"u\"\nlisten = \"0.0.0.0:5061\"\nprotocol = \"udp\"\npool = \"fe-dc1\"\n";
        assert!(parse(&text, "t.toml").is_ok());
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a\nbé = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (2, 1));
        assert_eq!(line_col(text, text.find('=').expect("has =")), (2, 4));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }
}
