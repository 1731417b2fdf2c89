//! BGP-4 messages on the wire (RFC 4271 section 4), the subset an announce-only speaker needs:
//! OPEN with capabilities (multiprotocol, RFC 4760; 4-octet AS numbers, RFC 6793), UPDATE with
//! the attributes tandem sends (ORIGIN, AS_PATH, NEXT_HOP, LOCAL_PREF, AS4_PATH, MP_REACH_NLRI
//! and MP_UNREACH_NLRI) and any other attribute kept as bytes, NOTIFICATION and KEEPALIVE.
//!
//! Pure: bytes in, messages out and back, no I/O and no clock. Every length read from the
//! peer is checked before it is used, so a malformed message is a [`DecodeError`] carrying the
//! NOTIFICATION code the RFC asks for, never a panic (the `bgp_message` fuzz target holds the
//! decoder to that).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the fixed header: 16-octet marker, 2-octet length, 1-octet type.
pub const HEADER_LEN: usize = 19;
/// Largest BGP message (RFC 4271 4.1; the extended size of RFC 8654 is not negotiated).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The 2-octet AS number that stands for a 4-octet one in 2-octet fields (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// Address family identifiers (IANA).
pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
/// Subsequent address family: unicast.
pub const SAFI_UNICAST: u8 = 1;

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;

/// Path attribute type codes.
const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;
const ATTR_LOCAL_PREF: u8 = 5;
const ATTR_MP_REACH: u8 = 14;
const ATTR_MP_UNREACH: u8 = 15;
const ATTR_AS4_PATH: u8 = 17;

/// Attribute flags.
const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED: u8 = 0x10;

/// Capability codes.
const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_FOUR_OCTET_AS: u8 = 65;

/// NOTIFICATION error codes and the subcodes this module and the session send.
pub mod error {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;
    pub const OPEN: u8 = 2;
    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTRIBUTES: u8 = 1;
    pub const UPDATE_ATTRIBUTE_LENGTH: u8 = 5;
    pub const UPDATE_BAD_NETWORK_FIELD: u8 = 10;
    pub const UPDATE_MALFORMED_AS_PATH: u8 = 11;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    /// Cease subcode: administrative shutdown (RFC 4486).
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    /// Cease subcode: peer de-configured (RFC 4486).
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    /// Cease subcode: other configuration change (RFC 4486).
    pub const CEASE_CONFIG_CHANGE: u8 = 6;
}

/// An IP prefix: an address and how many of its leading bits count. Host bits past `len` are
/// zero in every prefix this module builds or decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The host route of `ip`: /32 for IPv4, /128 for IPv6.
    pub fn host(ip: IpAddr) -> Prefix {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Prefix { addr: ip, len }
    }

    /// A prefix of `addr` with host bits cleared; `None` when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let masked = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let bits = u32::from(a);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let bits = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            _ => return None,
        };
        Some(Prefix { addr: masked, len })
    }

    /// The prefix's address family identifier.
    pub fn afi(&self) -> u16 {
        if self.addr.is_ipv4() {
            AFI_IPV4
        } else {
            AFI_IPV6
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
}

/// OPEN (RFC 4271 4.2), with the optional parameters read as capabilities (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS number: the 4-octet capability's when it sent one, else the 2-octet
    /// field.
    pub asn: u32,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// Whether the sender can carry 4-octet AS numbers (RFC 6793).
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Whether the sender announced the multiprotocol capability for `afi`/`safi`; a sender
    /// that announced none at all takes IPv4 unicast only (RFC 4760 section 8).
    pub fn supports(&self, afi: u16, safi: u8) -> bool {
        let mut any = false;
        for c in &self.capabilities {
            if let Capability::Multiprotocol { afi: a, safi: s } = c {
                any = true;
                if (*a, *s) == (afi, safi) {
                    return true;
                }
            }
        }
        !any && (afi, safi) == (AFI_IPV4, SAFI_UNICAST)
    }
}

/// A capability of an OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol {
        afi: u16,
        safi: u8,
    },
    FourOctetAs(u32),
    /// Any other capability, kept as its code and value.
    Other {
        code: u8,
        value: Vec<u8>,
    },
}

/// UPDATE (RFC 4271 4.3). `withdrawn` and `nlri` are the IPv4 fields of the message itself;
/// other families travel in [`Attribute::MpReach`] and [`Attribute::MpUnreach`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    pub attributes: Vec<Attribute>,
    pub nlri: Vec<Prefix>,
}

