//! The writer: a thread that takes records off the queue, formats them and writes them to the
//! sink in batches, and reopens its file when asked (SIGUSR1).
//!
//! Lines are written whole: a batch is cut at a line boundary before it would pass the sink's
//! write size. For a regular file that is 64 KiB (one `write(2)` per batch under load). For
//! stderr, a FIFO or a socket it is 4 KiB, `PIPE_BUF`: writes up to that size reach a pipe in
//! one piece, so lines never interleave with the process's own log, which shares stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::OFlags;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{Counters, Message, QUEUE_CAPACITY, Queue, format};
use crate::config::{self, LogFormat, LogTarget};

/// Bytes written at once to a regular file.
const FILE_BATCH: usize = 64 * 1024;
/// Bytes written at once to anything else: `PIPE_BUF`, the size up to which a write to a pipe
/// is atomic.
const PIPE_BATCH: usize = 4096;
/// How long the writer lets lines gather after writing a batch, before it looks at the queue
/// again. While it sleeps, a connection queueing a line wakes nobody (no futex call on the data
/// path), and the next batch is written with one call: at 15,000 connections/s, about 100 wakes
/// and writes a second instead of one each per line, which measured as most of the log's cost
/// (benches/access_log.sh). Lines reach the sink at most this late.
const GATHER: Duration = Duration::from_millis(10);

/// A writer thread and its queue, not yet installed (see [`super::AccessLog::install`]).
pub struct Writer {
    queue: Queue,
    control: WriterControl,
}

/// What the app keeps of an installed writer: reopening its file, and waiting for it to finish.
#[derive(Debug)]
pub struct WriterControl {
    target: LogTarget,
    /// A file opened by [`WriterControl::reopen`], for the thread to switch to.
    reopened: Arc<Mutex<Option<File>>>,
    /// Weak, so that the queue closes (and the thread finishes) once the data path's handle is
    /// gone, whether or not the app still holds this.
    wake: mpsc::WeakSender<Message>,
    done: oneshot::Receiver<()>,
}

impl Writer {
    /// Opens the sink of `cfg` and starts the writer thread, which counts into `counters`.
    /// Fails when the file cannot be opened (or, for a FIFO, has no reader).
    pub fn start(cfg: &config::AccessLog, counters: Arc<Counters>) -> io::Result<Writer> {
        let sink = match &cfg.target {
            LogTarget::Stderr => Sink::Stderr,
            LogTarget::File(path) => Sink::File(open(path)?),
        };
        Ok(Writer::spawn(cfg, sink, counters))
    }

    fn spawn(cfg: &config::AccessLog, sink: Sink, counters: Arc<Counters>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done) = oneshot::channel();
        let reopened = Arc::new(Mutex::new(None));
        let thread = Thread {
            rx,
            sink,
            format: cfg.format,
            formatter: format::Formatter::default(),
            counters,
            reopened: reopened.clone(),
            out: Vec::new(),
            in_out: 0,
            failing: false,
        };
        let control = WriterControl {
            target: cfg.target.clone(),
            reopened,
            wake: tx.downgrade(),
            done,
        };
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                thread.run();
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            // The queue's receiver went down with the closure: every record is then dropped and
            // counted, and the balancer goes on.
            warn!(error = %e, "access log: cannot start the writer thread; lines are dropped");
        }
        Writer {
            queue: Queue {
                tx,
                interval: cfg.interval,
            },
            control,
        }
    }

    pub(super) fn split(self) -> (Queue, WriterControl) {
        (self.queue, self.control)
    }
}

impl WriterControl {
    /// Opens the log file anew (after logrotate renamed it); the writer switches to it before
    /// its next line. Nothing to do for stderr. On error the writer keeps the file it has.
    pub fn reopen(&self) -> io::Result<()> {
        let LogTarget::File(path) = &self.target else {
            return Ok(());
        };
        let file = open(path)?;
        if let Ok(mut slot) = self.reopened.lock() {
            *slot = Some(file);
        }
        // Switch now rather than at the next line, so the renamed file is closed at once
        // (logrotate may compress it). A full queue means the writer is busy and looks soon.
        if let Some(tx) = self.wake.upgrade() {
            let _ = tx.try_send(Message::Wake);
        }
        Ok(())
    }

