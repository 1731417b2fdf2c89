//! What a config reload keeps, replaces and retires: one pure [`Plan`] computed from the running
//! config and the new one, which [`crate::pool::Snapshot::build`] and the app both follow.
//!
//! No I/O and no live objects: the plan names pools, services and members and says of each
//! whether it is new, kept as it is, rebuilt carrying some of its state, or retired. Deciding
//! that here, once, means the snapshot never re-decides what "the same" is and the app never
//! compares live objects to find out what went away; and the rules of a reload (keep what stays,
//! drain what goes) are tested without sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::config::{Config, Member, MemberAddr, OperatorState, Pool, Service};

/// Everything a reload changes, decided from the two configs alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The change in words, for the log, the reload event and the admin reply.
    pub diff: Diff,
    /// Every pool of either config, by name.
    pub pools: BTreeMap<String, PoolPlan>,
    /// Every service of either config, by name.
    pub services: BTreeMap<String, ServicePlan>,
    /// Server-name routes (service, route name) that keep their failover state: in both
    /// configs, of a service that stays, with the same pool and backup pool.
    pub route_failover: BTreeSet<(String, String)>,
}

impl Plan {
    /// What becomes of the pool `name` (`None`: in neither config).
    pub fn pool(&self, name: &str) -> Option<&PoolPlan> {
        self.pools.get(name)
    }

    /// What becomes of the service `name` (`None`: in neither config).
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.get(name)
    }

    /// Whether the server-name route `route` of `service` keeps its failover state.
    pub fn keeps_route_failover(&self, service: &str, route: &str) -> bool {
        self.route_failover
            .contains(&(service.to_string(), route.to_string()))
    }
}

/// What becomes of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolPlan {
    /// Only in the new config: built afresh (health unknown), checked by new loops.
    Added,
    /// The same config: the running pool (table, members, health, connections, check loops) is
    /// shared as it is.
    Unchanged,
    /// In both, changed: rebuilt, taking over what [`PoolCarry`] says; new check loops replace
    /// the old ones (they probe the new member list).
    Changed(PoolCarry),
    /// Only in the old config: its check loops stop and every member's connections drain.
    Removed,
}

impl PoolPlan {
    /// Whether the pool gets new check loops, whose first round runs before the swap.
    pub fn starts_checks(&self) -> bool {
        matches!(self, PoolPlan::Added | PoolPlan::Changed(_))
    }

    /// Whether the pool's running check loops stop after the swap.
    pub fn stops_checks(&self) -> bool {
        matches!(self, PoolPlan::Changed(_) | PoolPlan::Removed)
    }

    /// Whether the old member at `addr` is retired: its open connections now drain for their
    /// service's `drain_timeout`.
    pub fn retires(&self, addr: &MemberAddr) -> bool {
        match self {
            PoolPlan::Removed => true,
            PoolPlan::Changed(carry) => carry.retired.contains(addr),
            PoolPlan::Added | PoolPlan::Unchanged => false,
        }
    }
}

/// What a changed pool takes over from the running one. Members are named by address, their
/// identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCarry {
    /// The same members with the same weights in the same order: the Maglev table is shared.
    /// (Its slots hold member indices in config order, so a reorder rebuilds it.) A drain or a
    /// check change rebuilds nothing.
    pub table: bool,
    /// Members that keep their health verdict: in both configs, with the pool's checks
    /// unchanged (a verdict reached under other checks says nothing about the new ones).
    pub health: BTreeSet<MemberAddr>,
    /// Members whose open connections carry on: in service (`up`) before and after.
    pub connections: BTreeSet<MemberAddr>,
    /// Every other member of the old config: removed, or not in service before or after. Their
    /// open connections drain. (One that was not in service before holds none: retiring it
    /// changes nothing.)
    pub retired: BTreeSet<MemberAddr>,
}

