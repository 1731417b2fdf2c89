//! Which pool a service sends new connections to: the pure failover / failback decision.
//!
//! Inputs are the healthy counts of the local and backup pools, the service's settings and a
//! clock reading passed in; no I/O, no clock of its own. `auto` fails over at once when the
//! local pool has fewer than `min_healthy` members up, and fails back only after the local pool
//! has stayed at or above `min_healthy` for `failback_after` without interruption; any dip
//! restarts that wait (no flapping). `local` and `remote` pin the choice whatever the health.
//! Existing connections are not this module's business: it only steers new ones.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::FailoverMode;

/// The pool new connections go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Side {
    Local = 0,
    Backup = 1,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Backup => "backup",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the decision looks at, read from the routing snapshot and the service's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub mode: FailoverMode,
    /// Whether the service has a `backup_pool`.
    pub has_backup: bool,
    pub local_healthy: usize,
    pub backup_healthy: usize,
    pub min_healthy: usize,
    pub failback_after: Duration,
}

/// A change of side, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Side,
    pub to: Side,
    pub reason: String,
}

/// The failover state of one service. Survives reloads that keep the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    side: Side,
    since: Instant,
    /// Since when the local pool has been at or above `min_healthy` without a dip; `None`
    /// while it is below. Tracked in every mode, so leaving a drill for `auto` returns to a
    /// local pool that has been healthy long enough without another wait.
    local_ok_since: Option<Instant>,
    /// The local pool has never been below `min_healthy` since the service started: leaving a
    /// drill then returns at once, since there was no failure to hold down after.
    local_never_failed: bool,
    reason: String,
}

impl Failover {
    /// A service that starts on its local pool at `now`. Call [`Failover::update`] with the
    /// first health round's counts before routing: a local pool that starts below
    /// `min_healthy` fails over at once.
    pub fn new(now: Instant) -> Failover {
        Failover {
            side: Side::Local,
            since: now,
            local_ok_since: None,
            local_never_failed: true,
            reason: "start".to_string(),
        }
    }

    /// The side new connections go to.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Since when that side has been active.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why that side is active.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When, with the local pool staying healthy, `auto` would fail back; `None` when no
    /// failback is pending.
    pub fn failback_at(&self, inputs: &Inputs) -> Option<Instant> {
        if self.local_never_failed {
            return None;
        }
        match (self.side, inputs.mode, self.local_ok_since) {
            (Side::Backup, FailoverMode::Auto, Some(ok)) => Some(ok + inputs.failback_after),
            _ => None,
        }
    }

