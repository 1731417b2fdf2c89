//! The SIP status-line parser and response reader on arbitrary bytes, fed in pieces whose sizes
//! come from the input's first byte: never panics, and what comes out is bounded and sane.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::health::sip::{ResponseReader, parse_status_line};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    if let Ok(s) = parse_status_line(data) {
        assert!((100..=699).contains(&s.code));
    }
    let mut reader = ResponseReader::new();
    for chunk in data.chunks(usize::from(piece) + 1) {
        match reader.feed(chunk) {
            Ok(None) => assert!(reader.pending().len() < 200),
            Ok(Some(s)) => {
                assert!((200..=699).contains(&s.code));
                return;
            }
            Err(e) => {
                assert!(e.to_string().len() < 200);
                return;
            }
        }
    }
});