/// What becomes of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicePlan {
    /// Only in the new config: its listener is bound before the swap and serves after it.
    Added,
    /// The same `listen` and `protocol`: its listener, connections and counters stay, and the
    /// other settings apply in place.
    Kept {
        /// The failover state carries over (see [`ServicePlan::keeps_failover`]).
        failover: bool,
    },
    /// `listen` or `protocol` changed: a new listener, bound before the swap, replaces the old
    /// one, whose connections drain. The counters stay.
    Rebound {
        /// The failover state carries over (see [`ServicePlan::keeps_failover`]).
        failover: bool,
    },
    /// Only in the old config: it stops accepting and its connections drain.
    Removed,
}

impl ServicePlan {
    /// Whether the service needs a new listener, bound before anything changes.
    pub fn binds(&self) -> bool {
        matches!(self, ServicePlan::Added | ServicePlan::Rebound { .. })
    }

    /// Whether the service keeps its failover state (side, hold-down, counters): it does while
    /// its pool and backup pool stay the same, whatever else changes (a drill included).
    pub fn keeps_failover(&self) -> bool {
        match self {
            ServicePlan::Kept { failover } | ServicePlan::Rebound { failover } => *failover,
            ServicePlan::Added | ServicePlan::Removed => false,
        }
    }
}

/// The difference between the running config and a new one, as the operator reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    /// Services present in both with any setting changed.
    pub services_changed: Vec<ServiceChange>,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<PoolChange>,
}

/// How one kept service changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChange {
    pub name: String,
    /// `listen` or `protocol` changed: a new listener replaces the old one.
    pub rebind: bool,
    /// Names of the settings that changed, in config order.
    pub keys: Vec<&'static str>,
}

/// How one kept pool changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChange {
    pub name: String,
    pub members_added: Vec<MemberAddr>,
    pub members_removed: Vec<MemberAddr>,
    /// Kept members whose weight or operator state changed.
    pub members_changed: Vec<MemberAddr>,
    /// The pool's checks changed: its members are checked afresh.
    pub checks_changed: bool,
}

impl PoolChange {
    /// Whether anything an operator would call a change happened to the pool.
    fn has_changes(&self) -> bool {
        !self.members_added.is_empty()
            || !self.members_removed.is_empty()
            || !self.members_changed.is_empty()
            || self.checks_changed
    }
}

