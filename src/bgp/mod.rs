//! BGP announcements of service addresses: a built-in, announce-only speaker.
//!
//! Large sites run several active tandem instances behind their routers and have each announce
//! the addresses of the services it can serve. The speaker lives in the tandem process on
//! purpose (fate-sharing): when tandem dies the kernel closes its BGP connections and the
//! routers withdraw its routes at once; when it hangs, the routers' hold timers expire
//! (`[bgp] hold_time`, 9 s by default); a graceful stop withdraws first and drains after. An
//! external daemon (ExaBGP, GoBGP, BIRD) would keep announcing through a crash of tandem
//! unless a health link between the two were added and itself kept healthy.
//!
//! - [`codec`] reads and writes BGP messages (pure);
//! - [`session`] is one session's state machine, timers included (pure, clock passed in);
//! - [`announce`] derives what to announce from the routing snapshot (pure);
//! - [`speaker`] runs it: one task per peer doing the TCP I/O (`peer.rs`), and one that recomputes the
//!   announcements on every health, failover and reload event and hands the peers the set;
//! - [`handoff`] carries the established sessions through a binary upgrade, connections
//!   included, so an upgrade withdraws nothing.
//!
//! The speaker never installs a route it hears, never listens for connections (it connects
//! to its peers) and never touches the data path.

pub mod announce;
pub mod codec;
pub mod handoff;
mod peer;
pub mod session;
pub mod speaker;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

pub use codec::Prefix;
pub use session::State;
pub use speaker::Speaker;

/// What the operator surface shows of the speaker: shared by the speaker's tasks (which write
/// it) and the admin API (which reads it). Locks are held for a copy, never across an await.
#[derive(Debug, Default)]
pub struct Status {
    peers: Mutex<Vec<PeerStatus>>,
    services: Mutex<Vec<announce::Announcement>>,
}

/// One peer as status and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub peer: SocketAddr,
    pub asn: u32,
    pub state: State,
    /// When `state` was entered.
    pub since: SystemTime,
    /// Why the last session ended or the last connection failed.
    pub last_error: Option<String>,
    /// Prefixes the peer has from us.
    pub advertised: usize,
    /// Sessions established since the peer was configured.
    pub established: u64,
    pub updates_sent: u64,
}

impl Status {
    /// Every configured peer, in config order.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Every service with `announce = true`, by name, and whether its address is announced.
    pub fn services(&self) -> Vec<announce::Announcement> {
        self.services.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update_peer(&self, peer: SocketAddr, f: impl FnOnce(&mut PeerStatus)) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(p) = peers.iter_mut().find(|p| p.peer == peer)
        {
            f(p);
        }
    }

    fn set_peers(&self, list: Vec<PeerStatus>) {
        if let Ok(mut peers) = self.peers.lock() {
            *peers = list;
        }
    }

    fn set_services(&self, list: Vec<announce::Announcement>) {
        if let Ok(mut services) = self.services.lock() {
            *services = list;
        }
    }

    /// The Prometheus text of the speaker: `tandem_bgp_session_up{peer}`,
    /// `tandem_bgp_session_established_total{peer}`, `tandem_bgp_updates_sent_total{peer}`,
    /// `tandem_bgp_advertised_prefixes{peer}` and `tandem_bgp_announced{service,prefix}`. Written
    /// by hand rather than through the recorder, so a peer or service removed by a reload
    /// leaves no stale series behind. Nothing when `[bgp]` is not configured.
    pub fn render_metrics(&self, out: &mut String) {
        let peers = self.peers();
        let services = self.services();
        if peers.is_empty() && services.is_empty() {
            return;
        }
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let peer = |p: &PeerStatus| format!("peer=\"{}\"", p.peer);
        family(
            "tandem_bgp_session_up",
            "gauge",
            "1 when the BGP session with the peer is established.",
            peers
                .iter()
                .map(|p| (peer(p), u64::from(p.state == State::Established)))
                .collect(),
        );
        family(
            "tandem_bgp_session_established_total",
            "counter",
            "BGP sessions established with the peer.",
            peers.iter().map(|p| (peer(p), p.established)).collect(),
        );
        family(
            "tandem_bgp_updates_sent_total",
            "counter",
            "BGP UPDATE messages sent to the peer.",
            peers.iter().map(|p| (peer(p), p.updates_sent)).collect(),
        );
        family(
            "tandem_bgp_advertised_prefixes",
            "gauge",
            "Prefixes the peer has from this tandem.",
            peers
                .iter()
                .map(|p| (peer(p), p.advertised as u64))
                .collect(),
        );
        family(
            "tandem_bgp_announced",
            "gauge",
            "1 while the service can serve and its address is announced (announce = true).",
            services
                .iter()
                .map(|s| {
                    (
                        format!(
                            "service=\"{}\",prefix=\"{}\"",
                            escape_label(&s.service),
                            s.prefix
                        ),
                        u64::from(s.announced),
                    )
                })
                .collect(),
        );
    }

    /// The `bgp` object of `/status`; `null` when `[bgp]` is not configured.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let peers = self.peers();
        if peers.is_empty() {
            return serde_json::Value::Null;
        }
        let at = |t: &SystemTime| humantime::format_rfc3339_seconds(*t).to_string();
        json!({
            "peers": peers.iter().map(|p| json!({
                "peer": p.peer.to_string(),
                "asn": p.asn,
                "state": p.state.as_str(),
                "up": p.state == State::Established,
                "since": at(&p.since),
                "last_error": p.last_error,
                "advertised": p.advertised,
                "established": p.established,
                "updates_sent": p.updates_sent,
            })).collect::<Vec<_>>(),
            "announcements": self.services().iter().map(|s| json!({
                "service": s.service,
                "prefix": s.prefix.to_string(),
                "announced": s.announced,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
