//! The BGP message decoder on bytes a peer chose: never panics, and whatever it accepts
//! encodes to a message it reads back the same (the speaker answers what it understood).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::bgp::codec::{self, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let four_octet_as = flags & 1 == 1;
    // As the speaker reads its socket: frame after frame until one is incomplete or bad.
    while let Ok(Some(len)) = codec::frame_len(rest) {
        let Some(frame) = rest.get(..len) else {
            return;
        };
        rest = &rest[len..];
        let Ok(message) = codec::decode(frame, four_octet_as) else {
            return;
        };
        let again = message.encode(four_octet_as);
        if again.len() <= codec::MAX_MESSAGE_LEN {
            let back: Result<Message, _> = codec::decode(&again, four_octet_as);
            assert_eq!(back.as_ref(), Ok(&message), "{frame:02x?}");
        }
    }
});