/// A path attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// 0 IGP, 1 EGP, 2 INCOMPLETE.
    Origin(u8),
    /// AS_PATH segments, each (type, AS numbers): 1 AS_SET, 2 AS_SEQUENCE. Encoded with 4-octet
    /// numbers when the session negotiated them, else 2-octet.
    AsPath(Vec<(u8, Vec<u32>)>),
    NextHop(Ipv4Addr),
    LocalPref(u32),
    /// AS4_PATH (RFC 6793): the real path beside a 2-octet AS_PATH holding AS_TRANS.
    As4Path(Vec<(u8, Vec<u32>)>),
    /// MP_REACH_NLRI (RFC 4760): reachable prefixes of another family, with their next hop
    /// (16 or 32 octets for IPv6; kept as bytes).
    MpReach {
        afi: u16,
        safi: u8,
        next_hop: Vec<u8>,
        nlri: Vec<Prefix>,
    },
    /// MP_UNREACH_NLRI (RFC 4760): withdrawn prefixes of another family.
    MpUnreach {
        afi: u16,
        safi: u8,
        withdrawn: Vec<Prefix>,
    },
    /// Any other attribute, kept as its flags, type and value.
    Other {
        flags: u8,
        code: u8,
        value: Vec<u8>,
    },
}

/// NOTIFICATION (RFC 4271 4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.code {
            error::HEADER => "message header error",
            error::OPEN => "OPEN message error",
            error::UPDATE => "UPDATE message error",
            error::HOLD_TIMER_EXPIRED => "hold timer expired",
            error::FSM => "finite state machine error",
            error::CEASE => "cease",
            _ => "unknown error",
        };
        write!(f, "{what} ({}/{})", self.code, self.subcode)
    }
}

/// Why bytes from the peer are not a valid message: the NOTIFICATION to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {reason}: {notification}")]
pub struct DecodeError {
    pub notification: Notification,
    pub reason: &'static str,
}

fn bad(code: u8, subcode: u8, reason: &'static str) -> DecodeError {
    DecodeError {
        notification: Notification::new(code, subcode),
        reason,
    }
}

/// The length of the message at the front of `buf`, once its header is there: `Ok(None)` until
/// 19 octets have arrived. The length is checked against the header rules; the caller waits
/// for that many octets, then calls [`decode`] on them.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(bad(
            error::HEADER,
            error::HEADER_NOT_SYNCHRONIZED,
            "marker is not all ones",
        ));
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    let min = match buf[18] {
        TYPE_OPEN => 29,
        TYPE_UPDATE => 23,
        TYPE_NOTIFICATION => 21,
        TYPE_KEEPALIVE => HEADER_LEN,
        _ => {
            return Err(DecodeError {
                notification: Notification {
                    code: error::HEADER,
                    subcode: error::HEADER_BAD_TYPE,
                    data: vec![buf[18]],
                },
                reason: "unknown message type",
            });
        }
    };
    let too_long = len > MAX_MESSAGE_LEN || (buf[18] == TYPE_KEEPALIVE && len != HEADER_LEN);
    if len < min || too_long {
        return Err(DecodeError {
            notification: Notification {
                code: error::HEADER,
                subcode: error::HEADER_BAD_LENGTH,
                data: buf[16..18].to_vec(),
            },
            reason: "bad message length",
        });
    }
    Ok(Some(len))
}

/// Decodes one whole message (as long as [`frame_len`] said). `four_octet_as`: whether the
/// session negotiated 4-octet AS numbers, which decides how AS_PATH is read.
pub fn decode(frame: &[u8], four_octet_as: bool) -> Result<Message, DecodeError> {
    let len = frame_len(frame)?.ok_or(bad(
        error::HEADER,
        error::HEADER_BAD_LENGTH,
        "shorter than a header",
    ))?;
    if frame.len() != len {
        return Err(bad(
            error::HEADER,
            error::HEADER_BAD_LENGTH,
            "length field disagrees with the message",
        ));
    }
    let body = &frame[HEADER_LEN..];
    match frame[18] {
        TYPE_OPEN => decode_open(body).map(Message::Open),
        TYPE_UPDATE => decode_update(body, four_octet_as).map(Message::Update),
        TYPE_NOTIFICATION => Ok(Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        })),
        _ => Ok(Message::Keepalive),
    }
}

