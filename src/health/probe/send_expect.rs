//! The `send-expect` probe: write the check's bytes, then read until the expected bytes show up.
//!
//! Reads at most [`MAX_READ`] bytes; what it received goes into the failure reason, escaped and
//! cut short, because it is whatever the member chose to send.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ProbeOutcome, io_reason, quote_bytes};
use crate::config::Exchange;

/// Most bytes read while looking for the expected ones: 64 KiB.
pub const MAX_READ: usize = 64 * 1024;

/// How many received bytes a failure reason quotes.
const QUOTE_LEN: usize = 40;

/// Sends `exchange.send` (if any) on `stream` and waits for `exchange.expect` in the reply.
pub(super) async fn probe(exchange: &Exchange, mut stream: TcpStream) -> ProbeOutcome {
    if !exchange.send.is_empty()
        && let Err(e) = stream.write_all(&exchange.send).await
    {
        return ProbeOutcome::fail(format!("send: {}", io_reason(&e)));
    }
    let expect = exchange.expect.as_slice();
    if expect.is_empty() {
        // Validation requires `expect`; an empty one is trivially contained in anything.
        return ProbeOutcome::pass("matched");
    }
    let mut received = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    while received.len() < MAX_READ {
        let room = (MAX_READ - received.len()).min(buf.len());
        let n = match stream.read(&mut buf[..room]).await {
            Ok(n) => n,
            Err(e) => return ProbeOutcome::fail(format!("read: {}", io_reason(&e))),
        };
        if n == 0 {
            return ProbeOutcome::fail(format!(
                "closed without a match after {} bytes: \"{}\"",
                received.len(),
                quote_bytes(&received, QUOTE_LEN)
            ));
        }
        if push_and_find(&mut received, &buf[..n], expect) {
            return ProbeOutcome::pass("matched");
        }
    }
    ProbeOutcome::fail(format!(
        "no match in the first {} KiB: \"{}\"",
        MAX_READ / 1024,
        quote_bytes(&received, QUOTE_LEN)
    ))
}

/// Appends `new` to `received` and says whether `expect` (not empty) now occurs in it. Searches
/// only the new bytes plus enough before them to catch a match split across reads, so each
/// byte is scanned a bounded number of times.
fn push_and_find(received: &mut Vec<u8>, new: &[u8], expect: &[u8]) -> bool {
    let from = received.len().saturating_sub(expect.len() - 1);
    received.extend_from_slice(new);
    received[from..].windows(expect.len()).any(|w| w == expect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Fed in any pieces, the matcher finds `expect` exactly when the whole stream has it,
        /// at the first piece that completes it, including matches split across pieces.
        #[test]
        fn a_match_is_found_whatever_the_read_sizes(
            before in prop::collection::vec(0u8..4, 0..64),
            expect in prop::collection::vec(0u8..4, 1..6),
            after in prop::collection::vec(0u8..4, 0..64),
            planted in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream = if planted {
                [&before[..], &expect[..], &after[..]].concat()
            } else {
                [&before[..], &after[..]].concat()
            };
            let mut points: Vec<usize> =
                cuts.iter().map(|c| c % (stream.len() + 1)).chain([0, stream.len()]).collect();
            points.sort_unstable();
            points.dedup();
            let mut received = Vec::new();
            let mut found_at = None;
            for w in points.windows(2) {
                if push_and_find(&mut received, &stream[w[0]..w[1]], &expect) {
                    found_at = Some(w[1]);
                    break;
                }
            }
            prop_assert_eq!(found_at.is_some(), contains(&stream, &expect));
            if let Some(end) = found_at {
                // Not found late: the piece that completed the first match reported it.
                let first_end = (expect.len()..=stream.len())
                    .find(|&e| stream[..e].ends_with(&expect))
                    .expect("a match exists");
                let piece_start = points[points.iter().position(|&p| p == end).expect("cut") - 1];
                prop_assert!(first_end > piece_start && first_end <= end);
            }
        }
    }
}
