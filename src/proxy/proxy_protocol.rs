//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a member the client's
//! real address. Pure: builds bytes, performs no I/O.

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;

/// v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Room for any header this module builds. The longest is v1 with two IPv6 addresses:
/// `PROXY TCP6 ` (11) + two addresses of at most 39 characters with their spaces (80) + two ports
/// of at most 5 with the space between them (11) + CRLF (2) = 104 bytes. v2 is shorter: the
/// 16-byte header plus an address block of 12 bytes (IPv4) or 36 (IPv6) = 52 at most; we add no
/// TLVs and never send the 216-byte Unix block. 108 is the spec's own bound for v1 (its worst
/// case, `PROXY UNKNOWN` with full addresses, is 107 bytes, plus a terminating zero for C
/// readers), so the buffer stays right if we ever send that form.
pub const MAX_HEADER_LEN: usize = 108;

/// A header in a fixed buffer, so sending it does not allocate.
pub struct Header {
    buf: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The header for a TCP connection from `client` that arrived on `local`, or `None` when the
/// service sends none.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Option<Header> {
    // A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6; members expect TCP4 then.
    let (client, local) = (unmap(client), unmap(local));
    match version {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => Some(v1(client, local)),
        ProxyProtocol::V2 => Some(v2(client, local)),
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Header {
    use std::io::Write;
    let mut h = Header {
        buf: [0; MAX_HEADER_LEN],
        len: 0,
    };
    let mut cursor = std::io::Cursor::new(&mut h.buf[..]);
    // Mixed families cannot be expressed in v1; "UNKNOWN" tells the member to use the
    // connection's own addresses, as the spec asks.
    let written = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => write!(
            cursor,
            "PROXY TCP4 {c} {l} {} {}\r\n",
            client.port(),
            local.port()
        ),
        (IpAddr::V6(c), IpAddr::V6(l)) => write!(
            cursor,
            "PROXY TCP6 {c} {l} {} {}\r\n",
            client.port(),
            local.port()
        ),
        _ => write!(cursor, "PROXY UNKNOWN\r\n"),
    };
    // Our longest v1 line is 104 bytes (see MAX_HEADER_LEN), so this cannot fail.
    debug_assert!(written.is_ok());
    h.len = cursor.position() as usize;
    h
}

fn v2(client: SocketAddr, local: SocketAddr) -> Header {
    let mut h = Header {
        buf: [0; MAX_HEADER_LEN],
        len: 16,
    };
    h.buf[..12].copy_from_slice(&V2_SIGNATURE);
    h.buf[12] = 0x21; // version 2, command PROXY
    let mut push = |bytes: &[u8]| {
        h.buf[h.len..h.len + bytes.len()].copy_from_slice(bytes);
        h.len += bytes.len();
    };
    let family = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            push(&c.octets());
            push(&l.octets());
            push(&client.port().to_be_bytes());
            push(&local.port().to_be_bytes());
            0x11 // AF_INET, STREAM
        }
        (IpAddr::V6(c), IpAddr::V6(l)) => {
            push(&c.octets());
            push(&l.octets());
            push(&client.port().to_be_bytes());
            push(&local.port().to_be_bytes());
            0x21 // AF_INET6, STREAM
        }
        _ => 0x00, // AF_UNSPEC: the member uses the connection's own addresses
    };
    h.buf[13] = family;
    let addr_len = (h.len - 16) as u16;
    h.buf[14..16].copy_from_slice(&addr_len.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = header(
            ProxyProtocol::V1,
            sa("127.0.2.1:40000"),
            sa("127.0.0.1:5061"),
        )
        .expect("header");
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP4 127.0.2.1 127.0.0.1 40000 5061\r\n"
        );
        let h = header(ProxyProtocol::V1, sa("[::1]:1"), sa("[::2]:2")).expect("header");
        assert_eq!(h.as_bytes(), b"PROXY TCP6 ::1 ::2 1 2\r\n");
        let h = header(
            ProxyProtocol::V1,
            sa("[::ffff:10.0.0.1]:5"),
            sa("10.0.0.2:6"),
        )
        .expect("header");
        assert_eq!(h.as_bytes(), b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
    }

    #[test]
    fn v1_longest_line_fits() {
        let c = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        let l = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        let h = header(ProxyProtocol::V1, c, l).expect("header");
        assert!(h.as_bytes().ends_with(b"65535 65535\r\n"));
        assert_eq!(h.as_bytes().len(), 104);
    }

    #[test]
    fn v2_tcp4_layout() {
        let h = header(
            ProxyProtocol::V2,
            sa("127.0.2.1:40000"),
            sa("127.0.0.1:5061"),
        )
        .expect("header");
        let b = h.as_bytes();
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..12], &V2_SIGNATURE);
        assert_eq!(b[12], 0x21);
        assert_eq!(b[13], 0x11);
        assert_eq!(&b[14..16], &[0, 12]);
        assert_eq!(&b[16..20], &[127, 0, 2, 1]);
        assert_eq!(&b[20..24], &[127, 0, 0, 1]);
        assert_eq!(&b[24..26], &40000u16.to_be_bytes());
        assert_eq!(&b[26..28], &5061u16.to_be_bytes());
    }

    #[test]
    fn v2_tcp6_and_unspec() {
        let h = header(ProxyProtocol::V2, sa("[::1]:1"), sa("[::2]:2")).expect("header");
        assert_eq!(h.as_bytes().len(), 16 + 36);
        assert_eq!(h.as_bytes()[13], 0x21);
        let h = header(ProxyProtocol::V2, sa("[::1]:1"), sa("10.0.0.1:2")).expect("header");
        assert_eq!(h.as_bytes().len(), 16);
        assert_eq!(h.as_bytes()[13], 0x00);
        assert!(header(ProxyProtocol::Off, sa("[::1]:1"), sa("[::2]:2")).is_none());
    }
}