/// A cursor over bytes from the peer: every read is bounded, a short read is `None`.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let malformed = || bad(error::OPEN, 0, "malformed OPEN");
    let mut r = Reader { buf: body };
    let version = r.u8().ok_or_else(malformed)?;
    if version != 4 {
        return Err(DecodeError {
            notification: Notification {
                code: error::OPEN,
                subcode: error::OPEN_UNSUPPORTED_VERSION,
                data: 4u16.to_be_bytes().to_vec(),
            },
            reason: "BGP version is not 4",
        });
    }
    let asn16 = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    if hold_time == 1 || hold_time == 2 {
        return Err(bad(
            error::OPEN,
            error::OPEN_UNACCEPTABLE_HOLD_TIME,
            "hold time of 1 or 2 seconds",
        ));
    }
    let router_id = Ipv4Addr::from(r.u32().ok_or_else(malformed)?);
    let params_len = usize::from(r.u8().ok_or_else(malformed)?);
    let mut params = Reader {
        buf: r.take(params_len).ok_or_else(malformed)?,
    };
    if !r.is_empty() {
        return Err(malformed());
    }
    let mut capabilities = Vec::new();
    while !params.is_empty() {
        let kind = params.u8().ok_or_else(malformed)?;
        let len = usize::from(params.u8().ok_or_else(malformed)?);
        let value = params.take(len).ok_or_else(malformed)?;
        // Type 2: capabilities (RFC 5492); other parameter types are obsolete and skipped.
        if kind != 2 {
            continue;
        }
        let mut caps = Reader { buf: value };
        while !caps.is_empty() {
            let code = caps.u8().ok_or_else(malformed)?;
            let len = usize::from(caps.u8().ok_or_else(malformed)?);
            let value = caps.take(len).ok_or_else(malformed)?;
            capabilities.push(match (code, value) {
                (CAP_MULTIPROTOCOL, [a0, a1, _, safi]) => Capability::Multiprotocol {
                    afi: u16::from_be_bytes([*a0, *a1]),
                    safi: *safi,
                },
                (CAP_FOUR_OCTET_AS, [a, b, c, d]) => {
                    Capability::FourOctetAs(u32::from_be_bytes([*a, *b, *c, *d]))
                }
                _ => Capability::Other {
                    code,
                    value: value.to_vec(),
                },
            });
        }
    }
    let asn = capabilities
        .iter()
        .find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
        .unwrap_or(u32::from(asn16));
    Ok(Open {
        asn,
        hold_time,
        router_id,
        capabilities,
    })
}

fn decode_update(body: &[u8], four_octet_as: bool) -> Result<Update, DecodeError> {
    let malformed = || {
        bad(
            error::UPDATE,
            error::UPDATE_MALFORMED_ATTRIBUTES,
            "malformed UPDATE",
        )
    };
    let mut r = Reader { buf: body };
    let withdrawn_len = usize::from(r.u16().ok_or_else(malformed)?);
    let withdrawn = prefixes(r.take(withdrawn_len).ok_or_else(malformed)?, AFI_IPV4)?;
    let attrs_len = usize::from(r.u16().ok_or_else(malformed)?);
    let mut attrs = Reader {
        buf: r.take(attrs_len).ok_or_else(malformed)?,
    };
    let nlri = prefixes(r.buf, AFI_IPV4)?;
    let mut attributes = Vec::new();
    while !attrs.is_empty() {
        let flags = attrs.u8().ok_or_else(malformed)?;
        let code = attrs.u8().ok_or_else(malformed)?;
        let len = if flags & FLAG_EXTENDED != 0 {
            attrs.u16().map(usize::from)
        } else {
            attrs.u8().map(usize::from)
        }
        .ok_or_else(malformed)?;
        let value = attrs.take(len).ok_or_else(|| {
            bad(
                error::UPDATE,
                error::UPDATE_ATTRIBUTE_LENGTH,
                "attribute longer than the attribute list",
            )
        })?;
        attributes.push(attribute(flags, code, value, four_octet_as)?);
    }
    Ok(Update {
        withdrawn,
        attributes,
        nlri,
    })
}

