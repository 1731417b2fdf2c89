//! The `/status` document: services, pools, members and recent events as JSON. Pure: reads a
//! view of the running state, performs no I/O.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::app::AppView;

/// Builds the status document.
pub fn status(view: &AppView) -> Value {
    let snapshot = view.snapshot();
    let services = view.services();
    let now = Instant::now();
    let wall = SystemTime::now();

    let mut routes: Vec<_> = snapshot.routes().collect();
    routes.sort_by(|a, b| a.service.name.cmp(&b.service.name));
    let services_json: Vec<Value> = routes
        .iter()
        .map(|route| {
            let s = &route.service;
            let stats = services
                .iter()
                .find(|v| v.name == s.name)
                .map(|v| (v.local_addr.to_string(), v.stats.snapshot()));
            let failover = route.failover.status();
            let since = failover
                .as_ref()
                .map(|f| now.saturating_duration_since(f.since))
                .unwrap_or_default();
            json!({
                "name": s.name,
                "protocol": s.protocol.to_string(),
                "listen": stats.as_ref().map_or(s.listen.to_string(), |(a, _)| a.clone()),
                "pool": s.pool,
                "backup_pool": s.backup_pool,
                "active_pool": route.active_pool().name,
                "failover": {
                    "mode": s.failover.as_str(),
                    "side": failover.as_ref().map_or("local", |f| f.side.as_str()),
                    "since": rfc3339(wall, since),
                    "for_seconds": since.as_secs_f64(),
                    "reason": failover.as_ref().map(|f| f.reason.clone()),
                    "min_healthy": s.min_healthy,
                    "local_healthy": route.local.healthy_count(),
                    "backup_healthy": route.backup.as_ref().map(|b| b.healthy_count()),
                    "failovers": route.failover.failovers.load(std::sync::atomic::Ordering::Relaxed),
                    "failbacks": route.failover.failbacks.load(std::sync::atomic::Ordering::Relaxed),
                },
                "connections": stats.as_ref().map(|(_, st)| json!({
                    "active": st.active,
                    "accepted": st.accepted,
                    "rejected_max_connections": st.rejected_limit,
                    "rejected_no_member": st.rejected_no_member,
                    "rejected_resources": st.rejected_resources,
                    "connect_failures": st.connect_failures,
                    "connect_retries": st.retries,
                    "bytes_to_members": st.bytes_to_members,
                    "bytes_to_clients": st.bytes_to_clients,
                    "udp_sessions_active": st.sessions_active,
                    "udp_sessions_created": st.sessions_created,
                    "udp_sessions_expired": st.sessions_expired,
                    "udp_sessions_rehashed": st.sessions_rehashed,
                    "udp_datagrams_to_members": st.datagrams_to_members,
                    "udp_datagrams_to_clients": st.datagrams_to_clients,
                    "udp_datagrams_dropped": st.datagrams_dropped,
                })),
            })
        })
        .collect();

    let mut pools: Vec<_> = snapshot.pools().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let pools_json: Vec<Value> = pools
        .iter()
        .map(|pool| {
            let members: Vec<Value> = pool
                .members
                .iter()
                .map(|m| {
                    let checks: Vec<Value> = m
                        .health
                        .details()
                        .iter()
                        .zip(&pool.checks)
                        .map(|(d, c)| {
                            json!({
                                "kind": c.kind.as_str(),
                                "port": c.port,
                                "verdict": d.verdict.as_str(),
                                "last_ok": d.last_ok,
                                "reason": d.reason,
                                "at": d.at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                                "took_ms": d.took.as_secs_f64() * 1000.0,
                            })
                        })
                        .collect();
                    let t = &m.health.traffic;
                    let load = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    json!({
                        "addr": m.addr.to_string(),
                        "weight": m.weight,
                        "state": m.operator.as_str(),
                        "health": m.health.verdict().as_str(),
                        "available": m.available(),
                        "passive_down": m.health.passive_down(),
                        "connections_active": load(&t.active),
                        "connections_total": load(&t.connections),
                        "bytes_to_member": load(&t.bytes_to_member),
                        "bytes_to_client": load(&t.bytes_to_client),
                        "checks": checks,
                    })
                })
                .collect();
            json!({
                "name": pool.name,
                "healthy": pool.healthy_count(),
                "size": pool.members.len(),
                "members": members,
            })
        })
        .collect();

    let events: Vec<Value> = view.recent_events().iter().map(|e| e.to_json()).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        // Lets `tandem member set` signal this process when its token cannot be used.
        "pid": std::process::id(),
        "generation": snapshot.generation,
        "ready": view.ready(),
        "reloads": {
            "applied": view.reloads().applied.load(std::sync::atomic::Ordering::Relaxed),
            "rejected": view.reloads().rejected.load(std::sync::atomic::Ordering::Relaxed),
        },
        "services": services_json,
        "pools": pools_json,
        "bgp": view.bgp().to_json(),
        "recent_events": events,
    })
}

fn rfc3339(now: SystemTime, ago: Duration) -> String {
    let t = now.checked_sub(ago).unwrap_or(now);
    humantime::format_rfc3339_seconds(t).to_string()
}
