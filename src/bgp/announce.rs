//! What the speaker announces, derived from the routing snapshot. Pure: no I/O, no clock.
//!
//! A service with `announce = true` wants its listen address (a /32 or /128) announced while it
//! can serve: while its active pool (the local pool, or the backup pool after failover) has a
//! member up. An address announced by several services (TCP 443 and UDP 3478 of one Edge VIP)
//! stays announced while any of them can serve: withdrawing it would take the healthy
//! services' traffic away with the broken one's, and routers route addresses, not ports.

use std::collections::BTreeSet;

use super::codec::Prefix;
use crate::pool::Snapshot;

/// One announcing service and whether it wants its address announced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub service: String,
    pub prefix: Prefix,
    /// The service can serve (its active pool has a member up), so its prefix is announced.
    pub announced: bool,
}

/// Every service of `snapshot` with `announce = true`, by name.
pub fn announcements(snapshot: &Snapshot) -> Vec<Announcement> {
    let mut out: Vec<Announcement> = snapshot
        .routes()
        .filter(|r| r.service.announce)
        .map(|r| Announcement {
            service: r.service.name.clone(),
            prefix: Prefix::host(r.service.listen.ip()),
            announced: r.active_pool().healthy_count() > 0,
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// The prefixes to announce: each one some service can serve.
pub fn wanted(announcements: &[Announcement]) -> BTreeSet<Prefix> {
    announcements
        .iter()
        .filter(|a| a.announced)
        .map(|a| a.prefix)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::events;
    use crate::health::state::Verdict;

    const CONFIG: &str = r#"
[bgp]
asn = 65010
router_id = "192.0.2.1"
  [[bgp.peer]]
  address = "192.0.2.254"
  asn = 65000
[[pool]]
name = "a"
members = [{ addr = "127.0.1.1:80" }, { addr = "127.0.1.2:80" }]
[[pool]]
name = "b"
members = [{ addr = "127.0.2.1:80" }]
[[service]]
name = "web"
listen = "198.51.100.10:443"
pool = "a"
backup_pool = "b"
announce = true
[[service]]
name = "stun"
listen = "198.51.100.10:3478"
protocol = "udp"
pool = "b"
announce = true
[[service]]
name = "quiet"
listen = "198.51.100.11:80"
pool = "a"
"#;

    /// Takes every member of `pool` down (pools without checks start up) the way the proxy
    /// does: failed connects, passive detection.
    fn take_down(snapshot: &Snapshot, pool: &str) {
        for m in &snapshot.pool(pool).expect("pool").members {
            for _ in 0..10 {
                m.health.connect_failed();
            }
            assert_eq!(m.health.verdict(), Verdict::Down);
        }
    }

    #[test]
    fn a_shared_address_stays_while_any_of_its_services_can_serve() {
        let config = parse(CONFIG, "t.toml").expect("valid");
        let snapshot = Snapshot::build(&config, 1, &events::channel(), None).expect("snapshot");
        take_down(&snapshot, "b");
        let list = announcements(&snapshot);
        assert_eq!(
            list.iter()
                .map(|a| (a.service.as_str(), a.announced))
                .collect::<Vec<_>>(),
            [("stun", false), ("web", true)],
            "only services with announce = true, by name"
        );
        assert_eq!(wanted(&list).len(), 1);
        take_down(&snapshot, "a");
        assert!(wanted(&announcements(&snapshot)).is_empty());
    }
}
