//! Limits per client address: how many connections one source may hold open, and how fast it
//! may open new ones.
//!
//! A source is an IPv4 address, or an IPv6 prefix (`source_prefix_v6`, /64 by default: one
//! host or site usually holds a whole /64, so counting single IPv6 addresses limits nothing).
//! The rate is a token bucket kept as one timestamp (the generic cell rate algorithm): `tat`,
//! the time at which the source's bucket is full again. A connection at `now` is allowed when
//! `max(tat, now) - now` is within the burst tolerance, and moves `tat` on by one interval
//! (`per / count`). A source is idle when its bucket is full (`tat <= now`) and it has no
//! connection open: it is then forgotten, since it is indistinguishable from a new one.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources per service are tracked. Each costs one
//! slot of a `HashMap<[u8; 16], Entry>`: 32 bytes of key and value and 1 control byte, in a
//! table kept at most 7/8 full with a power-of-two slot count, so at the bound the table holds
//! 131,072 slots, 4.3 MB (33 bytes per slot; 43 bytes per tracked source at 100,000 sources).
//! Idle sources are swept out every [`SWEEP_INTERVAL`] and whenever the table is full; a new
//! source arriving at a table full of busy ones is let through untracked and counted (as
//! HAProxy lets a connection through when its stick table is full), rather than turning
//! legitimate clients away because others are busy.
//!
//! The clock is passed in (tokio's `Instant`, so tests run on a paused clock). One short lock
//! per connection opened and one per connection closed; never held across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Rate, SourceLimits};

/// Most sources tracked per service.
pub const MAX_SOURCES: usize = 100_000;
/// How often idle sources are forgotten (and the table shrunk) at the latest.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Least time between two sweeps forced by a full table: under a flood of new sources each one
/// would otherwise cost a scan of the whole table.
const FULL_SWEEP_PAUSE: Duration = Duration::from_secs(1);

/// Which limit turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `max_connections_per_source` connections of this source were open.
    Connections,
    /// The source opened connections faster than `max_rate_per_source`.
    Rate,
}

/// A source's key: an IPv4 address as its IPv4-mapped IPv6 form, or an IPv6 address cut to
/// `prefix_v6` bits.
pub fn source_key(ip: IpAddr, prefix_v6: u8) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().octets(),
            None => {
                let bits = u32::from(prefix_v6.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                (u128::from(v6) & mask).to_be_bytes()
            }
        },
    }
}

/// What is remembered of one source.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the source's bucket is full again, in nanoseconds since the table's epoch.
    tat: u64,
    /// Connections of this source open now.
    open: u32,
}

#[derive(Debug)]
struct Inner {
    sources: HashMap<[u8; 16], Entry>,
    last_sweep: u64,
    last_full_sweep: Option<u64>,
}

/// The sources of one service. Lives as long as the service (its limits may change with a
/// reload; the sources' counts carry on under the new ones).
#[derive(Debug)]
pub struct SourceTable {
    inner: Mutex<Inner>,
    epoch: Instant,
    max: usize,
    /// Sources tracked now, readable without the lock (for metrics).
    tracked: AtomicUsize,
    /// Connections let through untracked because the table was full of busy sources.
    pub untracked: AtomicU64,
}

impl Default for SourceTable {
    fn default() -> Self {
        SourceTable::new(MAX_SOURCES)
    }
}

/// Held by an admitted connection; its drop closes the connection's count.
#[derive(Debug)]
pub struct SourceGuard {
    table: Arc<SourceTable>,
    key: [u8; 16],
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        self.table.release(self.key, Instant::now());
    }
}

impl SourceTable {
    /// A table tracking at most `max` sources.
    pub fn new(max: usize) -> SourceTable {
        SourceTable {
            inner: Mutex::new(Inner {
                sources: HashMap::new(),
                last_sweep: 0,
                last_full_sweep: None,
            }),
            epoch: Instant::now(),
            max,
            tracked: AtomicUsize::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.tracked.load(Relaxed)
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots the table holds now (its memory is this times 33 bytes).
    pub fn capacity(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.sources.capacity())
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits a new connection from `ip` at `now` under `limits`, or says which limit refuses
    /// it. The guard (`None` when the table is full and the source untracked) must live as long
    /// as the connection.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &SourceLimits,
        now: Instant,
    ) -> Result<Option<SourceGuard>, Rejection> {
        let key = source_key(ip, limits.prefix_v6);
        let now = self.nanos(now);
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(None);
        };
        if now.saturating_sub(inner.last_sweep) >= SWEEP_INTERVAL.as_nanos() as u64 {
            inner.sweep(now);
        }
        if !inner.sources.contains_key(&key) && inner.sources.len() >= self.max {
            let pause_over = inner
                .last_full_sweep
                .is_none_or(|t| now.saturating_sub(t) >= FULL_SWEEP_PAUSE.as_nanos() as u64);
            if pause_over {
                inner.last_full_sweep = Some(now);
                inner.sweep(now);
            }
            if inner.sources.len() >= self.max {
                self.untracked.fetch_add(1, Relaxed);
                return Ok(None);
            }
        }
        let entry = inner
            .sources
            .entry(key)
            .or_insert(Entry { tat: now, open: 0 });
        let verdict = decide(entry, limits, now);
        if verdict.is_ok() {
            entry.open = entry.open.saturating_add(1);
        }
        self.tracked.store(inner.sources.len(), Relaxed);
        verdict.map(|()| {
            Some(SourceGuard {
                table: Arc::clone(self),
                key,
            })
        })
    }

