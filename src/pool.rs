//! The routing snapshot: pools with their members and Maglev tables, and the route of every
//! service, built from a validated [`Config`].
//!
//! A [`Snapshot`] is immutable and shared by the proxy through an `ArcSwap`; a new config builds
//! a new snapshot that is swapped in with one store, so a reader never sees a half-applied change.
//! Tables are built here, from membership and weights only, never on the per-connection path.
//! No I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::warn;

use crate::config::{
    Check, Config, DEFAULT_FALL, FailoverMode, HashMode, MemberAddr, OperatorState, Pool, Service,
    SniRoute,
};
use crate::events::{Event, EventSender, FailoverEvent};
use crate::failover::{Failover, Inputs, Side};
use crate::hash::maglev::{MaglevError, Table};
use crate::health::cell::MemberHealth;
use crate::health::checker::{CheckedMember, PoolChecks};
use crate::health::state::Verdict;
use crate::reload::{Plan, PoolCarry, PoolPlan, ServicePlan};
use crate::sni::names::NameTable;

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
    /// Builds the snapshot of `config`. With a `previous` snapshot and the reload's [`Plan`] from
    /// its config to `config`, carries over the live state the plan keeps: pools it leaves
    /// unchanged are shared as they are, changed pools take over what their [`PoolCarry`] names,
    /// and services keep their failover state where the plan says so. Whatever is built afresh
    /// reports on `events`.
    pub fn build(
        config: &Config,
        generation: u64,
        events: &EventSender,
        previous: Option<(&Snapshot, &Plan)>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut pools = HashMap::new();
        for pool in &config.pools {
            let old = previous.and_then(|(snap, plan)| {
                Some((snap.pools.get(&pool.name)?, plan.pool(&pool.name)?))
            });
            let state = match old {
                Some((state, PoolPlan::Unchanged)) => state.clone(),
                Some((state, PoolPlan::Changed(carry))) => {
                    Arc::new(PoolState::build(pool, events, Some((state, carry)))?)
                }
                _ => Arc::new(PoolState::build(pool, events, None)?),
            };
            pools.insert(pool.name.clone(), state);
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
            let failover = previous
                .filter(|(_, plan)| {
                    plan.service(&service.name)
                        .is_some_and(ServicePlan::keeps_failover)
                })
                .and_then(|(snap, _)| snap.routes.get(&service.name))
                .map(|r| r.failover.clone())
                .unwrap_or_else(|| {
                    Arc::new(FailoverCell::new(
                        Arc::from(service.name.as_str()),
                        service.failover,
                        events.clone(),
                    ))
                });
            let old_route = previous.and_then(|(snap, _)| snap.routes.get(&service.name));
            let mut sni = Vec::with_capacity(service.sni.routes.len());
            for r in &service.sni.routes {
                sni.push(SniRouteState::build(
                    service,
                    r,
                    &find,
                    old_route,
                    previous.map(|(_, plan)| plan),
                    events,
                )?);
            }
            let names = NameTable::new(
                service
                    .sni
                    .routes
                    .iter()
                    .enumerate()
                    .flat_map(|(i, r)| r.patterns.iter().map(move |p| (p, i))),
            );
            routes.insert(
                service.name.clone(),
                Arc::new(Route {
                    service: service.clone(),
                    local,
                    backup,
                    failover,
                    sni,
                    names,
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

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }

    /// A pool, by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<PoolState>> {
        self.pools.get(name)
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<PoolState>> {
        self.pools.values()
    }

    /// Re-evaluates the failover state of every service at `now` (after health changed, a
    /// reload, or a failback deadline); returns the earliest pending failback deadline.
    pub fn evaluate_failover(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for route in self.routes.values() {
            let inputs = route.inputs();
            if let Some(at) = route.failover.update(&inputs, now, self.generation) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            // Each server-name route fails over on its own pools, like a service.
            for r in &route.sni {
                if let Some(at) = r.failover.update(&r.inputs(), now, self.generation) {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }
}

/// A service with the pools it sends connections to.
#[derive(Debug)]
pub struct Route {
    pub service: Service,
    pub local: Arc<PoolState>,
    pub backup: Option<Arc<PoolState>>,
    /// Which of the two gets new connections; survives reloads that keep the service's pools.
    pub failover: Arc<FailoverCell>,
    /// The service's `[[service.route]]` entries, in config order, each with its own pools
    /// and failover state.
    pub sni: Vec<SniRouteState>,
    /// Server names to indices of `sni`.
    pub names: NameTable,
}

/// Where one connection goes: a pool pair and its failover state (a service's own pools, or
/// one of its server-name routes).
///
/// The failover mode is not taken from the route's config: a connection holds the route it
/// loaded at accept while a reload may change the mode and, in the same step, the shared
/// failover cell's side. Both are read from the cell, as decided together by the newest
/// generation (see [`Decision`]).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub local: &'a Arc<PoolState>,
    pub backup: Option<&'a Arc<PoolState>>,
    pub failover: &'a FailoverCell,
}

impl<'a> Target<'a> {
    /// The pool new connections go to now (one atomic load).
    pub fn active_pool(&self) -> &'a Arc<PoolState> {
        self.pools().0
    }

    /// The pools a new connection tries, in order: the active pool, then (under `auto` only)
    /// the paired pool, for the moments between a whole pool dying and the health checks
    /// noticing. Pinned modes (drills) never spill over. One atomic load.
    pub fn pools(&self) -> (&'a Arc<PoolState>, Option<&'a Arc<PoolState>>) {
        let decision = self.failover.decision();
        match (decision.side, self.backup) {
            (_, None) => (self.local, None),
            (Side::Backup, Some(backup)) => (backup, decision.spill.then_some(self.local)),
            (Side::Local, Some(backup)) => (self.local, decision.spill.then_some(backup)),
        }
    }
}

/// One `[[service.route]]` as routed.
#[derive(Debug)]
pub struct SniRouteState {
    pub config: SniRoute,
    pub local: Arc<PoolState>,
    pub backup: Option<Arc<PoolState>>,
    /// Survives reloads that keep the route (by name) with the same pools.
    pub failover: Arc<FailoverCell>,
    /// Connections routed here; kept across reloads while the route's name stays.
    pub connections: Arc<AtomicU64>,
}

impl SniRouteState {
    fn build(
        service: &Service,
        route: &SniRoute,
        find: &dyn Fn(&str) -> Result<Arc<PoolState>, SnapshotError>,
        old_route: Option<&Arc<Route>>,
        plan: Option<&Plan>,
        events: &EventSender,
    ) -> Result<SniRouteState, SnapshotError> {
        let local = find(&route.pool)?;
        let backup = match &route.backup_pool {
            Some(b) => Some(find(b)?),
            None => None,
        };
        let old = old_route.and_then(|r| r.sni.iter().find(|o| o.config.name == route.name));
        let failover = old
            .filter(|_| plan.is_some_and(|p| p.keeps_route_failover(&service.name, &route.name)))
            .map(|o| o.failover.clone())
            .unwrap_or_else(|| {
                Arc::new(FailoverCell::new(
                    Arc::from(format!("{}/{}", service.name, route.name)),
                    route.failover,
                    events.clone(),
                ))
            });
        Ok(SniRouteState {
            config: route.clone(),
            local,
            backup,
            failover,
            connections: old.map(|o| o.connections.clone()).unwrap_or_default(),
        })
    }

    /// The pools and failover state connections of this route use.
    pub fn target(&self) -> Target<'_> {
        Target {
            local: &self.local,
            backup: self.backup.as_ref(),
            failover: &self.failover,
        }
    }

    /// The pool new connections of this route go to now.
    pub fn active_pool(&self) -> &Arc<PoolState> {
        self.target().active_pool()
    }

    /// What this route's failover decision looks at now.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            mode: self.config.failover,
            has_backup: self.backup.is_some(),
            local_healthy: self.local.healthy_count(),
            backup_healthy: self.backup.as_ref().map_or(0, |b| b.healthy_count()),
            min_healthy: self.config.min_healthy,
            failback_after: self.config.failback_after,
        }
    }
}

impl Route {
    /// The service's own pools: the target of connections no server-name route takes.
    pub fn target(&self) -> Target<'_> {
        Target {
            local: &self.local,
            backup: self.backup.as_ref(),
            failover: &self.failover,
        }
    }

    /// The pool new connections go to now (one atomic load).
    pub fn active_pool(&self) -> &Arc<PoolState> {
        self.target().active_pool()
    }

    /// What the failover decision of this service looks at now.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            mode: self.service.failover,
            has_backup: self.backup.is_some(),
            local_healthy: self.local.healthy_count(),
            backup_healthy: self.backup.as_ref().map_or(0, |b| b.healthy_count()),
            min_healthy: self.service.min_healthy,
            failback_after: self.service.failback_after,
        }
    }
}

