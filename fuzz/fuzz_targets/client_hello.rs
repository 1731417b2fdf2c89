//! The ClientHello reader on arbitrary bytes, fed in pieces whose sizes come from the input's
//! first byte: never panics, reads no more than its bound, reaches the same verdict and name
//! whatever the pieces, and any name it reports is a plausible host name inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::sni::hello::{HelloReader, MAX_BUFFERED, MAX_NAME, Status};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let mut whole = HelloReader::new();
    let whole_status = whole.feed(data);
    let mut pieces = HelloReader::new();
    let mut status = Status::Incomplete;
    let mut end = 0;
    while end < data.len() && status == Status::Incomplete {
        end = (end + usize::from(piece) + 1).min(data.len());
        status = pieces.feed(&data[..end]);
    }
    assert!(status != Status::Incomplete || data.len() < MAX_BUFFERED);
    // The verdict is a function of the bytes, not of how they arrived.
    assert_eq!(status, whole_status);
    assert_eq!(pieces.server_name(), whole.server_name());
    if let Some(name) = whole.server_name() {
        assert_eq!(whole_status, Status::Hello);
        assert!((1..=MAX_NAME).contains(&name.len()));
        assert!(name.bytes().all(|b| b.is_ascii_graphic()));
    }
});
