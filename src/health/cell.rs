//! The published health of one member: written by its checks and by the proxy's passive
//! detection, read lock-free by the proxy on every new connection.
//!
//! Lives inside the routing snapshot next to the member, so a reader never sees a member without
//! its health. The verdict is one atomic; per-check details (last result and reason, for
//! status) sit behind a mutex that is never held across an `.await` and never touched by the
//! per-connection path except on a failed connect.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::state::Verdict;
use crate::events::{Event, EventSender, HealthEvent};

/// The last result of one check, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDetail {
    pub verdict: Verdict,
    /// Whether the last probe passed.
    pub last_ok: Option<bool>,
    pub reason: String,
    pub at: Option<SystemTime>,
    pub took: Duration,
}

/// Traffic counters of one member, kept with its health across reloads.
#[derive(Debug, Default)]
pub struct MemberTraffic {
    /// Connections (TCP) relayed to the member since it was configured.
    pub connections: AtomicU64,
    /// Connections relayed to it now.
    pub active: AtomicU64,
    pub bytes_to_member: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// Health of one member of one pool.
#[derive(Debug)]
pub struct MemberHealth {
    /// Traffic counters, for metrics and status.
    pub traffic: MemberTraffic,
    pool: Arc<str>,
    member: Arc<str>,
    verdict: AtomicU8,
    checks: Box<[AtomicU8]>,
    passive_down: AtomicBool,
    connect_failures: AtomicU32,
    /// Consecutive failed connects that take the member down (the pool's smallest `fall`).
    passive_fall: u32,
    details: Mutex<Vec<CheckDetail>>,
    /// Serialises verdict changes so two checks finishing together log one transition each.
    publish: Mutex<()>,
    events: EventSender,
    /// Woken when passive detection takes the member down (recovery probing starts).
    passive_wake: Notify,
}

impl MemberHealth {
    /// Health of a member with `checks` checks. Without checks the member starts up (it is
    /// trusted until connects fail, as HAProxy treats servers without `check`); with checks it
    /// starts unknown until its first probe result.
    pub fn new(
        pool: Arc<str>,
        member: Arc<str>,
        checks: usize,
        passive_fall: u32,
        events: EventSender,
    ) -> MemberHealth {
        let initial = if checks == 0 {
            Verdict::Up
        } else {
            Verdict::Unknown
        };
        let detail = CheckDetail {
            verdict: Verdict::Unknown,
            last_ok: None,
            reason: "not checked yet".to_string(),
            at: None,
            took: Duration::ZERO,
        };
        MemberHealth {
            traffic: MemberTraffic::default(),
            pool,
            member,
            verdict: AtomicU8::new(initial as u8),
            checks: (0..checks)
                .map(|_| AtomicU8::new(Verdict::Unknown as u8))
                .collect(),
            passive_down: AtomicBool::new(false),
            connect_failures: AtomicU32::new(0),
            passive_fall: passive_fall.max(1),
            details: Mutex::new(vec![detail; checks]),
            publish: Mutex::new(()),
            events,
            passive_wake: Notify::new(),
        }
    }

    /// The member's identity.
    pub fn member(&self) -> &Arc<str> {
        &self.member
    }

    /// The pool's name.
    pub fn pool(&self) -> &Arc<str> {
        &self.pool
    }

