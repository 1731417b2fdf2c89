//! Per-service counters, shared by the data path (which bumps them) and the operator surface
//! (which reads them). Plain relaxed atomics: each is an independent count, never a
//! synchronisation point.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::local_error::LocalErrors;

/// Counters of one service; kept across config generations while the service exists.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Client connections accepted from the listener (TCP).
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub rejected_limit: AtomicU64,
    /// Connections closed because no member could be reached.
    pub rejected_no_member: AtomicU64,
    /// Connections closed (UDP: datagrams dropped) because this machine was out of ports,
    /// descriptors or memory; by reason in [`ServiceStats::local_errors`].
    pub rejected_resources: AtomicU64,
    /// Local failures to reach a member (never counted against it), by reason.
    pub local_errors: LocalErrors,
    /// Connects to members that were refused or timed out.
    pub connect_failures: AtomicU64,
    /// Connect attempts after the first for one client connection (next member, or the
    /// paired pool).
    pub retries: AtomicU64,
    /// Connections currently relayed to a member.
    pub active: AtomicU64,
    /// Bytes from clients to members.
    pub bytes_to_members: AtomicU64,
    /// Bytes from members to clients.
    pub bytes_to_clients: AtomicU64,
    /// UDP: sessions open now (each holds one upstream socket).
    pub sessions_active: AtomicU64,
    /// UDP: sessions opened since the service started.
    pub sessions_created: AtomicU64,
    /// UDP: sessions closed by `idle_timeout`.
    pub sessions_expired: AtomicU64,
    /// UDP: datagrams relayed from clients to members.
    pub datagrams_to_members: AtomicU64,
    /// UDP: datagrams relayed from members to clients.
    pub datagrams_to_clients: AtomicU64,
    /// UDP: datagrams dropped (no member available, `max_connections` sessions open, or a
    /// send that failed or would have blocked).
    pub datagrams_dropped: AtomicU64,
    /// UDP: of `datagrams_dropped`, client datagrams dropped because the member socket's send
    /// buffer was full (the receive loop does not wait for one member).
    pub datagrams_dropped_send_blocked: AtomicU64,
    /// UDP: sessions moved to another member because theirs became unavailable.
    pub sessions_rehashed: AtomicU64,
    /// Connections closed at once: their source had `max_connections_per_source` open.
    pub rejected_per_source_connections: AtomicU64,
    /// Connections closed at once: their source exceeded `max_rate_per_source`.
    pub rejected_per_source_rate: AtomicU64,
    /// Connections closed because `sni_required` and the client sent no server name (or no
    /// TLS ClientHello in time).
    pub rejected_sni_required: AtomicU64,
    /// Connections of a service with routes that went to the service's own pool (no route
    /// matched, no SNI, or not TLS).
    pub sni_default: AtomicU64,
    /// Connections whose first bytes were not a readable ClientHello in time (not TLS, broken,
    /// too large, or the client stalled); also counted in `sni_default` or
    /// `rejected_sni_required`.
    pub sni_unreadable: AtomicU64,
    /// The sources of this service (limits per client address).
    pub sources: std::sync::Arc<crate::limits::SourceTable>,
}

/// A copy of [`ServiceStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub rejected_limit: u64,
    pub rejected_no_member: u64,
    pub rejected_resources: u64,
    pub connect_failures: u64,
    pub retries: u64,
    pub active: u64,
    pub bytes_to_members: u64,
    pub bytes_to_clients: u64,
    pub sessions_active: u64,
    pub sessions_created: u64,
    pub sessions_expired: u64,
    pub datagrams_to_members: u64,
    pub datagrams_to_clients: u64,
    pub datagrams_dropped: u64,
    pub datagrams_dropped_send_blocked: u64,
    pub sessions_rehashed: u64,
    pub rejected_per_source_connections: u64,
    pub rejected_per_source_rate: u64,
    pub rejected_sni_required: u64,
    pub sni_default: u64,
    pub sni_unreadable: u64,
    /// Sources tracked for the limits per client address.
    pub sources_tracked: u64,
    /// Connections let through untracked because the source table was full.
    pub sources_untracked: u64,
}

impl ServiceStats {
    /// Reads every counter (each individually; the set is not one atomic picture).
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: r(&self.accepted),
            rejected_limit: r(&self.rejected_limit),
            rejected_no_member: r(&self.rejected_no_member),
            rejected_resources: r(&self.rejected_resources),
            connect_failures: r(&self.connect_failures),
            retries: r(&self.retries),
            active: r(&self.active),
            bytes_to_members: r(&self.bytes_to_members),
            bytes_to_clients: r(&self.bytes_to_clients),
            sessions_active: r(&self.sessions_active),
            sessions_created: r(&self.sessions_created),
            sessions_expired: r(&self.sessions_expired),
            datagrams_to_members: r(&self.datagrams_to_members),
            datagrams_to_clients: r(&self.datagrams_to_clients),
            datagrams_dropped: r(&self.datagrams_dropped),
            datagrams_dropped_send_blocked: r(&self.datagrams_dropped_send_blocked),
            sessions_rehashed: r(&self.sessions_rehashed),
            rejected_per_source_connections: r(&self.rejected_per_source_connections),
            rejected_per_source_rate: r(&self.rejected_per_source_rate),
            rejected_sni_required: r(&self.rejected_sni_required),
            sni_default: r(&self.sni_default),
            sni_unreadable: r(&self.sni_unreadable),
            sources_tracked: self.sources.len() as u64,
            sources_untracked: r(&self.sources.untracked),
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// TCP connections accepted by each data-path worker, across services: how evenly the kernel
/// spreads a socket group (`tandem_worker_connections_total{worker}`).
#[derive(Debug)]
pub struct WorkerStats {
    accepted: Vec<Padded>,
}

/// A counter alone on its cache line (128 bytes: two 64-byte lines, as the adjacent-line
/// prefetcher of x86 pulls pairs), so two workers bumping theirs never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl WorkerStats {
    /// Counters for `workers` workers (at least one).
    pub fn new(workers: usize) -> WorkerStats {
        WorkerStats {
            accepted: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// Connections accepted so far, by worker index.
    pub fn accepted(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .collect()
    }
}

/// One worker's counter in [`WorkerStats`], as an accept loop holds it.
#[derive(Debug, Clone)]
pub struct WorkerCounter {
    stats: std::sync::Arc<WorkerStats>,
    index: usize,
}

impl WorkerCounter {
    /// Worker `index`'s counter (taken modulo the worker count).
    pub fn new(stats: &std::sync::Arc<WorkerStats>, index: usize) -> WorkerCounter {
        WorkerCounter {
            stats: stats.clone(),
            index: index % stats.accepted.len(),
        }
    }

    /// Counts one accepted connection.
    pub fn bump(&self) {
        bump(&self.stats.accepted[self.index].0);
    }
}
