use std::net::Ipv6Addr;

use super::*;

fn params() -> Params {
    Params {
        local_asn: 65010,
        router_id: "192.0.2.1".parse().expect("ip"),
        hold_time: 9,
        peer_asn: 65000,
    }
}

fn peer_open(hold_time: u16) -> Message {
    Message::Open(Open {
        asn: 65000,
        hold_time,
        router_id: "192.0.2.254".parse().expect("ip"),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::FourOctetAs(65000),
        ],
    })
}

fn set(prefixes: &[&str]) -> BTreeSet<Prefix> {
    prefixes
        .iter()
        .map(|p| Prefix::host(p.parse().expect("ip")))
        .collect()
}

/// A session brought to Established on the paused clock, wanting `wanted`; returns what it
/// sent on the way in.
fn established(wanted: &BTreeSet<Prefix>) -> (Session, Vec<Message>) {
    let mut s = Session::new(params());
    let now = Instant::now();
    let open = s.connected("192.0.2.1".parse().expect("ip"), now);
    assert!(matches!(&open[..], [Message::Open(o)] if o.hold_time == 9 && o.four_octet_as()));
    assert_eq!(s.state(), State::OpenSent);
    let reply = s
        .receive(peer_open(90), wanted, now)
        .expect("OPEN accepted");
    assert_eq!(reply, vec![Message::Keepalive]);
    assert_eq!(s.state(), State::OpenConfirm);
    let updates = s
        .receive(Message::Keepalive, wanted, now)
        .expect("KEEPALIVE accepted");
    assert_eq!(s.state(), State::Established);
    (s, updates)
}

#[tokio::test(start_paused = true)]
async fn established_announces_what_is_wanted_with_the_session_address_as_next_hop() {
    let (s, updates) = established(&set(&["198.51.100.10", "198.51.100.11"]));
    let [Message::Update(u)] = &updates[..] else {
        panic!("one UPDATE: {updates:?}");
    };
    assert_eq!(u.nlri.len(), 2);
    assert!(u.withdrawn.is_empty());
    assert_eq!(
        u.attributes,
        vec![
            Attribute::Origin(0),
            Attribute::AsPath(vec![(2, vec![65010])]),
            Attribute::NextHop("192.0.2.1".parse().expect("ip")),
        ]
    );
    assert_eq!(s.advertised().len(), 2);
    assert_eq!(
        s.negotiated().map(|n| n.hold),
        Some(Duration::from_secs(9)),
        "the smaller hold time wins"
    );
}

