//! What a config reload changes: a pure diff of two validated configs, which the app applies.
//!
//! No I/O: loading the file and binding listeners happen in the app; this module only says what
//! is added, removed and changed, so the rules of a reload (keep what stays, drain what goes)
//! can be tested without sockets.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Config, MemberAddr, Pool, Service};

/// The difference between the running config and a new one.
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

/// Computes what changes from `old` to `new`.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    let old_services: BTreeMap<&str, &Service> =
        old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_services: BTreeMap<&str, &Service> =
        new.services.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, n) in &new_services {
        match old_services.get(name) {
            None => d.services_added.push(name.to_string()),
            Some(o) => {
                let keys = changed_service_keys(o, n);
                if !keys.is_empty() {
                    d.services_changed.push(ServiceChange {
                        name: name.to_string(),
                        rebind: o.listen != n.listen || o.protocol != n.protocol,
                        keys,
                    });
                }
            }
        }
    }
    d.services_removed = old_services
        .keys()
        .filter(|n| !new_services.contains_key(*n))
        .map(|n| n.to_string())
        .collect();

    let old_pools: BTreeMap<&str, &Pool> = old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_pools: BTreeMap<&str, &Pool> = new.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, n) in &new_pools {
        match old_pools.get(name) {
            None => d.pools_added.push(name.to_string()),
            Some(o) => {
                let change = pool_change(o, n);
                if change
                    != (PoolChange {
                        name: name.to_string(),
                        ..PoolChange::default()
                    })
                {
                    d.pools_changed.push(change);
                }
            }
        }
    }
    d.pools_removed = old_pools
        .keys()
        .filter(|n| !new_pools.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    d
}

fn pool_change(old: &Pool, new: &Pool) -> PoolChange {
    let mut c = PoolChange {
        name: new.name.clone(),
        checks_changed: old.checks != new.checks,
        ..PoolChange::default()
    };
    for m in &new.members {
        match old.members.iter().find(|o| o.addr == m.addr) {
            None => c.members_added.push(m.addr),
            Some(o) if o != m => c.members_changed.push(m.addr),
            Some(_) => {}
        }
    }
    for o in &old.members {
        if !new.members.iter().any(|m| m.addr == o.addr) {
            c.members_removed.push(o.addr);
        }
    }
    c
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
}
