//! Transitions worth telling an operator about, broadcast to whoever listens. Sending never
//! blocks: a slow listener misses events (it sees `Lagged`), the data path never waits for it.
//!
//! Who sends: the health cells (a member's verdict changed), each service's route in
//! [`crate::pool`] (it failed over or back), the app (a reload applied or rejected) and the BGP
//! speaker ([`crate::bgp`]: a session up or down, a service's address announced or withdrawn).
//!
//! Who listens:
//! - the failover controller in [`crate::app`], for which any event (its own failover events and
//!   a `Lagged` included) only means "re-evaluate every service now"; it never reads the
//!   content, so a missed event costs nothing and a new kind of event needs no change there;
//! - the app's ring of recent events ([`crate::app::RECENT_EVENTS`]), shown on the status page
//!   and in `/status`;
//! - the admin API's `/events` stream (server-sent events, one per [`Event::to_json`]);
//! - the demo and the tests, which wait for one with [`wait_for`].

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::failover::Side;
use crate::health::state::Verdict;

/// Events kept for listeners that fall behind before the oldest is dropped.
pub const EVENT_BUFFER: usize = 1024;

/// One transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member's combined health verdict changed.
    Health(HealthEvent),
    /// A service moved its new connections to the other pool.
    Failover(FailoverEvent),
    /// A config reload was applied or rejected.
    Reload(ReloadEvent),
    /// A BGP session came up or went down, or a service's address was announced or withdrawn.
    Bgp(BgpEvent),
}

/// A change of the BGP speaker ([`crate::bgp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpEvent {
    /// `session_up`, `session_down`, `announced` or `withdrawn`.
    pub change: &'static str,
    /// The peer (`address:port`) of a session change.
    pub peer: Option<String>,
    /// The service and its prefix of an announcement change.
    pub service: Option<String>,
    pub prefix: Option<String>,
    pub reason: String,
    pub at: SystemTime,
}

/// A service changed the pool its new connections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverEvent {
    pub service: Arc<str>,
    pub from: Side,
    pub to: Side,
    pub reason: String,
    pub local_healthy: usize,
    pub backup_healthy: usize,
    pub at: SystemTime,
}

/// The outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadEvent {
    /// Whether the new config is now serving.
    pub applied: bool,
    /// The config generation serving after the attempt.
    pub generation: u64,
    /// What changed (applied) or every problem (rejected).
    pub message: String,
    pub at: SystemTime,
}

/// A member of a pool changed health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub pool: Arc<str>,
    /// The member's identity (its canonical address).
    pub member: Arc<str>,
    pub from: Verdict,
    pub to: Verdict,
    /// Why: the deciding check's last reason, or "passive: N failed connects".
    pub reason: String,
    pub at: SystemTime,
}

/// The sending side, cloned into whatever produces events.
pub type EventSender = broadcast::Sender<Event>;

/// Waits at most `limit` for the first event `matches` accepts, skipping the others (and any
/// missed while lagging). `None` when the time is up or the channel closed.
pub async fn wait_for(
    rx: &mut broadcast::Receiver<Event>,
    limit: std::time::Duration,
    mut matches: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    use broadcast::error::RecvError;
    let found = tokio::time::timeout(limit, async {
        loop {
            match rx.recv().await {
                Ok(e) if matches(&e) => return Some(e),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    found.await.ok().flatten()
}

/// A new event channel.
pub fn channel() -> EventSender {
    broadcast::channel(EVENT_BUFFER).0
}

impl Event {
    /// The event's kind, as named in `/events` and logs: `health`, `failover`, `reload`, `bgp`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Health(_) => "health",
            Event::Failover(_) => "failover",
            Event::Reload(_) => "reload",
            Event::Bgp(_) => "bgp",
        }
    }

    /// The event as a JSON object with an RFC 3339 timestamp.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let at = |t: &SystemTime| humantime::format_rfc3339_millis(*t).to_string();
        match self {
            Event::Health(e) => json!({
                "kind": "health", "at": at(&e.at), "pool": &*e.pool, "member": &*e.member,
                "from": e.from.as_str(), "to": e.to.as_str(), "reason": e.reason,
            }),
            Event::Failover(e) => json!({
                "kind": if e.to == Side::Backup { "failover" } else { "failback" },
                "at": at(&e.at), "service": &*e.service,
                "from": e.from.as_str(), "to": e.to.as_str(), "reason": e.reason,
                "local_healthy": e.local_healthy, "backup_healthy": e.backup_healthy,
            }),
            Event::Reload(e) => json!({
                "kind": "reload", "at": at(&e.at), "applied": e.applied,
                "generation": e.generation, "message": e.message,
            }),
            Event::Bgp(e) => json!({
                "kind": "bgp", "at": at(&e.at), "change": e.change, "peer": e.peer,
                "service": e.service, "prefix": e.prefix, "reason": e.reason,
            }),
        }
    }
}
