//! The start of a connection on a service with server-name routes: read the ClientHello,
//! within a time and a size bound, and decide where the connection goes.
//!
//! Every byte read here is handed back to the caller, which sends it to the member before the
//! relay starts: TLS passes through unchanged. (`MSG_PEEK` would leave the bytes in the socket,
//! but a hello split over several segments cannot be waited for with peek: the socket stays
//! readable while the first part sits unread, so waiting for the rest would spin.)
//!
//! The time bound is the service's `connect_timeout` (2 s by default): a TLS client sends its
//! hello with the first flight, so a client silent that long is not one, and the same knob
//! that bounds the member side bounds this. A client that sends nothing in time, or something
//! that is not a ClientHello, goes to the service's own pool, or is closed with `sni_required`.

use std::io;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::pool::Route;
use crate::sni::hello::{HelloReader, MAX_BUFFERED, Status};

/// Where a connection goes after its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A server-name route, by index in [`Route::sni`].
    Route(usize),
    /// The service's own pools. `readable`: the first bytes were a ClientHello (with a name
    /// that matched no route, or with no name).
    Default { readable: bool },
    /// Closed: `sni_required` and no server name.
    Refuse { readable: bool },
}

/// Reads the start of `client` until a ClientHello is complete, the bytes cannot be one, the
/// client stops sending, or `timeout` passes. Returns the bytes read (all of them, to be sent
/// on) and the choice. An I/O error means the client is gone.
pub async fn read_hello(
    client: &mut TcpStream,
    route: &Route,
    timeout: Duration,
) -> io::Result<(Vec<u8>, Choice)> {
    let mut buffer = Vec::with_capacity(1024);
    let mut reader = HelloReader::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let status = loop {
        let room = MAX_BUFFERED.saturating_sub(buffer.len()).max(1);
        buffer.reserve(room.min(4096));
        let mut limited = (&mut *client).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buffer)).await {
            Err(_elapsed) => break Status::NotHello,
            Ok(Err(e)) => return Err(e),
            // The client finished sending (half-close) before a whole hello: what it sent is
            // still passed on, to the default pool if anywhere.
            Ok(Ok(0)) => break Status::NotHello,
            Ok(Ok(_)) => match reader.feed(&buffer) {
                Status::Incomplete => continue,
                done => break done,
            },
        }
    };
    let readable = status == Status::Hello;
    let name = if readable { reader.server_name() } else { None };
    let choice = match name.and_then(|n| route.names.lookup(n)) {
        Some(i) => Choice::Route(i),
        None if name.is_none() && route.service.sni.required => Choice::Refuse { readable },
        None => Choice::Default { readable },
    };
    Ok((buffer, choice))
}
