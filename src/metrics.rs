//! Prometheus metrics: the families tandem exposes, rendered on demand.
//!
//! Counters and gauges of the data path live as plain atomics next to what they count (service
//! stats, member traffic, failover cells), so the per-connection path never touches a metrics
//! registry. At scrape time their current values are copied into a
//! `metrics-exporter-prometheus` recorder (owned here, never installed globally, so tests can
//! run many balancers in one process) and rendered. Health-check durations are a real
//! histogram recorded by the checker through handles resolved once per pool (built here as the
//! health layer's `CheckInstruments`, so the checker never imports this module).
//!
//! Labels come from the config only (service, pool, member address), never from clients, so
//! the number of series is bounded by the config. Series of things a reload removed stop being
//! updated and are dropped by the recorder's idle timeout.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::failover::Side;
use crate::health::checker::CheckInstruments;
use crate::health::state::Verdict;
use crate::pool::Snapshot;
use crate::stats::ServiceStats;

/// Series not refreshed for this long (things a reload removed) are dropped.
const IDLE_SERIES: Duration = Duration::from_secs(600);
/// Buckets of the check duration histogram, in seconds: probes on a LAN take a few ms, a
/// timeout takes the check's `timeout` (1 s by default).
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Reload outcomes, counted by the app.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    /// Unix time (s) of the last applied config (the start counts), 0 before.
    pub last_applied_unix: AtomicU64,
}

/// One service's live counters, as the renderer sees them.
pub struct ServiceSample<'a> {
    pub name: &'a str,
    /// A UDP service: its session and datagram families are rendered too.
    pub udp: bool,
    pub stats: &'a ServiceStats,
}

