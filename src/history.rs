//! The recent past of a running balancer, for the charts of the status page and `GET /history`:
//! connections per second and active connections per service, active connections per member,
//! each member's health timeline (up / down / drain / maint bands) and each service's failover
//! and failback moments.
//!
//! [`History`] is the pure core: bounded rings that take the time as an argument and perform no
//! I/O. [`run`] is the thin task that feeds it: a sample of the counters every `interval`, and
//! every health, failover and reload event as it arrives, at the time the event carries, so a
//! band starts at the exact transition and not at the next sample.
//!
//! Memory is bounded whatever happens: [`SAMPLES`] samples (the window is `SAMPLES × interval`,
//! 15 minutes at the default 5 s), at most [`MAX_CHANGES`] state changes per member and
//! [`MAX_MARKS`] failover moments per service: about 3 KB per member and 12 KB per service at
//! most. Series of members and services that a reload removes are dropped at the next sample,
//! like their rows on the status page. Nothing here is on the data path: the task reads the
//! counters the data path already keeps.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::app::{AppView, ServiceView};
use crate::config::{OperatorState, Protocol};
use crate::events::Event;
use crate::failover::Side;
use crate::health::state::Verdict;
use crate::pool::Snapshot;

/// Default time between two samples: 180 of them cover 15 minutes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per series; the oldest goes when a new one comes.
pub const SAMPLES: usize = 180;
/// State changes kept per member. A member flapping faster than this within the window loses
/// its oldest changes; the state they led to is kept, so the timeline stays gapless.
pub const MAX_CHANGES: usize = 64;
/// Failover and failback moments kept per service.
pub const MAX_MARKS: usize = 32;
/// The shortest interval accepted; anything shorter (zero included) is raised to it, since a
/// zero period would make the sampler spin.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest failover reason kept, in bytes (reasons are tandem's own sentences, well below it).
const MAX_REASON: usize = 200;

/// What the health timeline shows for a member at one moment: the operator state when the
/// member is out of service, else its health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// In service, not checked yet.
    Unknown,
    Up,
    Down,
    Drain,
    Maint,
}

impl Band {
    /// The band of a member in `operator` state with health `verdict`. Drain and maint win:
    /// they say why no new connection goes there, whatever the checks say.
    pub fn of(operator: OperatorState, verdict: Verdict) -> Band {
        match (operator, verdict) {
            (OperatorState::Maint, _) => Band::Maint,
            (OperatorState::Drain, _) => Band::Drain,
            (OperatorState::Up, Verdict::Up) => Band::Up,
            (OperatorState::Up, Verdict::Down) => Band::Down,
            (OperatorState::Up, Verdict::Unknown) => Band::Unknown,
        }
    }

    /// Lower-case name, as in `/history` and the page's `data-state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Unknown => "unknown",
            Band::Up => "up",
            Band::Down => "down",
            Band::Drain => "drain",
            Band::Maint => "maint",
        }
    }
}

