//! The data-path workers: where accept loops, receive loops and their connections run.
//!
//! `tandem run --workers N` starts N threads, each running its own single-threaded tokio
//! runtime. Every service has one listening socket per worker, all bound to the same address
//! with `SO_REUSEPORT` (a "group"); the kernel hashes each new connection (TCP) or datagram's
//! 4-tuple (UDP) to one socket of the group, and that socket's worker runs the connection from
//! accept to close. Nothing crosses threads on the data path: no work stealing, no cross-thread
//! wakeup, one thread's timer wheel and epoll per connection. This is the thread-per-core model
//! of NGINX (`reuseport`) and HAProxy (`shards by-thread`). The alternative kept for
//! comparison, one multi-threaded runtime with one accept loop per socket, lets tokio move a
//! connection's task to whichever thread is idle, which costs a cross-thread wakeup and cache
//! misses on every such move (README "Workers" gives the figures measured).
//!
//! The control plane (health checks, failover, reload, the admin API, BGP, upgrades) stays on
//! the runtime the app was started on: it is light, and it must not wait behind a busy worker.
//!
//! [`Workers::ambient`] is the single-worker form used by the tests and `tandem demo`: the data
//! path runs on the caller's runtime, so tokio's paused clock drives its timers as before.

use std::io;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The runtimes the data path runs on, one per worker.
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropped with the `Workers`: each worker thread then leaves its `block_on`, dropping its
    /// runtime and whatever tasks are left on it (by then shutdown has drained them).
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// One worker: the runtime this is called on (tests, `tandem demo`). Must be called from
    /// within a tokio runtime.
    pub fn ambient() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            _stop: Vec::new(),
        }
    }

    /// `n` accept slots on the caller's runtime (a multi-threaded one): every socket group
    /// still has `n` sockets, each with its accept loop, but tokio's work stealing moves tasks
    /// between its threads. Kept to measure the thread-per-core model against
    /// (`tandem run --runtime shared`, `SCALING=1 benches/compare.sh`). Must be called from
    /// within a tokio runtime.
    pub fn shared(n: usize) -> Workers {
        Workers {
            handles: vec![Handle::current(); n.max(1)],
            _stop: Vec::new(),
        }
    }

    /// `n` worker threads (at least one), each with its own single-threaded runtime.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            _stop: Vec::with_capacity(n),
        };
        for i in 0..n.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            thread::Builder::new()
                .name(format!("tandem-w{i}"))
                .spawn(move || {
                    // Tasks spawned through the handle run while this thread is in block_on.
                    let _ = runtime.block_on(stopped);
                })?;
            workers._stop.push(stop);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of worker `i` (taken modulo the count: a socket group inherited from a
    /// process with more workers puts its extra sockets on the workers in turn).
    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_worker_they_are_spawned_on() {
        let workers = Workers::start(2).unwrap();
        let mut names = Vec::new();
        for i in 0..2 {
            let name = workers
                .handle(i)
                .spawn(async { thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            names.push(name.unwrap());
        }
        assert_eq!(names, ["tandem-w0", "tandem-w1"]);
        assert_eq!(workers.handle(2).id(), workers.handle(0).id());
    }

    #[tokio::test]
    async fn the_ambient_worker_is_the_callers_runtime() {
        let workers = Workers::ambient();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers.handle(0).id(), Handle::current().id());
    }
}
