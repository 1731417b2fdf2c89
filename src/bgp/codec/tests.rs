use proptest::prelude::*;

use super::*;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

#[test]
fn keepalive_is_a_bare_header() {
    let bytes = Message::Keepalive.encode(true);
    let mut want = vec![0xff; 16];
    want.extend_from_slice(&[0, 19, 4]);
    assert_eq!(bytes, want);
    assert_eq!(frame_len(&bytes), Ok(Some(19)));
    assert_eq!(decode(&bytes, true), Ok(Message::Keepalive));
}

/// An OPEN laid out by hand from RFC 4271 4.2, RFC 5492 and RFC 6793: AS 4200000000 does not
/// fit the 2-octet field, which carries AS_TRANS, and the capability carries the real number.
#[test]
fn open_with_a_four_octet_as_matches_the_rfc_layout() {
    let open = Open {
        asn: 4_200_000_000,
        hold_time: 9,
        router_id: v4("192.0.2.1"),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::FourOctetAs(4_200_000_000),
        ],
    };
    let bytes = Message::Open(open.clone()).encode(true);
    let mut want = vec![0xff; 16];
    want.extend_from_slice(&[0, 43, 1]); // length 19 + 10 + 14, type OPEN
    want.extend_from_slice(&[4, 0x5b, 0xa0, 0, 9, 192, 0, 2, 1]); // version, AS_TRANS, hold, id
    want.extend_from_slice(&[14, 2, 12]); // params length, capabilities parameter, its length
    want.extend_from_slice(&[1, 4, 0, 1, 0, 1]); // multiprotocol IPv4 unicast
    want.extend_from_slice(&[65, 4, 0xfa, 0x56, 0xea, 0x00]); // 4-octet AS
    assert_eq!(bytes, want);
    let Ok(Message::Open(back)) = decode(&bytes, false) else {
        panic!("not an OPEN");
    };
    assert_eq!(back, open);
    assert!(back.four_octet_as());
    assert!(back.supports(AFI_IPV4, SAFI_UNICAST));
    assert!(!back.supports(AFI_IPV6, SAFI_UNICAST));
}

#[test]
fn a_speaker_without_multiprotocol_capabilities_speaks_ipv4_unicast() {
    let open = Open {
        asn: 65000,
        hold_time: 90,
        router_id: v4("192.0.2.254"),
        capabilities: vec![],
    };
    assert!(open.supports(AFI_IPV4, SAFI_UNICAST));
    assert!(!open.supports(AFI_IPV6, SAFI_UNICAST));
    assert!(!open.four_octet_as());
}

/// The UPDATE tandem sends for a /32 over eBGP with 4-octet AS numbers, byte by byte.
#[test]
fn an_ebgp_announcement_matches_the_rfc_layout() {
    let update = Update {
        withdrawn: vec![Prefix::host("198.51.100.7".parse().expect("ip"))],
        attributes: vec![
            Attribute::Origin(0),
            Attribute::AsPath(vec![(2, vec![65010])]),
            Attribute::NextHop(v4("192.0.2.1")),
        ],
        nlri: vec![Prefix::host("198.51.100.10".parse().expect("ip"))],
    };
    let bytes = Message::Update(update.clone()).encode(true);
    let body = &bytes[HEADER_LEN..];
    let want: &[u8] = &[
        0, 5, 32, 198, 51, 100, 7, // withdrawn routes
        0, 20, // path attribute length
        0x40, 1, 1, 0, // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xf2, // AS_PATH: AS_SEQUENCE of one, 65010
        0x40, 3, 4, 192, 0, 2, 1, // NEXT_HOP
        32, 198, 51, 100, 10, // NLRI
    ];
    assert_eq!(body, want);
    assert_eq!(decode(&bytes, true), Ok(Message::Update(update)));
}