/// Time-stamped entries, oldest first, at most `cap` of them. Times never go backwards: an
/// entry stamped before the newest one is kept at the newest one's time, so the order of the
/// ring is the order of arrival and of time at once.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    cap: usize,
    items: VecDeque<(Instant, T)>,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            cap: cap.max(1),
            items: VecDeque::new(),
        }
    }

    /// Appends `value` at `at`; returns the oldest entry when the ring was full.
    pub fn push(&mut self, at: Instant, value: T) -> Option<(Instant, T)> {
        let at = self.items.back().map_or(at, |(last, _)| at.max(*last));
        let evicted = if self.items.len() == self.cap {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back((at, value));
        evicted
    }

    /// Removes the entries stamped before `cutoff`; returns the newest of them.
    pub fn evict_before(&mut self, cutoff: Instant) -> Option<(Instant, T)> {
        let mut last = None;
        while self.items.front().is_some_and(|(at, _)| *at < cutoff) {
            last = self.items.pop_front();
        }
        last
    }

    /// Entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Instant, T)> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A member's state over time: the state before the first kept change, then the changes.
#[derive(Debug, Clone)]
struct Timeline {
    /// The state in force before the first kept change; `None` while the first change ever
    /// recorded is still kept (nothing is known before it).
    before: Option<Band>,
    changes: Ring<Band>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            before: None,
            changes: Ring::new(MAX_CHANGES),
        }
    }

    fn current(&self) -> Option<Band> {
        self.changes.iter().last().map(|(_, b)| *b).or(self.before)
    }

    /// Records that the member was in `band` at `at`. A repeat of the current state changes
    /// nothing, except that it may move the last change earlier: a sample can notice a change
    /// a moment before the event with its exact time is read, and the event's time is the true
    /// one.
    fn record(&mut self, at: Instant, band: Band) {
        if self.current() == Some(band) {
            let n = self.changes.items.len();
            if n > 0 {
                let floor = if n >= 2 {
                    Some(self.changes.items[n - 2].0)
                } else {
                    None
                };
                let last = &mut self.changes.items[n - 1];
                if last.1 == band && at < last.0 && floor.is_none_or(|f| at >= f) {
                    last.0 = at;
                }
            }
            return;
        }
        if let Some((_, evicted)) = self.changes.push(at, band) {
            self.before = Some(evicted);
        }
    }

    fn evict_before(&mut self, cutoff: Instant) {
        if let Some((_, band)) = self.changes.evict_before(cutoff) {
            self.before = Some(band);
        }
    }

    /// The bands between `start` and `now`, each `(from, to, band)`, oldest first, clipped to
    /// the window and without empty ones.
    fn bands(&self, start: Instant, now: Instant) -> Vec<(Instant, Instant, Band)> {
        let mut out = Vec::new();
        let mut state = self.before.map(|b| (start, b));
        for &(at, band) in self.changes.iter() {
            if let Some((from, b)) = state {
                let to = at.clamp(start, now);
                if to > from {
                    out.push((from, to, b));
                }
            }
            state = Some((at.clamp(start, now), band));
        }
        if let Some((from, b)) = state
            && now > from
        {
            out.push((from, now, b));
        }
        out
    }
}

/// A failover or failback moment of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    to: Side,
    /// The pool new connections went to.
    pool: String,
    reason: String,
}

#[derive(Debug, Clone)]
struct ServiceSeries {
    protocol: Protocol,
    /// New connections (TCP) or sessions (UDP) per second over the interval before each
    /// sample; `None` for the first sample, which has no previous count.
    per_second: VecDeque<Option<f32>>,
    /// Connections (TCP) or sessions (UDP) open at each sample.
    active: VecDeque<u32>,
    /// The count behind the last rate, and when it was read.
    last: Option<(Instant, u64)>,
    marks: Ring<Mark>,
}

impl ServiceSeries {
    fn new(protocol: Protocol) -> ServiceSeries {
        ServiceSeries {
            protocol,
            per_second: VecDeque::new(),
            active: VecDeque::new(),
            last: None,
            marks: Ring::new(MAX_MARKS),
        }
    }
}

#[derive(Debug, Clone)]
struct MemberSeries {
    /// Position of the member in its pool's config order, for display.
    order: usize,
    active: VecDeque<u32>,
    timeline: Timeline,
}

impl MemberSeries {
    fn new(order: usize) -> MemberSeries {
        MemberSeries {
            order,
            active: VecDeque::new(),
            timeline: Timeline::new(),
        }
    }
}

/// The bounded recent past: sample times, and per service and per member their series. Every
/// series ends at the newest sample; one that started later (a service added by a reload) is
/// shorter.
#[derive(Debug, Clone)]
pub struct History {
    interval: Duration,
    ticks: VecDeque<Instant>,
    services: BTreeMap<String, ServiceSeries>,
    /// By (pool, member address).
    members: BTreeMap<(String, String), MemberSeries>,
}

impl History {
    /// An empty history sampled every `interval` (raised to [`MIN_INTERVAL`] if shorter).
    pub fn new(interval: Duration) -> History {
        History {
            interval: interval.max(MIN_INTERVAL),
            ticks: VecDeque::with_capacity(SAMPLES),
            services: BTreeMap::new(),
            members: BTreeMap::new(),
        }
    }

    /// Time between two samples.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How far back the history reaches: [`SAMPLES`] intervals.
    pub fn window(&self) -> Duration {
        self.interval * SAMPLES as u32
    }