    fn release(&self, key: [u8; 16], now: Instant) {
        let now = self.nanos(now);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(entry) = inner.sources.get_mut(&key) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.tat <= now {
                inner.sources.remove(&key);
            }
        }
        self.tracked.store(inner.sources.len(), Relaxed);
    }
}

impl Inner {
    /// Forgets idle sources; gives memory back when the table is mostly empty.
    fn sweep(&mut self, now: u64) {
        self.last_sweep = now;
        self.sources.retain(|_, e| e.open > 0 || e.tat > now);
        if self.sources.capacity() > 64 && self.sources.len() < self.sources.capacity() / 4 {
            self.sources.shrink_to(self.sources.len() * 2);
        }
    }
}

/// The limits' verdict on one more connection of the source `entry` at `now`; on success the
/// rate's share is taken (the caller counts the connection open).
fn decide(entry: &mut Entry, limits: &SourceLimits, now: u64) -> Result<(), Rejection> {
    if limits.max_connections > 0 && entry.open >= limits.max_connections {
        return Err(Rejection::Connections);
    }
    if let Some(rate) = limits.rate {
        let (interval, tolerance) = gcra(rate);
        let start = entry.tat.max(now);
        if start - now > tolerance {
            return Err(Rejection::Rate);
        }
        entry.tat = start.saturating_add(interval);
    }
    Ok(())
}

/// A rate's emission interval and burst tolerance, in nanoseconds.
fn gcra(rate: Rate) -> (u64, u64) {
    let interval = (rate.per.as_nanos() / u128::from(rate.count.max(1))) as u64;
    let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1) - 1));
    (interval, tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits(conns: u32, rate: Option<&str>) -> SourceLimits {
        SourceLimits {
            max_connections: conns,
            rate: rate.and_then(|r| Rate::parse(r).expect("valid rate")),
            prefix_v6: 64,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n))
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_map_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(c, 64));
        assert_eq!(source_key(a, 48), source_key(c, 48));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped, 64), source_key(v4, 64));
        assert_ne!(
            source_key(v4, 64),
            source_key("10.0.0.2".parse().unwrap(), 64)
        );
    }

    #[test]
    fn open_connections_are_capped_per_source() {
        let t = Arc::new(SourceTable::new(100));
        let l = limits(2, None);
        let now = Instant::now();
        let a = t.admit(ip(1), &l, now).expect("first");
        let b = t.admit(ip(1), &l, now).expect("second");
        assert_eq!(t.admit(ip(1), &l, now).err(), Some(Rejection::Connections));
        assert!(t.admit(ip(2), &l, now).is_ok(), "another source is served");
        drop(a);
        let c = t.admit(ip(1), &l, now).expect("a slot came free");
        drop((b, c));
        assert!(
            t.is_empty(),
            "sources without connections or rate are forgotten at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_with_time() {
        let t = Arc::new(SourceTable::new(100));
        let l = limits(0, Some("10/s burst 3"));
        for _ in 0..3 {
            t.admit(ip(1), &l, Instant::now())
                .expect("within the burst");
        }
        assert_eq!(
            t.admit(ip(1), &l, Instant::now()).err(),
            Some(Rejection::Rate)
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            t.admit(ip(1), &l, Instant::now()).err(),
            Some(Rejection::Rate)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        t.admit(ip(1), &l, Instant::now())
            .expect("one token back after 100 ms");
        assert!(t.admit(ip(1), &l, Instant::now()).is_err());
        // After a full refill (3 tokens, 300 ms) the whole burst is available again, no more.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            t.admit(ip(1), &l, Instant::now()).expect("refilled");
        }
        assert!(t.admit(ip(1), &l, Instant::now()).is_err());
        // A sustained 10/s is served.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(100)).await;
            t.admit(ip(1), &l, Instant::now()).expect("at the rate");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_sources_stay_within_the_bound_and_are_forgotten() {
        let max = 1000;
        let t = Arc::new(SourceTable::new(max));
        let l = limits(5, Some("20/s"));
        for n in 0..10_000 {
            let guard = t.admit(ip(n), &l, Instant::now()).expect("admitted");
            drop(guard);
            assert!(t.len() <= max);
        }
        assert!(t.capacity() <= max * 8 / 7 * 2, "capacity {}", t.capacity());
        assert!(t.untracked.load(Relaxed) > 0);
        // Full buckets and no connection: the next sweep forgets every one of them.
        tokio::time::advance(SWEEP_INTERVAL).await;
        drop(t.admit(ip(1), &l, Instant::now()));
        assert!(t.len() <= 1, "{} sources left", t.len());
        assert!(
            t.capacity() < 256,
            "capacity {} not given back",
            t.capacity()
        );
    }

    #[test]
    fn busy_sources_are_kept_when_full() {
        let t = Arc::new(SourceTable::new(10));
        let l = limits(1, None);
        let now = Instant::now();
        let held: Vec<_> = (0..10).map(|n| t.admit(ip(n), &l, now).unwrap()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(matches!(t.admit(ip(99), &l, now), Ok(None)), "untracked");
        assert_eq!(t.admit(ip(3), &l, now).err(), Some(Rejection::Connections));
    }

    #[test]
    fn entry_size_is_as_documented() {
        assert_eq!(std::mem::size_of::<([u8; 16], Entry)>(), 32);
    }
}