    /// The file written to, if not stderr.
    pub fn path(&self) -> Option<&Path> {
        match &self.target {
            LogTarget::File(p) => Some(p),
            LogTarget::Stderr => None,
        }
    }

    /// Waits, at most `limit`, for the writer to write what was queued and stop; call after
    /// the writer was replaced or removed. `false` when it did not finish in time (its sink is
    /// stalled): its thread is then left to finish on its own.
    pub async fn finish(self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.done).await.is_ok()
    }
}

/// Opens `path` for appending, creating it (mode 0640) if needed. Without blocking: a FIFO
/// with no reader fails (ENXIO) instead of waiting for one; the file is then switched back to
/// blocking writes, which the writer thread is there for.
fn open(path: &PathBuf) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

enum Sink {
    Stderr,
    File(File),
    /// A writer injected by a unit test.
    #[cfg(test)]
    Test(Box<dyn Write + Send>),
}

impl Sink {
    fn batch(&self) -> usize {
        match self {
            Sink::File(f) if f.metadata().is_ok_and(|m| m.is_file()) => FILE_BATCH,
            _ => PIPE_BATCH,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().lock().write_all(bytes),
            Sink::File(f) => f.write_all(bytes),
            #[cfg(test)]
            Sink::Test(w) => w.write_all(bytes),
        }
    }
}

/// The writer thread's state.
struct Thread {
    rx: mpsc::Receiver<Message>,
    sink: Sink,
    format: LogFormat,
    formatter: format::Formatter,
    counters: Arc<Counters>,
    reopened: Arc<Mutex<Option<File>>>,
    /// Formatted lines not written yet, and how many.
    out: Vec<u8>,
    in_out: u64,
    /// The last write failed (the failure was logged once; the next success is logged too).
    failing: bool,
}