    /// Samples kept now.
    pub fn samples(&self) -> usize {
        self.ticks.len()
    }

    /// Takes one sample at `now`: every service's counters and every member's active
    /// connections and state. Series of services and members no longer configured are
    /// dropped; anything older than the window is evicted.
    pub fn sample(&mut self, now: Instant, snapshot: &Snapshot, services: &[ServiceView]) {
        if self.ticks.len() == SAMPLES {
            self.ticks.pop_front();
        }
        self.ticks.push_back(now);
        let keep = self.ticks.len();

        let mut listening = HashSet::with_capacity(services.len());
        for view in services {
            listening.insert(view.name.as_str());
            let stats = view.stats.snapshot();
            let (count, active) = match view.protocol {
                Protocol::Tcp => (stats.accepted, stats.active),
                Protocol::Udp => (stats.sessions_created, stats.sessions_active),
            };
            let series = self
                .services
                .entry(view.name.clone())
                .or_insert_with(|| ServiceSeries::new(view.protocol));
            if series.protocol != view.protocol {
                // Same name, other protocol after a reload: a different service.
                *series = ServiceSeries::new(view.protocol);
            }
            let rate = series.last.and_then(|(then, before)| {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                // A counter that went down belongs to a service re-created between samples.
                (secs > 0.0).then(|| count.saturating_sub(before) as f64 / secs)
            });
            series.last = Some((now, count));
            push_bounded(&mut series.per_second, rate.map(|r| r as f32), keep);
            push_bounded(&mut series.active, saturate(active), keep);
        }
        self.services
            .retain(|name, _| listening.contains(name.as_str()));

        let mut configured = HashSet::new();
        for pool in snapshot.pools() {
            for (order, m) in pool.members.iter().enumerate() {
                let key = (pool.name.clone(), m.health.member().to_string());
                let series = self
                    .members
                    .entry(key.clone())
                    .or_insert_with(|| MemberSeries::new(order));
                series.order = order;
                let active = m
                    .health
                    .traffic
                    .active
                    .load(std::sync::atomic::Ordering::Relaxed);
                push_bounded(&mut series.active, saturate(active), keep);
                series
                    .timeline
                    .record(now, Band::of(m.operator, m.health.verdict()));
                configured.insert(key);
            }
        }
        self.members.retain(|key, _| configured.contains(key));

        let cutoff = now.checked_sub(self.window()).unwrap_or(now);
        for series in self.members.values_mut() {
            series.timeline.evict_before(cutoff);
        }
        for series in self.services.values_mut() {
            series.marks.evict_before(cutoff);
        }
    }

    /// Records a transition that happened at `at` (the event's time on this clock), with
    /// `snapshot` the configuration now serving.
    pub fn observe(&mut self, at: Instant, event: &Event, snapshot: &Snapshot) {
        match event {
            Event::Health(e) => {
                let Some(pool) = snapshot.pool(&e.pool) else {
                    return;
                };
                let Some((order, m)) = pool
                    .members
                    .iter()
                    .enumerate()
                    .find(|(_, m)| **m.health.member() == *e.member)
                else {
                    return;
                };
                self.members
                    .entry((pool.name.clone(), e.member.to_string()))
                    .or_insert_with(|| MemberSeries::new(order))
                    .timeline
                    .record(at, Band::of(m.operator, e.to));
            }
            Event::Failover(e) => {
                let Some(route) = snapshot.route(&e.service) else {
                    return;
                };
                let pool = match (e.to, &route.backup) {
                    (Side::Backup, Some(b)) => b.name.clone(),
                    _ => route.local.name.clone(),
                };
                let mut reason = e.reason.clone();
                if reason.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                self.services
                    .entry(e.service.to_string())
                    .or_insert_with(|| ServiceSeries::new(route.service.protocol))
                    .marks
                    .push(
                        at,
                        Mark {
                            to: e.to,
                            pool,
                            reason,
                        },
                    );
            }
            // A reload can take members out of service (drain, maint) or back: their bands
            // change at the reload, not at the next sample. New members start their timeline.
            Event::Reload(e) if e.applied => {
                for pool in snapshot.pools() {
                    for (order, m) in pool.members.iter().enumerate() {
                        self.members
                            .entry((pool.name.clone(), m.health.member().to_string()))
                            .or_insert_with(|| MemberSeries::new(order))
                            .timeline
                            .record(at, Band::of(m.operator, m.health.verdict()));
                    }
                }
            }
            // Routes come and go with health and failover, which are charted already.
            Event::Reload(_) | Event::Bgp(_) => {}
        }
    }