#[test]
fn header_errors_carry_the_notification_the_rfc_asks_for() {
    let mut bytes = Message::Keepalive.encode(true);
    bytes[3] = 0;
    assert_eq!(
        frame_len(&bytes).map_err(|e| (e.notification.code, e.notification.subcode)),
        Err((error::HEADER, error::HEADER_NOT_SYNCHRONIZED))
    );
    let mut bytes = Message::Keepalive.encode(true);
    bytes[17] = 20;
    let e = frame_len(&bytes).expect_err("a 20-octet keepalive");
    assert_eq!(
        e.notification,
        Notification {
            code: error::HEADER,
            subcode: error::HEADER_BAD_LENGTH,
            data: vec![0, 20],
        }
    );
    let mut bytes = Message::Keepalive.encode(true);
    bytes[18] = 9;
    let e = frame_len(&bytes).expect_err("type 9");
    assert_eq!(e.notification.subcode, error::HEADER_BAD_TYPE);
    assert_eq!(e.notification.data, vec![9]);
    assert_eq!(frame_len(&bytes[..18]), Ok(None));
}

#[test]
fn an_open_with_a_hold_time_of_two_seconds_is_refused() {
    let mut bytes = Message::Open(Open {
        asn: 65000,
        hold_time: 3,
        router_id: v4("192.0.2.254"),
        capabilities: vec![],
    })
    .encode(true);
    bytes[HEADER_LEN + 4] = 2;
    let e = decode(&bytes, true).expect_err("hold time 2");
    assert_eq!(
        (e.notification.code, e.notification.subcode),
        (error::OPEN, error::OPEN_UNACCEPTABLE_HOLD_TIME)
    );
}

#[test]
fn a_prefix_longer_than_its_family_is_an_invalid_network_field() {
    let mut bytes = Message::Update(Update {
        nlri: vec![Prefix::host("198.51.100.10".parse().expect("ip"))],
        ..Update::default()
    })
    .encode(true);
    let at = bytes.len() - 5;
    bytes[at] = 33;
    let e = decode(&bytes, true).expect_err("a /33");
    assert_eq!(e.notification.subcode, error::UPDATE_BAD_NETWORK_FIELD);
}

/// Found by the `bgp_message` fuzz target: empty AS_PATH segments of type 0 were read, and
/// then lost on the way back out.
#[test]
fn as_path_segments_of_no_known_type_or_no_length_are_malformed() {
    for segment in [vec![0u8, 0], vec![2, 0], vec![5, 1, 0xfd, 0xf2]] {
        let mut attrs = vec![
            0x40,
            1,
            1,
            0,
            0x40,
            2,
            u8::try_from(segment.len()).expect("small"),
        ];
        attrs.extend_from_slice(&segment);
        let mut body = vec![0, 0, 0, u8::try_from(attrs.len()).expect("small")];
        body.extend_from_slice(&attrs);
        let mut bytes = vec![0xff; 16];
        let len = u16::try_from(HEADER_LEN + body.len()).expect("small");
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.push(2);
        bytes.extend_from_slice(&body);
        let e = decode(&bytes, false).expect_err("a malformed AS_PATH");
        assert_eq!(
            (e.notification.code, e.notification.subcode),
            (error::UPDATE, error::UPDATE_MALFORMED_AS_PATH),
            "segment {segment:?}"
        );
    }
}

#[test]
fn prefixes_clear_their_host_bits() {
    let p = Prefix::new("198.51.100.77".parse().expect("ip"), 24).expect("a /24");
    assert_eq!(p.to_string(), "198.51.100.0/24");
    let p = Prefix::new("2001:db8::1".parse().expect("ip"), 32).expect("a /32");
    assert_eq!(p.to_string(), "2001:db8::/32");
    assert!(Prefix::new("2001:db8::1".parse().expect("ip"), 129).is_none());
    assert_eq!(Prefix::host("2001:db8::1".parse().expect("ip")).len, 128);
}

fn prefix_of(afi: u16) -> BoxedStrategy<Prefix> {
    if afi == AFI_IPV4 {
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).expect("len <= 32"))
            .boxed()
    } else {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).expect("len <= 128"))
            .boxed()
    }
}

fn segments() -> impl Strategy<Value = Vec<(u8, Vec<u32>)>> {
    prop::collection::vec((1u8..=4, prop::collection::vec(any::<u32>(), 1..6)), 0..3)
}