impl Thread {
    fn run(mut self) {
        let mut batch = self.sink.batch();
        // Parks until a record comes and writes it at once; then, as long as records keep
        // coming, sleeps GATHER between batches, each written with one call. Back to parking
        // once a look finds the queue empty.
        while let Some(first) = self.rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(message) = next {
                if let Some(file) = self.reopened.lock().ok().and_then(|mut s| s.take()) {
                    self.sink = Sink::File(file);
                    batch = self.sink.batch();
                }
                self.take(&message, batch);
                while let Ok(more) = self.rx.try_recv() {
                    self.take(&more, batch);
                }
                self.write_out();
                std::thread::sleep(GATHER);
                next = self.rx.try_recv().ok();
            }
        }
        // Every sender is gone (replaced by a reload, or shutdown): what was queued is written.
        self.write_out();
    }

    /// Formats a line into the batch. By reference: a record is about 240 bytes, and moving
    /// it once more per line showed in the writer's profile.
    fn take(&mut self, message: &Message, batch: usize) {
        let Message::Line(record) = message else {
            return;
        };
        // Formatted in place, at the end of the batch: no copy of the line.
        let start = self.out.len();
        match self.format {
            LogFormat::Json => self.formatter.json(&mut self.out, record),
            LogFormat::Text => self.formatter.text(&mut self.out, record),
        }
        if self.out.len() > batch && start > 0 {
            // The line does not fit in this batch: write the batch without it, then move the
            // line to the front of the next one (once per batch).
            self.write_bytes(start);
            self.out.drain(..start);
        }
        self.in_out += 1;
    }

    fn write_out(&mut self) {
        self.write_bytes(self.out.len());
        self.out.clear();
    }

    /// Writes the first `len` bytes of `out`, which hold every line counted in `in_out`.
    fn write_bytes(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        let lines = std::mem::take(&mut self.in_out);
        match self.sink.write_all(&self.out[..len]) {
            Ok(()) => {
                self.counters
                    .lines
                    .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                if std::mem::take(&mut self.failing) {
                    warn!("access log: writing again");
                }
            }
            Err(e) => {
                self.counters
                    .dropped
                    .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(error = %e, "access log: write failed; lines are dropped and counted until it works again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::access_log::{AccessLog, Outcome, Record};
    use crate::config::Protocol;

    fn cfg(format: LogFormat) -> config::AccessLog {
        config::AccessLog {
            target: LogTarget::Stderr,
            format,
            interval: None,
        }
    }

    fn record(port: u16) -> Record {
        let client: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut r = Record::new(Protocol::Tcp, "s".into(), client);
        r.outcome = Outcome::ClientClosed;
        r
    }

    /// A sink that blocks until released, then collects what it is given.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Gate {
        fn new() -> Gate {
            Gate {
                open: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
                got: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn release(&self) {
            let (lock, cv) = &*self.open;
            *lock.lock().expect("lock") = true;
            cv.notify_all();
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().expect("lock");
            while !*open {
                open = cv.wait(open).expect("wait");
            }
            self.got.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The data path never waits for a stalled sink: with the writer stuck in a write, a queue
    /// full of records is followed by records dropped and counted, at once. Released, the writer
    /// writes everything it had taken and the counts add up.
    #[tokio::test]
    async fn a_stalled_sink_drops_and_counts_instead_of_blocking() {
        let gate = Gate::new();
        let log = AccessLog::new();
        let writer = Writer::spawn(
            &cfg(LogFormat::Text),
            Sink::Test(Box::new(gate.clone())),
            log.counters_arc(),
        );
        let control = log.install(Some(writer)).expect("control");
        let sent = QUEUE_CAPACITY as u64 + 500;
        let started = std::time::Instant::now();
        for i in 0..sent {
            log.log(record(i as u16));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "logging waited for the sink"
        );
        let dropped = log.counters().dropped.load(Relaxed);
        // The writer took a batch's worth (at most PIPE_BUF of lines) before it stalled in its
        // write; the queue holds its capacity; the rest were dropped.
        assert!((400..=500).contains(&dropped), "dropped {dropped}");
        assert_eq!(log.counters().lines.load(Relaxed), 0);

        gate.release();
        log.install(None);
        assert!(
            control.finish(Duration::from_secs(10)).await,
            "writer finished"
        );
        let lines = log.counters().lines.load(Relaxed);
        assert_eq!(lines + dropped, sent);
        let got = gate.got.lock().expect("lock");
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count() as u64, lines);
    }

    /// Each write carries whole lines and, for a pipe-like sink, stays within PIPE_BUF.
    #[tokio::test]
    async fn batches_are_whole_lines_within_pipe_buf() {
        #[derive(Clone, Default)]
        struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
        impl Write for Writes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("lock").push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writes = Writes::default();
        let log = AccessLog::new();
        let writer = Writer::spawn(
            &cfg(LogFormat::Json),
            Sink::Test(Box::new(writes.clone())),
            log.counters_arc(),
        );
        let control = log.install(Some(writer)).expect("control");
        for i in 0..1000 {
            log.log(record(i));
        }
        log.install(None);
        assert!(control.finish(Duration::from_secs(10)).await);
        let writes = writes.0.lock().expect("lock");
        let mut total = 0;
        for w in writes.iter() {
            assert!(w.len() <= PIPE_BATCH, "a write of {} bytes", w.len());
            assert_eq!(w.last(), Some(&b'\n'));
            for line in w.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).expect("whole JSON line");
                assert_eq!(v["outcome"], "client_closed");
                total += 1;
            }
        }
        assert_eq!(total, 1000);
        assert_eq!(log.counters().lines.load(Relaxed), 1000);
    }
}