    /// The history as `GET /history` serves it; times are Unix milliseconds, mapped from this
    /// clock's `now` to the wall clock's `wall`. Value arrays are as long as `t`, with `null`
    /// where a series has no sample.
    pub fn to_json(&self, now: Instant, wall: SystemTime) -> Value {
        let ms = |t: Instant| unix_ms(t, now, wall);
        let start = now.checked_sub(self.window()).unwrap_or(now);
        let n = self.ticks.len();
        let pad = |values: Vec<Value>| -> Vec<Value> {
            let mut out = vec![Value::Null; n.saturating_sub(values.len())];
            out.extend(values);
            out
        };
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|(name, s)| {
                let marks: Vec<Value> = s
                    .marks
                    .iter()
                    .map(|(at, m)| {
                        json!({
                            "at": ms(*at),
                            "kind": if m.to == Side::Backup { "failover" } else { "failback" },
                            "to": m.to.as_str(),
                            "pool": m.pool,
                            "reason": m.reason,
                        })
                    })
                    .collect();
                json!({
                    "name": name,
                    "protocol": s.protocol.to_string(),
                    "unit": match s.protocol { Protocol::Tcp => "connections", Protocol::Udp => "sessions" },
                    "per_second": pad(s.per_second.iter().map(|r| r.map_or(Value::Null, |r| json!(round2(r)))).collect()),
                    "active": pad(s.active.iter().map(|a| json!(a)).collect()),
                    "failovers": marks,
                })
            })
            .collect();
        let mut members: Vec<(&(String, String), &MemberSeries)> = self.members.iter().collect();
        members.sort_by(|a, b| (&a.0.0, a.1.order).cmp(&(&b.0.0, b.1.order)));
        let members: Vec<Value> = members
            .into_iter()
            .map(|((pool, member), m)| {
                let bands: Vec<Value> = m
                    .timeline
                    .bands(start, now)
                    .into_iter()
                    .map(|(from, to, band)| {
                        json!({ "state": band.as_str(), "from": ms(from), "to": ms(to) })
                    })
                    .collect();
                json!({
                    "pool": pool,
                    "member": member,
                    "state": m.timeline.current().map_or("unknown", Band::as_str),
                    "active": pad(m.active.iter().map(|a| json!(a)).collect()),
                    "bands": bands,
                })
            })
            .collect();
        json!({
            "interval_seconds": self.interval.as_secs_f64(),
            "window_seconds": self.window().as_secs_f64(),
            "samples_max": SAMPLES,
            "now": ms(now),
            "start": ms(start),
            "t": self.ticks.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
            "services": services,
            "members": members,
        })
    }
}