fn attribute(
    flags: u8,
    code: u8,
    value: &[u8],
    four_octet_as: bool,
) -> Result<Attribute, DecodeError> {
    let length = || {
        bad(
            error::UPDATE,
            error::UPDATE_ATTRIBUTE_LENGTH,
            "attribute of the wrong length",
        )
    };
    Ok(match code {
        ATTR_ORIGIN => match value {
            [o] => Attribute::Origin(*o),
            _ => return Err(length()),
        },
        ATTR_AS_PATH => Attribute::AsPath(as_path(value, four_octet_as)?),
        ATTR_AS4_PATH => Attribute::As4Path(as_path(value, true)?),
        ATTR_NEXT_HOP => match value {
            [a, b, c, d] => Attribute::NextHop(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => return Err(length()),
        },
        ATTR_LOCAL_PREF => match value {
            [a, b, c, d] => Attribute::LocalPref(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => return Err(length()),
        },
        ATTR_MP_REACH => {
            let mut r = Reader { buf: value };
            let afi = r.u16().ok_or_else(length)?;
            let safi = r.u8().ok_or_else(length)?;
            let nh_len = usize::from(r.u8().ok_or_else(length)?);
            let next_hop = r.take(nh_len).ok_or_else(length)?.to_vec();
            let _reserved = r.u8().ok_or_else(length)?;
            Attribute::MpReach {
                afi,
                safi,
                next_hop,
                nlri: prefixes(r.buf, afi)?,
            }
        }
        ATTR_MP_UNREACH => {
            let mut r = Reader { buf: value };
            let afi = r.u16().ok_or_else(length)?;
            let safi = r.u8().ok_or_else(length)?;
            Attribute::MpUnreach {
                afi,
                safi,
                withdrawn: prefixes(r.buf, afi)?,
            }
        }
        _ => Attribute::Other {
            // The length flag is a property of the encoding, not of the attribute.
            flags: flags & !FLAG_EXTENDED,
            code,
            value: value.to_vec(),
        },
    })
}

fn as_path(value: &[u8], four_octet: bool) -> Result<Vec<(u8, Vec<u32>)>, DecodeError> {
    let malformed = || {
        bad(
            error::UPDATE,
            error::UPDATE_MALFORMED_AS_PATH,
            "malformed AS_PATH",
        )
    };
    let mut r = Reader { buf: value };
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = r.u8().ok_or_else(malformed)?;
        let count = r.u8().ok_or_else(malformed)?;
        // Segment types are AS_SET, AS_SEQUENCE and the two confederation ones (RFC 5065); an
        // empty segment is malformed too (RFC 7606 7.2).
        if !(1..=4).contains(&kind) || count == 0 {
            return Err(malformed());
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let asn = if four_octet {
                r.u32()
            } else {
                r.u16().map(u32::from)
            };
            asns.push(asn.ok_or_else(malformed)?);
        }
        segments.push((kind, asns));
    }
    Ok(segments)
}

/// The prefixes of an NLRI field of family `afi` (other families are not read: `Ok(vec![])`).
fn prefixes(mut buf: &[u8], afi: u16) -> Result<Vec<Prefix>, DecodeError> {
    let invalid = || {
        bad(
            error::UPDATE,
            error::UPDATE_BAD_NETWORK_FIELD,
            "invalid prefix",
        )
    };
    let max_len: u8 = match afi {
        AFI_IPV4 => 32,
        AFI_IPV6 => 128,
        _ => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    while let Some((&len, rest)) = buf.split_first() {
        if len > max_len {
            return Err(invalid());
        }
        let octets = usize::from(len).div_ceil(8);
        let bytes = rest.get(..octets).ok_or_else(invalid)?;
        let addr = if afi == AFI_IPV4 {
            let mut a = [0u8; 4];
            a[..octets].copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::from(a))
        } else {
            let mut a = [0u8; 16];
            a[..octets].copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        out.push(Prefix::new(addr, len).ok_or_else(invalid)?);
        buf = &rest[octets..];
    }
    Ok(out)
}

impl Message {
    /// The message on the wire. `four_octet_as` decides how AS_PATH is written. An UPDATE must
    /// fit in [`MAX_MESSAGE_LEN`]; [`crate::bgp::session`] keeps them far below it.
    pub fn encode(&self, four_octet_as: bool) -> Vec<u8> {
        let mut out = vec![0xff; 16];
        out.extend_from_slice(&[0, 0, 0]);
        let kind = match self {
            Message::Open(open) => {
                encode_open(open, &mut out);
                TYPE_OPEN
            }
            Message::Update(update) => {
                encode_update(update, four_octet_as, &mut out);
                TYPE_UPDATE
            }
            Message::Notification(n) => {
                out.extend_from_slice(&[n.code, n.subcode]);
                out.extend_from_slice(&n.data);
                TYPE_NOTIFICATION
            }
            Message::Keepalive => TYPE_KEEPALIVE,
        };
        let len = u16::try_from(out.len()).unwrap_or(u16::MAX);
        out[16..18].copy_from_slice(&len.to_be_bytes());
        out[18] = kind;
        out
    }
}

fn encode_open(open: &Open, out: &mut Vec<u8>) {
    out.push(4);
    let asn16 = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    out.extend_from_slice(&asn16.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.router_id.octets());
    // One capabilities parameter holding them all, as most speakers send it.
    let mut caps = Vec::new();
    for c in &open.capabilities {
        match c {
            Capability::Multiprotocol { afi, safi } => {
                caps.extend_from_slice(&[CAP_MULTIPROTOCOL, 4]);
                caps.extend_from_slice(&afi.to_be_bytes());
                caps.extend_from_slice(&[0, *safi]);
            }
            Capability::FourOctetAs(asn) => {
                caps.extend_from_slice(&[CAP_FOUR_OCTET_AS, 4]);
                caps.extend_from_slice(&asn.to_be_bytes());
            }
            Capability::Other { code, value } => {
                caps.push(*code);
                caps.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
                caps.extend_from_slice(&value[..value.len().min(255)]);
            }
        }
    }
    if caps.is_empty() {
        out.push(0);
    } else {
        caps.truncate(253);
        out.push(u8::try_from(caps.len() + 2).unwrap_or(u8::MAX));
        out.extend_from_slice(&[2, u8::try_from(caps.len()).unwrap_or(u8::MAX)]);
        out.extend_from_slice(&caps);
    }
}

fn encode_update(update: &Update, four_octet_as: bool, out: &mut Vec<u8>) {
    let withdrawn = encode_prefixes(&update.withdrawn);
    out.extend_from_slice(&u16::try_from(withdrawn.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&withdrawn);
    let mut attrs = Vec::new();
    for a in &update.attributes {
        encode_attribute(a, four_octet_as, &mut attrs);
    }
    out.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&attrs);
    out.extend_from_slice(&encode_prefixes(&update.nlri));
}

fn encode_attribute(a: &Attribute, four_octet_as: bool, out: &mut Vec<u8>) {
    let (flags, code, value) = match a {
        Attribute::Origin(o) => (FLAG_TRANSITIVE, ATTR_ORIGIN, vec![*o]),
        Attribute::AsPath(segments) => (
            FLAG_TRANSITIVE,
            ATTR_AS_PATH,
            encode_as_path(segments, four_octet_as),
        ),
        Attribute::As4Path(segments) => (
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            ATTR_AS4_PATH,
            encode_as_path(segments, true),
        ),
        Attribute::NextHop(ip) => (FLAG_TRANSITIVE, ATTR_NEXT_HOP, ip.octets().to_vec()),
        Attribute::LocalPref(p) => (FLAG_TRANSITIVE, ATTR_LOCAL_PREF, p.to_be_bytes().to_vec()),
        Attribute::MpReach {
            afi,
            safi,
            next_hop,
            nlri,
        } => {
            let mut v = afi.to_be_bytes().to_vec();
            v.push(*safi);
            v.push(u8::try_from(next_hop.len()).unwrap_or(0));
            v.extend_from_slice(&next_hop[..next_hop.len().min(255)]);
            v.push(0);
            v.extend_from_slice(&encode_prefixes(nlri));
            (FLAG_OPTIONAL, ATTR_MP_REACH, v)
        }
        Attribute::MpUnreach {
            afi,
            safi,
            withdrawn,
        } => {
            let mut v = afi.to_be_bytes().to_vec();
            v.push(*safi);
            v.extend_from_slice(&encode_prefixes(withdrawn));
            (FLAG_OPTIONAL, ATTR_MP_UNREACH, v)
        }
        Attribute::Other { flags, code, value } => (*flags & !FLAG_EXTENDED, *code, value.clone()),
    };
    match u8::try_from(value.len()) {
        Ok(len) => out.extend_from_slice(&[flags, code, len]),
        Err(_) => {
            let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&[flags | FLAG_EXTENDED, code]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&value);
}

fn encode_as_path(segments: &[(u8, Vec<u32>)], four_octet: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for (kind, asns) in segments {
        // A segment holds at most 255 numbers; longer paths are split (never the case for the
        // one-AS paths tandem sends).
        for chunk in asns.chunks(255) {
            v.push(*kind);
            v.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            for asn in chunk {
                if four_octet {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let asn16 = u16::try_from(*asn).unwrap_or(AS_TRANS);
                    v.extend_from_slice(&asn16.to_be_bytes());
                }
            }
        }
    }
    v
}

fn encode_prefixes(prefixes: &[Prefix]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in prefixes {
        v.push(p.len);
        let octets = usize::from(p.len).div_ceil(8);
        match p.addr {
            IpAddr::V4(a) => v.extend_from_slice(&a.octets()[..octets.min(4)]),
            IpAddr::V6(a) => v.extend_from_slice(&a.octets()[..octets.min(16)]),
        }
    }
    v
}

#[cfg(test)]
mod tests;
