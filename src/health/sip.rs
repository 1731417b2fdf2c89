//! SIP message text for the `sip` health probe: the OPTIONS request it sends and the reader that
//! finds the final response in the bytes a member sends back (RFC 3261).
//!
//! Pure: no I/O, no clock, no randomness. The probe passes in the addresses and random tokens and
//! feeds received bytes in; this module never sees a socket. The reader must never panic, whatever
//! bytes a member sends, and never buffers more than [`MAX_HEAD`] bytes of one response head.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Largest response head (status line and headers) the reader buffers: 16 KiB. Real OPTIONS
/// responses are well under 2 KiB; anything bigger is not a SIP server worth waiting on.
pub const MAX_HEAD: usize = 16 * 1024;

/// How many received bytes an error quotes; keeps probe reasons short.
const QUOTE_LEN: usize = 40;

/// The transport an OPTIONS request is sent over; it appears in the Request-URI and the Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

impl Transport {
    /// The `transport=` URI parameter value.
    fn uri_param(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The Via transport token.
    fn via(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// Everything an OPTIONS request is made of. The tokens must be fresh per request (RFC 3261
/// 8.1.1.7: the branch identifies the transaction, the tag and Call-ID the dialog attempt) and
/// made of URI-safe characters (the probe uses hex).
#[derive(Debug, Clone)]
pub struct OptionsRequest<'a> {
    /// The member probed: Request-URI and To.
    pub member: SocketAddr,
    /// Our end of the connection: Via, From, Contact and Call-ID.
    pub local: SocketAddr,
    pub transport: Transport,
    /// Via branch, without the RFC 3261 magic cookie `z9hG4bK` (added here).
    pub branch: &'a str,
    /// From tag.
    pub tag: &'a str,
    /// Left part of the Call-ID (`<call_id>@<local ip>`).
    pub call_id: &'a str,
    /// User-Agent value, e.g. `tandem/0.1.0`.
    pub user_agent: &'a str,
}

impl OptionsRequest<'_> {
    /// The request as sent on the wire: CRLF line endings, ending with an empty line, no body.
    pub fn to_wire(&self) -> String {
        let t = self.transport;
        let member = self.member;
        let local = self.local;
        let local_host = host(local.ip());
        [
            format!("OPTIONS sip:{member};transport={} SIP/2.0", t.uri_param()),
            format!(
                "Via: SIP/2.0/{} {local};branch=z9hG4bK{}",
                t.via(),
                self.branch
            ),
            "Max-Forwards: 70".to_string(),
            format!("From: <sip:tandem@{local_host}>;tag={}", self.tag),
            format!("To: <sip:{member}>"),
            format!("Call-ID: {}@{local_host}", self.call_id),
            "CSeq: 1 OPTIONS".to_string(),
            format!("Contact: <sip:tandem@{local};transport={}>", t.uri_param()),
            "Accept: application/sdp".to_string(),
            format!("User-Agent: {}", self.user_agent),
            "Content-Length: 0".to_string(),
            String::new(),
            String::new(),
        ]
        .join("\r\n")
    }
}

/// An IP as it appears in a SIP host part: IPv6 in brackets.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A parsed response status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// 100..=699.
    pub code: u16,
    /// The reason phrase as received, non-printable bytes escaped, at most 40 bytes quoted.
    pub reason: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "SIP/2.0 {}", self.code)
        } else {
            write!(f, "SIP/2.0 {} {}", self.code, self.reason)
        }
    }
}

impl Status {
    /// A provisional (1xx) response: the final one is still to come.
    pub fn is_provisional(&self) -> bool {
        self.code < 200
    }
}

/// Why received bytes are not an acceptable SIP response. `Display` is a short probe reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipError {
    /// The first line is not a SIP/2.0 status line.
    NotSip { received: String },
    /// A header line is neither `Name: value` nor a continuation.
    BadHeader { line: String },
    /// A Content-Length that is not a number.
    BadContentLength { value: String },
    /// No end of the response head within [`MAX_HEAD`] bytes.
    HeadTooLarge,
}

impl fmt::Display for SipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SipError::NotSip { received } => write!(f, "not a SIP response: \"{received}\""),
            SipError::BadHeader { line } => write!(f, "bad SIP header line: \"{line}\""),
            SipError::BadContentLength { value } => {
                write!(f, "bad SIP Content-Length: \"{value}\"")
            }
            SipError::HeadTooLarge => {
                write!(f, "SIP response head larger than {} KiB", MAX_HEAD / 1024)
            }
        }
    }
}

impl std::error::Error for SipError {}

/// Quotes at most [`QUOTE_LEN`] received bytes, escaping anything not printable ASCII.
fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_LEN)];
    let mut out = shown.escape_ascii().to_string();
    if bytes.len() > QUOTE_LEN {
        out.push_str("...");
    }
    out
}