/// Appends `value` and keeps at most `keep` values (the number of samples), oldest dropped.
fn push_bounded<T>(values: &mut VecDeque<T>, value: T, keep: usize) {
    values.push_back(value);
    while values.len() > keep {
        values.pop_front();
    }
}

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn round2(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

/// `t` on the wall clock, as Unix milliseconds, knowing that `now` is `wall`.
fn unix_ms(t: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall_t = if t <= now {
        wall.checked_sub(now - t)
    } else {
        wall.checked_add(t - now)
    };
    wall_t
        .and_then(|w| w.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The moment on this clock of wall-clock time `at`, knowing that `now` is `wall`. Events carry
/// wall-clock times; the history keeps monotonic ones, so a clock step does not reorder it.
pub fn instant_of(at: SystemTime, now: Instant, wall: SystemTime) -> Instant {
    match wall.duration_since(at) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        // Stamped "in the future" (the wall clock stepped back since): now is the best guess.
        Err(_) => now,
    }
}

/// Samples `view` into `history` every interval and records every event from `events` (a
/// subscription taken by the caller before it spawns this, so nothing sent after the spawn is
/// missed) as it arrives, until `stop` fires. The lock is held only to record or read, never
/// across an await.
pub async fn run(
    view: AppView,
    events: Receiver<Event>,
    history: Arc<Mutex<History>>,
    stop: CancellationToken,
) {
    let period = history.lock().map_or(DEFAULT_INTERVAL, |h| h.interval());
    let mut events = Some(events);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let next_event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Events first: a sample then sees every transition already sent with its time.
            biased;
            _ = stop.cancelled() => return,
            event = next_event => match event {
                Ok(event) => {
                    let at = event_time(&event);
                    let at = instant_of(at, Instant::now(), SystemTime::now());
                    let snapshot = view.snapshot();
                    if let Ok(mut h) = history.lock() {
                        h.observe(at, &event, &snapshot);
                    }
                }
                // Missed events: the next sample records the states they led to.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => events = None,
            },
            _ = tick.tick() => {
                let snapshot = view.snapshot();
                let services = view.services();
                if let Ok(mut h) = history.lock() {
                    h.sample(Instant::now(), &snapshot, &services);
                }
            }
        }
    }
}

