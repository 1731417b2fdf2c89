//! The admin API on arbitrary request bytes from one client, served in pieces whose size comes
//! from the input's first byte, then closed once the server is idle: never panics, writes
//! nothing but HTTP/1.x responses, and the connection ends on its own, or once `stop` fires
//! when the client opened an `/events` stream (which is meant to stay open).
#![no_main]

#[path = "common.rs"]
mod common;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tandem::admin::{Command, Options, ReloadOutcome};
use tandem::app::AppView;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// The token `POST /reload` must carry (seeds use it).
const TOKEN: &str = "fuzz-token";

/// Most response bytes kept per input; an `/events` stream or pipelined requests write more.
const KEEP: usize = 64 * 1024;

/// Paused clock: the header read timeout and the waits below cost no real time.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(common::paused_runtime);

/// A two-pool balancer's view, as right after start (health unknown), built once.
static VIEW: LazyLock<AppView> = LazyLock::new(|| {
    let text = r#"
[[pool]]
name = "fe-dc1"
members = [{ addr = "127.0.1.1:5061" }, { addr = "127.0.1.2:5061", weight = 2, state = "drain" }]
  [[pool.check]]
  kind = "http"
  path = "/healthz"

[[pool]]
name = "fe-dc2"
members = [{ addr = "127.0.2.1:5061" }]

[[service]]
name = "fe-sip"
listen = "127.0.0.1:5061"
pool = "fe-dc1"
backup_pool = "fe-dc2"
"#;
    let config = tandem::config::parse(text, "fuzz.toml").expect("valid config");
    tandem::fuzzing::admin_view(&config).expect("view")
});

/// The token file, written once per process in the temporary directory. One fixed name, so
/// runs do not leave a file each (libFuzzer exits without dropping statics); runs side by side
/// write the same bytes.
static TOKEN_FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let path = std::env::temp_dir().join("tandem-fuzz-admin.token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    path
});

/// The client's side of the connection: sends `request`, at most `piece` bytes a read, then
/// waits a second before its end of stream; keeps the first [`KEEP`] bytes of what the server
/// writes.
///
/// The wait (no real time: the clock is paused and jumps once nothing else can run) lets the
/// server answer every pipelined request before it sees the end: hyper drops a connection at
/// once when its client half-closes, which would leave all but the first request unread.
struct Client {
    request: Vec<u8>,
    at: usize,
    piece: usize,
    linger: Option<Pin<Box<Sleep>>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at == self.request.len() {
            let linger = self
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_secs(1))));
            // Ready with nothing read: the end of stream.
            return linger.as_mut().poll(cx).map(Ok);
        }
        let n = self
            .piece
            .min(buf.remaining())
            .min(self.request.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.request[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let mut written = self.written.lock().expect("not poisoned");
        let room = KEEP.saturating_sub(written.len());
        written.extend_from_slice(&b[..b.len().min(room)]);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Answers reloads as the main loop would, applied and rejected in turn (starting with an
/// applied one, so each input replays the same way).
async fn main_loop(mut commands: mpsc::Receiver<Command>) {
    let mut generation = 1;
    while let Some(Command::Reload { reply }) = commands.recv().await {
        generation += 1;
        let answer = if generation % 2 == 0 {
            Ok(ReloadOutcome {
                generation,
                change: "pool \"fe-dc2\": 1 member added".to_string(),
            })
        } else {
            Err("fuzz.toml:3:1 pool \"x\": rejected".to_string())
        };
        let _ = reply.send(answer);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, request)) = data.split_first() else {
        return;
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    let client = Client {
        request: request.to_vec(),
        at: 0,
        piece: usize::from(piece) + 1,
        linger: None,
        written: written.clone(),
    };
    // Plain HTTP with POST allowed from any peer, so every request reaches the token check and
    // the routes behind it, as before TLS existed.
    let options = Options {
        token_file: Some(TOKEN_FILE.clone()),
        allow_plain_post: true,
        ..Options::default()
    };
    let stop = CancellationToken::new();
    let (commands, rx) = mpsc::channel(1);
    let view = VIEW.clone();
    RUNTIME.block_on(async {
        let main_loop = tokio::spawn(main_loop(rx));
        let conn = tandem::fuzzing::admin_connection(client, view, commands, options, stop.clone());
        let mut conn = Box::pin(conn);
        // The client never makes the server wait, so only an event stream keeps it going.
        if tokio::time::timeout(Duration::from_secs(60), conn.as_mut())
            .await
            .is_err()
        {
            stop.cancel();
            // Ending with an error (a malformed request, say) is a clean end too.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut())
                .await
                .expect("the connection ends once stop fires");
        }
        // Drops the server's end of the command channel, so the main loop ends.
        drop(conn);
        main_loop.await.expect("main loop");
    });
    let written = written.lock().expect("not poisoned");
    assert!(
        written.is_empty() || written.starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(&written[..written.len().min(200)])
    );
});
