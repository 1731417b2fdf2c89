//! tandem: a Layer-4 (TCP and UDP) load balancer for paired server pools.
//!
//! Data flows one way through the modules:
//!
//! - [`config`] reads a TOML file into validated types ([`config::raw`] mirrors the file,
//!   [`config::validate`] checks it and reports every problem with its line and column).
//! - [`hash::maglev`] builds the consistent-hash table of a pool (pure).
//! - [`pool`] turns a config into the immutable routing [`pool::Snapshot`]: pools, members,
//!   tables, and each service's route; `pick` walks a client's preference order.
//! - [`proxy`] is the data path: accept, pick, connect with retries, PROXY header, relay (TCP);
//!   sessions per client address with replies from the listening socket (UDP).
//! - [`app`] wires it together: binds listeners, owns the snapshot, shuts down gracefully.
//! - [`stats`] holds the per-service counters the data path bumps.
//! - [`demo`] runs demo pools on loopback for `tandem demo` and the tests.
//! - [`notify`] tells systemd when tandem is ready, reloading or stopping (`Type=notify`).
//! - [`upgrade`] hands the listening sockets to a new tandem process (binary upgrades).

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod events;
pub mod failover;
pub mod hash;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod signals;
pub mod stats;
pub mod upgrade;
pub mod watch;