/// What the data path reads of a service's failover state: the side new connections go to and
/// whether they may spill over to the other pool.
///
/// Published together, by the generation that decided the side, in one atomic: a connection
/// still holding the route of the config before a reload must not combine that config's mode
/// with the side the new config chose. (The chaos soak caught exactly that: a connection
/// loaded under the `remote` drill, the reload to `auto` sent the side back to a local pool
/// that had just died, and the drill's "never spill" turned the client away with the backup
/// pool up.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub side: Side,
    /// Under `auto` only: when the active pool has no member that answers, try the other.
    pub spill: bool,
}

impl Decision {
    fn of(side: Side, mode: FailoverMode) -> Decision {
        Decision {
            side,
            spill: mode == FailoverMode::Auto,
        }
    }

    fn encode(self) -> u8 {
        self.side as u8 | (u8::from(self.spill) << 1)
    }

    fn decode(v: u8) -> Decision {
        Decision {
            side: if v & 1 == Side::Backup as u8 {
                Side::Backup
            } else {
                Side::Local
            },
            spill: v & 2 != 0,
        }
    }
}

/// The published failover state of one service: the [`Decision`] as an atomic for the data
/// path, the full state machine behind a mutex for the controller and status.
#[derive(Debug)]
pub struct FailoverCell {
    /// Moves to the backup pool (failovers, drills included) since the service was configured.
    pub failovers: AtomicU64,
    /// Moves back to the local pool.
    pub failbacks: AtomicU64,
    service: Arc<str>,
    /// A [`Decision`], encoded.
    decision: AtomicU8,
    /// The state machine, and the newest config generation that has fed it: a reload and the
    /// controller may evaluate the old and the new snapshot at the same moment (they share
    /// this cell), and the old one must not undo what the new one decided.
    state: Mutex<(Failover, u64)>,
    events: EventSender,
}

