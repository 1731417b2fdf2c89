//! `[[service.route]]` (routing by TLS server name) and the limits per client address of a
//! service: read, checked, every problem with its place.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::Cx;
use crate::config::raw::{RawFailover, RawRoute, RawService};
use crate::config::{
    DEFAULT_SOURCE_PREFIX_V6, FailoverMode, Pool, Protocol, Rate, SniRoute, SniRouting,
    SourceLimits,
};
use crate::sni::names::Pattern;

/// What a route inherits from its service.
pub(super) struct Inherited {
    pub protocol: Protocol,
    pub failover: FailoverMode,
    pub failback_after: Duration,
}

impl Cx<'_> {
    /// The service's routes and `sni_required`; `None` after a problem.
    pub(super) fn sni_routing(
        &mut self,
        rs: &RawService,
        path: &str,
        pools: &[Pool],
        declared: &HashSet<String>,
        inherited: &Inherited,
    ) -> Option<SniRouting> {
        let required = rs.sni_required.as_ref().is_some_and(|r| *r.get_ref());
        if inherited.protocol == Protocol::Udp {
            let mut ok = true;
            if let Some(r) = rs.sni_required.as_ref().filter(|r| *r.get_ref()) {
                self.problem(
                    r.span(),
                    path,
                    "sni_required: SNI is only read on tcp services",
                );
                ok = false;
            }
            if let Some(first) = rs.route.first() {
                self.problem(
                    first.span(),
                    path,
                    "route: routing by server name is only for tcp services",
                );
                ok = false;
            }
            return ok.then(SniRouting::default);
        }
        let mut ok = true;
        let mut routes = Vec::new();
        // Every pattern once across all routes, with the line it was first seen on.
        let mut seen_patterns: HashMap<Pattern, usize> = HashMap::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, raw) in rs.route.iter().enumerate() {
            let rpath = format!("{path} route {}", i + 1);
            match self.route(raw, &rpath, pools, declared, inherited, &mut seen_patterns) {
                Some(route) => {
                    let at = raw.get_ref().name.as_ref().map_or(raw.span(), |n| n.span());
                    let (line, _) = super::line_col(self.text, at.start);
                    if let Some(first) = seen_names.get(&route.name) {
                        let msg = format!(
                            "route name \"{}\" is used by another route (line {first}); give \
                             one of them a `name`",
                            route.name
                        );
                        self.problem(at, &rpath, msg);
                        ok = false;
                        continue;
                    }
                    seen_names.insert(route.name.clone(), line);
                    routes.push(route);
                }
                None => ok = false,
            }
        }
        ok.then_some(SniRouting { routes, required })
    }

    fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        path: &str,
        pools: &[Pool],
        declared: &HashSet<String>,
        inherited: &Inherited,
        seen: &mut HashMap<Pattern, usize>,
    ) -> Option<SniRoute> {
        let r = raw.get_ref();
        let mut ok = true;
        if r.sni.get_ref().is_empty() {
            self.problem(
                r.sni.span(),
                path,
                "sni: a route needs at least one server name",
            );
            ok = false;
        }
        let mut patterns = Vec::new();
        for text in r.sni.get_ref() {
            match Pattern::parse(text.get_ref().trim()) {
                Ok(p) => {
                    let (line, _) = super::line_col(self.text, text.span().start);
                    if let Some(first) = seen.get(&p) {
                        let msg = format!(
                            "sni \"{}\" is already routed (line {first}); a name goes to one route",
                            text.get_ref()
                        );
                        self.problem(text.span(), path, msg);
                        ok = false;
                        continue;
                    }
                    seen.insert(p.clone(), line);
                    patterns.push(p);
                }
                Err(e) => {
                    let msg = format!(
                        "sni \"{}\" {e}; write a host name (\"owa.example.com\") or \"*.\" and \
                         one (\"*.example.org\")",
                        text.get_ref()
                    );
                    self.problem(text.span(), path, msg);
                    ok = false;
                }
            }
        }
        let pool = self.pool_ref(&r.pool, path, "pool", pools, declared);
        ok &= pool.is_some();
        let backup_pool = match &r.backup_pool {
            None => None,
            Some(b) => {
                let found = self.pool_ref(b, path, "backup_pool", pools, declared);
                if found.is_some() && b.get_ref() == r.pool.get_ref() {
                    let msg = format!("backup_pool \"{}\" is the same as pool", b.get_ref());
                    self.problem(b.span(), path, msg);
                    ok = false;
                }
                ok &= found.is_some();
                found.map(|p| p.name.clone())
            }
        };
        let failover = match r.failover.as_ref().map(|f| (*f.get_ref(), f.span())) {
            None => inherited.failover,
            Some((RawFailover::Auto, _)) => FailoverMode::Auto,
            Some((RawFailover::Local, _)) => FailoverMode::Local,
            Some((RawFailover::Remote, span)) => {
                if r.backup_pool.is_none() {
                    self.problem(
                        span,
                        path,
                        "failover = \"remote\" needs a backup_pool to send traffic to",
                    );
                    ok = false;
                }
                FailoverMode::Remote
            }
        };
        let min_healthy = match (&r.min_healthy, pool) {
            (None, _) => Some(1),
            (Some(m), Some(pool)) => self.min_healthy(m, path, pool),
            (Some(_), None) => None,
        };
        let failback_after = self.duration(
            &r.failback_after,
            path,
            "failback_after",
            inherited.failback_after,
            true,
        );
        let name = match &r.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                self.problem(n.span(), path, "name must not be empty");
                ok = false;
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => patterns.first().map(|p| p.to_string()).unwrap_or_default(),
        };
        if !ok {
            return None;
        }
        Some(SniRoute {
            name,
            patterns,
            pool: pool?.name.clone(),
            backup_pool,
            failover,
            min_healthy: min_healthy?,
            failback_after: failback_after?,
        })
    }

    /// `max_connections_per_source`, `max_rate_per_source`, `source_prefix_v6`.
    pub(super) fn source_limits(
        &mut self,
        rs: &RawService,
        path: &str,
        protocol: Protocol,
    ) -> Option<SourceLimits> {
        let mut ok = true;
        let max_connections = match &rs.max_connections_per_source {
            None => 0,
            Some(m) => match u32::try_from(*m.get_ref()) {
                Ok(v) if v <= 10_000_000 => v,
                _ => {
                    let msg = format!(
                        "max_connections_per_source {} is out of range, expected 0..=10000000 \
                         (0: no limit)",
                        m.get_ref()
                    );
                    self.problem(m.span(), path, msg);
                    ok = false;
                    0
                }
            },
        };
        let rate = match &rs.max_rate_per_source {
            None => None,
            Some(r) => match Rate::parse(r.get_ref()) {
                Ok(rate) => rate,
                Err(e) => {
                    let msg = format!("max_rate_per_source \"{}\" {e}", r.get_ref());
                    self.problem(r.span(), path, msg);
                    ok = false;
                    None
                }
            },
        };
        let prefix_v6 = match &rs.source_prefix_v6 {
            None => DEFAULT_SOURCE_PREFIX_V6,
            Some(p) => match u8::try_from(*p.get_ref()) {
                Ok(v) if (1..=128).contains(&v) => v,
                _ => {
                    let msg = format!(
                        "source_prefix_v6 {} is out of range, expected 1..=128",
                        p.get_ref()
                    );
                    self.problem(p.span(), path, msg);
                    ok = false;
                    DEFAULT_SOURCE_PREFIX_V6
                }
            },
        };
        let limits = SourceLimits {
            max_connections,
            rate,
            prefix_v6,
        };
        if protocol == Protocol::Udp && limits.is_active() {
            let span = rs
                .max_connections_per_source
                .as_ref()
                .map(|m| m.span())
                .or(rs.max_rate_per_source.as_ref().map(|r| r.span()))
                .unwrap_or(rs.name.span());
            self.problem(
                span,
                path,
                "limits per source apply to tcp services only (a udp service caps sessions \
                 with max_connections)",
            );
            ok = false;
        }
        ok.then_some(limits)
    }
}
