//! One BGP session as a state machine (the subset of RFC 4271 section 8 an announce-only
//! speaker needs): OPEN exchange, hold and keepalive timers, and the UPDATEs that take the
//! routes the peer has from us to the set we want it to have.
//!
//! Pure: the caller owns the TCP connection and the clock. It reports what happened
//! ([`Session::connected`], [`Session::receive`], [`Session::timers`], [`Session::sync`],
//! [`Session::closed`]) with the time, and sends what comes back. A session going down is a
//! [`Down`]: the NOTIFICATION to send, if any, and the reason to log. Nothing here sleeps, so
//! the tests drive it on tokio's paused clock.
//!
//! What it announces: each wanted prefix of the session's own family (IPv4 prefixes on a session
//! over IPv4, IPv6 ones over IPv6: the next hop is the session's local address, and a session has
//! one of one family) when the peer negotiated that family. It never installs what the peer
//! sends: UPDATEs from the peer only restart the hold timer.
//!
//! A binary upgrade moves an Established session from one process to the next with its TCP
//! connection: [`Session::hand_over`] writes down what the peer has from us and where the
//! timers stand, [`Session::adopt`] takes it up again; the router sees nothing happen.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::codec::{
    self, AFI_IPV4, AFI_IPV6, Attribute, Capability, Message, Notification, Open, Prefix,
    SAFI_UNICAST, Update, error,
};

/// The hold time while waiting for the peer's OPEN (RFC 4271 8.2.2 suggests 4 minutes).
pub const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Prefixes per UPDATE: 200 IPv6 /128s take 3.4 KB, under the 4096-octet limit with the
/// attributes.
const PREFIXES_PER_UPDATE: usize = 200;
/// LOCAL_PREF sent to internal peers (the usual default).
const LOCAL_PREF: u32 = 100;

/// What a session is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds: 0 or at least 3.
    pub hold_time: u16,
    pub peer_asn: u32,
}

/// Where the session is (RFC 4271's Connect and Active are the caller's: no TCP yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    /// The name shown in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::OpenSent => "open_sent",
            State::OpenConfirm => "open_confirm",
            State::Established => "established",
        }
    }
}

/// The session went down: send `notify` (if any) and close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    pub notify: Option<Notification>,
    pub reason: String,
}

impl Down {
    fn notify(notification: Notification, reason: impl Into<String>) -> Down {
        Down {
            notify: Some(notification),
            reason: reason.into(),
        }
    }
}

/// What the peer said in its OPEN, once accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    pub peer_router_id: Ipv4Addr,
    /// The hold time both sides use: the smaller of the two proposals (0: no timers).
    pub hold: Duration,
    pub four_octet_as: bool,
    pub ipv4: bool,
    pub ipv6: bool,
}

/// An Established session as a binary upgrade carries it to the next process, beside its TCP
/// connection. Times travel as what is left of them, not as instants: a monotonic instant
/// means nothing in another process. Checked by [`Session::adopt`]: it comes from another
/// process and is not trusted to be well formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The settings the session was opened with: an adopting process with other settings
    /// (a changed `asn`, `router_id`, `hold_time` or peer AS) needs a new OPEN.
    pub params: Params,
    /// Our address on the connection: the next hop of what we announced.
    pub local: IpAddr,
    pub negotiated: Negotiated,
    /// What the peer has from us, as (address, length).
    pub advertised: Vec<(IpAddr, u8)>,
    /// Milliseconds left before the hold timer expires; `None` without a hold timer.
    pub hold_left_ms: Option<u64>,
    /// Milliseconds until the next KEEPALIVE is due; `None` without a hold timer.
    pub keepalive_in_ms: Option<u64>,
}

/// One session with one peer.
#[derive(Debug)]
pub struct Session {
    params: Params,
    state: State,
    /// The local address of the TCP connection: the next hop, and the family announced.
    local: Option<IpAddr>,
    negotiated: Option<Negotiated>,
    hold_deadline: Option<Instant>,
    keepalive_at: Option<Instant>,
    /// What the peer has from us now.
    advertised: BTreeSet<Prefix>,
}