/// Parses a status line (without its line ending): `SIP/2.0 SP 3DIGIT SP Reason-Phrase`.
///
/// The version is matched case-insensitively (RFC 3261 25.1: ABNF literals are); a missing reason
/// phrase is tolerated because it tells nothing the code does not.
pub fn parse_status_line(line: &[u8]) -> Result<Status, SipError> {
    let not_sip = || SipError::NotSip {
        received: quote(line),
    };
    let rest = match line.get(..8) {
        Some(version) if version.eq_ignore_ascii_case(b"SIP/2.0 ") => &line[8..],
        _ => return Err(not_sip()),
    };
    let (digits, reason) = match rest.get(..3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) => (d, &rest[3..]),
        _ => return Err(not_sip()),
    };
    let reason = match reason {
        [] => &[][..],
        [b' ', phrase @ ..] => phrase,
        _ => return Err(not_sip()),
    };
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return Err(not_sip());
    }
    Ok(Status {
        code,
        reason: quote(reason),
    })
}

/// The head of one response: its status and how many body bytes follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: Status,
    content_length: usize,
}

/// Parses a complete head: the status line and header lines, up to and including the empty line.
fn parse_head(head: &[u8]) -> Result<Head, SipError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty());
    let status = parse_status_line(lines.next().unwrap_or_default())?;
    let mut content_length = 0;
    for (i, line) in lines.enumerate() {
        // Folded continuation lines (RFC 3261 7.3.1) are part of the previous header.
        if i > 0 && matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(SipError::BadHeader { line: quote(line) });
        };
        let name = line[..colon].trim_ascii();
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
            return Err(SipError::BadHeader { line: quote(line) });
        }
        // `l` is Content-Length's compact form (RFC 3261 7.3.3).
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = line[colon + 1..].trim_ascii();
            content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| SipError::BadContentLength {
                    value: quote(value),
                })?;
        }
    }
    Ok(Head {
        status,
        content_length,
    })
}

/// Whether `prefix` (an incomplete first line) can still become a SIP/2.0 status line; lets the
/// reader give up on a banner such as `HTTP/1.1` without waiting for the rest of it.
fn could_be_sip(prefix: &[u8]) -> bool {
    let n = prefix.len().min(8);
    prefix[..n].eq_ignore_ascii_case(&b"SIP/2.0 "[..n])
}