    /// Re-evaluates with the current inputs at `now`; returns the transition if the side
    /// changed.
    pub fn update(&mut self, inputs: &Inputs, now: Instant) -> Option<Transition> {
        let local_ok = inputs.local_healthy >= inputs.min_healthy;
        if !local_ok {
            self.local_ok_since = None;
            self.local_never_failed = false;
        } else if self.local_ok_since.is_none() {
            self.local_ok_since = Some(now);
        }
        let counts = format!(
            "local {} healthy (min_healthy {}), backup {} healthy",
            inputs.local_healthy, inputs.min_healthy, inputs.backup_healthy
        );
        let (want, reason) = match (inputs.mode, inputs.has_backup) {
            (_, false) => (Side::Local, "no backup pool".to_string()),
            (FailoverMode::Local, true) => (Side::Local, "pinned to local by config".to_string()),
            (FailoverMode::Remote, true) => {
                (Side::Backup, "pinned to remote by config".to_string())
            }
            (FailoverMode::Auto, true) => match self.side {
                Side::Local if !local_ok => (
                    Side::Backup,
                    format!("local pool below min_healthy: {counts}"),
                ),
                Side::Local => (Side::Local, self.reason.clone()),
                Side::Backup => match self.local_ok_since {
                    Some(_) if self.local_never_failed => (
                        Side::Local,
                        format!("back to auto; the local pool never failed: {counts}"),
                    ),
                    Some(ok) if now.duration_since(ok) >= inputs.failback_after => (
                        Side::Local,
                        format!(
                            "local pool healthy for {}: {counts}",
                            humantime::format_duration(inputs.failback_after)
                        ),
                    ),
                    _ => (Side::Backup, self.reason.clone()),
                },
            },
        };
        if want == self.side {
            return None;
        }
        let from = self.side;
        self.side = want;
        self.since = now;
        self.reason = reason.clone();
        Some(Transition {
            from,
            to: want,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(mode: FailoverMode, local: usize) -> Inputs {
        Inputs {
            mode,
            has_backup: true,
            local_healthy: local,
            backup_healthy: 3,
            min_healthy: 2,
            failback_after: Duration::from_secs(60),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn fails_over_at_once_below_min_healthy() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        assert_eq!(f.update(&inputs(FailoverMode::Auto, 3), t0), None);
        assert_eq!(f.update(&inputs(FailoverMode::Auto, 2), t0 + secs(1)), None);
        let t = f
            .update(&inputs(FailoverMode::Auto, 1), t0 + secs(2))
            .expect("fails over");
        assert_eq!((t.from, t.to), (Side::Local, Side::Backup));
        assert!(t.reason.contains("below min_healthy"), "{}", t.reason);
        assert_eq!(f.since(), t0 + secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn starts_on_backup_when_local_starts_down() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        let t = f
            .update(&inputs(FailoverMode::Auto, 0), t0)
            .expect("fails over");
        assert_eq!(t.to, Side::Backup);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_back_only_after_hold_down_and_a_flap_restarts_it() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        f.update(&inputs(FailoverMode::Auto, 0), t0);
        // Local healthy again at 10 s.
        assert_eq!(
            f.update(&inputs(FailoverMode::Auto, 3), t0 + secs(10)),
            None
        );
        assert_eq!(
            f.failback_at(&inputs(FailoverMode::Auto, 3)),
            Some(t0 + secs(70))
        );
        assert_eq!(
            f.update(&inputs(FailoverMode::Auto, 3), t0 + secs(69)),
            None
        );
        // A dip at 69 s restarts the wait.
        assert_eq!(
            f.update(&inputs(FailoverMode::Auto, 1), t0 + secs(69)),
            None
        );
        assert_eq!(f.failback_at(&inputs(FailoverMode::Auto, 1)), None);
        assert_eq!(
            f.update(&inputs(FailoverMode::Auto, 2), t0 + secs(80)),
            None
        );
        assert_eq!(
            f.update(&inputs(FailoverMode::Auto, 2), t0 + secs(139)),
            None
        );
        let t = f
            .update(&inputs(FailoverMode::Auto, 2), t0 + secs(140))
            .expect("fails back");
        assert_eq!((t.from, t.to), (Side::Backup, Side::Local));
        assert!(t.reason.contains("healthy for 1m"), "{}", t.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_modes_ignore_health() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        let t = f
            .update(&inputs(FailoverMode::Remote, 3), t0)
            .expect("drill");
        assert_eq!(t.to, Side::Backup);
        assert_eq!(t.reason, "pinned to remote by config");
        assert_eq!(
            f.update(&inputs(FailoverMode::Remote, 0), t0 + secs(1)),
            None
        );
        let t = f
            .update(&inputs(FailoverMode::Local, 0), t0 + secs(2))
            .expect("pin local");
        assert_eq!(t.to, Side::Local);
        assert_eq!(
            f.update(&inputs(FailoverMode::Local, 0), t0 + secs(500)),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_a_drill_returns_at_once_when_local_never_failed() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        f.update(&inputs(FailoverMode::Remote, 3), t0);
        let t = f
            .update(&inputs(FailoverMode::Auto, 3), t0 + secs(1))
            .expect("back to local");
        assert_eq!(t.to, Side::Local);
        assert!(t.reason.contains("never failed"), "{}", t.reason);
        // But if the local pool only just recovered, auto waits out the hold-down.
        let mut g = Failover::new(t0);
        g.update(&inputs(FailoverMode::Remote, 0), t0);
        g.update(&inputs(FailoverMode::Remote, 3), t0 + secs(100));
        assert_eq!(
            g.update(&inputs(FailoverMode::Auto, 3), t0 + secs(120)),
            None
        );
        assert!(
            g.update(&inputs(FailoverMode::Auto, 3), t0 + secs(160))
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_backup_means_local_always() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        let mut i = inputs(FailoverMode::Auto, 0);
        i.has_backup = false;
        assert_eq!(f.update(&i, t0), None);
        assert_eq!(f.side(), Side::Local);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_hold_down_fails_back_on_the_first_healthy_update() {
        let t0 = Instant::now();
        let mut f = Failover::new(t0);
        let mut i = inputs(FailoverMode::Auto, 0);
        i.failback_after = Duration::ZERO;
        f.update(&i, t0);
        i.local_healthy = 2;
        assert_eq!(f.update(&i, t0 + secs(1)).map(|t| t.to), Some(Side::Local));
    }
}
