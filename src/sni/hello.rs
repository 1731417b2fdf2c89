//! Reads the server name from the start of a TLS connection: the ClientHello, possibly spread
//! over several TLS records and any number of TCP reads.
//!
//! Pure and incremental: the caller owns the bytes read so far and hands the whole buffer in
//! after every read; the reader keeps offsets and the handshake bytes collected from the
//! records, so each call costs the new bytes only, not a re-parse from the start (a client
//! sending one byte per segment would otherwise cost quadratic time).
//!
//! Strict where it matters for routing and lenient nowhere else: record type, version and
//! lengths, the handshake type and length, every length inside the ClientHello up to and
//! through the extensions, and the `server_name` extension (RFC 6066 §3) are checked; anything
//! else is not looked at. A ClientHello that breaks a rule is `NotHello`, like any non-TLS
//! client: the caller decides (default pool, or close when `sni_required`). No allocation but
//! the handshake buffer, which is bounded.

/// Content type of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 22;
/// Handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of `server_name`.
const SERVER_NAME_EXT: u16 = 0;
/// `host_name`, the only name type RFC 6066 defines.
const HOST_NAME: u8 = 0;
/// A TLS record header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Largest record payload a peer may send (2^14, RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;
/// Largest ClientHello accepted, its 4-byte header included. Real ones are a few hundred bytes
/// to about 2 KiB (a post-quantum key share); 16 KiB leaves room for large session tickets
/// and pre-shared keys while bounding what one connection may make us hold.
pub const MAX_HELLO: usize = 16 * 1024;
/// Most raw bytes read before giving up: the ClientHello with the headers of its records. A
/// client that cuts it into tiny records pays their headers; one that needs more than twice
/// the hello's size in framing is not a TLS stack worth routing.
pub const MAX_BUFFERED: usize = 2 * MAX_HELLO;
/// Longest host name (RFC 1035: 253 characters in text form, 255 octets on the wire).
pub const MAX_NAME: usize = 255;

/// Where reading a ClientHello stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not a TLS ClientHello tandem can read (another protocol, SSLv2, a broken
    /// or oversized hello). Nothing more will change that.
    NotHello,
    /// A complete ClientHello; [`HelloReader::server_name`] says which name it asked for.
    Hello,
}

/// Reads one ClientHello from a growing buffer.
#[derive(Debug, Default)]
pub struct HelloReader {
    /// Offset in the caller's buffer of the next record header not yet consumed.
    next_record: usize,
    /// Handshake bytes gathered from the records so far.
    message: Vec<u8>,
    /// The verdict, once reached; later calls return it unchanged.
    done: Option<Status>,
    /// The host name's range inside `message`, once a hello with one is read.
    name: Option<(usize, usize)>,
}

impl HelloReader {
    /// A reader at the start of a connection.
    pub fn new() -> HelloReader {
        HelloReader::default()
    }

    /// Reads on from `buffer`, every byte received so far (the previous call's buffer with new
    /// bytes appended). Returns where reading stands.
    pub fn feed(&mut self, buffer: &[u8]) -> Status {
        if let Some(done) = self.done {
            return done;
        }
        // Only the first MAX_BUFFERED bytes count, so the verdict depends on the bytes alone,
        // never on how they were cut into reads.
        let buffer = buffer.get(..MAX_BUFFERED).unwrap_or(buffer);
        let status = self.advance(buffer);
        if status != Status::Incomplete {
            self.done = Some(status);
        } else if buffer.len() >= MAX_BUFFERED {
            self.done = Some(Status::NotHello);
            return Status::NotHello;
        }
        status
    }

    /// The host name the ClientHello asked for, as sent (not lowercased); `None` before the
    /// hello is complete or when it carries no `server_name`.
    pub fn server_name(&self) -> Option<&str> {
        let (start, end) = self.name?;
        std::str::from_utf8(self.message.get(start..end)?).ok()
    }