    /// The combined verdict: down if any check (or passive detection) says down, unknown while
    /// any check has no result, else up.
    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Acquire))
    }

    /// The verdict of check `index` (unknown when out of range).
    pub fn check_verdict(&self, index: usize) -> Verdict {
        self.checks.get(index).map_or(Verdict::Unknown, |c| {
            Verdict::from_u8(c.load(Ordering::Acquire))
        })
    }

    /// Whether passive detection has taken the member down (an active probe must clear it).
    pub fn passive_down(&self) -> bool {
        self.passive_down.load(Ordering::Acquire)
    }

    /// Per-check details, in config order.
    pub fn details(&self) -> Vec<CheckDetail> {
        self.details.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Records the outcome of a probe of check `index` whose machine now says `check_verdict`.
    pub fn record_check(
        &self,
        index: usize,
        check_verdict: Verdict,
        ok: bool,
        reason: &str,
        took: Duration,
    ) {
        if let Ok(mut details) = self.details.lock()
            && let Some(d) = details.get_mut(index)
        {
            d.verdict = check_verdict;
            d.last_ok = Some(ok);
            d.reason.clear();
            d.reason.push_str(reason);
            d.at = Some(SystemTime::now());
            d.took = took;
        }
        if let Some(slot) = self.checks.get(index) {
            slot.store(check_verdict as u8, Ordering::Release);
        }
        self.publish(reason);
    }

    /// A recovery probe (pool without checks) saw the member answer `rise` times in a row.
    pub fn recovered(&self, reason: &str) {
        self.clear_passive();
        self.publish(reason);
    }

    /// Clears passive detection; called when an active check comes back up.
    pub fn clear_passive(&self) {
        self.passive_down.store(false, Ordering::Release);
        self.connect_failures.store(0, Ordering::Relaxed);
    }

    /// The proxy connected to the member: the failure streak ends.
    pub fn connect_succeeded(&self) {
        // Read first: the common case (no streak) then costs no write to a shared line.
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The proxy failed to connect (refused or timed out). After `fall` in a row the member is
    /// down at once; only an active probe brings it back.
    pub fn connect_failed(&self) {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.passive_fall && !self.passive_down.swap(true, Ordering::AcqRel) {
            self.publish(&format!("passive: {n} failed connects in a row"));
            self.passive_wake.notify_one();
        }
    }

    /// Resolves when passive detection next takes the member down.
    pub async fn passive_down_event(&self) {
        if self.passive_down() {
            return;
        }
        self.passive_wake.notified().await;
    }

    fn combined(&self) -> Verdict {
        if self.passive_down() {
            return Verdict::Down;
        }
        let mut out = Verdict::Up;
        for c in self.checks.iter() {
            match Verdict::from_u8(c.load(Ordering::Acquire)) {
                Verdict::Down => return Verdict::Down,
                Verdict::Unknown => out = Verdict::Unknown,
                Verdict::Up => {}
            }
        }
        out
    }

    fn publish(&self, reason: &str) {
        let _guard = self.publish.lock();
        let to = self.combined();
        let from = Verdict::from_u8(self.verdict.swap(to as u8, Ordering::AcqRel));
        if from == to {
            return;
        }
        if to == Verdict::Down {
            warn!(pool = %self.pool, member = %self.member, from = %from, to = %to, reason, "member health changed");
        } else {
            info!(pool = %self.pool, member = %self.member, from = %from, to = %to, reason, "member health changed");
        }
        // No listener is fine: events are for whoever cares.
        let _ = self.events.send(Event::Health(HealthEvent {
            pool: self.pool.clone(),
            member: self.member.clone(),
            from,
            to,
            reason: reason.to_string(),
            at: SystemTime::now(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(checks: usize) -> (MemberHealth, tokio::sync::broadcast::Receiver<Event>) {
        let events = crate::events::channel();
        let rx = events.subscribe();
        (
            MemberHealth::new(Arc::from("p"), Arc::from("127.0.1.1:80"), checks, 3, events),
            rx,
        )
    }

    #[test]
    fn member_is_up_only_when_every_check_is() {
        let (h, mut rx) = cell(2);
        assert_eq!(h.verdict(), Verdict::Unknown);
        h.record_check(0, Verdict::Up, true, "ok", Duration::ZERO);
        assert_eq!(h.verdict(), Verdict::Unknown, "second check still unknown");
        h.record_check(1, Verdict::Up, true, "ok", Duration::ZERO);
        assert_eq!(h.verdict(), Verdict::Up);
        h.record_check(1, Verdict::Down, false, "HTTP 500", Duration::ZERO);
        assert_eq!(h.verdict(), Verdict::Down);
        assert_eq!(h.details()[1].reason, "HTTP 500");
        let mut seen = Vec::new();
        while let Ok(Event::Health(e)) = rx.try_recv() {
            seen.push((e.from, e.to));
        }
        assert_eq!(
            seen,
            vec![
                (Verdict::Unknown, Verdict::Up),
                (Verdict::Up, Verdict::Down)
            ]
        );
    }

    #[test]
    fn passive_failures_take_it_down_and_a_success_resets_the_streak() {
        let (h, _rx) = cell(0);
        assert_eq!(h.verdict(), Verdict::Up, "no checks: trusted");
        h.connect_failed();
        h.connect_failed();
        h.connect_succeeded();
        h.connect_failed();
        h.connect_failed();
        assert_eq!(h.verdict(), Verdict::Up);
        h.connect_failed();
        assert_eq!(h.verdict(), Verdict::Down);
        assert!(h.passive_down());
        h.recovered("tcp: connected");
        assert_eq!(h.verdict(), Verdict::Up);
    }
}
