//! Process signals as requests: SIGTERM and SIGINT ask to stop, SIGHUP to reload the config,
//! SIGUSR1 to reopen the access log file (logrotate's convention), SIGUSR2 to start a new tandem
//! process (a binary upgrade) that takes over.
//! Handlers are installed before any listener is bound, so an early signal is never lost and
//! SIGHUP's and SIGUSR1's default action (exit) can never take the balancer down.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;

/// What a signal asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT: stop accepting, drain, exit.
    Stop,
    /// SIGHUP: reload the config file.
    Reload,
    /// SIGUSR2: start the tandem binary anew and hand it the listeners (binary upgrade).
    Upgrade,
    /// SIGUSR1: reopen the access log file (it was renamed by logrotate).
    ReopenLogs,
}

/// The signals tandem listens to.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next request.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => { info!("SIGTERM: shutting down"); Request::Stop }
            _ = self.int.recv() => { info!("SIGINT: shutting down"); Request::Stop }
            _ = self.hup.recv() => { info!("SIGHUP: reloading the config"); Request::Reload }
            _ = self.usr1.recv() => { info!("SIGUSR1: reopening the access log"); Request::ReopenLogs }
            _ = self.usr2.recv() => { info!("SIGUSR2: starting a new process to take over"); Request::Upgrade }
        }
    }
}
