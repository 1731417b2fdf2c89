//! The routing snapshot: pools with their members and Maglev tables, and the route of every
//! service, built from a validated [`Config`].
//!
//! A [`Snapshot`] is immutable and shared by the proxy through an `ArcSwap`; a new config builds
//! a new snapshot that is swapped in with one store, so a reader never sees a half-applied change.
//! Tables are built here, from membership and weights only, never on the per-connection path.
//! No I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::{
    Check, Config, DEFAULT_FALL, FailoverMode, HashMode, MemberAddr, OperatorState, Pool, Service,
};
use crate::events::EventSender;
use crate::hash::maglev::{MaglevError, Table};
use crate::health::cell::MemberHealth;
use crate::health::state::Verdict;

/// How many members one new connection may try before the client is turned away.
pub const MAX_CONNECT_TRIES: usize = 3;

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("pool \"{pool}\": cannot build its hash table: {source}")]
    Table {
        pool: String,
        #[source]
        source: MaglevError,
    },
    #[error("service \"{service}\" names pool \"{pool}\", which the config does not define")]
    UnknownPool { service: String, pool: String },
}

/// Everything the data path needs to route a new connection, for one config generation.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every applied config.
    pub generation: u64,
    pools: HashMap<String, Arc<PoolState>>,
    routes: HashMap<String, Arc<Route>>,
}

impl Snapshot {
    /// Builds the snapshot of `config`; every member starts with fresh health that reports its
    /// transitions on `events`.
    pub fn build(
        config: &Config,
        generation: u64,
        events: &EventSender,
    ) -> Result<Snapshot, SnapshotError> {
        let mut pools = HashMap::new();
        for pool in &config.pools {
            pools.insert(pool.name.clone(), Arc::new(PoolState::build(pool, events)?));
        }
        let mut routes = HashMap::new();
        for service in &config.services {
            let find = |name: &str| {
                pools
                    .get(name)
                    .cloned()
                    .ok_or_else(|| SnapshotError::UnknownPool {
                        service: service.name.clone(),
                        pool: name.to_string(),
                    })
            };
            let local = find(&service.pool)?;
            let backup = match &service.backup_pool {
                Some(b) => Some(find(b)?),
                None => None,
            };
            routes.insert(
                service.name.clone(),
                Arc::new(Route {
                    service: service.clone(),
                    local,
                    backup,
                }),
            );
        }
        Ok(Snapshot {
            generation,
            pools,
            routes,
        })
    }

    /// The route of a service, by name.
    pub fn route(&self, service: &str) -> Option<&Arc<Route>> {
        self.routes.get(service)
    }

    /// A pool, by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<PoolState>> {
        self.pools.get(name)
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<PoolState>> {
        self.pools.values()
    }
}

/// A service with the pools it sends connections to.
#[derive(Debug)]
pub struct Route {
    pub service: Service,
    pub local: Arc<PoolState>,
    pub backup: Option<Arc<PoolState>>,
}

impl Route {
    /// The pool new connections go to now.
    ///
    /// `remote` pins the backup pool and `local` the local one. `auto` stays local here: the
    /// health-driven failover decision is made by the failover module and is not wired in yet.
    pub fn active_pool(&self) -> &Arc<PoolState> {
        match (self.service.failover, &self.backup) {
            (FailoverMode::Remote, Some(backup)) => backup,
            _ => &self.local,
        }
    }

    /// Where connections of the member at `index` of `pool` go: the member's own port, or the
    /// service's default member port.
    pub fn member_socket(&self, pool: &PoolState, index: usize) -> Option<SocketAddr> {
        pool.members
            .get(index)
            .map(|m| m.addr.socket_addr(self.service.port))
    }
}

/// A pool as routed: members in config order, their health, and the Maglev table over them.
#[derive(Debug)]
pub struct PoolState {
    pub name: String,
    pub members: Vec<MemberState>,
    /// The pool's checks, run by the health checker.
    pub checks: Vec<Check>,
    table: Table,
}

/// One member as routed.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub addr: MemberAddr,
    pub weight: u32,
    pub operator: OperatorState,
    pub health: Arc<MemberHealth>,
}

impl MemberState {
    /// Whether new connections go to this member: in service and known to be up.
    pub fn available(&self) -> bool {
        self.operator == OperatorState::Up && self.health.verdict() == Verdict::Up
    }

    /// In service but not checked yet: used only when no member of the pool is known up.
    fn untested(&self) -> bool {
        self.operator == OperatorState::Up && self.health.verdict() == Verdict::Unknown
    }
}