impl Diff {
    /// Whether the configs route identically.
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let mut parts = Vec::new();
        let list = |what: &str, names: &[String]| {
            (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
        };
        parts.extend(list("services added:", &self.services_added));
        parts.extend(list("services removed:", &self.services_removed));
        for s in &self.services_changed {
            parts.push(format!(
                "service {} changed ({})",
                s.name,
                s.keys.join(", ")
            ));
        }
        parts.extend(list("pools added:", &self.pools_added));
        parts.extend(list("pools removed:", &self.pools_removed));
        for p in &self.pools_changed {
            let mut what = Vec::new();
            if !p.members_added.is_empty() {
                what.push(format!("+{} member(s)", p.members_added.len()));
            }
            if !p.members_removed.is_empty() {
                what.push(format!("-{} member(s)", p.members_removed.len()));
            }
            if !p.members_changed.is_empty() {
                what.push(format!("{} member(s) changed", p.members_changed.len()));
            }
            if p.checks_changed {
                what.push("checks changed".to_string());
            }
            parts.push(format!("pool {} ({})", p.name, what.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Plans the reload from `old` to `new`: what each pool, service and member becomes, and the
/// [`Diff`] that says it in words.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    let d = &mut plan.diff;

    let old_services: BTreeMap<&str, &Service> =
        old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_services: BTreeMap<&str, &Service> =
        new.services.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, n) in &new_services {
        let service = match old_services.get(name) {
            None => {
                d.services_added.push(name.to_string());
                ServicePlan::Added
            }
            Some(o) => {
                let rebind = o.listen != n.listen || o.protocol != n.protocol;
                let keys = changed_service_keys(o, n);
                if !keys.is_empty() {
                    d.services_changed.push(ServiceChange {
                        name: name.to_string(),
                        rebind,
                        keys,
                    });
                }
                // The failover state is a decision between these two pools: with either
                // replaced it means nothing, so it starts over.
                let failover = o.pool == n.pool && o.backup_pool == n.backup_pool;
                // Likewise per server-name route, matched by name.
                for r in &n.sni.routes {
                    let same = o.sni.routes.iter().any(|old| {
                        old.name == r.name && old.pool == r.pool && old.backup_pool == r.backup_pool
                    });
                    if same {
                        plan.route_failover
                            .insert((name.to_string(), r.name.clone()));
                    }
                }
                if rebind {
                    ServicePlan::Rebound { failover }
                } else {
                    ServicePlan::Kept { failover }
                }
            }
        };
        plan.services.insert(name.to_string(), service);
    }
    for name in old_services
        .keys()
        .filter(|n| !new_services.contains_key(*n))
    {
        d.services_removed.push(name.to_string());
        plan.services.insert(name.to_string(), ServicePlan::Removed);
    }

    let old_pools: BTreeMap<&str, &Pool> = old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_pools: BTreeMap<&str, &Pool> = new.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, n) in &new_pools {
        let pool = match old_pools.get(name) {
            None => {
                d.pools_added.push(name.to_string());
                PoolPlan::Added
            }
            Some(o) if o == n => PoolPlan::Unchanged,
            Some(o) => {
                let (change, carry) = pool_change(o, n);
                // A reorder alone changes the config (and the table) but nothing an operator
                // would call a change.
                if change.has_changes() {
                    d.pools_changed.push(change);
                }
                PoolPlan::Changed(carry)
            }
        };
        plan.pools.insert(name.to_string(), pool);
    }
    for name in old_pools.keys().filter(|n| !new_pools.contains_key(*n)) {
        d.pools_removed.push(name.to_string());
        plan.pools.insert(name.to_string(), PoolPlan::Removed);
    }
    plan
}

/// How a pool present in both configs changed, in words and in what it carries over.
fn pool_change(old: &Pool, new: &Pool) -> (PoolChange, PoolCarry) {
    let checks_unchanged = old.checks == new.checks;
    let mut change = PoolChange {
        name: new.name.clone(),
        checks_changed: !checks_unchanged,
        ..PoolChange::default()
    };
    let mut carry = PoolCarry {
        table: old.members.len() == new.members.len()
            && old
                .members
                .iter()
                .zip(&new.members)
                .all(|(o, n)| o.addr == n.addr && o.weight == n.weight),
        ..PoolCarry::default()
    };
    // One map, not a search per member: pools can be large.
    let old_members: HashMap<MemberAddr, &Member> =
        old.members.iter().map(|m| (m.addr, m)).collect();
    for m in &new.members {
        let Some(o) = old_members.get(&m.addr) else {
            change.members_added.push(m.addr);
            continue;
        };
        if *o != m {
            change.members_changed.push(m.addr);
        }
        if checks_unchanged {
            carry.health.insert(m.addr);
        }
        if o.state == OperatorState::Up && m.state == OperatorState::Up {
            carry.connections.insert(m.addr);
        }
    }
    let new_addrs: BTreeSet<MemberAddr> = new.members.iter().map(|m| m.addr).collect();
    for o in &old.members {
        if !new_addrs.contains(&o.addr) {
            change.members_removed.push(o.addr);
        }
        if !carry.connections.contains(&o.addr) {
            carry.retired.insert(o.addr);
        }
    }
    (change, carry)
}

fn changed_service_keys(o: &Service, n: &Service) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("listen", o.listen != n.listen);
    check("protocol", o.protocol != n.protocol);
    check("port", o.port != n.port);
    check("pool", o.pool != n.pool);
    check("backup_pool", o.backup_pool != n.backup_pool);
    check("failover", o.failover != n.failover);
    check("min_healthy", o.min_healthy != n.min_healthy);
    check("failback_after", o.failback_after != n.failback_after);
    check("hash", o.hash != n.hash);
    check("idle_timeout", o.idle_timeout != n.idle_timeout);
    check("connect_timeout", o.connect_timeout != n.connect_timeout);
    check("max_connections", o.max_connections != n.max_connections);
    check("proxy_protocol", o.proxy_protocol != n.proxy_protocol);
    check("drain_timeout", o.drain_timeout != n.drain_timeout);
    check("announce", o.announce != n.announce);
    check("route", o.sni.routes != n.sni.routes);
    check("sni_required", o.sni.required != n.sni.required);
    check(
        "max_connections_per_source",
        o.per_source.max_connections != n.per_source.max_connections,
    );
    check(
        "max_rate_per_source",
        o.per_source.rate != n.per_source.rate,
    );
    check(
        "source_prefix_v6",
        o.per_source.prefix_v6 != n.per_source.prefix_v6,
    );
    check("source", o.source != n.source);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[[pool]]
name = "a"
members = [{ addr = "127.0.1.1:80" }, { addr = "127.0.1.2:80" }, { addr = "127.0.1.3:80" }]
  [[pool.check]]
  kind = "tcp"
[[pool]]
name = "b"
members = [{ addr = "127.0.1.11:80" }]
[[service]]
name = "s"
listen = "127.0.0.1:7000"
pool = "a"
backup_pool = "b"
[[service]]
name = "t"
listen = "127.0.0.1:7001"
pool = "b"
"#;

    fn cfg(text: &str) -> Config {
        parse(text, "t.toml").expect("valid test config")
    }

    fn diff(old: &Config, new: &Config) -> Diff {
        plan(old, new).diff
    }

    #[test]
    fn identical_configs_differ_in_nothing() {
        let d = diff(&cfg(BASE), &cfg(BASE));
        assert!(d.is_empty());
        assert_eq!(d.to_string(), "no change");
    }

    #[test]
    fn services_added_removed_changed() {
        let new = BASE
            .replace(
                "name = \"t\"\nlisten = \"127.0.0.1:7001\"",
                "name = \"u\"\nlisten = \"127.0.0.1:7002\"",
            )
            .replace(
                "backup_pool = \"b\"",
                "backup_pool = \"b\"\nfailover = \"remote\"\nidle_timeout = \"60s\"",
            );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.services_added, vec!["u"]);
        assert_eq!(d.services_removed, vec!["t"]);
        assert_eq!(
            d.services_changed,
            vec![ServiceChange {
                name: "s".into(),
                rebind: false,
                keys: vec!["failover", "idle_timeout"]
            }]
        );
        assert!(d.pools_changed.is_empty());
    }

