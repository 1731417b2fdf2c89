//! The health-check loops: one task per (member, check), plus a recovery task per member of a
//! pool without checks. Each probes, feeds the rise/fall machine and publishes the verdict into
//! the member's [`MemberHealth`] in the routing snapshot. Never touches the data path.
//!
//! Layering: the checker sits below routing and metrics. It is handed a [`PoolChecks`] (built by
//! `pool` from its pool) and a set of [`CheckInstruments`] (built by `crate::metrics`), and
//! imports neither, so changing how pools are routed or metrics rendered never reaches here.
//!
//! Timing: every member is probed at once at start (the first round, which gates readiness);
//! the second probe comes one interval plus a per-member phase of up to 10% of the interval
//! later, so the checks of many members spread out instead of firing together; after that probes
//! start every `interval`. A member that dies is therefore seen down at most
//! `fall x interval + timeout` after its last good probe began (plus the phase, once).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::cell::MemberHealth;
use super::probe::{ProbeOutcome, ProbeSetupError, Prober};
use super::state::{RiseFall, Verdict};
use crate::config::{
    Check, CheckKind, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FALL, DEFAULT_RISE,
    MemberAddr, OperatorState,
};
use crate::local_error::{LocalError, RateLimit};

/// Something that can probe a member: the real [`Prober`], or a scripted one in tests.
///
/// `Err` is a failure of this machine to open the probe's socket: no verdict on the member.
pub trait Probe: Send + Sync + 'static {
    fn probe(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = Result<ProbeOutcome, LocalError>> + Send;
}

impl Probe for Prober {
    fn probe(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = Result<ProbeOutcome, LocalError>> + Send {
        Prober::try_probe(self, addr)
    }
}

/// One pool as its check loops see it: the checks to run and the members to run them on.
///
/// The routing layer builds it from its pool (`pool::PoolState::check_targets`); the checker
/// takes this instead of the pool so that health sits below routing and never imports it.
#[derive(Debug)]
pub struct PoolChecks<'a> {
    /// Pool name, for logs.
    pub name: &'a str,
    /// The pool's checks; none means recovery probing only (see [`spawn_pool`]).
    pub checks: &'a [Check],
    pub members: Vec<CheckedMember>,
}

/// One member of a [`PoolChecks`].
#[derive(Debug, Clone)]
pub struct CheckedMember {
    /// Where to probe: the member's IP, and its port unless the check names one.
    pub addr: MemberAddr,
    /// Members in maintenance are not probed at all.
    pub operator: OperatorState,
    /// Where verdicts are published; the same cell the routing snapshot reads.
    pub health: Arc<MemberHealth>,
}

/// The metric handles a pool's check loops record into, resolved once per pool.
///
/// Plain handles of the `metrics` crate, so the checker does not depend on the module that
/// registers and renders them (`crate::metrics` builds these, one set per pool).
#[derive(Debug, Clone)]
pub struct CheckInstruments {
    /// Probes that passed.
    pub passed: Counter,
    /// Probes that failed (refused, timed out, wrong answer).
    pub failed: Counter,
    /// Probe duration, in seconds.
    pub duration: Histogram,
    /// Probes that could not run because this machine was out of ports, descriptors or memory
    /// (no verdict: the member keeps its state).
    pub local_errors: Counter,
    /// Keeps the warning about those to one line per period for the pool.
    pub local_log: Arc<RateLimit>,
}

impl CheckInstruments {
    /// Handles that record nowhere (unit tests).
    pub fn noop() -> CheckInstruments {
        CheckInstruments {
            passed: Counter::noop(),
            failed: Counter::noop(),
            duration: Histogram::noop(),
            local_errors: Counter::noop(),
            local_log: Arc::default(),
        }
    }
}

/// Timing of one check loop.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Extra delay before the second probe, to spread members apart.
    pub phase: Duration,
}

impl Timing {
    /// The timing of `check` for the member with identity `member`; the phase is derived from
    /// the identity (deterministic, no process-random state).
    pub fn of(check: &Check, member: &str, index: usize) -> Timing {
        let tenth = check.interval.as_nanos() as u64 / 10;
        let phase = if tenth == 0 {
            0
        } else {
            xxh3_64_with_seed(member.as_bytes(), index as u64) % tenth
        };
        Timing {
            interval: check.interval,
            rise: check.rise,
            fall: check.fall,
            phase: Duration::from_nanos(phase),
        }
    }
}