fn event_time(event: &Event) -> SystemTime {
    match event {
        Event::Health(e) => e.at,
        Event::Failover(e) => e.at,
        Event::Reload(e) => e.at,
        Event::Bgp(e) => e.at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{FailoverEvent, HealthEvent, ReloadEvent};
    use crate::stats::ServiceStats;

    const S: Duration = Duration::from_secs(1);

    fn view(extra_member: &str) -> AppView {
        let text = format!(
            "[[pool]]\nname = \"p\"\nmembers = [{{ addr = \"127.0.1.1:80\" }}, \
             {{ addr = \"127.0.1.2:80\" }}{extra_member}]\n\
             [[pool.check]]\nkind = \"tcp\"\n\
             [[pool]]\nname = \"q\"\nmembers = [{{ addr = \"127.0.2.1:80\" }}]\n\n\
             [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\nbackup_pool = \"q\"\n"
        );
        let config = crate::config::parse(&text, "t.toml").expect("valid config");
        AppView::detached(&config).expect("view")
    }

    fn service(stats: &Arc<ServiceStats>) -> Vec<ServiceView> {
        vec![ServiceView {
            name: "s".into(),
            protocol: Protocol::Tcp,
            local_addr: "127.0.0.1:1".parse().expect("addr"),
            stats: stats.clone(),
        }]
    }

    fn health(member: &str, to: Verdict) -> Event {
        Event::Health(HealthEvent {
            pool: "p".into(),
            member: member.into(),
            from: Verdict::Up,
            to,
            reason: "test".into(),
            at: SystemTime::now(),
        })
    }

    fn member<'a>(json: &'a Value, addr: &str) -> &'a Value {
        json["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["member"] == addr)
            .unwrap_or_else(|| panic!("{addr} missing from {json}"))
    }

    fn bands(json: &Value, addr: &str) -> Vec<(String, u64, u64)> {
        member(json, addr)["bands"]
            .as_array()
            .expect("bands")
            .iter()
            .map(|b| {
                (
                    b["state"].as_str().expect("state").to_string(),
                    b["from"].as_u64().expect("from"),
                    b["to"].as_u64().expect("to"),
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn ring_is_bounded_ordered_and_evicts_the_oldest() {
        let mut ring = Ring::new(3);
        let t0 = Instant::now();
        assert_eq!(ring.push(t0, 'a'), None);
        tokio::time::advance(S).await;
        assert_eq!(ring.push(Instant::now(), 'b'), None);
        tokio::time::advance(S).await;
        assert_eq!(ring.push(Instant::now(), 'c'), None);
        tokio::time::advance(S).await;
        // Full: the oldest goes.
        assert_eq!(ring.push(Instant::now(), 'd'), Some((t0, 'a')));
        assert_eq!(ring.len(), 3);
        let values: Vec<char> = ring.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, ['b', 'c', 'd']);
        // An entry stamped in the past keeps arrival order: it takes the newest time.
        let newest = Instant::now();
        assert_eq!(ring.push(t0, 'e').map(|(_, v)| v), Some('b'));
        let times: Vec<Instant> = ring.iter().map(|(t, _)| *t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(times[2], newest);
        // Eviction by age returns the newest entry evicted.
        assert_eq!(
            ring.evict_before(newest).map(|(_, v)| v),
            Some('c'),
            "c is the newest entry before the cutoff"
        );
        assert_eq!(ring.iter().map(|(_, v)| *v).collect::<Vec<_>>(), ['d', 'e']);
        assert_eq!(ring.evict_before(t0), None);
        assert!(!ring.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn samples_are_bounded_and_the_oldest_are_evicted() {
        let view = view("");
        let stats = Arc::new(ServiceStats::default());
        let mut h = History::new(5 * S);
        assert_eq!(h.window(), Duration::from_secs(900));
        let first = Instant::now();
        for i in 0..(SAMPLES + 20) {
            stats
                .accepted
                .fetch_add(10, std::sync::atomic::Ordering::Relaxed);
            h.sample(Instant::now(), &view.snapshot(), &service(&stats));
            if i + 1 < SAMPLES + 20 {
                tokio::time::advance(5 * S).await;
            }
        }
        assert_eq!(h.samples(), SAMPLES);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let json = h.to_json(now, wall);
        let t: Vec<u64> = json["t"]
            .as_array()
            .expect("t")
            .iter()
            .map(|v| v.as_u64().expect("ms"))
            .collect();
        assert_eq!(t.len(), SAMPLES);
        assert!(t.windows(2).all(|w| w[1] - w[0] == 5000), "5 s apart");
        // The 20 oldest samples are gone: the first kept is 20 intervals after the first taken.
        let first_ms = unix_ms(first, now, wall);
        assert_eq!(t[0] - first_ms, 20 * 5000);
        let s = &json["services"][0];
        let rates = s["per_second"].as_array().expect("rates");
        assert_eq!(rates.len(), SAMPLES);
        // 10 connections per 5 s; the series' first rate (no previous count) was evicted.
        assert!(rates.iter().all(|r| r.as_f64() == Some(2.0)), "{rates:?}");
        for m in json["members"].as_array().expect("members") {
            assert_eq!(m["active"].as_array().expect("active").len(), SAMPLES);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeline_bands_follow_events_at_their_own_time() {
        let view = view("");
        let snapshot = view.snapshot();
        let stats = Arc::new(ServiceStats::default());
        let mut h = History::new(5 * S);
        let wall0 = SystemTime::now();
        let t0 = Instant::now();
        h.sample(t0, &snapshot, &service(&stats));
        // Members of a detached view are unknown; the checks decide at once.
        tokio::time::advance(S).await;
        h.observe(
            Instant::now(),
            &health("127.0.1.1:80", Verdict::Up),
            &snapshot,
        );
        h.observe(
            Instant::now(),
            &health("127.0.1.2:80", Verdict::Up),
            &snapshot,
        );
        tokio::time::advance(2 * S).await;
        let down_at = Instant::now();
        h.observe(down_at, &health("127.0.1.2:80", Verdict::Down), &snapshot);
        tokio::time::advance(S).await;
        // A repeat of the same state changes nothing.
        h.observe(
            Instant::now(),
            &health("127.0.1.2:80", Verdict::Down),
            &snapshot,
        );
        tokio::time::advance(3 * S).await;
        let up_at = Instant::now();
        h.observe(up_at, &health("127.0.1.2:80", Verdict::Up), &snapshot);
        // A failover and failback of the service, marked at their times.
        for to in [Side::Backup, Side::Local] {
            h.observe(
                Instant::now(),
                &Event::Failover(FailoverEvent {
                    service: "s".into(),
                    from: Side::Local,
                    to,
                    reason: "x".repeat(1000),
                    local_healthy: 1,
                    backup_healthy: 1,
                    at: SystemTime::now(),
                }),
                &snapshot,
            );
        }
        tokio::time::advance(S).await;
        let now = Instant::now();
        let wall = wall0 + (now - t0);
        let json = h.to_json(now, wall);
        let ms = |t: Instant| unix_ms(t, now, wall);
        assert_eq!(
            bands(&json, "127.0.1.2:80"),
            [
                ("unknown".to_string(), ms(t0), ms(t0 + S)),
                ("up".to_string(), ms(t0 + S), ms(down_at)),
                ("down".to_string(), ms(down_at), ms(up_at)),
                ("up".to_string(), ms(up_at), ms(now)),
            ]
        );
        assert_eq!(member(&json, "127.0.1.2:80")["state"], "up");
        let marks = json["services"][0]["failovers"].as_array().expect("marks");
        assert_eq!(marks.len(), 2);
        assert_eq!(marks[0]["kind"], "failover");
        assert_eq!(marks[0]["pool"], "q");
        assert_eq!(marks[1]["kind"], "failback");
        assert_eq!(marks[1]["pool"], "p");
        assert_eq!(marks[0]["reason"].as_str().map(str::len), Some(MAX_REASON));
        // Events for members and services the config does not have are ignored.
        let before = json.clone();
        h.observe(now, &health("127.9.9.9:80", Verdict::Down), &snapshot);
        assert_eq!(h.to_json(now, wall)["members"], before["members"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_that_sees_a_change_first_is_corrected_by_its_event() {
        let mut t = Timeline::new();
        let t0 = Instant::now();
        t.record(t0, Band::Up);
        tokio::time::advance(10 * S).await;
        let event_at = Instant::now();
        tokio::time::advance(S / 10).await;
        // The sampler read the new verdict before the event was read...
        t.record(Instant::now(), Band::Down);
        // ... whose exact time then moves the change back.
        t.record(event_at, Band::Down);
        let now = Instant::now();
        assert_eq!(
            t.bands(t0, now),
            [(t0, event_at, Band::Up), (event_at, now, Band::Down)]
        );
        // But never before the change that precedes it.
        t.record(t0 - S, Band::Down);
        assert_eq!(t.bands(t0, now)[1].0, event_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_member_keeps_a_bounded_gapless_timeline() {
        let mut t = Timeline::new();
        let start = Instant::now();
        for i in 0..(MAX_CHANGES * 3) {
            t.record(
                Instant::now(),
                if i % 2 == 0 { Band::Up } else { Band::Down },
            );
            tokio::time::advance(S).await;
        }
        assert_eq!(t.changes.len(), MAX_CHANGES);
        let now = Instant::now();
        let bands = t.bands(start, now);
        // The state before the oldest kept change is known, so the window is covered from its
        // start, band after band, without a gap.
        assert_eq!(bands.first().map(|b| b.0), Some(start));
        assert_eq!(bands.last().map(|b| b.1), Some(now));
        assert!(
            bands
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && w[0].2 != w[1].2)
        );
        // Age eviction keeps the state in force at the cutoff.
        let cutoff = now - 10 * S;
        t.evict_before(cutoff);
        let bands = t.bands(cutoff, now);
        assert_eq!(bands.first().map(|b| b.0), Some(cutoff));
        assert!(t.changes.iter().all(|(at, _)| *at >= cutoff));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_marks_operator_states_and_removed_members_are_dropped() {
        let old = view(", { addr = \"127.0.1.3:80\" }");
        let stats = Arc::new(ServiceStats::default());
        let mut h = History::new(S);
        h.sample(Instant::now(), &old.snapshot(), &service(&stats));
        assert_eq!(h.members.len(), 4);
        tokio::time::advance(S / 2).await;
        // The new config drains one member and removes another.
        let drained = {
            let text = "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.1.1:80\", state = \"drain\" }, \
                        { addr = \"127.0.1.2:80\" }]\n[[pool.check]]\nkind = \"tcp\"\n[[pool]]\nname = \"q\"\nmembers = [{ addr = \"127.0.2.1:80\" }]\n\n\
                        [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\nbackup_pool = \"q\"\n";
            let config = crate::config::parse(text, "t.toml").expect("valid config");
            AppView::detached(&config).expect("view")
        };
        let reload_at = Instant::now();
        h.observe(
            reload_at,
            &Event::Reload(ReloadEvent {
                applied: true,
                generation: 2,
                message: String::new(),
                at: SystemTime::now(),
            }),
            &drained.snapshot(),
        );
        tokio::time::advance(S / 2).await;
        h.sample(Instant::now(), &drained.snapshot(), &[]);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let json = h.to_json(now, wall);
        let ms = |t: Instant| unix_ms(t, now, wall);
        let b = bands(&json, "127.0.1.1:80");
        assert_eq!(
            b.last().map(|b| (b.0.as_str(), b.1)),
            Some(("drain", ms(reload_at)))
        );
        assert!(
            json["members"]
                .as_array()
                .expect("members")
                .iter()
                .all(|m| m["member"] != "127.0.1.3:80"),
            "a removed member is dropped"
        );
        assert_eq!(
            json["services"],
            serde_json::json!([]),
            "no service listens"
        );
    }

    /// A thousand members, every one flapping, for longer than the window: every ring stays at
    /// its bound. Prints what a sample and a `/history` render cost, and the document's size
    /// (`cargo test --lib history::tests::a_thousand -- --nocapture`).
    #[tokio::test(start_paused = true)]
    async fn a_thousand_flapping_members_stay_within_the_bounds() {
        let mut text = String::new();
        for p in 0..10 {
            let members: Vec<String> = (0..100)
                .map(|m| format!("{{ addr = \"10.0.{p}.{}:5061\" }}", m + 1))
                .collect();
            text += &format!(
                "[[pool]]\nname = \"pool{p}\"\nmembers = [{}]\n[[pool.check]]\nkind = \"tcp\"\n",
                members.join(", ")
            );
        }
        text += "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"pool0\"\nbackup_pool = \"pool1\"\n";
        let config = crate::config::parse(&text, "t.toml").expect("valid config");
        let view = AppView::detached(&config).expect("view");
        let snapshot = view.snapshot();
        let stats = Arc::new(ServiceStats::default());
        let mut h = History::new(5 * S);
        let mut sampling = Duration::ZERO;
        for i in 0..(SAMPLES + 20) {
            // Every member changes state twice per interval; the service fails over and back.
            for round in 0..2 {
                let to = if (i + round) % 2 == 0 {
                    Verdict::Down
                } else {
                    Verdict::Up
                };
                for pool in snapshot.pools() {
                    for m in &pool.members {
                        let event = Event::Health(HealthEvent {
                            pool: pool.name.as_str().into(),
                            member: m.health.member().clone(),
                            from: Verdict::Up,
                            to,
                            reason: String::new(),
                            at: SystemTime::now(),
                        });
                        h.observe(Instant::now(), &event, &snapshot);
                    }
                }
                h.observe(
                    Instant::now(),
                    &Event::Failover(FailoverEvent {
                        service: "s".into(),
                        from: Side::Local,
                        to: if round == 0 {
                            Side::Backup
                        } else {
                            Side::Local
                        },
                        reason: "below min_healthy".into(),
                        local_healthy: 0,
                        backup_healthy: 100,
                        at: SystemTime::now(),
                    }),
                    &snapshot,
                );
                tokio::time::advance(5 * S / 2).await;
            }
            let started = std::time::Instant::now();
            h.sample(Instant::now(), &snapshot, &service(&stats));
            sampling += started.elapsed();
        }
        assert_eq!(h.samples(), SAMPLES);
        assert_eq!(h.members.len(), 1000);
        for m in h.members.values() {
            assert_eq!(m.active.len(), SAMPLES);
            assert!(m.timeline.changes.len() <= MAX_CHANGES);
        }
        for s in h.services.values() {
            assert_eq!(s.per_second.len(), SAMPLES);
            assert!(s.marks.len() <= MAX_MARKS);
        }
        let started = std::time::Instant::now();
        let json = h.to_json(Instant::now(), SystemTime::now());
        let rendering = started.elapsed();
        let body = json.to_string();
        println!(
            "1000 members, {SAMPLES} samples: {:?} per sample, /history rendered in {rendering:?}, {} bytes",
            sampling / (SAMPLES as u32 + 20),
            body.len()
        );
    }

    #[test]
    fn a_zero_interval_is_raised_and_never_spins() {
        assert_eq!(History::new(Duration::ZERO).interval(), MIN_INTERVAL);
    }
}