impl Session {
    pub fn new(params: Params) -> Session {
        Session {
            params,
            state: State::Idle,
            local: None,
            negotiated: None,
            hold_deadline: None,
            keepalive_at: None,
            advertised: BTreeSet::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// What the OPEN exchange settled, from OpenConfirm on.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The prefixes the peer has from us.
    pub fn advertised(&self) -> &BTreeSet<Prefix> {
        &self.advertised
    }

    /// Whether AS numbers travel in 4 octets on this session (decides how AS_PATH is coded).
    pub fn four_octet_as(&self) -> bool {
        self.negotiated.as_ref().is_some_and(|n| n.four_octet_as)
    }

    /// The session as a binary upgrade hands it over at `now`; `None` unless Established (a
    /// session still opening is closed instead, and the next process opens its own).
    pub fn hand_over(&self, now: Instant) -> Option<Handoff> {
        if self.state != State::Established {
            return None;
        }
        let left = |at: Option<Instant>| {
            at.map(|at| {
                u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
            })
        };
        Some(Handoff {
            params: self.params.clone(),
            local: self.local?,
            negotiated: self.negotiated.clone()?,
            advertised: self.advertised.iter().map(|p| (p.addr, p.len)).collect(),
            hold_left_ms: left(self.hold_deadline),
            keepalive_in_ms: left(self.keepalive_at),
        })
    }

    /// Takes up at `now` a session another process handed over; the caller owns its TCP
    /// connection. Refused (with the reason) when it was opened with other settings than
    /// `params`, or does not hold together. The timers go on where they stood, never later
    /// than a full interval from now.
    pub fn adopt(params: Params, handoff: Handoff, now: Instant) -> Result<Session, String> {
        if handoff.params != params {
            return Err(format!(
                "it was opened with other settings ({:?}, now {:?})",
                handoff.params, params
            ));
        }
        let hold = handoff.negotiated.hold;
        // The hold time is a 16-bit count of seconds in the OPEN; more cannot have been agreed.
        if hold > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(format!("a hold time of {}s", hold.as_secs()));
        }
        let mut advertised = BTreeSet::new();
        for (addr, len) in handoff.advertised {
            match Prefix::new(addr, len) {
                Some(p) if p.addr == addr => advertised.insert(p),
                _ => return Err(format!("an advertised prefix {addr}/{len} that is not one")),
            };
        }
        let family = |ip: IpAddr| ip.is_ipv4();
        if advertised
            .iter()
            .any(|p| family(p.addr) != family(handoff.local))
        {
            return Err("an advertised prefix of the other family".to_string());
        }
        // Missing: the hold timer starts afresh, the KEEPALIVE goes at once.
        let left = |v: Option<u64>, missing: Duration, cap: Duration| {
            v.map_or(missing, Duration::from_millis).min(cap)
        };
        let hold_deadline = (!hold.is_zero()).then(|| now + left(handoff.hold_left_ms, hold, hold));
        let keepalive_at = keepalive_interval(hold)
            .map(|every| now + left(handoff.keepalive_in_ms, Duration::ZERO, every));
        Ok(Session {
            params,
            state: State::Established,
            local: Some(handoff.local),
            negotiated: Some(handoff.negotiated),
            hold_deadline,
            keepalive_at,
            advertised,
        })
    }

    /// The TCP connection is up, with `local` our address on it: the OPEN to send.
    pub fn connected(&mut self, local: IpAddr, now: Instant) -> Vec<Message> {
        self.closed();
        self.local = Some(local);
        self.state = State::OpenSent;
        self.hold_deadline = Some(now + OPEN_HOLD);
        let p = &self.params;
        vec![Message::Open(Open {
            asn: p.local_asn,
            hold_time: p.hold_time,
            router_id: p.router_id,
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::Multiprotocol {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                },
                Capability::FourOctetAs(p.local_asn),
            ],
        })]
    }