/// The registry and renderer.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(metrics_util_mask(), Some(IDLE_SERIES))
            .set_buckets_for_metric(
                Matcher::Full("tandem_check_duration_seconds".to_string()),
                CHECK_BUCKETS,
            )
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        describe(&recorder);
        Metrics { recorder, handle }
    }

    /// Handles for the check loops of `pool`.
    pub fn check_instruments(&self, pool: &str) -> CheckInstruments {
        let p = Label::new("pool", pool.to_string());
        CheckInstruments {
            passed: self.recorder.register_counter(
                &Key::from_parts(
                    "tandem_check_results_total",
                    vec![p.clone(), Label::new("result", "pass")],
                ),
                &METADATA,
            ),
            failed: self.recorder.register_counter(
                &Key::from_parts(
                    "tandem_check_results_total",
                    vec![p.clone(), Label::new("result", "fail")],
                ),
                &METADATA,
            ),
            local_errors: self.recorder.register_counter(
                &Key::from_parts(
                    "tandem_check_results_total",
                    vec![p.clone(), Label::new("result", "local_error")],
                ),
                &METADATA,
            ),
            duration: self.recorder.register_histogram(
                &Key::from_parts("tandem_check_duration_seconds", vec![p]),
                &METADATA,
            ),
            local_log: Default::default(),
        }
    }

    /// Keeps histogram memory bounded; call every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Renders every family from the current state.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        services: &[ServiceSample<'_>],
        reloads: &ReloadCounters,
    ) -> String {
        let counter = |name: &'static str, labels: Vec<Label>, value: u64| {
            self.recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
                .absolute(value);
        };
        let gauge = |name: &'static str, labels: Vec<Label>, value: f64| {
            self.recorder
                .register_gauge(&Key::from_parts(name, labels), &METADATA)
                .set(value);
        };
        let l = |k: &'static str, v: &str| Label::new(k, v.to_string());

        gauge(
            "tandem_build_info",
            vec![l("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        gauge(
            "tandem_config_generation",
            vec![],
            snapshot.generation as f64,
        );
        for (result, n) in [
            ("applied", &reloads.applied),
            ("rejected", &reloads.rejected),
        ] {
            counter(
                "tandem_reloads_total",
                vec![l("result", result)],
                n.load(Relaxed),
            );
        }
        gauge(
            "tandem_last_reload_success_timestamp_seconds",
            vec![],
            reloads.last_applied_unix.load(Relaxed) as f64,
        );

        for s in services {
            let st = s.stats.snapshot();
            let svc = || vec![l("service", s.name)];
            counter("tandem_connections_total", svc(), st.accepted);
            gauge("tandem_connections_active", svc(), st.active as f64);
            // One series per label value, from (value, count) pairs.
            let per = |name: &'static str, key: &'static str, pairs: &[(&str, u64)]| {
                for &(value, n) in pairs {
                    counter(name, vec![l("service", s.name), l(key, value)], n);
                }
            };
            per(
                "tandem_connections_rejected_total",
                "reason",
                &[
                    ("max_connections", st.rejected_limit),
                    ("no_member", st.rejected_no_member),
                    ("resources", st.rejected_resources),
                    ("per_source_connections", st.rejected_per_source_connections),
                    ("per_source_rate", st.rejected_per_source_rate),
                    ("sni_required", st.rejected_sni_required),
                ],
            );
            if !s.udp {
                gauge("tandem_sources_tracked", svc(), st.sources_tracked as f64);
                counter(
                    "tandem_sources_untracked_total",
                    svc(),
                    st.sources_untracked,
                );
            }
            for (reason, n) in s.stats.local_errors.counts() {
                counter(
                    "tandem_local_errors_total",
                    vec![l("service", s.name), l("reason", reason.as_str())],
                    n,
                );
            }
            counter("tandem_connect_failures_total", svc(), st.connect_failures);
            counter("tandem_connect_retries_total", svc(), st.retries);
            per(
                "tandem_bytes_total",
                "direction",
                &[
                    ("to_member", st.bytes_to_members),
                    ("to_client", st.bytes_to_clients),
                ],
            );
            if s.udp {
                gauge(
                    "tandem_udp_sessions_active",
                    svc(),
                    st.sessions_active as f64,
                );
                counter(
                    "tandem_udp_sessions_created_total",
                    svc(),
                    st.sessions_created,
                );
                counter(
                    "tandem_udp_sessions_expired_total",
                    svc(),
                    st.sessions_expired,
                );
                counter(
                    "tandem_udp_sessions_rehashed_total",
                    svc(),
                    st.sessions_rehashed,
                );
                per(
                    "tandem_udp_datagrams_total",
                    "direction",
                    &[
                        ("to_member", st.datagrams_to_members),
                        ("to_client", st.datagrams_to_clients),
                    ],
                );
                counter(
                    "tandem_udp_datagrams_dropped_total",
                    svc(),
                    st.datagrams_dropped,
                );
                counter(
                    "tandem_udp_datagrams_dropped_send_blocked_total",
                    svc(),
                    st.datagrams_dropped_send_blocked,
                );
            }
        }

        for route in snapshot.routes() {
            let name = route.service.name.as_str();
            let active = route.failover.side();
            let sides = std::iter::once((&route.local, Side::Local))
                .chain(route.backup.as_ref().map(|b| (b, Side::Backup)));
            for (pool, side) in sides {
                gauge(
                    "tandem_active_pool",
                    vec![l("service", name), l("pool", &pool.name)],
                    if active == side { 1.0 } else { 0.0 },
                );
            }
            counter(
                "tandem_failovers_total",
                vec![l("service", name)],
                route.failover.failovers.load(Relaxed),
            );
            counter(
                "tandem_failbacks_total",
                vec![l("service", name)],
                route.failover.failbacks.load(Relaxed),
            );
            // Server-name routes: one series per route, named in the config, so the label's
            // values are as bounded as the config is.
            if route.service.sni.reads_hello() {
                let st = services
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.stats.snapshot());
                let by = |r: &str| vec![l("service", name), l("route", r)];
                counter(
                    "tandem_route_connections_total",
                    by("default"),
                    st.map_or(0, |st| st.sni_default),
                );
                counter(
                    "tandem_sni_unreadable_total",
                    vec![l("service", name)],
                    st.map_or(0, |st| st.sni_unreadable),
                );
            }
            for r in &route.sni {
                let rname = r.config.name.as_str();
                let by = || vec![l("service", name), l("route", rname)];
                counter(
                    "tandem_route_connections_total",
                    by(),
                    r.connections.load(Relaxed),
                );
                let active = r.failover.side();
                let sides = std::iter::once((&r.local, Side::Local))
                    .chain(r.backup.as_ref().map(|b| (b, Side::Backup)));
                for (pool, side) in sides {
                    let mut labels = by();
                    labels.push(l("pool", &pool.name));
                    gauge(
                        "tandem_route_active_pool",
                        labels,
                        if active == side { 1.0 } else { 0.0 },
                    );
                }
                counter(
                    "tandem_route_failovers_total",
                    by(),
                    r.failover.failovers.load(Relaxed),
                );
                counter(
                    "tandem_route_failbacks_total",
                    by(),
                    r.failover.failbacks.load(Relaxed),
                );
            }
        }

        for pool in snapshot.pools() {
            for m in &pool.members {
                let id = m.health.member().to_string();
                let labels = || vec![l("pool", &pool.name), l("member", &id)];
                let up = m.health.verdict() == Verdict::Up;
                gauge("tandem_member_up", labels(), if up { 1.0 } else { 0.0 });
                let t = &m.health.traffic;
                counter(
                    "tandem_member_connections_total",
                    labels(),
                    t.connections.load(Relaxed),
                );
                gauge(
                    "tandem_member_connections_active",
                    labels(),
                    t.active.load(Relaxed) as f64,
                );
                for (direction, n) in [
                    ("to_member", &t.bytes_to_member),
                    ("to_client", &t.bytes_to_client),
                ] {
                    let mut labels = labels();
                    labels.push(l("direction", direction));
                    counter("tandem_member_bytes_total", labels, n.load(Relaxed));
                }
            }
        }

        let mut out = self.handle.render();
        process_metrics(&mut out);
        out
    }
}

