//! Errors that are this machine's, not a member's: no ephemeral port or source address left, no
//! descriptor, no memory. They say nothing about the member that was being reached, so the data
//! path and the health checks must not count them against it: a member blamed for tandem's own
//! exhaustion would be taken down, its clients moved onto the others, which are then exhausted
//! in turn.
//!
//! This module classifies an `io::Error`, counts by reason, and rate-limits the warning (under
//! exhaustion every new connection fails the same way; one line per failure would flood the
//! journal exactly when the operator needs it). Sits below `health` and `proxy`; performs no I/O.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use tokio::time::Instant;

/// Why a connect or bind failed on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    /// No ephemeral port left towards that member (EADDRNOTAVAIL at connect, EADDRINUSE at an
    /// implicit bind), or a configured source address that is not (or no longer) on this
    /// machine. Remedy: a source pool (`source = [...]`) or a wider `ip_local_port_range`.
    Ports,
    /// The process or the system is out of file descriptors (EMFILE, ENFILE).
    Descriptors,
    /// The kernel is out of memory or socket buffers (ENOMEM, ENOBUFS).
    Memory,
}

impl LocalReason {
    /// Every reason, in the order of [`LocalErrors`]' slots.
    pub const ALL: [LocalReason; 3] = [
        LocalReason::Ports,
        LocalReason::Descriptors,
        LocalReason::Memory,
    ];

    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReason::Ports => "ports",
            LocalReason::Descriptors => "descriptors",
            LocalReason::Memory => "memory",
        }
    }

    /// What the operator can do about it, for the log line.
    pub fn remedy(self) -> &'static str {
        match self {
            LocalReason::Ports => {
                "no local port or source address left towards the member: add source addresses \
                 (service `source = [..]`) or widen net.ipv4.ip_local_port_range"
            }
            LocalReason::Descriptors => "out of file descriptors: raise LimitNOFILE / ulimit -n",
            LocalReason::Memory => "the kernel is out of memory or socket buffers",
        }
    }
}

impl fmt::Display for LocalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local reason for `e`, or `None` when the error may well be the member's (refused,
/// unreachable, timed out, reset).
pub fn classify(e: &io::Error) -> Option<LocalReason> {
    let errno = Errno::from_raw_os_error(e.raw_os_error()?);
    if errno == Errno::ADDRNOTAVAIL || errno == Errno::ADDRINUSE {
        Some(LocalReason::Ports)
    } else if errno == Errno::MFILE || errno == Errno::NFILE {
        Some(LocalReason::Descriptors)
    } else if errno == Errno::NOMEM || errno == Errno::NOBUFS {
        Some(LocalReason::Memory)
    } else {
        None
    }
}

/// A local failure with the error it came from.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {source}")]
pub struct LocalError {
    pub reason: LocalReason,
    #[source]
    pub source: io::Error,
}

impl LocalError {
    /// `e` as a local error, or `e` back when it may be the peer's.
    pub fn from_io(e: io::Error) -> Result<LocalError, io::Error> {
        match classify(&e) {
            Some(reason) => Ok(LocalError { reason, source: e }),
            None => Err(e),
        }
    }
}

/// Local errors counted by reason (one relaxed atomic each).
#[derive(Debug, Default)]
pub struct LocalErrors {
    counts: [AtomicU64; LocalReason::ALL.len()],
    log: RateLimit,
}

impl LocalErrors {
    /// Counts one error of `reason`; returns how many were not logged since the last logged one
    /// when this one should be logged now (at most one line per [`LOG_EVERY`]), else `None`.
    pub fn record(&self, reason: LocalReason) -> Option<u64> {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.log.allow()
    }

    /// How many errors of `reason` so far.
    pub fn count(&self, reason: LocalReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// All reasons with their counts.
    pub fn counts(&self) -> [(LocalReason, u64); 3] {
        LocalReason::ALL.map(|r| (r, self.count(r)))
    }
}

/// At most one log line per this period per counter set.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets one event through per [`LOG_EVERY`] and counts the ones it held back. Lock-free; under a
/// race two callers may both be let through, which only costs a line.
#[derive(Debug)]
pub struct RateLimit {
    origin: Instant,
    /// When the last line was let through (ms since `origin`, plus one so 0 means never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl RateLimit {
    /// `Some(suppressed since the last line)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_EVERY.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_local_and_a_refusal_is_not() {
        let err = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert_eq!(
            classify(&err(Errno::ADDRNOTAVAIL)),
            Some(LocalReason::Ports)
        );
        assert_eq!(classify(&err(Errno::ADDRINUSE)), Some(LocalReason::Ports));
        assert_eq!(classify(&err(Errno::MFILE)), Some(LocalReason::Descriptors));
        assert_eq!(classify(&err(Errno::NFILE)), Some(LocalReason::Descriptors));
        assert_eq!(classify(&err(Errno::NOBUFS)), Some(LocalReason::Memory));
        assert_eq!(classify(&err(Errno::NOMEM)), Some(LocalReason::Memory));
        for member_fault in [
            Errno::CONNREFUSED,
            Errno::TIMEDOUT,
            Errno::HOSTUNREACH,
            Errno::NETUNREACH,
            Errno::CONNRESET,
        ] {
            assert_eq!(classify(&err(member_fault)), None, "{member_fault:?}");
        }
        assert_eq!(classify(&io::Error::other("no errno")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_with_the_count_held_back() {
        let errors = LocalErrors::default();
        assert_eq!(errors.record(LocalReason::Ports), Some(0));
        for _ in 0..5 {
            assert_eq!(errors.record(LocalReason::Ports), None);
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(errors.record(LocalReason::Descriptors), Some(5));
        assert_eq!(errors.count(LocalReason::Ports), 6);
        assert_eq!(errors.count(LocalReason::Descriptors), 1);
        assert_eq!(errors.count(LocalReason::Memory), 0);
    }
}