    /// The connection closed (or is being closed): back to Idle. The peer drops our routes
    /// with the session, so nothing is advertised any more.
    pub fn closed(&mut self) {
        self.state = State::Idle;
        self.local = None;
        self.negotiated = None;
        self.hold_deadline = None;
        self.keepalive_at = None;
        self.advertised.clear();
    }

    /// A message from the peer: what to send back, or why the session ends. Once Established,
    /// the reply brings the peer to `wanted`.
    pub fn receive(
        &mut self,
        message: Message,
        wanted: &BTreeSet<Prefix>,
        now: Instant,
    ) -> Result<Vec<Message>, Down> {
        let fsm = |what: &str| {
            Down::notify(
                Notification::new(error::FSM, 0),
                format!("unexpected {what} in state {}", self.state.as_str()),
            )
        };
        let result = match (self.state, message) {
            (_, Message::Notification(n)) => Err(Down {
                notify: None,
                reason: format!("peer sent NOTIFICATION: {n}"),
            }),
            (State::OpenSent, Message::Open(open)) => self.accept_open(&open, now),
            (State::OpenConfirm, Message::Keepalive) => {
                self.state = State::Established;
                self.restart_hold(now);
                Ok(self.sync(wanted))
            }
            (State::Established, Message::Keepalive | Message::Update(_)) => {
                self.restart_hold(now);
                Ok(Vec::new())
            }
            (_, Message::Open(_)) => Err(fsm("OPEN")),
            (_, Message::Update(_)) => Err(fsm("UPDATE")),
            (_, Message::Keepalive) => Err(fsm("KEEPALIVE")),
        };
        if result.is_err() {
            self.closed();
        }
        result
    }

    fn accept_open(&mut self, open: &Open, now: Instant) -> Result<Vec<Message>, Down> {
        let p = &self.params;
        if open.asn != p.peer_asn {
            let mut n = Notification::new(error::OPEN, error::OPEN_BAD_PEER_AS);
            n.data = u16::try_from(open.asn)
                .unwrap_or(codec::AS_TRANS)
                .to_be_bytes()
                .to_vec();
            return Err(Down::notify(
                n,
                format!("peer is AS {}, configured as AS {}", open.asn, p.peer_asn),
            ));
        }
        if open.router_id.is_unspecified() || open.router_id == p.router_id {
            return Err(Down::notify(
                Notification::new(error::OPEN, error::OPEN_BAD_BGP_ID),
                format!("peer's BGP identifier {} is not usable", open.router_id),
            ));
        }
        let hold = Duration::from_secs(u64::from(p.hold_time.min(open.hold_time)));
        self.negotiated = Some(Negotiated {
            peer_router_id: open.router_id,
            hold,
            four_octet_as: open.four_octet_as(),
            ipv4: open.supports(AFI_IPV4, SAFI_UNICAST),
            ipv6: open.supports(AFI_IPV6, SAFI_UNICAST),
        });
        self.state = State::OpenConfirm;
        self.restart_hold(now);
        self.keepalive_at = keepalive_interval(hold).map(|every| now + every);
        Ok(vec![Message::Keepalive])
    }

    fn restart_hold(&mut self, now: Instant) {
        let hold = self.negotiated.as_ref().map_or(OPEN_HOLD, |n| n.hold);
        self.hold_deadline = (!hold.is_zero()).then(|| now + hold);
    }

    /// The next time [`Session::timers`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.hold_deadline, self.keepalive_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers at `now`: a KEEPALIVE when one is due; the session ends when the peer
    /// has been silent for the hold time.
    pub fn timers(&mut self, now: Instant) -> Result<Vec<Message>, Down> {
        if self.hold_deadline.is_some_and(|d| now >= d) {
            let hold = self.negotiated.as_ref().map_or(OPEN_HOLD, |n| n.hold);
            self.closed();
            return Err(Down::notify(
                Notification::new(error::HOLD_TIMER_EXPIRED, 0),
                format!(
                    "hold timer expired: nothing from the peer for {}s",
                    hold.as_secs()
                ),
            ));
        }
        let mut out = Vec::new();
        if let Some(at) = self.keepalive_at
            && now >= at
        {
            let every = self
                .negotiated
                .as_ref()
                .and_then(|n| keepalive_interval(n.hold));
            self.keepalive_at = every.map(|e| now + e);
            out.push(Message::Keepalive);
        }
        Ok(out)
    }