/// Finds the final response in a stream of received bytes: skips the CRLFs a server may send
/// before a message (RFC 3261 7.5) and provisional 1xx responses with their bodies.
///
/// Feed it what each read returns until it yields a status or an error, then drop it: it is not
/// meant to be fed past either. Memory stays under twice
/// [`MAX_HEAD`] whatever is fed: bodies of provisional responses are counted off, not kept, and
/// each byte is scanned once.
#[derive(Debug, Default)]
pub struct ResponseReader {
    /// Received bytes from the start of the current response on.
    buf: Vec<u8>,
    /// Body bytes of a provisional response still to be discarded.
    skip: usize,
    /// How much of `buf` has been searched for the end of the head.
    scanned: usize,
    /// The current response's first line is complete and a valid status line.
    status_ok: bool,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader::default()
    }

    /// Takes the next received bytes. `Ok(Some)`: the final response's status (bytes after it
    /// are not looked at); `Ok(None)`: more bytes are needed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Status>, SipError> {
        // Pieces of at most one head, so one large read cannot grow the buffer past the bound.
        for piece in data.chunks(MAX_HEAD) {
            if let Some(status) = self.feed_piece(piece)? {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }

    fn feed_piece(&mut self, piece: &[u8]) -> Result<Option<Status>, SipError> {
        self.buf.extend_from_slice(piece);
        loop {
            let body = self.skip.min(self.buf.len());
            self.skip -= body;
            self.buf.drain(..body);
            if !self.status_ok {
                let crlf = self
                    .buf
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                self.buf.drain(..crlf);
                self.scanned = self.scanned.saturating_sub(crlf);
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            match self.scan()? {
                None if self.buf.len() > MAX_HEAD => return Err(SipError::HeadTooLarge),
                None => return Ok(None),
                Some(head) if head.status.is_provisional() => {
                    // The body follows the head; then the next response begins.
                    self.buf.drain(..self.scanned);
                    self.skip = head.content_length;
                    self.scanned = 0;
                    self.status_ok = false;
                }
                Some(head) => return Ok(Some(head.status)),
            }
        }
    }

    /// Looks for the end of the head in the bytes not yet scanned. On success `scanned` is the
    /// head's length including its empty line. Fails as soon as the first line shows this is
    /// not SIP.
    fn scan(&mut self) -> Result<Option<Head>, SipError> {
        let from = self.scanned;
        self.scanned = self.buf.len();
        for i in from..self.buf.len() {
            if self.buf[i] != b'\n' {
                continue;
            }
            let line = &self.buf[..i];
            if !self.status_ok {
                parse_status_line(line.strip_suffix(b"\r").unwrap_or(line))?;
                self.status_ok = true;
            }
            // A line end right after another one: the empty line that closes the head.
            if line.ends_with(b"\n") || line.ends_with(b"\n\r") {
                self.scanned = i + 1;
                return parse_head(&self.buf[..=i]).map(Some);
            }
        }
        if !self.status_ok && !could_be_sip(&self.buf) {
            return Err(SipError::NotSip {
                received: quote(&self.buf),
            });
        }
        Ok(None)
    }

    /// The bytes of an incomplete response received so far, quoted for a probe reason.
    pub fn pending(&self) -> String {
        quote(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(transport: Transport) -> String {
        OptionsRequest {
            member: "10.1.0.11:5061".parse().unwrap(),
            local: "10.9.0.1:40000".parse().unwrap(),
            transport,
            branch: "abc123",
            tag: "t1",
            call_id: "c1",
            user_agent: "tandem/0.1.0",
        }
        .to_wire()
    }

    #[test]
    fn options_request_is_rfc3261_shaped() {
        let r = request(Transport::Tcp);
        assert_eq!(
            r,
            "OPTIONS sip:10.1.0.11:5061;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 10.9.0.1:40000;branch=z9hG4bKabc123\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tandem@10.9.0.1>;tag=t1\r\n\
             To: <sip:10.1.0.11:5061>\r\n\
             Call-ID: c1@10.9.0.1\r\n\
             CSeq: 1 OPTIONS\r\n\
             Contact: <sip:tandem@10.9.0.1:40000;transport=tcp>\r\n\
             Accept: application/sdp\r\n\
             User-Agent: tandem/0.1.0\r\n\
             Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn options_request_over_tls_and_ipv6() {
        let r = OptionsRequest {
            member: "[2001:db8::1]:5061".parse().unwrap(),
            local: "[2001:db8::9]:40000".parse().unwrap(),
            transport: Transport::Tls,
            branch: "b",
            tag: "t",
            call_id: "c",
            user_agent: "ua",
        }
        .to_wire();
        assert!(r.starts_with("OPTIONS sip:[2001:db8::1]:5061;transport=tls SIP/2.0\r\n"));
        assert!(r.contains("\r\nVia: SIP/2.0/TLS [2001:db8::9]:40000;branch=z9hG4bKb\r\n"));
        assert!(r.contains("\r\nFrom: <sip:tandem@[2001:db8::9]>;tag=t\r\n"));
        assert!(r.contains("\r\nCall-ID: c@[2001:db8::9]\r\n"));
        assert!(request(Transport::Tls).contains("Via: SIP/2.0/TLS "));
    }

    #[test]
    fn status_lines() {
        let s = parse_status_line(b"SIP/2.0 200 OK").unwrap();
        assert_eq!((s.code, s.reason.as_str()), (200, "OK"));
        assert_eq!(s.to_string(), "SIP/2.0 200 OK");
        let s = parse_status_line(b"sip/2.0 503 Service Unavailable").unwrap();
        assert_eq!(s.to_string(), "SIP/2.0 503 Service Unavailable");
        assert_eq!(
            parse_status_line(b"SIP/2.0 404").unwrap().to_string(),
            "SIP/2.0 404"
        );
        for bad in [
            &b""[..],
            b"SIP/2.0",
            b"SIP/2.0 ",
            b"SIP/2.0 20 OK",
            b"SIP/2.0 2000 OK",
            b"SIP/2.0 099 Low",
            b"SIP/2.0 700 High",
            b"SIP/3.0 200 OK",
            b"HTTP/1.1 200 OK",
            b"OPTIONS sip:x SIP/2.0",
        ] {
            assert!(parse_status_line(bad).is_err(), "{:?}", bad.escape_ascii());
        }
    }

    #[test]
    fn reason_phrase_is_escaped_and_short() {
        let mut line = b"SIP/2.0 503 Busy\x1b[31m\xff".to_vec();
        line.extend_from_slice(&[b'x'; 200]);
        let s = parse_status_line(&line).unwrap();
        assert!(s.reason.starts_with("Busy\\x1b[31m\\xff"));
        assert!(s.reason.len() < 80);
        assert!(s.reason.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    }

    fn feed_all(chunks: &[&[u8]]) -> Result<Option<Status>, SipError> {
        let mut r = ResponseReader::new();
        for c in chunks {
            if let Some(s) = r.feed(c)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    #[test]
    fn final_response_after_provisional_ones() {
        let got = feed_all(&[b"\r\n\r\nSIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n\
              SIP/2.0 180 Ringing\r\nl: 4\r\n\r\nbodySIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nv=0"])
        .unwrap()
        .unwrap();
        assert_eq!(got.code, 200);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_answer() {
        let stream: &[u8] = b"SIP/2.0 100 Trying\r\nContent-Length: 5\r\n\r\n12345\
              SIP/2.0 503 Service Unavailable\r\nVia: x\r\n  folded\r\n\r\n";
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            let got = feed_all(&[a, b]).unwrap().unwrap();
            assert_eq!(got.to_string(), "SIP/2.0 503 Service Unavailable");
        }
        // One byte at a time too.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes).unwrap().unwrap().code, 503);
    }

    #[test]
    fn bare_lf_line_endings_are_tolerated() {
        let got = feed_all(&[b"SIP/2.0 200 OK\nCSeq: 1 OPTIONS\n\n"]).unwrap();
        assert_eq!(got.unwrap().code, 200);
    }

    #[test]
    fn incomplete_response_waits_for_more() {
        assert_eq!(feed_all(&[b"SIP/2.0 200 OK\r\nCSeq: 1"]).unwrap(), None);
        assert_eq!(feed_all(&[b"SIP/2"]).unwrap(), None);
        let mut r = ResponseReader::new();
        r.feed(b"SIP/2.0 200 OK\r\n").unwrap();
        assert_eq!(r.pending(), "SIP/2.0 200 OK\\r\\n");
    }

    #[test]
    fn garbage_fails_as_soon_as_the_first_line_shows_it() {
        let e = feed_all(&[b"HTTP/1.1 400 Bad"]).unwrap_err();
        assert_eq!(e.to_string(), "not a SIP response: \"HTTP/1.1 400 Bad\"");
        let e = feed_all(&[b"\x00\x01\xfe"]).unwrap_err();
        assert_eq!(e.to_string(), "not a SIP response: \"\\x00\\x01\\xfe\"");
        let e = feed_all(&[b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n"]).unwrap_err();
        assert!(matches!(e, SipError::BadHeader { .. }), "{e}");
        let e = feed_all(&[b"SIP/2.0 200 OK\r\nContent-Length: ten\r\n\r\n"]).unwrap_err();
        assert!(matches!(e, SipError::BadContentLength { .. }), "{e}");
    }

    #[test]
    fn head_size_is_bounded() {
        let mut r = ResponseReader::new();
        r.feed(b"SIP/2.0 200 OK\r\n").unwrap();
        let filler = [b"X-Pad: ".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
        let mut result = Ok(None);
        for _ in 0..20 {
            result = r.feed(&filler);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SipError::HeadTooLarge));
        assert!(r.buf.len() <= 2 * MAX_HEAD);
        // A single huge read is bounded the same way.
        let huge = [b"SIP/2.0 200 OK\r\n".as_slice(), &vec![b'a'; 100_000]].concat();
        assert_eq!(feed_all(&[&huge]), Err(SipError::HeadTooLarge));
    }

    #[test]
    fn provisional_body_is_skipped_without_buffering() {
        let mut r = ResponseReader::new();
        assert_eq!(
            r.feed(b"SIP/2.0 183 Progress\r\nContent-Length: 100000\r\n\r\n")
                .unwrap(),
            None
        );
        for _ in 0..100 {
            assert_eq!(r.feed(&[b'x'; 1000]).unwrap(), None);
            assert!(r.buf.is_empty());
        }
        let got = r.feed(b"SIP/2.0 486 Busy Here\r\n\r\n").unwrap().unwrap();
        assert_eq!(got.code, 486);
    }

    /// A small xorshift generator: deterministic "random" input without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Bytes drawn mostly from the characters that matter to the parser, so inputs get deep.
        const ALPHABET: &[u8] = b"SIP/2.0 1234567890:\r\n\t lC-ength\x00\xff";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let seeds: [&[u8]; 3] = [
            b"SIP/2.0 100 Trying\r\nContent-Length: 3\r\n\r\n",
            b"SIP/2.0 200 OK\r\n",
            b"\r\n",
        ];
        for round in 0..20_000 {
            let mut input = Vec::new();
            if round % 2 == 0 {
                input.extend_from_slice(seeds[round % 3]);
            }
            let len = (rng.next() % 300) as usize;
            for _ in 0..len {
                let r = rng.next();
                let b = if r.is_multiple_of(4) {
                    (r >> 8) as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                };
                input.push(b);
            }
            let _ = parse_status_line(&input);
            let mut reader = ResponseReader::new();
            for chunk in input.chunks(1 + (rng.next() % 17) as usize) {
                match reader.feed(chunk) {
                    Ok(None) => {}
                    Ok(Some(s)) => {
                        assert!((100..=699).contains(&s.code));
                        break;
                    }
                    Err(e) => {
                        assert!(e.to_string().len() < 120, "{e}");
                        break;
                    }
                }
            }
            assert!(reader.pending().len() < 200);
        }
    }
}