/// Resolves when every check has produced its first result.
#[derive(Default)]
pub struct FirstRound {
    pending: Vec<oneshot::Receiver<()>>,
    /// The longest check timeout: the first round cannot take longer than this (plus scheduling).
    pub bound: Duration,
}

impl FirstRound {
    /// Adds another pool's first round to this one.
    pub fn merge(&mut self, other: FirstRound) {
        self.pending.extend(other.pending);
        self.bound = self.bound.max(other.bound);
    }

    /// Waits for the first round, at most `bound` plus a second of slack; returns whether every
    /// check reported.
    pub async fn wait(self) -> bool {
        let all = async {
            for rx in self.pending {
                // A dropped sender (task stopped) counts as done: nothing more will come.
                let _ = rx.await;
            }
        };
        tokio::time::timeout(self.bound + Duration::from_secs(1), all)
            .await
            .is_ok()
    }
}

/// Starts the check loops of every member of `pool` (and recovery loops when the pool has no
/// checks) on `tasks`; they stop when `stop` fires. Loops of members whose health carried over
/// from a previous config resume from its verdicts, so a reload does not reset hysteresis.
pub fn spawn_pool(
    pool: &PoolChecks<'_>,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
    instruments: &CheckInstruments,
) -> Result<FirstRound, ProbeSetupError> {
    let mut round = FirstRound::default();
    let probers = pool
        .checks
        .iter()
        .map(|c| Prober::new(c).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let recovery = if pool.checks.is_empty() {
        Some(Arc::new(Prober::new(&recovery_check())?))
    } else {
        None
    };
    for member in &pool.members {
        if member.operator == OperatorState::Maint {
            continue; // maintenance: no probes at all
        }
        if let Some(prober) = &recovery {
            let addr = member.addr.socket_addr(0);
            if addr.port() != 0 {
                tasks.spawn(recovery_loop(
                    member.health.clone(),
                    prober.clone(),
                    addr,
                    stop.clone(),
                ));
            }
            continue;
        }
        for (index, (check, prober)) in pool.checks.iter().zip(&probers).enumerate() {
            let Some(port) = check.port.or(member.addr.port) else {
                // Validation requires a port for portless members; never reached.
                warn!(pool = %pool.name, member = %member.addr, "check has no port to probe");
                continue;
            };
            let addr = SocketAddr::new(member.addr.ip, port);
            let (tx, rx) = oneshot::channel();
            round.pending.push(rx);
            round.bound = round.bound.max(check.timeout);
            tasks.spawn(check_loop(
                member.health.clone(),
                index,
                Timing::of(check, member.health.member(), index),
                prober.clone(),
                addr,
                Some(tx),
                instruments.clone(),
                stop.clone(),
            ));
        }
    }
    Ok(round)
}

/// The implicit check that brings back a passively-downed member of a pool without checks.
fn recovery_check() -> Check {
    Check {
        kind: CheckKind::Tcp,
        port: None,
        interval: DEFAULT_CHECK_INTERVAL,
        timeout: DEFAULT_CHECK_TIMEOUT,
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
    }
}

// Eight arguments: each is one independent thing the loop needs, and a struct holding them
// would only be built to be taken apart again here.
#[allow(clippy::too_many_arguments)]
/// Probes check `index` of one member forever (until `stop`), publishing each result.
pub async fn check_loop<P: Probe>(
    health: Arc<MemberHealth>,
    index: usize,
    timing: Timing,
    prober: Arc<P>,
    addr: SocketAddr,
    mut first_round: Option<oneshot::Sender<()>>,
    instruments: CheckInstruments,
    stop: CancellationToken,
) {
    let mut machine = RiseFall::resume(timing.rise, timing.fall, health.check_verdict(index));
    let mut next = Instant::now();
    let mut phase = timing.phase;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            o = prober.probe(addr) => o,
            _ = stop.cancelled() => return,
        };
        let outcome = match outcome {
            Ok(outcome) => Some(outcome),
            Err(local) => {
                // Tandem's own exhaustion says nothing about the member: no result is recorded,
                // so the machine (and the verdict) stay as they were until a probe can run.
                instruments.local_errors.increment(1);
                if let Some(suppressed) = instruments.local_log.allow() {
                    warn!(pool = %health.pool(), member = %health.member(), reason = %local.reason,
                          error = %local.source, suppressed, remedy = local.reason.remedy(),
                          "health probe could not run; member state kept");
                }
                None
            }
        };
        if let Some(outcome) = outcome {
            record(
                &health,
                index,
                &mut machine,
                &outcome,
                started,
                &instruments,
            );
        }
        if let Some(tx) = first_round.take() {
            let _ = tx.send(());
        }

        next += timing.interval + std::mem::take(&mut phase);
        // A probe that overran (timeout > interval) is followed at once, not in a burst.
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Feeds one probe result to the check's machine and publishes it.
fn record(
    health: &MemberHealth,
    index: usize,
    machine: &mut RiseFall,
    outcome: &ProbeOutcome,
    started: Instant,
    instruments: &CheckInstruments,
) {
    // Passive detection may have taken the member down since the last probe: this check
    // must then see `rise` successes again before the member returns.
    if machine.record_after_passive(outcome.ok, health.passive_down()) {
        health.clear_passive();
    }
    let took = started.elapsed();
    instruments.duration.record(took.as_secs_f64());
    if outcome.ok {
        instruments.passed.increment(1);
    } else {
        instruments.failed.increment(1);
    }
    health.record_check(index, machine.state(), outcome.ok, &outcome.reason, took);
}

/// For a member of a pool without checks: waits for passive detection to take it down, then
/// probes TCP every default interval until `rise` successes in a row bring it back.
async fn recovery_loop<P: Probe>(
    health: Arc<MemberHealth>,
    prober: Arc<P>,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = health.passive_down_event() => {}
            _ = stop.cancelled() => return,
        }
        let mut machine = RiseFall::new(DEFAULT_RISE, DEFAULT_FALL);
        machine.force_down();
        while health.passive_down() {
            tokio::select! {
                _ = tokio::time::sleep(DEFAULT_CHECK_INTERVAL) => {}
                _ = stop.cancelled() => return,
            }
            let outcome = tokio::select! {
                o = prober.probe(addr) => o,
                _ = stop.cancelled() => return,
            };
            // A local failure is no answer either way: wait for the next probe.
            let Ok(outcome) = outcome else { continue };
            if machine.record(outcome.ok) == Some(Verdict::Up) {
                health.recovered(&format!("recovery probe: {}", outcome.reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, HealthEvent};
    use std::sync::Mutex;

    /// Answers from a script, then repeats its last answer; records when each probe ran.
    struct Scripted {
        answers: Mutex<Vec<bool>>,
        times: Mutex<Vec<Instant>>,
    }

    impl Probe for Scripted {
        fn probe(
            &self,
            _addr: SocketAddr,
        ) -> impl Future<Output = Result<ProbeOutcome, LocalError>> + Send {
            let ok = {
                let mut a = self.answers.lock().expect("lock");
                if a.len() > 1 { a.remove(0) } else { a[0] }
            };
            self.times.lock().expect("lock").push(Instant::now());
            async move {
                Ok(ProbeOutcome {
                    ok,
                    reason: if ok { "ok".into() } else { "refused".into() },
                })
            }
        }
    }

    fn timing(interval_s: u64, rise: u32, fall: u32) -> Timing {
        Timing {
            interval: Duration::from_secs(interval_s),
            rise,
            fall,
            phase: Duration::ZERO,
        }
    }

    /// The next health event; a bounded (virtual) wait so a logic error fails instead of
    /// advancing the paused clock forever.
    async fn next_health(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> HealthEvent {
        match tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await {
            Ok(Ok(Event::Health(e))) => e,
            other => panic!("no health event within an hour of virtual time: {other:?}"),
        }
    }

    fn setup(
        answers: &str,
    ) -> (
        Arc<MemberHealth>,
        Arc<Scripted>,
        tokio::sync::broadcast::Receiver<Event>,
    ) {
        let events = crate::events::channel();
        let rx = events.subscribe();
        let health = Arc::new(MemberHealth::new(
            Arc::from("p"),
            Arc::from("m"),
            1,
            3,
            events,
        ));
        let prober = Arc::new(Scripted {
            answers: Mutex::new(answers.chars().map(|c| c == '+').collect()),
            times: Mutex::new(Vec::new()),
        });
        (health, prober, rx)
    }

    /// Runs check 0 of `health` on the scripted prober; cancelling the returned token stops it.
    fn spawn_check(
        health: &Arc<MemberHealth>,
        prober: &Arc<Scripted>,
        timing: Timing,
        first_round: Option<oneshot::Sender<()>>,
    ) -> CancellationToken {
        let stop = CancellationToken::new();
        tokio::spawn(check_loop(
            health.clone(),
            0,
            timing,
            prober.clone(),
            "127.0.1.1:1".parse().expect("addr"),
            first_round,
            CheckInstruments::noop(),
            stop.clone(),
        ));
        stop
    }

    #[tokio::test(start_paused = true)]
    async fn down_after_fall_intervals_and_up_after_rise() {
        // up, up, then dead for 3 probes, then back.
        let (health, prober, mut rx) = setup("++---++");
        let (tx, first) = oneshot::channel();
        let start = Instant::now();
        let stop = spawn_check(&health, &prober, timing(2, 2, 3), Some(tx));
        first.await.expect("first round");
        let e = next_health(&mut rx).await;
        assert_eq!(
            (e.to, start.elapsed()),
            (Verdict::Up, Duration::ZERO),
            "first result decides at once"
        );
        let e = next_health(&mut rx).await;
        // Probes at 0, 2, 4, 6, 8: failures at 4, 6, 8 -> down at the third, 8 s in.
        assert_eq!(
            (e.to, start.elapsed()),
            (Verdict::Down, Duration::from_secs(8))
        );
        assert_eq!(health.verdict(), Verdict::Down);
        let e = next_health(&mut rx).await;
        assert_eq!(
            (e.to, start.elapsed()),
            (Verdict::Up, Duration::from_secs(12))
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn passive_down_needs_rise_probes_to_return() {
        let (health, prober, mut rx) = setup("+");
        let start = Instant::now();
        let stop = spawn_check(&health, &prober, timing(2, 2, 3), None);
        assert_eq!(next_health(&mut rx).await.to, Verdict::Up);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            health.connect_failed();
        }
        let e = next_health(&mut rx).await;
        assert_eq!(e.to, Verdict::Down);
        assert!(e.reason.starts_with("passive"), "{}", e.reason);
        // Probes at 2 s (first success after passive down) and 4 s (second: rise = 2).
        let e = next_health(&mut rx).await;
        assert_eq!(
            (e.to, start.elapsed()),
            (Verdict::Up, Duration::from_secs(4))
        );
        assert!(!health.passive_down());
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn phase_delays_only_the_second_probe() {
        let (health, prober, _rx) = setup("+");
        let mut t = timing(2, 2, 3);
        t.phase = Duration::from_millis(150);
        let start = Instant::now();
        let stop = spawn_check(&health, &prober, t, None);
        tokio::time::sleep(Duration::from_millis(6500)).await;
        stop.cancel();
        let offsets: Vec<u128> = prober
            .times
            .lock()
            .expect("lock")
            .iter()
            .map(|t| (*t - start).as_millis())
            .collect();
        assert_eq!(offsets, vec![0, 2150, 4150, 6150]);
    }

    #[test]
    fn phase_is_deterministic_and_within_a_tenth() {
        let check = recovery_check();
        let a = Timing::of(&check, "10.1.0.11:5061", 0);
        let b = Timing::of(&check, "10.1.0.11:5061", 0);
        assert_eq!(a.phase, b.phase);
        assert!(a.phase < check.interval / 10);
        let phases: std::collections::HashSet<Duration> = (0..50)
            .map(|i| Timing::of(&check, &format!("10.1.0.{i}:5061"), 0).phase)
            .collect();
        assert!(phases.len() > 40, "members should get different phases");
    }
}