    /// The UPDATEs that bring the peer from what it has to `wanted` (only the prefixes this
    /// session can carry); none before Established. The caller sends them all, in order.
    pub fn sync(&mut self, wanted: &BTreeSet<Prefix>) -> Vec<Message> {
        let (Some(local), Some(n), State::Established) =
            (self.local, self.negotiated.clone(), self.state)
        else {
            return Vec::new();
        };
        let carried = |p: &&Prefix| match (p.addr, local) {
            (IpAddr::V4(_), IpAddr::V4(_)) => n.ipv4,
            (IpAddr::V6(_), IpAddr::V6(_)) => n.ipv6,
            _ => false,
        };
        let target: BTreeSet<Prefix> = wanted.iter().filter(carried).copied().collect();
        let withdraw: Vec<Prefix> = self.advertised.difference(&target).copied().collect();
        let announce: Vec<Prefix> = target.difference(&self.advertised).copied().collect();
        let mut out = Vec::new();
        for chunk in withdraw.chunks(PREFIXES_PER_UPDATE) {
            out.push(Message::Update(withdrawal(chunk)));
        }
        for chunk in announce.chunks(PREFIXES_PER_UPDATE) {
            out.push(Message::Update(self.announcement(chunk, local, &n)));
        }
        self.advertised = target;
        out
    }

    fn announcement(&self, prefixes: &[Prefix], local: IpAddr, n: &Negotiated) -> Update {
        let p = &self.params;
        let internal = p.local_asn == p.peer_asn;
        let mut attributes = vec![Attribute::Origin(0)];
        // eBGP: our AS is the whole path; iBGP: the path is empty (RFC 4271 5.1.2).
        let path = if internal {
            Vec::new()
        } else {
            vec![(2, vec![p.local_asn])]
        };
        let needs_as4 = !n.four_octet_as && p.local_asn > u32::from(u16::MAX) && !internal;
        attributes.push(Attribute::AsPath(path.clone()));
        if internal {
            attributes.push(Attribute::LocalPref(LOCAL_PREF));
        }
        if needs_as4 {
            // The 2-octet AS_PATH carries AS_TRANS; the real path rides beside it.
            attributes.push(Attribute::As4Path(path));
        }
        match local {
            IpAddr::V4(nh) => {
                attributes.push(Attribute::NextHop(nh));
                Update {
                    withdrawn: Vec::new(),
                    attributes,
                    nlri: prefixes.to_vec(),
                }
            }
            IpAddr::V6(nh) => {
                attributes.push(Attribute::MpReach {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                    next_hop: nh.octets().to_vec(),
                    nlri: prefixes.to_vec(),
                });
                Update {
                    withdrawn: Vec::new(),
                    attributes,
                    nlri: Vec::new(),
                }
            }
        }
    }
}

/// An UPDATE withdrawing `prefixes` (all of one family).
fn withdrawal(prefixes: &[Prefix]) -> Update {
    match prefixes.first().map(Prefix::afi) {
        Some(AFI_IPV6) => Update {
            withdrawn: Vec::new(),
            attributes: vec![Attribute::MpUnreach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                withdrawn: prefixes.to_vec(),
            }],
            nlri: Vec::new(),
        },
        _ => Update {
            withdrawn: prefixes.to_vec(),
            attributes: Vec::new(),
            nlri: Vec::new(),
        },
    }
}

/// A third of the hold time (RFC 4271 10), at least a second; `None` without a hold time.
fn keepalive_interval(hold: Duration) -> Option<Duration> {
    (!hold.is_zero()).then(|| (hold / 3).max(Duration::from_secs(1)))
}

/// Time between connection attempts: 1 s, doubling up to 30 s, back to 1 s once a session
/// was established. RFC 4271's ConnectRetryTimer suggests 120 s; a balancer that has just
/// restarted wants its routes back sooner, and one attempt a second costs a router nothing.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests;
