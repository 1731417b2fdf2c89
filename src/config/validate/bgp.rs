//! `[bgp]`, `[[bgp.peer]]` and a service's `announce`: the speaker's settings and what a
//! service may announce. Part of [`super`]'s `Cx`, split out for length.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::Cx;
use crate::config::raw::{RawBgp, RawBgpPeer};
use crate::config::{Bgp, BgpPeer, DEFAULT_BGP_HOLD_TIME, DEFAULT_BGP_PORT};

/// AS_TRANS (RFC 6793): stands for a 4-octet AS number in 2-octet fields, never a real AS.
const AS_TRANS: i64 = 23456;

impl Cx<'_> {
    pub(super) fn bgp(&mut self, raw: RawBgp, table: Range<usize>) -> Option<Bgp> {
        let asn = self.asn(&raw.asn, "bgp", "asn");
        let router_id = match raw.router_id.get_ref().trim().parse::<Ipv4Addr>() {
            Ok(id) if !id.is_unspecified() => Some(id),
            _ => {
                self.problem(
                    raw.router_id.span(),
                    "bgp",
                    format!(
                        "router_id \"{}\" is not a BGP identifier: an IPv4 address other than 0.0.0.0 (e.g. the host's own address)",
                        raw.router_id.get_ref()
                    ),
                );
                None
            }
        };
        let hold_time = self.hold_time(raw.hold_time.as_ref());
        let mut peers: Vec<BgpPeer> = Vec::new();
        let mut ok = true;
        match &raw.peer {
            Some(list) if !list.get_ref().is_empty() => {
                for (i, p) in list.get_ref().iter().enumerate() {
                    let path = format!("bgp peer {}", i + 1);
                    match self.peer(p.get_ref(), &path) {
                        Some(peer)
                            if peers.iter().any(|q| q.socket_addr() == peer.socket_addr()) =>
                        {
                            self.problem(
                                p.get_ref().address.span(),
                                &path,
                                format!("duplicate peer {}", peer.socket_addr()),
                            );
                            ok = false;
                        }
                        Some(peer) => peers.push(peer),
                        None => ok = false,
                    }
                }
            }
            Some(list) => {
                self.problem(
                    list.span(),
                    "bgp",
                    "peer: at least one [[bgp.peer]] is needed",
                );
                ok = false;
            }
            None => {
                self.problem(
                    table,
                    "bgp",
                    "peer: at least one [[bgp.peer]] is needed (address and asn of a router)",
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Bgp {
            asn: asn?,
            router_id: router_id?,
            hold_time: hold_time?,
            peers,
        })
    }

    fn peer(&mut self, raw: &RawBgpPeer, path: &str) -> Option<BgpPeer> {
        let address = match raw.address.get_ref().trim().parse::<IpAddr>() {
            Ok(a) if !a.is_unspecified() => Some(a),
            _ => {
                let hint = if raw.address.get_ref().parse::<SocketAddr>().is_ok() {
                    " (the port goes in `port`)"
                } else {
                    ""
                };
                self.problem(
                    raw.address.span(),
                    path,
                    format!(
                        "address \"{}\" is not a router's IP address{hint}",
                        raw.address.get_ref()
                    ),
                );
                None
            }
        };
        let asn = self.asn(&raw.asn, path, "asn");
        let port = match &raw.port {
            None => Some(DEFAULT_BGP_PORT),
            Some(p) => self.port(p, path, "port", false),
        };
        Some(BgpPeer {
            address: address?,
            asn: asn?,
            port: port?,
        })
    }

    fn asn(&mut self, raw: &Spanned<i64>, path: &str, key: &str) -> Option<u32> {
        let v = *raw.get_ref();
        match u32::try_from(v) {
            Ok(asn) if asn != 0 && i64::from(asn) != AS_TRANS => Some(asn),
            _ => {
                let why = if v == AS_TRANS {
                    "23456 is AS_TRANS (RFC 6793), not an AS".to_string()
                } else {
                    format!("{v} is not an AS number (1..=4294967295)")
                };
                self.problem(raw.span(), path, format!("{key}: {why}"));
                None
            }
        }
    }

    fn hold_time(&mut self, raw: Option<&Spanned<String>>) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(DEFAULT_BGP_HOLD_TIME);
        };
        let d = self.duration(
            &Some(raw.clone()),
            "bgp",
            "hold_time",
            DEFAULT_BGP_HOLD_TIME,
            true,
        )?;
        let fits = d.subsec_nanos() == 0
            && (d.is_zero() || (3..=u64::from(u16::MAX)).contains(&d.as_secs()));
        if fits {
            return Some(d);
        }
        self.problem(
            raw.span(),
            "bgp",
            format!(
                "hold_time \"{}\" must be 0 (no keepalives) or whole seconds from 3s to 65535s (RFC 4271)",
                raw.get_ref()
            ),
        );
        None
    }

    /// Checks `announce = true` of a service listening on `listen`: a `[bgp]` table must exist
    /// and the address must be the service's own. Returns whether it is usable.
    pub(super) fn announce(
        &mut self,
        flag: &Spanned<bool>,
        raw_listen: &Spanned<String>,
        listen: Option<SocketAddr>,
        path: &str,
    ) -> bool {
        let mut ok = true;
        if !self.has_bgp {
            self.problem(
                flag.span(),
                path,
                "announce = true needs a [bgp] table (asn, router_id and at least one [[bgp.peer]])",
            );
            ok = false;
        }
        if let Some(l) = listen {
            if l.ip().is_unspecified() {
                self.problem(
                    raw_listen.span(),
                    path,
                    format!(
                        "announce: listen address {} is a wildcard; an announced service listens on the address it announces (/32 or /128)",
                        l.ip()
                    ),
                );
                ok = false;
            } else {
                self.announced
                    .push((l.ip(), raw_listen.span(), path.to_string()));
            }
        }
        ok
    }

    /// Each announced address needs a peer of its family: the next hop is the session's own
    /// address, so an IPv6 address cannot be announced over a session on IPv4 (and back).
    pub(super) fn announced_families(&mut self, bgp: Option<&Bgp>) {
        let Some(bgp) = bgp else {
            return;
        };
        for (ip, span, path) in std::mem::take(&mut self.announced) {
            if !bgp
                .peers
                .iter()
                .any(|p| p.address.is_ipv4() == ip.is_ipv4())
            {
                let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                self.problem(
                    span,
                    &path,
                    format!(
                        "announce: {ip} is {family} and no [[bgp.peer]] is; the next hop of an announcement is the session's own address, so an {family} address needs an {family} peer"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{DEFAULT_BGP_HOLD_TIME, parse};

    #[test]
    fn defaults_are_filled_and_announce_is_read() {
        let text = r#"
[bgp]
asn = 4200000000
router_id = "192.0.2.1"
  [[bgp.peer]]
  address = "192.0.2.254"
  asn = 65000
  [[bgp.peer]]
  address = "2001:db8::fe"
  asn = 65000
  port = 1179
[[pool]]
name = "p"
members = [{ addr = "127.0.1.1:80" }]
[[service]]
name = "s"
listen = "198.51.100.10:80"
pool = "p"
announce = true
[[service]]
name = "t"
listen = "[2001:db8::10]:80"
pool = "p"
"#;
        let c = parse(text, "t.toml").expect("valid");
        let bgp = c.bgp.expect("[bgp]");
        assert_eq!(bgp.asn, 4_200_000_000);
        assert_eq!(bgp.hold_time, DEFAULT_BGP_HOLD_TIME);
        assert_eq!(bgp.peers[0].port, 179);
        assert_eq!(
            bgp.peers[1].socket_addr().to_string(),
            "[2001:db8::fe]:1179"
        );
        assert!(c.services[0].announce);
        assert!(!c.services[1].announce);
    }

    #[test]
    fn hold_time_zero_is_allowed() {
        let text = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\nhold_time = \"0s\"\n[[bgp.peer]]\naddress = \"192.0.2.254\"\nasn = 65000\n";
        let c = parse(text, "t.toml").expect("valid");
        assert!(c.bgp.expect("[bgp]").hold_time.is_zero());
    }
}