#[tokio::test(start_paused = true)]
async fn sync_sends_only_the_difference() {
    let (mut s, _) = established(&set(&["198.51.100.10", "198.51.100.11"]));
    let updates = s.sync(&set(&["198.51.100.11", "198.51.100.12"]));
    let [Message::Update(w), Message::Update(a)] = &updates[..] else {
        panic!("a withdrawal and an announcement: {updates:?}");
    };
    assert_eq!(w.withdrawn, Vec::from_iter(set(&["198.51.100.10"])));
    assert!(w.attributes.is_empty() && w.nlri.is_empty());
    assert_eq!(a.nlri, Vec::from_iter(set(&["198.51.100.12"])));
    assert!(s.sync(&set(&["198.51.100.11", "198.51.100.12"])).is_empty());
    // Withdrawing everything (shutdown).
    let updates = s.sync(&BTreeSet::new());
    assert!(matches!(&updates[..], [Message::Update(u)] if u.withdrawn.len() == 2));
    assert!(s.advertised().is_empty());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_announced_before_established_or_of_the_other_family() {
    let mut s = Session::new(params());
    assert!(s.sync(&set(&["198.51.100.10"])).is_empty());
    let (mut s2, updates) = established(&set(&["2001:db8::10"]));
    assert!(updates.is_empty(), "an IPv6 prefix on an IPv4 session");
    assert!(s2.sync(&set(&["2001:db8::10", "198.51.100.1"])).len() == 1);
    s.closed();
}

#[tokio::test(start_paused = true)]
async fn ipv6_prefixes_go_in_mp_reach_with_the_v6_session_address() {
    let mut s = Session::new(params());
    let now = Instant::now();
    let local: Ipv6Addr = "2001:db8::1".parse().expect("ip");
    s.connected(IpAddr::V6(local), now);
    let Message::Open(mut open) = peer_open(90) else {
        unreachable!()
    };
    open.capabilities.push(Capability::Multiprotocol {
        afi: AFI_IPV6,
        safi: SAFI_UNICAST,
    });
    let wanted = set(&["2001:db8::10"]);
    s.receive(Message::Open(open), &wanted, now).expect("OPEN");
    let updates = s.receive(Message::Keepalive, &wanted, now).expect("KA");
    let [Message::Update(u)] = &updates[..] else {
        panic!("one UPDATE: {updates:?}");
    };
    assert!(u.nlri.is_empty());
    assert!(u.attributes.contains(&Attribute::MpReach {
        afi: AFI_IPV6,
        safi: SAFI_UNICAST,
        next_hop: local.octets().to_vec(),
        nlri: Vec::from_iter(wanted.clone()),
    }));
    let updates = s.sync(&BTreeSet::new());
    assert!(matches!(&updates[..], [Message::Update(u)]
        if matches!(&u.attributes[..], [Attribute::MpUnreach { withdrawn, .. }] if withdrawn.len() == 1)));
}

#[tokio::test(start_paused = true)]
async fn internal_peers_get_an_empty_path_and_local_pref() {
    let mut p = params();
    p.peer_asn = 65010;
    let mut s = Session::new(p);
    let now = Instant::now();
    s.connected("192.0.2.1".parse().expect("ip"), now);
    let Message::Open(mut open) = peer_open(90) else {
        unreachable!()
    };
    open.asn = 65010;
    let wanted = set(&["198.51.100.10"]);
    s.receive(Message::Open(open), &wanted, now).expect("OPEN");
    let updates = s.receive(Message::Keepalive, &wanted, now).expect("KA");
    let [Message::Update(u)] = &updates[..] else {
        panic!("one UPDATE");
    };
    assert!(u.attributes.contains(&Attribute::AsPath(vec![])));
    assert!(u.attributes.contains(&Attribute::LocalPref(100)));
}

#[tokio::test(start_paused = true)]
async fn a_four_octet_as_reaches_a_two_octet_peer_as_as_trans_with_as4_path() {
    let mut p = params();
    p.local_asn = 4_200_000_000;
    let mut s = Session::new(p);
    let now = Instant::now();
    s.connected("192.0.2.1".parse().expect("ip"), now);
    let Message::Open(mut open) = peer_open(90) else {
        unreachable!()
    };
    open.capabilities.clear();
    let wanted = set(&["198.51.100.10"]);
    s.receive(Message::Open(open), &wanted, now).expect("OPEN");
    let updates = s.receive(Message::Keepalive, &wanted, now).expect("KA");
    assert!(!s.four_octet_as());
    let bytes = updates[0].encode(false);
    let Ok(Message::Update(u)) = codec::decode(&bytes, false) else {
        panic!("decodes");
    };
    assert!(u.attributes.contains(&Attribute::AsPath(vec![(
        2,
        vec![u32::from(codec::AS_TRANS)]
    )])));
    assert!(
        u.attributes
            .contains(&Attribute::As4Path(vec![(2, vec![4_200_000_000])]))
    );
}

#[tokio::test(start_paused = true)]
async fn keepalives_every_third_of_the_hold_time_and_the_hold_timer_ends_a_silent_session() {
    let (mut s, _) = established(&BTreeSet::new());
    let start = Instant::now();
    assert_eq!(s.deadline(), Some(start + Duration::from_secs(3)));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(s.timers(Instant::now()), Ok(vec![Message::Keepalive]));
    // The peer talks at 5 s: its hold timer restarts, ours ends 9 s after that.
    tokio::time::advance(Duration::from_secs(2)).await;
    s.receive(Message::Keepalive, &BTreeSet::new(), Instant::now())
        .expect("KEEPALIVE");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(s.timers(Instant::now()), Ok(vec![Message::Keepalive]));
    tokio::time::advance(Duration::from_millis(7_999)).await;
    assert!(
        s.timers(Instant::now()).is_ok(),
        "still within the hold time"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let down = s.timers(Instant::now()).expect_err("hold timer expired");
    assert_eq!(down.notify.map(|n| n.code), Some(error::HOLD_TIMER_EXPIRED));
    assert_eq!(s.state(), State::Idle);
    assert!(s.advertised().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hold_time_of_zero_means_no_timers() {
    let mut s = Session::new(params());
    let now = Instant::now();
    s.connected("192.0.2.1".parse().expect("ip"), now);
    s.receive(peer_open(0), &BTreeSet::new(), now)
        .expect("OPEN");
    s.receive(Message::Keepalive, &BTreeSet::new(), now)
        .expect("KA");
    assert_eq!(s.deadline(), None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(s.timers(Instant::now()), Ok(vec![]));
}

#[tokio::test(start_paused = true)]
async fn a_peer_of_another_as_is_refused_with_bad_peer_as() {
    let mut p = params();
    p.peer_asn = 65001;
    let mut s = Session::new(p);
    let now = Instant::now();
    s.connected("192.0.2.1".parse().expect("ip"), now);
    let down = s
        .receive(peer_open(90), &BTreeSet::new(), now)
        .expect_err("AS 65000 is not 65001");
    let n = down.notify.expect("a NOTIFICATION");
    assert_eq!((n.code, n.subcode), (error::OPEN, error::OPEN_BAD_PEER_AS));
    assert_eq!(s.state(), State::Idle);
}

#[tokio::test(start_paused = true)]
async fn out_of_order_messages_are_fsm_errors_and_a_notification_ends_the_session() {
    let mut s = Session::new(params());
    let now = Instant::now();
    s.connected("192.0.2.1".parse().expect("ip"), now);
    let down = s
        .receive(Message::Keepalive, &BTreeSet::new(), now)
        .expect_err("KEEPALIVE before OPEN");
    assert_eq!(down.notify.map(|n| n.code), Some(error::FSM));
    let (mut s, _) = established(&BTreeSet::new());
    let down = s
        .receive(
            Message::Notification(Notification::new(error::CEASE, 2)),
            &BTreeSet::new(),
            Instant::now(),
        )
        .expect_err("the peer ceased");
    assert_eq!(down.notify, None, "no NOTIFICATION answers a NOTIFICATION");
    assert_eq!(s.state(), State::Idle);
}

#[tokio::test(start_paused = true)]
async fn the_open_wait_is_bounded() {
    let mut s = Session::new(params());
    s.connected("192.0.2.1".parse().expect("ip"), Instant::now());
    tokio::time::advance(OPEN_HOLD).await;
    assert!(s.timers(Instant::now()).is_err());
}

#[test]
fn many_prefixes_split_into_updates_that_fit() {
    let wanted: BTreeSet<Prefix> = (0..1000u32)
        .map(|i| Prefix::host(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_, updates) = established(&wanted);
        assert_eq!(updates.len(), 5);
        for u in &updates {
            assert!(u.encode(true).len() <= codec::MAX_MESSAGE_LEN);
        }
    });
}

#[test]
fn backoff_doubles_to_a_cap_and_resets() {
    let mut b = Backoff::new();
    let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_handed_over_session_goes_on_where_it_stood() {
    let wanted = set(&["198.51.100.10", "198.51.100.11"]);
    let (old, _) = established(&wanted);
    // 2 s in: the next KEEPALIVE is 1 s away, the peer's hold timer has 7 s left.
    tokio::time::advance(Duration::from_secs(2)).await;
    let handoff = old.hand_over(Instant::now()).expect("Established");
    assert_eq!(handoff.keepalive_in_ms, Some(1_000));
    assert_eq!(handoff.hold_left_ms, Some(7_000));
    // Through JSON, as it travels between the processes.
    let json = serde_json::to_vec(&handoff).expect("serialize");
    let handoff: Handoff = serde_json::from_slice(&json).expect("deserialize");

    tokio::time::advance(Duration::from_millis(50)).await;
    let mut new = Session::adopt(params(), handoff, Instant::now()).expect("adopted");
    assert_eq!(new.state(), State::Established);
    assert_eq!(new.advertised(), &wanted);
    assert_eq!(new.negotiated(), old.negotiated());
    assert!(
        new.sync(&wanted).is_empty(),
        "the peer has it all already: nothing is sent again"
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(new.timers(Instant::now()), Ok(vec![]));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        new.timers(Instant::now()),
        Ok(vec![Message::Keepalive]),
        "the KEEPALIVE is due when it was due in the old process"
    );
    // The new process's config wants one prefix less: it withdraws it.
    let fewer = set(&["198.51.100.10"]);
    let out = new.sync(&fewer);
    let [Message::Update(u)] = &out[..] else {
        panic!("one UPDATE: {out:?}");
    };
    assert_eq!(
        u.withdrawn,
        vec![Prefix::host("198.51.100.11".parse().expect("ip"))]
    );
    // The peer stays silent: the hold timer, 7 s left at the handoff, ends the session 7 s
    // after the adoption (the 50 ms on the way are given, never taken).
    tokio::time::advance(Duration::from_millis(5_999)).await;
    assert!(new.timers(Instant::now()).is_ok());
    tokio::time::advance(Duration::from_millis(1)).await;
    let down = new.timers(Instant::now()).expect_err("hold timer expired");
    assert_eq!(down.notify.map(|n| n.code), Some(error::HOLD_TIMER_EXPIRED));
}

#[tokio::test(start_paused = true)]
async fn only_an_established_session_with_the_same_settings_is_adopted() {
    let mut opening = Session::new(params());
    opening.connected("192.0.2.1".parse().expect("ip"), Instant::now());
    assert_eq!(opening.hand_over(Instant::now()), None);

    let (s, _) = established(&set(&["198.51.100.10"]));
    let handoff = s.hand_over(Instant::now()).expect("Established");
    let mut other = params();
    other.hold_time = 30;
    assert!(Session::adopt(other, handoff.clone(), Instant::now()).is_err());

    // Malformed input from the other process is refused, never a panic.
    let mut bad = handoff.clone();
    bad.advertised = vec![("198.51.100.10".parse().expect("ip"), 200)];
    assert!(Session::adopt(params(), bad, Instant::now()).is_err());
    let mut bad = handoff.clone();
    bad.advertised = vec![("198.51.100.10".parse().expect("ip"), 24)];
    assert!(
        Session::adopt(params(), bad, Instant::now()).is_err(),
        "host bits set"
    );
    let mut bad = handoff.clone();
    bad.advertised = vec![("2001:db8::1".parse().expect("ip"), 128)];
    assert!(
        Session::adopt(params(), bad, Instant::now()).is_err(),
        "other family"
    );
    let mut bad = handoff.clone();
    bad.negotiated.hold = Duration::MAX;
    assert!(Session::adopt(params(), bad, Instant::now()).is_err());
    // Times far in the future are capped at one interval, not added blindly.
    let mut late = handoff;
    late.hold_left_ms = Some(u64::MAX);
    late.keepalive_in_ms = Some(u64::MAX);
    let now = Instant::now();
    let adopted = Session::adopt(params(), late, now).expect("adopted");
    assert_eq!(adopted.deadline(), Some(now + Duration::from_secs(3)));
}