    fn advance(&mut self, buffer: &[u8]) -> Status {
        // Decide on the first bytes alone when they already rule TLS out, so a plain-text
        // client is not held until the timeout.
        if self.next_record == 0 {
            match buffer {
                [] => return Status::Incomplete,
                [t, ..] if *t != HANDSHAKE_RECORD => return Status::NotHello,
                [_, major, ..] if *major != 3 => return Status::NotHello,
                _ => {}
            }
        }
        loop {
            let Some(rest) = buffer.get(self.next_record..) else {
                return Status::NotHello;
            };
            let Some(header) = rest.get(..RECORD_HEADER) else {
                return Status::Incomplete;
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            // A ClientHello travels in handshake records, version 3.x; a zero-length handshake
            // record is forbidden (RFC 8446 §5.1).
            if header[0] != HANDSHAKE_RECORD || header[1] != 3 || len == 0 || len > MAX_RECORD {
                return Status::NotHello;
            }
            let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
                return Status::Incomplete;
            };
            self.message.extend_from_slice(payload);
            self.next_record += RECORD_HEADER + len;
            match self.message.as_slice() {
                [kind, ..] if *kind != CLIENT_HELLO => return Status::NotHello,
                [_, a, b, c, body @ ..] => {
                    let hello_len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
                    if hello_len + 4 > MAX_HELLO {
                        return Status::NotHello;
                    }
                    if let Some(body) = body.get(..hello_len) {
                        return match client_hello_name(body) {
                            Ok(name) => {
                                // Offsets inside `message`: the body starts after the header.
                                self.name = name.map(|(s, e)| (s + 4, e + 4));
                                Status::Hello
                            }
                            Err(Malformed) => Status::NotHello,
                        };
                    }
                }
                _ => {}
            }
        }
    }
}

/// A rule of the ClientHello's layout was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// A cursor over a byte slice that fails instead of panicking when it runs out.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed)?;
        let s = self.bytes.get(self.at..end).ok_or(Malformed)?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// The range of the host name inside a ClientHello body (after its 4-byte header), if it has
/// a `server_name` extension.
fn client_hello_name(body: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let mut c = Cursor { bytes: body, at: 0 };
    let version = c.take(2)?;
    if version[0] != 3 {
        return Err(Malformed);
    }
    c.take(32)?; // random
    if c.vec8()?.len() > 32 {
        return Err(Malformed); // session id
    }
    let suites = c.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed);
    }
    if c.vec8()?.is_empty() {
        return Err(Malformed); // compression methods: at least "null"
    }
    if c.is_empty() {
        return Ok(None); // a TLS 1.2-or-older hello may have no extensions at all
    }
    let extensions = c.vec16()?;
    if !c.is_empty() {
        return Err(Malformed);
    }
    let base = c.at - extensions.len();
    let mut e = Cursor {
        bytes: extensions,
        at: 0,
    };
    let mut name = None;
    while !e.is_empty() {
        let kind = e.u16()?;
        let data = e.vec16()?;
        if kind != SERVER_NAME_EXT {
            continue;
        }
        if name.is_some() {
            return Err(Malformed); // the same extension twice (RFC 8446 §4.2)
        }
        let data_at = base + e.at - data.len();
        let (s, end) = host_name(data)?;
        name = Some((data_at + s, data_at + end));
    }
    Ok(name)
}

/// The range of the `host_name` inside a `server_name` extension's data.
fn host_name(data: &[u8]) -> Result<(usize, usize), Malformed> {
    let mut c = Cursor { bytes: data, at: 0 };
    let list = c.vec16()?;
    if !c.is_empty() || list.is_empty() {
        return Err(Malformed);
    }
    let mut l = Cursor { bytes: list, at: 0 };
    let mut found = None;
    while !l.is_empty() {
        let kind = l.u8()?;
        let name = l.vec16()?;
        if kind != HOST_NAME {
            continue; // no other type is defined; a future one is not ours to judge
        }
        if found.is_some() || !is_host_name(name) {
            return Err(Malformed); // one name of a type at most (RFC 6066 §3)
        }
        let start = 2 + l.at - name.len();
        found = Some((start, start + name.len()));
    }
    found.ok_or(Malformed)
}

/// Whether `name` can be a DNS host name as sent in SNI: 1 to 255 bytes of letters, digits,
/// `-`, `_` and `.` (underscores occur in real internal names; IP literals are not allowed in
/// SNI, but their characters pass here and simply match no route).
fn is_host_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Builds a ClientHello in one record, as a TLS stack would send it, with `server_name` when
/// given and some other extensions around it. For tests, the fuzz seeds and the benchmarks.
pub fn sample_hello(server_name: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    // supported_versions: TLS 1.3, 1.2
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
    if let Some(name) = server_name {
        let n = name.as_bytes();
        let entry_len = 3 + n.len();
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(entry_len as u16).to_be_bytes());
        ext.push(HOST_NAME);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    // supported_groups: x25519
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![CLIENT_HELLO];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut record = vec![HANDSHAKE_RECORD, 3, 1];
    record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    record.extend_from_slice(&msg);
    record
}

