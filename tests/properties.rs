//! Property tests over the parsers that take hostile input: the config parser (text an operator
//! or a config tool wrote, possibly broken), the SIP response reader (bytes a member sent) and
//! the TLS ClientHello reader (bytes any client sent).
//! None may panic, whatever it is given; the config parser's problems must point inside the
//! text. Case counts are bounded so the file runs in a few seconds in a debug build.

use proptest::prelude::*;
use tandem::health::sip::{self, ResponseReader};

/// The commented reference config: a valid, realistic starting point for mutations.
const REFERENCE: &str = include_str!("../config/tandem.toml");

/// One edit of a text's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize, len: usize },
}

/// Bytes that matter to TOML and to our keys, plus anything at all now and then.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"[]{}=\"'#,.\n\r\t :0123456789-_sx".to_vec()),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (any::<usize>(), interesting_byte()).prop_map(|(at, byte)| Edit::Insert { at, byte }),
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
    ]
}

/// Applies `edits` to `text`'s bytes; the result is kept only as far as it is UTF-8 (the parser
/// takes `&str`; a file that is not UTF-8 is refused when it is read).
fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        match *e {
            Edit::Flip { at, bit } if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= 1 << bit;
            }
            Edit::Insert { at, byte } => {
                let at = at % (bytes.len() + 1);
                bytes.insert(at, byte);
            }
            Edit::Delete { at, len } if !bytes.is_empty() => {
                let at = at % bytes.len();
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses `text` and checks that every problem, if any, lies within it: a line that exists
/// and a column at most one past that line's last character (0:0 meaning "unknown").
fn parse_and_check_positions(text: &str) -> Result<(), TestCaseError> {
    let Err(problems) = tandem::config::parse(text, "prop.toml") else {
        return Ok(());
    };
    prop_assert!(!problems.0.is_empty(), "Err with no problems");
    let lines: Vec<&str> = text.split('\n').collect();
    for p in &problems.0 {
        if p.line == 0 {
            prop_assert_eq!(p.column, 0, "unknown line with a column: {}", p);
            continue;
        }
        prop_assert!(p.line <= lines.len(), "line past the end: {}", p);
        let width = lines[p.line - 1].chars().count();
        prop_assert!(
            (1..=width + 1).contains(&p.column),
            "column {} outside line {} of {} characters: {}",
            p.column,
            p.line,
            width,
            p
        );
        prop_assert!(!p.message.is_empty(), "empty message: {}", p);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parse_survives_arbitrary_text(text in any::<String>()) {
        parse_and_check_positions(&text)?;
    }

    #[test]
    fn config_parse_survives_toml_shaped_text(
        text in "([\\[\\]{}=\"'#,.\n :a-z0-9_-]|pool|service|member|check|addr|listen|port){0,200}"
    ) {
        parse_and_check_positions(&text)?;
    }

    #[test]
    fn config_parse_survives_mutations_of_the_reference(
        edits in prop::collection::vec(edit(), 1..8)
    ) {
        parse_and_check_positions(&mutate(REFERENCE, &edits))?;
    }
}

#[test]
fn the_reference_config_is_valid() {
    // The mutations above start from a config that parses, so they explore near-valid files.
    if let Err(problems) = tandem::config::parse(REFERENCE, "tandem.toml") {
        panic!("config/tandem.toml is invalid:\n{problems}");
    }
}

/// Bytes shaped like SIP responses: status lines, headers (Content-Length in both forms, with
/// good and bad values), folded lines, bodies and stray line ends, mixed with raw bytes.
fn sip_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (100u16..700, "[ -~]{0,12}").prop_map(|(c, r)| format!("SIP/2.0 {c} {r}\r\n").into_bytes()),
        (0u16..1000).prop_map(|c| format!("sip/2.0 {c}\n").into_bytes()),
        "[0-9a-z ]{0,6}".prop_map(|v| format!("Content-Length: {v}\r\n").into_bytes()),
        (0usize..64).prop_map(|n| format!("l: {n}\r\n").into_bytes()),
        "[ -~]{0,20}".prop_map(|v| format!("Via: {v}\r\n").into_bytes()),
        Just(b"  folded\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn sip_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(sip_piece(), 0..24).prop_map(|pieces| pieces.concat())
}

/// Feeds `input` in pieces cut at `cuts` (offsets taken modulo the length), as reads would
/// deliver it, and checks what comes out is sane.
fn feed_in_pieces(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (input.len() + 1))
        .chain([0, input.len()])
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut reader = ResponseReader::new();
    for w in points.windows(2) {
        match reader.feed(&input[w[0]..w[1]]) {
            Ok(None) => {}
            Ok(Some(status)) => {
                prop_assert!((200..=699).contains(&status.code), "final status {status}");
                prop_assert!(status.reason.len() <= 3 * 40 + 3, "reason too long");
                return Ok(());
            }
            Err(e) => {
                prop_assert!(e.to_string().len() < 200, "error too long: {e}");
                return Ok(());
            }
        }
        prop_assert!(reader.pending().len() < 200, "pending quote unbounded");
    }
    Ok(())
}

/// The kind of a reader error, without the quoted bytes (which depend on how much had arrived
/// when the reader gave up).
fn kind(e: &sip::SipError) -> String {
    let debug = format!("{e:?}");
    debug
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Feeds `input` whole.
fn whole(input: &[u8]) -> Result<Option<u16>, String> {
    ResponseReader::new()
        .feed(input)
        .map(|s| s.map(|s| s.code))
        .map_err(|e| kind(&e))
}

/// Feeds `input` one byte at a time.
fn bytewise(input: &[u8]) -> Result<Option<u16>, String> {
    let mut reader = ResponseReader::new();
    for b in input.chunks(1) {
        match reader.feed(b) {
            Ok(None) => {}
            Ok(Some(s)) => return Ok(Some(s.code)),
            Err(e) => return Err(kind(&e)),
        }
    }
    Ok(None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sip_status_line_never_panics(line in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(s) = sip::parse_status_line(&line) {
            prop_assert!((100..=699).contains(&s.code));
            prop_assert!(line.len() >= 11);
        }
    }

    #[test]
    fn sip_reader_never_panics_on_arbitrary_bytes(
        input in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        feed_in_pieces(&input, &cuts)?;
    }

    #[test]
    fn sip_reader_never_panics_on_sip_shaped_bytes(
        input in sip_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        feed_in_pieces(&input, &cuts)?;
    }

    /// The answer a reader gives does not depend on how reads split the bytes.
    #[test]
    fn sip_reader_answer_does_not_depend_on_read_sizes(input in sip_stream()) {
        prop_assert_eq!(whole(&input), bytewise(&input));
    }
}

// ClientHello reader (bytes any client chose): the verdict and the name depend on the bytes
// only, never on how they were cut into reads; a well-formed hello is read whatever its
// framing; nothing panics.

use tandem::sni::hello::{HelloReader, Status, sample_hello, split_records};
use tandem::sni::names::{NameTable, Pattern};

/// Feeds `bytes` cut at `cuts` (offsets, any order); returns the verdict and the name.
fn hello_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Status, Option<String>) {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    let mut r = HelloReader::new();
    let mut status = Status::Incomplete;
    for end in ends {
        status = r.feed(&bytes[..end]);
        if status != Status::Incomplete {
            break;
        }
    }
    (status, r.server_name().map(str::to_string))
}

fn host_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,20})?"
}

fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(host_label(), 1..6).prop_map(|l| l.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_hello_reader_survives_any_bytes_in_any_pieces(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let whole = hello_in_pieces(&bytes, &[]);
        prop_assert_eq!(hello_in_pieces(&bytes, &cuts), whole);
    }

    #[test]
    fn a_tls_looking_prefix_with_noise_never_panics(
        noise in prop::collection::vec(any::<u8>(), 0..400),
        at in any::<usize>(),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        // A real hello with bytes overwritten: mostly refused, sometimes still read.
        let mut bytes = sample_hello(Some("owa.example.com"));
        let at = at % bytes.len();
        for (i, b) in noise.iter().enumerate().take(bytes.len() - at) {
            bytes[at + i] = *b;
        }
        let whole = hello_in_pieces(&bytes, &[]);
        prop_assert_eq!(hello_in_pieces(&bytes, &cuts), whole.clone());
        if let (Status::Hello, Some(name)) = whole {
            prop_assert!(!name.is_empty() && name.len() <= 255);
        }
    }

    #[test]
    fn well_formed_hellos_are_read_in_any_framing(
        name in prop::option::of(host_name()),
        record in 1usize..400,
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let bytes = split_records(&sample_hello(name.as_deref()), record);
        prop_assert_eq!(hello_in_pieces(&bytes, &cuts), (Status::Hello, name));
    }

    #[test]
    fn names_match_their_exact_pattern_and_their_wildcard_whatever_the_case(
        first in host_label(),
        rest in host_name(),
    ) {
        let exact = Pattern::parse(&format!("x.{rest}")).expect("valid");
        let wild = Pattern::parse(&format!("*.{rest}")).expect("valid");
        let table = NameTable::new([(&exact, 0), (&wild, 1)]);
        prop_assert_eq!(table.lookup(&format!("X.{}", rest.to_uppercase())), Some(0));
        let expected = if first.eq_ignore_ascii_case("x") { 0 } else { 1 };
        prop_assert_eq!(table.lookup(&format!("{first}.{rest}")), Some(expected));
        prop_assert_eq!(table.lookup(&rest), None);
        prop_assert_eq!(table.lookup(&format!("a.{first}.{rest}")), None);
    }
}