fn attribute(four_octet: bool) -> impl Strategy<Value = Attribute> {
    // Without 4-octet numbers on the session, an AS_PATH only holds 2-octet ones.
    let asn_path = if four_octet {
        segments().boxed()
    } else {
        prop::collection::vec(
            (
                1u8..=2,
                prop::collection::vec(any::<u16>().prop_map(u32::from), 1..6),
            ),
            0..3,
        )
        .boxed()
    };
    prop_oneof![
        (0u8..3).prop_map(Attribute::Origin),
        asn_path.prop_map(Attribute::AsPath),
        segments().prop_map(Attribute::As4Path),
        any::<u32>().prop_map(|a| Attribute::NextHop(Ipv4Addr::from(a))),
        any::<u32>().prop_map(Attribute::LocalPref),
        prop_oneof![Just(AFI_IPV4), Just(AFI_IPV6)].prop_flat_map(|afi| (
            Just(afi),
            prop::collection::vec(any::<u8>(), 0..33),
            prop::collection::vec(prefix_of(afi), 0..8)
        )
            .prop_map(|(afi, next_hop, nlri)| Attribute::MpReach {
                afi,
                safi: SAFI_UNICAST,
                next_hop,
                nlri
            })),
        prop_oneof![Just(AFI_IPV4), Just(AFI_IPV6)].prop_flat_map(|afi| (
            Just(afi),
            prop::collection::vec(prefix_of(afi), 0..8)
        )
            .prop_map(|(afi, withdrawn)| Attribute::MpUnreach {
                afi,
                safi: SAFI_UNICAST,
                withdrawn
            })),
        (
            any::<u8>(),
            prop::sample::select(vec![4u8, 6, 7, 8, 16, 32, 99, 255]),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(flags, code, value)| Attribute::Other {
                flags: flags & !FLAG_EXTENDED,
                code,
                value
            }),
    ]
}

fn message(four_octet: bool) -> impl Strategy<Value = Message> {
    let capability = prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| Capability::Multiprotocol { afi, safi }),
        any::<u32>().prop_map(Capability::FourOctetAs),
        (
            prop::sample::select(vec![2u8, 64, 70, 128]),
            prop::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(code, value)| Capability::Other { code, value }),
    ];
    let open = (
        any::<u16>().prop_filter("hold time 1 or 2", |h| *h != 1 && *h != 2),
        any::<u32>(),
        prop::collection::vec(capability, 0..5),
    )
        .prop_map(|(hold_time, id, mut capabilities)| {
            // The AS number read back is the capability's when there is one.
            let asn = capabilities
                .iter()
                .find_map(|c| match c {
                    Capability::FourOctetAs(a) => Some(*a),
                    _ => None,
                })
                .unwrap_or(65001);
            if asn == 65001 {
                capabilities.retain(|c| !matches!(c, Capability::FourOctetAs(_)));
            }
            Message::Open(Open {
                asn,
                hold_time,
                router_id: Ipv4Addr::from(id),
                capabilities,
            })
        });
    let update = (
        prop::collection::vec(prefix_of(AFI_IPV4), 0..20),
        prop::collection::vec(attribute(four_octet), 0..6),
        prop::collection::vec(prefix_of(AFI_IPV4), 0..20),
    )
        .prop_map(|(withdrawn, attributes, nlri)| {
            Message::Update(Update {
                withdrawn,
                attributes,
                nlri,
            })
        });
    let notification = (
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(code, subcode, data)| {
            Message::Notification(Notification {
                code,
                subcode,
                data,
            })
        });
    prop_oneof![open, update, notification, Just(Message::Keepalive)]
}

proptest! {
    #[test]
    fn every_message_survives_the_wire(four_octet in any::<bool>(), m in any::<bool>().prop_flat_map(message)) {
        let bytes = m.encode(four_octet);
        prop_assume!(bytes.len() <= MAX_MESSAGE_LEN);
        // The 2-octet encoding of AS_PATH holds only 2-octet numbers.
        if !four_octet && let Message::Update(u) = &m {
            prop_assume!(u.attributes.iter().all(|a| match a {
                Attribute::AsPath(s) => s.iter().all(|(_, asns)| asns.iter().all(|a| *a <= 0xffff)),
                _ => true,
            }));
        }
        prop_assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(decode(&bytes, four_octet), Ok(m));
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200), type_ in 1u8..=4, four_octet in any::<bool>()) {
        // A valid header in front of random bytes reaches the body parsers.
        let mut framed = vec![0xff; 16];
        let len = u16::try_from(HEADER_LEN + bytes.len()).expect("small");
        framed.extend_from_slice(&len.to_be_bytes());
        framed.push(type_);
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed, four_octet);
        let _ = decode(&bytes, four_octet);
        let _ = frame_len(&bytes);
    }
}