/// Re-frames the handshake message of a one-record hello into records of at most `size` bytes
/// each, as a TLS stack may (and a fuzzer or test should).
pub fn split_records(one_record: &[u8], size: usize) -> Vec<u8> {
    let size = size.max(1);
    let Some(msg) = one_record.get(RECORD_HEADER..) else {
        return one_record.to_vec();
    };
    let mut out = Vec::new();
    for chunk in msg.chunks(size) {
        out.extend_from_slice(&one_record[..3]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> (Status, Option<String>) {
        let mut r = HelloReader::new();
        let s = r.feed(bytes);
        (s, r.server_name().map(str::to_string))
    }

    #[test]
    fn reads_the_name_of_a_one_record_hello() {
        let hello = sample_hello(Some("OWA.example.com"));
        assert_eq!(
            read_all(&hello),
            (Status::Hello, Some("OWA.example.com".into()))
        );
        assert_eq!(read_all(&sample_hello(None)), (Status::Hello, None));
    }

    #[test]
    fn byte_by_byte_and_across_records_give_the_same_answer() {
        let hello = sample_hello(Some("a.example.org"));
        for size in [1, 2, 3, 7, 50, 1000] {
            let framed = split_records(&hello, size);
            let mut r = HelloReader::new();
            for end in 1..framed.len() {
                assert_eq!(r.feed(&framed[..end]), Status::Incomplete, "size {size}");
            }
            assert_eq!(r.feed(&framed), Status::Hello);
            assert_eq!(r.server_name(), Some("a.example.org"));
        }
    }

    #[test]
    fn other_protocols_are_known_from_their_first_bytes() {
        assert_eq!(read_all(b"G").0, Status::NotHello);
        assert_eq!(read_all(b"\x16\x01").0, Status::NotHello);
        assert_eq!(read_all(b"\x16").0, Status::Incomplete);
        assert_eq!(read_all(b"").0, Status::Incomplete);
        // SSLv2-compatible hello
        assert_eq!(
            read_all(&[0x80, 0x2e, 0x01, 0x03, 0x01]).0,
            Status::NotHello
        );
    }

    #[test]
    fn broken_hellos_are_not_hellos() {
        let hello = sample_hello(Some("x.example"));
        // Every single-byte corruption of a length or type either still reads (if it only
        // touched the random or a suite) or is refused; it never panics or reads out of range.
        for at in 0..hello.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut h = hello.clone();
                h[at] = v;
                let _ = read_all(&h);
            }
        }
        // A server_name with a space.
        let bad = sample_hello(Some("a b"));
        assert_eq!(read_all(&bad).0, Status::NotHello);
        // A second server_name extension.
        let mut twice = sample_hello(Some("a"));
        let ext = [0u8, 0, 0, 6, 0, 4, 0, 0, 1, b'b'];
        twice.extend_from_slice(&ext);
        let grow = |v: &mut Vec<u8>, at: usize, by: usize, width: usize| {
            let mut n = 0usize;
            for i in 0..width {
                n = n << 8 | usize::from(v[at + i]);
            }
            n += by;
            for i in 0..width {
                v[at + i] = (n >> (8 * (width - 1 - i))) as u8;
            }
        };
        grow(&mut twice, 3, ext.len(), 2); // record
        grow(&mut twice, 6, ext.len(), 3); // handshake
        let ext_len_at = 5 + 4 + 2 + 32 + 1 + 6 + 2;
        grow(&mut twice, ext_len_at, ext.len(), 2);
        assert_eq!(read_all(&twice).0, Status::NotHello);
    }

    #[test]
    fn too_much_is_refused() {
        let mut huge = vec![22, 3, 1, 0x40, 0x00, 1, 0x00, 0x40, 0x01];
        huge.resize(5 + 0x4000, 0);
        assert_eq!(read_all(&huge).0, Status::NotHello);
        // Endless one-byte records of a hello that never ends.
        let mut r = HelloReader::new();
        let mut buf = vec![22, 3, 1, 0, 4, 1, 0, 0x30, 0x00];
        let mut status = r.feed(&buf);
        while status == Status::Incomplete {
            buf.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
            status = r.feed(&buf);
        }
        assert_eq!(status, Status::NotHello);
        assert!(buf.len() <= MAX_BUFFERED + 6);
    }
}