    #[test]
    fn listen_change_rebinds() {
        let new = BASE.replace("127.0.0.1:7000", "127.0.0.1:7100");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.services_changed[0].rebind);
        // The member port defaults to the listen port, so it changes with it.
        assert_eq!(d.services_changed[0].keys, vec!["listen", "port"]);
    }

    #[test]
    fn members_added_removed_changed() {
        let new = BASE.replace(
            "[{ addr = \"127.0.1.1:80\" }, { addr = \"127.0.1.2:80\" }, { addr = \"127.0.1.3:80\" }]",
            "[{ addr = \"127.0.1.1:80\", weight = 2 }, { addr = \"127.0.1.3:80\", state = \"drain\" }, { addr = \"127.0.1.4:80\" }]",
        );
        let (old, new) = (cfg(BASE), cfg(&new));
        let d = diff(&old, &new);
        assert_eq!(d.pools_changed.len(), 1);
        let p = &d.pools_changed[0];
        let addr = |s: &str| MemberAddr {
            ip: s.parse().expect("ip"),
            port: Some(80),
        };
        assert_eq!(p.members_added, vec![addr("127.0.1.4")]);
        assert_eq!(p.members_removed, vec![addr("127.0.1.2")]);
        assert_eq!(
            p.members_changed,
            vec![addr("127.0.1.1"), addr("127.0.1.3")]
        );
        assert!(!p.checks_changed);
        assert_eq!(
            d.to_string(),
            "pool a (+1 member(s), -1 member(s), 2 member(s) changed)"
        );
    }

    #[test]
    fn drain_alone_is_a_member_change_not_a_membership_change() {
        let new = BASE.replace(
            "{ addr = \"127.0.1.3:80\" }",
            "{ addr = \"127.0.1.3:80\", state = \"drain\" }",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        let p = &d.pools_changed[0];
        assert!(p.members_added.is_empty() && p.members_removed.is_empty());
        assert_eq!(p.members_changed.len(), 1);
    }

    #[test]
    fn pools_added_removed_and_checks_changed() {
        let new = BASE.replace("  kind = \"tcp\"", "  kind = \"tcp\"\n  interval = \"5s\"")
            + "[[pool]]\nname = \"c\"\nmembers = [{ addr = \"127.0.1.21:80\" }]\n";
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.pools_added, vec!["c"]);
        assert!(d.pools_changed[0].checks_changed);
        let fewer = r#"
[[pool]]
name = "a"
members = [{ addr = "127.0.1.1:80" }, { addr = "127.0.1.2:80" }, { addr = "127.0.1.3:80" }]
  [[pool.check]]
  kind = "tcp"
[[service]]
name = "s"
listen = "127.0.0.1:7000"
pool = "a"
"#;
        let d = diff(&cfg(BASE), &cfg(fewer));
        assert_eq!(d.pools_removed, vec!["b"]);
        assert_eq!(d.services_removed, vec!["t"]);
    }

    fn addr(host: &str) -> MemberAddr {
        MemberAddr {
            ip: host.parse().expect("ip"),
            port: Some(80),
        }
    }

    fn addrs(hosts: &[&str]) -> BTreeSet<MemberAddr> {
        hosts.iter().map(|h| addr(h)).collect()
    }

    /// The carry-over of pool "a" from BASE to `new`.
    fn carry_of_a(new: &str) -> PoolCarry {
        match plan(&cfg(BASE), &cfg(new)).pool("a") {
            Some(PoolPlan::Changed(carry)) => carry.clone(),
            other => panic!("pool a is not changed: {other:?}"),
        }
    }

    /// What every plan must satisfy, whatever the change: each old member of a changed pool
    /// either keeps its connections or is retired, never both; only members in both configs
    /// carry anything; check loops restart exactly where the pool is rebuilt.
    fn assert_consistent(old: &Config, new: &Config) {
        let p = plan(old, new);
        for (name, pool) in &p.pools {
            assert_eq!(
                pool.starts_checks(),
                matches!(pool, PoolPlan::Added | PoolPlan::Changed(_)),
                "{name}"
            );
            let PoolPlan::Changed(carry) = pool else {
                continue;
            };
            let members = |c: &Config| -> BTreeSet<MemberAddr> {
                let pool = c.pool(name).expect("pool in both configs");
                pool.members.iter().map(|m| m.addr).collect()
            };
            let (before, after) = (members(old), members(new));
            let both: BTreeSet<MemberAddr> = before.intersection(&after).copied().collect();
            assert!(carry.health.is_subset(&both), "{name}: {carry:?}");
            assert!(carry.connections.is_subset(&both), "{name}: {carry:?}");
            assert!(carry.connections.is_disjoint(&carry.retired), "{name}");
            let accounted: BTreeSet<MemberAddr> =
                carry.connections.union(&carry.retired).copied().collect();
            assert_eq!(
                accounted, before,
                "{name}: an old member is unaccounted for"
            );
        }
        for name in old.services.iter().chain(&new.services).map(|s| &s.name) {
            assert!(p.service(name).is_some(), "service {name} has no plan");
        }
    }

    #[test]
    fn identical_configs_keep_everything_running() {
        let p = plan(&cfg(BASE), &cfg(BASE));
        assert_eq!(p.pool("a"), Some(&PoolPlan::Unchanged));
        assert_eq!(p.pool("b"), Some(&PoolPlan::Unchanged));
        assert_eq!(p.service("s"), Some(&ServicePlan::Kept { failover: true }));
        assert_eq!(p.service("t"), Some(&ServicePlan::Kept { failover: true }));
        for pool in p.pools.values() {
            assert!(!pool.starts_checks() && !pool.stops_checks());
            assert!(!pool.retires(&addr("127.0.1.1")));
        }
        assert!(p.services.values().all(|s| !s.binds()));
    }

    #[test]
    fn members_that_stay_keep_health_and_those_still_in_service_keep_connections() {
        let new = BASE.replace(
            "[{ addr = \"127.0.1.1:80\" }, { addr = \"127.0.1.2:80\" }, { addr = \"127.0.1.3:80\" }]",
            "[{ addr = \"127.0.1.1:80\", weight = 2 }, { addr = \"127.0.1.3:80\", state = \"drain\" }, { addr = \"127.0.1.4:80\" }]",
        );
        let carry = carry_of_a(&new);
        assert_eq!(
            carry,
            PoolCarry {
                table: false,
                health: addrs(&["127.0.1.1", "127.0.1.3"]),
                connections: addrs(&["127.0.1.1"]),
                retired: addrs(&["127.0.1.2", "127.0.1.3"]),
            }
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        let a = p.pool("a").expect("pool a");
        assert!(a.starts_checks() && a.stops_checks());
        assert!(a.retires(&addr("127.0.1.2")) && !a.retires(&addr("127.0.1.1")));
        assert_eq!(p.pool("b"), Some(&PoolPlan::Unchanged));
    }

    #[test]
    fn a_drain_keeps_table_and_health_and_retires_only_the_drained_members_connections() {
        let drained = BASE.replace(
            "{ addr = \"127.0.1.3:80\" }",
            "{ addr = \"127.0.1.3:80\", state = \"drain\" }",
        );
        let carry = carry_of_a(&drained);
        assert!(carry.table, "a drain rebuilt the table");
        assert_eq!(
            carry.health,
            addrs(&["127.0.1.1", "127.0.1.2", "127.0.1.3"])
        );
        assert_eq!(carry.connections, addrs(&["127.0.1.1", "127.0.1.2"]));
        assert_eq!(carry.retired, addrs(&["127.0.1.3"]));

        // Back in service: the member starts with a fresh lifetime for its new connections.
        let p = plan(&cfg(&drained), &cfg(BASE));
        let Some(PoolPlan::Changed(back)) = p.pool("a") else {
            panic!("pool a is not changed");
        };
        assert_eq!(back.connections, addrs(&["127.0.1.1", "127.0.1.2"]));
        assert_eq!(back.retired, addrs(&["127.0.1.3"]));
    }

    #[test]
    fn a_check_change_resets_health_but_keeps_connections_and_table() {
        let new = BASE.replace("  kind = \"tcp\"", "  kind = \"tcp\"\n  interval = \"5s\"");
        let carry = carry_of_a(&new);
        assert!(carry.table);
        assert!(carry.health.is_empty(), "{carry:?}");
        assert_eq!(carry.connections.len(), 3);
        assert!(carry.retired.is_empty());
    }

    #[test]
    fn a_reorder_rebuilds_the_table_but_is_no_change_in_words() {
        let new = BASE.replace(
            "[{ addr = \"127.0.1.1:80\" }, { addr = \"127.0.1.2:80\" }, { addr = \"127.0.1.3:80\" }]",
            "[{ addr = \"127.0.1.3:80\" }, { addr = \"127.0.1.1:80\" }, { addr = \"127.0.1.2:80\" }]",
        );
        let carry = carry_of_a(&new);
        assert!(!carry.table);
        assert_eq!(carry.health.len(), 3);
        assert_eq!(carry.connections.len(), 3);
        assert!(diff(&cfg(BASE), &cfg(&new)).is_empty());
    }

    #[test]
    fn services_are_added_removed_rebound_or_kept_and_keep_failover_with_their_pools() {
        let new = BASE.replace("127.0.0.1:7000", "127.0.0.1:7100").replace(
            "listen = \"127.0.0.1:7001\"\npool = \"b\"",
            "listen = \"127.0.0.1:7001\"\npool = \"a\"",
        ) + "[[service]]\nname = \"u\"\nlisten = \"127.0.0.1:7002\"\npool = \"b\"\n";
        let p = plan(&cfg(BASE), &cfg(&new));
        // Moved, same pools: a new listener, the failover state stays.
        let s = p.service("s").expect("s");
        assert_eq!(*s, ServicePlan::Rebound { failover: true });
        assert!(s.binds() && s.keeps_failover());
        // Same listener, another pool: the failover state starts over.
        let t = p.service("t").expect("t");
        assert_eq!(*t, ServicePlan::Kept { failover: false });
        assert!(!t.binds() && !t.keeps_failover());
        let u = p.service("u").expect("u");
        assert_eq!(*u, ServicePlan::Added);
        assert!(u.binds() && !u.keeps_failover());

        let without_backup = BASE.replace("backup_pool = \"b\"\n", "");
        let p = plan(&cfg(BASE), &cfg(&without_backup));
        assert_eq!(p.service("s"), Some(&ServicePlan::Kept { failover: false }));
    }

    #[test]
    fn a_removed_pool_stops_its_checks_and_retires_every_member() {
        let fewer = r#"
[[pool]]
name = "a"
members = [{ addr = "127.0.1.1:80" }, { addr = "127.0.1.2:80" }, { addr = "127.0.1.3:80" }]
  [[pool.check]]
  kind = "tcp"
[[service]]
name = "s"
listen = "127.0.0.1:7000"
pool = "a"
"#;
        let p = plan(&cfg(BASE), &cfg(fewer));
        let b = p.pool("b").expect("b");
        assert_eq!(*b, PoolPlan::Removed);
        assert!(b.stops_checks() && !b.starts_checks());
        assert!(b.retires(&addr("127.0.1.11")));
        assert_eq!(p.service("t"), Some(&ServicePlan::Removed));
        assert!(!p.service("t").expect("t").binds());
        // Its backup pool is gone: the failover state meant a choice that no longer exists.
        assert_eq!(p.service("s"), Some(&ServicePlan::Kept { failover: false }));
        let a = p.pool("a").expect("a");
        assert_eq!(*a, PoolPlan::Unchanged);
        assert!(!a.starts_checks() && !a.stops_checks());
    }

    #[test]
    fn every_plan_accounts_for_every_old_member_once() {
        let base = cfg(BASE);
        let variants = [
            BASE.replace("{ addr = \"127.0.1.2:80\" }, ", ""),
            BASE.replace(
                "{ addr = \"127.0.1.1:80\" }",
                "{ addr = \"127.0.1.1:80\", state = \"maint\" }",
            ),
            BASE.replace(
                "{ addr = \"127.0.1.3:80\" }]",
                "{ addr = \"127.0.1.3:80\" }, { addr = \"127.0.1.5:80\" }]",
            ),
            BASE.replace("  kind = \"tcp\"", "  kind = \"tcp\"\n  rise = 3"),
            BASE.replace(
                "[{ addr = \"127.0.1.11:80\" }]",
                "[{ addr = \"127.0.1.12:80\", state = \"drain\" }]",
            ),
        ];
        for v in &variants {
            let v = cfg(v);
            assert_consistent(&base, &v);
            assert_consistent(&v, &base);
        }
    }

    #[test]
    fn a_route_keeps_its_failover_state_while_its_pools_stay() {
        let routed = BASE.replace(
            "backup_pool = \"b\"\n",
            "backup_pool = \"b\"\n  [[service.route]]\n  name = \"r\"\n  sni = [\"x.example\"]\n  \
             pool = \"b\"\n  backup_pool = \"a\"\n",
        );
        let old = cfg(&routed);
        let same = plan(&old, &cfg(&routed.replace("x.example", "y.example")));
        assert!(same.keeps_route_failover("s", "r"));
        assert_eq!(same.diff.services_changed[0].keys, vec!["route"]);
        let swapped = plan(&old, &cfg(&routed.replace("backup_pool = \"a\"", "")));
        assert!(!swapped.keeps_route_failover("s", "r"));
        let renamed = plan(&old, &cfg(&routed.replace("name = \"r\"", "name = \"q\"")));
        assert!(!renamed.keeps_route_failover("s", "q"));
        assert!(same.service("s").is_some_and(ServicePlan::keeps_failover));
    }
}
