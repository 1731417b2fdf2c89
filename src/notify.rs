//! systemd's notify protocol (`Type=notify`, see sd_notify(3)): tells the service manager when
//! tandem is ready, reloading, stopping, and that it is still alive (watchdog).
//!
//! What each message says is decided by pure functions ([`ready`], [`reloading`], [`stopping`],
//! [`watchdog_ping_interval`]); [`Notifier`] only sends them, through the `sd-notify` crate.
//! When `NOTIFY_SOCKET` is unset (not started by systemd) nothing is sent and nothing fails.
//! A failed send is logged and otherwise ignored: the balancer never stops serving because the
//! service manager could not be told something.
//!
//! The order tandem follows:
//! - `READY=1` (with `MAINPID`) once the listeners accept, which is after the first round of
//!   health checks, so systemd (and everything ordered `After=tandem.service`) never sees a
//!   balancer that routes on unknown health;
//! - `RELOADING=1` with `MONOTONIC_USEC` before each reload, then `READY=1` when it is over,
//!   applied or rejected (`Type=notify-reload` on systemd 253+ requires `MONOTONIC_USEC`);
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` when the unit sets `WatchdogSec=`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The states sent when tandem is serving: at start (after the first health round) and after a
/// reload. `pid` is this process's id.
pub fn ready(pid: u32, status: &str) -> Vec<NotifyState<'_>> {
    vec![
        NotifyState::Ready,
        NotifyState::MainPid(pid),
        NotifyState::Status(status),
    ]
}

/// The states sent before a reload; `monotonic_usec` is `CLOCK_MONOTONIC` in microseconds, read
/// just before the reload starts.
pub fn reloading(monotonic_usec: i128) -> Vec<NotifyState<'static>> {
    vec![
        NotifyState::Reloading,
        NotifyState::MonotonicUsec(monotonic_usec),
        NotifyState::Status("reloading the config"),
    ]
}

/// The states sent when shutdown begins.
pub fn stopping() -> Vec<NotifyState<'static>> {
    vec![
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining connections"),
    ]
}

/// The datagram systemd receives for `states`: one `KEY=VALUE` per line (what sd-notify sends).
pub fn message(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// How often to ping for a watchdog timeout of `watchdog`: half of it, as sd_watchdog_enabled(3)
/// recommends, so one late ping never trips it. Never below 1 ms.
pub fn watchdog_ping_interval(watchdog: Duration) -> Duration {
    (watchdog / 2).max(Duration::from_millis(1))
}

/// Sends notifications to systemd when started by it; does nothing otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for this process: enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// Whether notifications are sent at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `READY=1`: listeners accept and the first health round is done (or a reload is over).
    pub fn ready(&self, status: &str) {
        self.send("READY", &ready(std::process::id(), status));
    }

    /// `RELOADING=1` with the current `MONOTONIC_USEC`.
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(NotifyState::MonotonicUsec(usec)) => self.send("RELOADING", &reloading(usec)),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read CLOCK_MONOTONIC; RELOADING=1 not sent"),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING", &stopping());
    }

    /// Starts pinging the watchdog when the unit set `WatchdogSec=` (`WATCHDOG_USEC` in the
    /// environment, for this process) until [`Watchdog::stop`]. The pings come from a task on the
    /// runtime, so a runtime that stops making progress stops them, and systemd restarts the
    /// service.
    pub fn start_watchdog(&self) -> Watchdog {
        let stop = CancellationToken::new();
        let task = self.spawn_watchdog(stop.clone());
        Watchdog { stop, task }
    }

    fn spawn_watchdog(&self, stop: CancellationToken) -> Option<JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let every = watchdog_ping_interval(sd_notify::watchdog_enabled()?);
        debug!(
            every_ms = every.as_millis() as u64,
            "pinging the systemd watchdog"
        );
        let notifier = *self;
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => notifier.send("WATCHDOG", &[NotifyState::Watchdog]),
                    _ = stop.cancelled() => return,
                }
            }
        }))
    }

    fn send(&self, what: &str, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            warn!(error = %e, notification = what, "cannot notify systemd");
        }
    }
}

/// The watchdog pinger started by [`Notifier::start_watchdog`] (idle when systemd asked for
/// none). Dropping it leaves the pings running: stop it once the drain is over.
#[derive(Debug)]
pub struct Watchdog {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Stops the pings and waits for the pinging task to end.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_names_the_main_pid() {
        assert_eq!(
            message(&ready(4242, "serving 3 services")),
            "READY=1\nMAINPID=4242\nSTATUS=serving 3 services\n"
        );
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        assert_eq!(
            message(&reloading(123_456_789)),
            "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading the config\n"
        );
    }

    #[test]
    fn stopping_says_so() {
        assert!(message(&stopping()).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout() {
        assert_eq!(
            watchdog_ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            watchdog_ping_interval(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }
}