/// A copy of a service's failover state, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverStatus {
    pub side: Side,
    /// Since when, on the monotonic clock.
    pub since: Instant,
    pub reason: String,
}

impl FailoverCell {
    fn new(service: Arc<str>, mode: FailoverMode, events: EventSender) -> FailoverCell {
        FailoverCell {
            failovers: AtomicU64::new(0),
            failbacks: AtomicU64::new(0),
            service,
            decision: AtomicU8::new(Decision::of(Side::Local, mode).encode()),
            state: Mutex::new((Failover::new(Instant::now()), 0)),
            events,
        }
    }

    /// The side new connections go to.
    pub fn side(&self) -> Side {
        self.decision().side
    }

    /// The side new connections go to and whether they may spill over, as the newest config
    /// generation decided them.
    pub fn decision(&self) -> Decision {
        Decision::decode(self.decision.load(Ordering::Acquire))
    }

    /// The current state, for status.
    pub fn status(&self) -> Option<FailoverStatus> {
        let guard = self.state.lock().ok()?;
        let state = &guard.0;
        Some(FailoverStatus {
            side: state.side(),
            since: state.since(),
            reason: state.reason().to_string(),
        })
    }

    /// Feeds the state machine; publishes, logs and broadcasts a transition. Returns the
    /// pending failback deadline, if any.
    pub fn update(&self, inputs: &Inputs, now: Instant, generation: u64) -> Option<Instant> {
        let Ok(mut guard) = self.state.lock() else {
            return None;
        };
        let (state, seen) = &mut *guard;
        if generation < *seen {
            return None;
        }
        *seen = generation;
        let transition = state.update(inputs, now);
        // Stored on a mode change too (a drill ending may keep the side): the side and the
        // right to spill always come from the same generation's config.
        let decision = Decision::of(state.side(), inputs.mode).encode();
        if self.decision.load(Ordering::Relaxed) != decision {
            self.decision.store(decision, Ordering::Release);
        }
        if let Some(t) = transition {
            let counter = match t.to {
                Side::Backup => &self.failovers,
                Side::Local => &self.failbacks,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            warn!(
                service = %self.service, from = %t.from, to = %t.to, reason = %t.reason,
                local_healthy = inputs.local_healthy, backup_healthy = inputs.backup_healthy,
                "failover state changed"
            );
            let _ = self.events.send(Event::Failover(FailoverEvent {
                service: self.service.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                local_healthy: inputs.local_healthy,
                backup_healthy: inputs.backup_healthy,
                at: SystemTime::now(),
            }));
        }
        state.failback_at(inputs)
    }
}

/// A pool as routed: members in config order, their health, and the Maglev table over them.
#[derive(Debug)]
pub struct PoolState {
    pub name: String,
    pub members: Vec<MemberState>,
    /// The pool's checks, run by the health checker.
    pub checks: Vec<Check>,
    /// Shared with the previous config's pool when the reload's plan keeps it (same members,
    /// weights and order).
    table: Arc<Table>,
}

/// One member as routed.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub addr: MemberAddr,
    pub weight: u32,
    pub operator: OperatorState,
    pub health: Arc<MemberHealth>,
    /// Ended when a reload removes the member or takes it out of service (drain, maint):
    /// its open connections then live on for their service's `drain_timeout`.
    pub retired: Arc<crate::kill::Scope>,
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
    /// Builds the pool's table and member states. Identities are the canonical address
    /// strings, so the table does not depend on config order. With `previous` (the same pool
    /// before a reload, and what the reload's plan carries over from it), the table, members'
    /// health and members' connection lifetimes are taken over where `carry` names them.
    pub fn build(
        pool: &Pool,
        events: &EventSender,
        previous: Option<(&PoolState, &PoolCarry)>,
    ) -> Result<PoolState, SnapshotError> {
        let ids: Vec<String> = pool.members.iter().map(|m| m.addr.to_string()).collect();
        let table = match previous {
            Some((state, carry)) if carry.table => state.table.clone(),
            _ => {
                let weighted: Vec<(&str, u32)> = ids
                    .iter()
                    .zip(&pool.members)
                    .map(|(id, m)| (id.as_str(), m.weight))
                    .collect();
                let table = Table::build(&weighted).map_err(|source| SnapshotError::Table {
                    pool: pool.name.clone(),
                    source,
                })?;
                Arc::new(table)
            }
        };
        let pool_name: Arc<str> = Arc::from(pool.name.as_str());
        // Passive detection takes a member down after as many failed connects as the pool's
        // most sensitive check would need failed probes.
        let passive_fall = pool
            .checks
            .iter()
            .map(|c| c.fall)
            .min()
            .unwrap_or(DEFAULT_FALL);
        // Members that stay, by address (one map, not a search per member: pools can be large).
        let previous_members: HashMap<MemberAddr, &MemberState> = previous
            .map(|(state, _)| state.members.iter().map(|m| (m.addr, m)).collect())
            .unwrap_or_default();
        let carry = previous.map(|(_, carry)| carry);
        let members = pool
            .members
            .iter()
            .zip(ids)
            .map(|(m, id)| {
                let old = previous_members.get(&m.addr).zip(carry);
                let health = match old {
                    Some((o, c)) if c.health.contains(&m.addr) => o.health.clone(),
                    _ => Arc::new(MemberHealth::new(
                        pool_name.clone(),
                        Arc::from(id),
                        pool.checks.len(),
                        passive_fall,
                        events.clone(),
                    )),
                };
                let retired = match old {
                    Some((o, c)) if c.connections.contains(&m.addr) => o.retired.clone(),
                    _ => Arc::default(),
                };
                MemberState {
                    addr: m.addr,
                    weight: m.weight,
                    operator: m.state,
                    health,
                    retired,
                }
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

    /// What the health checker needs of this pool (its checks, and each member's address,
    /// operator state and health cell); the checker does not see the routing side.
    pub fn check_targets(&self) -> PoolChecks<'_> {
        PoolChecks {
            name: &self.name,
            checks: &self.checks,
            members: self
                .members
                .iter()
                .map(|m| CheckedMember {
                    addr: m.addr,
                    operator: m.operator,
                    health: m.health.clone(),
                })
                .collect(),
        }
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
        Snapshot::build(&config, 1, &crate::events::channel(), None).expect("builds")
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
        // The pinned side applies from the first evaluation, whatever the health.
        snap.evaluate_failover(Instant::now());
        assert_eq!(snap.route("s").expect("route").active_pool().name, "b");
    }

    /// [`CONFIG`] in the `remote` drill.
    fn drill_config() -> Config {
        parse(
            &CONFIG.replace(
                "backup_pool = \"b\"",
                "backup_pool = \"b\"\nfailover = \"remote\"",
            ),
            "t.toml",
        )
        .expect("valid")
    }

    /// The snapshot a reload from `from` to `to` builds on `old`, its failover evaluated.
    fn reloaded(
        old: &Snapshot,
        from: &Config,
        to: &Config,
        generation: u64,
        events: &crate::events::EventSender,
    ) -> Snapshot {
        let plan = crate::reload::plan(from, to);
        let new = Snapshot::build(to, generation, events, Some((old, &plan))).expect("builds");
        new.evaluate_failover(Instant::now());
        new
    }

    #[test]
    fn an_older_snapshot_cannot_undo_a_newer_decision() {
        // A reload evaluates the new snapshot while the failover controller may still hold the
        // old one; both share the service's failover cell.
        let events = crate::events::channel();
        let remote_cfg = drill_config();
        let old = Snapshot::build(&remote_cfg, 1, &events, None).expect("builds");
        old.evaluate_failover(Instant::now());
        assert_eq!(old.route("s").expect("route").active_pool().name, "b");
        let auto_cfg = parse(CONFIG, "t.toml").expect("valid");
        let new = reloaded(&old, &remote_cfg, &auto_cfg, 2, &events);
        assert_eq!(new.route("s").expect("route").active_pool().name, "a");
        old.evaluate_failover(Instant::now());
        assert_eq!(
            new.route("s").expect("route").active_pool().name,
            "a",
            "the old snapshot flipped the shared failover state back"
        );
    }

    #[test]
    fn a_route_held_across_a_reload_follows_the_newest_mode_and_side_together() {
        // A connection holds the route it loaded at accept. The drill ends by reload while it
        // is being routed: the shared failover state goes back to the local pool (which never
        // failed), and the connection must get the spill that comes with `auto`, not the
        // drill's "never spill" with the local side (issue 18).
        let events = crate::events::channel();
        let remote_cfg = drill_config();
        let old = Snapshot::build(&remote_cfg, 1, &events, None).expect("builds");
        old.evaluate_failover(Instant::now());
        let held = old.route("s").expect("route").clone();
        let names = |r: &Route| {
            let (active, spill) = r.target().pools();
            (active.name.clone(), spill.map(|p| p.name.clone()))
        };
        assert_eq!(
            names(&held),
            ("b".to_string(), None),
            "the drill pins, no spill"
        );

        let auto_cfg = parse(CONFIG, "t.toml").expect("valid");
        let new = reloaded(&old, &remote_cfg, &auto_cfg, 2, &events);
        let want = ("a".to_string(), Some("b".to_string()));
        assert_eq!(names(new.route("s").expect("route")), want);
        assert_eq!(
            names(&held),
            want,
            "the held route mixed the drill with the new side"
        );

        // Into the drill again: the held `auto` route now pins to the backup pool too.
        let _again = reloaded(&new, &auto_cfg, &remote_cfg, 3, &events);
        let held = new.route("s").expect("route");
        assert_eq!(names(held), ("b".to_string(), None));
    }

    #[test]
    fn a_reload_rebuilds_the_table_only_when_membership_or_weights_change() {
        let events = crate::events::channel();
        let old_cfg = parse(CONFIG, "t.toml").expect("valid");
        let old = Snapshot::build(&old_cfg, 1, &events, None).expect("builds");
        let table = |s: &Snapshot| s.pool("a").expect("pool a").table.clone();
        let next = |text: &str| {
            let cfg = parse(text, "t.toml").expect("valid");
            let plan = crate::reload::plan(&old_cfg, &cfg);
            Snapshot::build(&cfg, 2, &events, Some((&old, &plan))).expect("builds")
        };
        let drained = next(&CONFIG.replace(
            "{ addr = \"127.0.1.1:7000\" }",
            "{ addr = \"127.0.1.1:7000\", state = \"maint\" }",
        ));
        assert!(
            Arc::ptr_eq(&table(&old), &table(&drained)),
            "a drain rebuilt the table"
        );
        let weighted = next(&CONFIG.replace(
            "{ addr = \"127.0.1.1:7000\" }",
            "{ addr = \"127.0.1.1:7000\", weight = 2 }",
        ));
        assert!(!Arc::ptr_eq(&table(&old), &table(&weighted)));
        let added = next(&CONFIG.replace(
            "{ addr = \"127.0.1.2:7000\" }",
            "{ addr = \"127.0.1.2:7000\" }, { addr = \"127.0.1.4:7000\" }",
        ));
        assert!(!Arc::ptr_eq(&table(&old), &table(&added)));
    }

    #[test]
    fn a_reload_carries_exactly_the_health_and_connections_the_plan_names() {
        let events = crate::events::channel();
        let old_cfg = parse(CONFIG, "t.toml").expect("valid");
        let old = Snapshot::build(&old_cfg, 1, &events, None).expect("builds");
        // 127.0.1.1 stays in service, 127.0.1.2 goes, 127.0.1.3 comes back from drain.
        let new_cfg = parse(
            &CONFIG
                .replace("{ addr = \"127.0.1.2:7000\" }, ", "")
                .replace(", state = \"drain\"", ""),
            "t.toml",
        )
        .expect("valid");
        let plan = crate::reload::plan(&old_cfg, &new_cfg);
        let new = Snapshot::build(&new_cfg, 2, &events, Some((&old, &plan))).expect("builds");
        let member = |s: &Snapshot, host: u8| {
            let pool = s.pool("a").expect("pool a");
            let m = pool
                .members
                .iter()
                .find(|m| m.addr.ip == IpAddr::from([127, 0, 1, host]));
            m.expect("member").clone()
        };
        let (before, after) = (member(&old, 1), member(&new, 1));
        assert!(Arc::ptr_eq(&before.health, &after.health));
        assert!(Arc::ptr_eq(&before.retired, &after.retired));
        let (before, after) = (member(&old, 3), member(&new, 3));
        assert!(Arc::ptr_eq(&before.health, &after.health));
        assert!(
            !Arc::ptr_eq(&before.retired, &after.retired),
            "a member back from drain shares the token its drain retired"
        );
        let Some(crate::reload::PoolPlan::Changed(carry)) = plan.pool("a") else {
            panic!("pool a is not changed");
        };
        assert!(carry.retired.contains(&before.addr));
        assert!(Arc::ptr_eq(
            old.pool("b").expect("pool b"),
            new.pool("b").expect("pool b")
        ));
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