/// Appends the access log's two counters (zero without a log, so alerts on them need no
/// `absent()`). Process-wide and unlabelled, outside the recorder like the process metrics.
pub fn render_access_log(out: &mut String, counters: &crate::access_log::Counters) {
    for (name, help, value) in [
        (
            "tandem_access_log_lines_total",
            "Access log lines written.",
            &counters.lines,
        ),
        (
            "tandem_access_log_dropped_total",
            "Access log lines dropped: the queue was full (the sink stalled) or a write failed.",
            &counters.dropped,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", value.load(Relaxed));
    }
}

/// Appends the connections each data-path worker accepted (`--workers`; the spread of the
/// `SO_REUSEPORT` socket groups). Labelled by worker index, bounded by the worker count.
pub fn render_workers(out: &mut String, workers: &crate::stats::WorkerStats) {
    let name = "tandem_worker_connections_total";
    let _ = writeln!(
        out,
        "# HELP {name} TCP connections accepted by each data-path worker, all services."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (worker, n) in workers.accepted().iter().enumerate() {
        let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {n}");
    }
}

fn metrics_util_mask() -> metrics_util::MetricKindMask {
    metrics_util::MetricKindMask::ALL
}

fn describe(r: &PrometheusRecorder) {
    let d = |name: &'static str, unit: Option<metrics::Unit>, help: &'static str, kind: u8| {
        let key = metrics::KeyName::from(name);
        match kind {
            0 => r.describe_counter(key, unit, help.into()),
            1 => r.describe_gauge(key, unit, help.into()),
            _ => r.describe_histogram(key, unit, help.into()),
        }
    };
    d("tandem_build_info", None, "Build information; always 1.", 1);
    d(
        "tandem_config_generation",
        None,
        "Generation of the config now serving (1 at start).",
        1,
    );
    d("tandem_reloads_total", None, "Config reloads by result.", 0);
    d(
        "tandem_last_reload_success_timestamp_seconds",
        Some(metrics::Unit::Seconds),
        "Unix time of the last applied config (start counts).",
        1,
    );
    d(
        "tandem_connections_total",
        None,
        "Client connections accepted per service.",
        0,
    );
    d(
        "tandem_connections_active",
        None,
        "Client connections relayed now per service.",
        1,
    );
    d(
        "tandem_connections_rejected_total",
        None,
        "Client connections closed without a member, by reason.",
        0,
    );
    d(
        "tandem_local_errors_total",
        None,
        "Connections closed or datagrams dropped because this machine had no ephemeral port, \
         descriptor or memory to reach a member, by reason (never counted against the member).",
        0,
    );
    d(
        "tandem_connect_failures_total",
        None,
        "Connects to members refused or timed out (each is followed by a retry while tries remain).",
        0,
    );
    d(
        "tandem_connect_retries_total",
        None,
        "Connect attempts after the first for a client connection (next member or paired pool).",
        0,
    );
    d(
        "tandem_bytes_total",
        Some(metrics::Unit::Bytes),
        "Bytes relayed per service and direction.",
        0,
    );
    d(
        "tandem_udp_datagrams_dropped_send_blocked_total",
        None,
        "Client datagrams dropped because the member socket's send buffer was full (also in tandem_udp_datagrams_dropped_total).",
        0,
    );
    d(
        "tandem_active_pool",
        None,
        "1 for the pool a service sends new connections to, else 0.",
        1,
    );
    d(
        "tandem_failovers_total",
        None,
        "Moves of a service to its backup pool (drills included).",
        0,
    );
    d(
        "tandem_failbacks_total",
        None,
        "Moves of a service back to its local pool.",
        0,
    );
    d(
        "tandem_route_connections_total",
        None,
        "Connections of a service with server-name routes, per route (\"default\": the service's own pools).",
        0,
    );
    d(
        "tandem_route_active_pool",
        None,
        "1 for the pool a server-name route sends new connections to, else 0.",
        1,
    );
    d(
        "tandem_route_failovers_total",
        None,
        "Moves of a server-name route to its backup pool.",
        0,
    );
    d(
        "tandem_route_failbacks_total",
        None,
        "Moves of a server-name route back to its local pool.",
        0,
    );
    d(
        "tandem_sni_unreadable_total",
        None,
        "Connections whose first bytes were no readable TLS ClientHello in time.",
        0,
    );
    d(
        "tandem_sources_tracked",
        None,
        "Client sources tracked for the limits per source.",
        1,
    );
    d(
        "tandem_sources_untracked_total",
        None,
        "Connections let through untracked because the table of sources was full.",
        0,
    );
    d(
        "tandem_member_up",
        None,
        "1 when the member is healthy, else 0.",
        1,
    );
    d(
        "tandem_member_connections_total",
        None,
        "Connections relayed to the member.",
        0,
    );
    d(
        "tandem_member_connections_active",
        None,
        "Connections relayed to the member now.",
        1,
    );
    d(
        "tandem_member_bytes_total",
        Some(metrics::Unit::Bytes),
        "Bytes relayed per member and direction.",
        0,
    );
    d(
        "tandem_check_results_total",
        None,
        "Health probe results per pool.",
        0,
    );
    d(
        "tandem_check_duration_seconds",
        Some(metrics::Unit::Seconds),
        "Health probe duration per pool.",
        2,
    );
}

/// Appends the standard `process_*` families (CPU, memory, descriptors) read from /proc.
fn process_metrics(out: &mut String) {
    // /proc counts CPU and start time in USER_HZ ticks. That is 100 on the common Linux ABIs,
    // but it is the kernel's to say (AT_CLKTCK in the auxiliary vector, which rustix reads); 0
    // means it could not be learned, and then no figure beats a wrong one.
    let hz = match rustix::param::clock_ticks_per_second() {
        0 => None,
        n => Some(n as f64),
    };
    if let (Some((cpu_ticks, start_ticks)), Some(hz)) = (procfs_stat(), hz) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent in seconds."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total {}", cpu_ticks as f64 / hz);
        if let Some(boot) = boot_time() {
            let _ = writeln!(
                out,
                "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds."
            );
            let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
            let _ = writeln!(
                out,
                "process_start_time_seconds {}",
                boot + start_ticks as f64 / hz
            );
        }
    }
    if let Some(rss) = status_kib("VmRSS:") {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(out, "process_resident_memory_bytes {}", rss * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", dir.count());
    }
    if let Some(max) = max_fds() {
        let _ = writeln!(
            out,
            "# HELP process_max_fds Maximum number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_max_fds gauge");
        let _ = writeln!(out, "process_max_fds {max}");
    }
}

/// (utime + stime, starttime) in clock ticks from /proc/self/stat.
fn procfs_stat() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}
