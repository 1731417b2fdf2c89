//! Transitions worth telling an operator about, broadcast to whoever listens (the admin
//! `/events` stream, tests, the demo). Sending never blocks: a slow listener misses events
//! (it sees `Lagged`), the data path never waits for it.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::health::state::Verdict;

/// Events kept for listeners that fall behind before the oldest is dropped.
pub const EVENT_BUFFER: usize = 1024;

/// One transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member's combined health verdict changed.
    Health(HealthEvent),
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

/// A new event channel.
pub fn channel() -> EventSender {
    broadcast::channel(EVENT_BUFFER).0
}