impl PoolState {
    /// Builds the pool's table from its configured members; identities are the canonical
    /// address strings, so the table does not depend on config order.
    pub fn build(pool: &Pool, events: &EventSender) -> Result<PoolState, SnapshotError> {
        let ids: Vec<String> = pool.members.iter().map(|m| m.addr.to_string()).collect();
        let weighted: Vec<(&str, u32)> = ids
            .iter()
            .zip(&pool.members)
            .map(|(id, m)| (id.as_str(), m.weight))
            .collect();
        let table = Table::build(&weighted).map_err(|source| SnapshotError::Table {
            pool: pool.name.clone(),
            source,
        })?;
        let pool_name: Arc<str> = Arc::from(pool.name.as_str());
        // Passive detection takes a member down after as many failed connects as the pool's
        // most sensitive check would need failed probes.
        let passive_fall = pool
            .checks
            .iter()
            .map(|c| c.fall)
            .min()
            .unwrap_or(DEFAULT_FALL);
        let members = pool
            .members
            .iter()
            .zip(ids)
            .map(|(m, id)| MemberState {
                addr: m.addr,
                weight: m.weight,
                operator: m.state,
                health: Arc::new(MemberHealth::new(
                    pool_name.clone(),
                    Arc::from(id),
                    pool.checks.len(),
                    passive_fall,
                    events.clone(),
                )),
            })
            .collect();
        Ok(PoolState {
            name: pool.name.clone(),
            members,
            checks: pool.checks.clone(),
            table,
        })
    }

    /// The first member of `key`'s preference order that is available and not in `tried`.
    ///
    /// Walks the key's fallback sequence instead of rebuilding the table, so the clients of
    /// available members never move when another member becomes unavailable. Only when no
    /// member is known up are members without a verdict yet tried (better than refusing).
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        let usable = |i: usize, f: fn(&MemberState) -> bool| {
            !tried.contains(&i) && self.members.get(i).is_some_and(f)
        };
        self.table
            .candidates(key)
            .find(|&i| usable(i, MemberState::available))
            .or_else(|| {
                self.table
                    .candidates(key)
                    .find(|&i| usable(i, MemberState::untested))
            })
    }

    /// Members currently available for new connections.
    pub fn healthy_count(&self) -> usize {
        self.members.iter().filter(|m| m.available()).count()
    }
}

/// A client's hash key: its IP (and port with `source-ip-port`), in a fixed-size buffer so the
/// per-connection path does not allocate.
#[derive(Debug, Clone, Copy)]
pub struct ClientKey {
    bytes: [u8; 18],
    len: usize,
}

impl ClientKey {
    /// The key of a client at `peer` under `mode`. IPv4-mapped IPv6 clients (from a dual-stack
    /// listener) hash like their IPv4 address, so one client keeps one member.
    pub fn new(peer: SocketAddr, mode: HashMode) -> ClientKey {
        let mut bytes = [0u8; 18];
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut len = match ip {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                bytes[..16].copy_from_slice(&v6.octets());
                16
            }
        };
        if mode == HashMode::SourceIpPort {
            bytes[len..len + 2].copy_from_slice(&peer.port().to_be_bytes());
            len += 2;
        }
        ClientKey { bytes, len }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CONFIG: &str = r#"
[[pool]]
name = "a"
members = [{ addr = "127.0.1.1:7000" }, { addr = "127.0.1.2:7000" }, { addr = "127.0.1.3:7000", state = "drain" }]
[[pool]]
name = "b"
members = [{ addr = "127.0.1.11:7000" }]
[[service]]
name = "s"
listen = "127.0.0.1:0"
pool = "a"
backup_pool = "b"
"#;

    fn snapshot(text: &str) -> Snapshot {
        let config = parse(text, "t.toml").expect("valid");
        Snapshot::build(&config, 1, &crate::events::channel()).expect("builds")
    }

    #[test]
    fn drained_member_is_never_picked() {
        let snap = snapshot(CONFIG);
        let pool = snap.pool("a").expect("pool a");
        for i in 0..2000u32 {
            let key = ClientKey::new(
                SocketAddr::from(([127, 0, 2, (i % 250) as u8], i as u16)),
                HashMode::SourceIpPort,
            );
            let first = pool.pick(key.as_bytes(), &[]).expect("a member");
            assert_ne!(first, 2, "member in drain got a new connection");
            let second = pool.pick(key.as_bytes(), &[first]).expect("another");
            assert_ne!(second, first);
            assert_ne!(second, 2);
            assert_eq!(pool.pick(key.as_bytes(), &[0, 1]), None);
        }
    }

    #[test]
    fn remote_pins_backup_pool() {
        let snap = snapshot(CONFIG);
        assert_eq!(snap.route("s").expect("route").active_pool().name, "a");
        let snap = snapshot(&CONFIG.replace(
            "backup_pool = \"b\"",
            "backup_pool = \"b\"\nfailover = \"remote\"",
        ));
        assert_eq!(snap.route("s").expect("route").active_pool().name, "b");
    }

    #[test]
    fn client_key_modes() {
        let a = SocketAddr::from(([127, 0, 2, 1], 1000));
        let b = SocketAddr::from(([127, 0, 2, 1], 2000));
        assert_eq!(
            ClientKey::new(a, HashMode::SourceIp).as_bytes(),
            ClientKey::new(b, HashMode::SourceIp).as_bytes()
        );
        assert_ne!(
            ClientKey::new(a, HashMode::SourceIpPort).as_bytes(),
            ClientKey::new(b, HashMode::SourceIpPort).as_bytes()
        );
        let mapped: SocketAddr = "[::ffff:127.0.2.1]:1000".parse().expect("addr");
        assert_eq!(
            ClientKey::new(mapped, HashMode::SourceIp).as_bytes(),
            ClientKey::new(a, HashMode::SourceIp).as_bytes()
        );
    }
}
