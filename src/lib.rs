//! tandem: a Layer-4 (TCP and UDP) load balancer for paired server pools.
//!
//! Data flows one way through the modules:
//!
//! - [`config`] reads a TOML file into validated types ([`config::raw`] mirrors the file,
//!   [`config::validate`] checks it and reports every problem with its line and column).
//! - [`hash::maglev`] builds the consistent-hash table of a pool (pure).
//! - [`health`] decides whether members are up: probes, the pure rise/fall machine
//!   ([`health::state`]), the published verdict ([`health::cell`]) and the check loops.
//! - [`failover`] decides which pool a service uses (pure: counts and a clock in, a side out).
//! - [`pool`] turns a config into the immutable routing [`pool::Snapshot`]: pools, members with
//!   their health, tables, and each service's route with its failover state; `pick` walks a
//!   client's preference order.
//! - [`proxy`] is the data path: accept, pick, connect with retries, PROXY header, relay (TCP);
//!   sessions per client address with replies from the listening socket (UDP).
//! - [`reload`] diffs two configs (pure); [`watch`] notices the file changing.
//! - [`app`] wires it together: binds listeners, runs the checks and the failover controller,
//!   applies reloads with one snapshot swap, shuts down gracefully.
//! - [`events`] broadcasts health, failover and reload transitions; [`stats`] holds the
//!   counters the data path bumps; [`metrics`] renders them for Prometheus.
//! - [`local_error`] tells this machine's exhaustion (ports, descriptors, memory) from a
//!   member's failure, so neither the data path nor the checks blame a member for it.
//! - [`admin`] is the HTTP admin API and status page, and the `tandem status` client;
//!   [`signals`] turns SIGTERM/SIGINT/SIGHUP/SIGUSR2 into requests; [`notify`] tells systemd when
//!   tandem is ready, reloading or stopping.
//! - [`upgrade`] hands the listening sockets to a new tandem process (binary upgrades).
//! - [`server`] is `tandem run` around the app: the start-up order (config checked before any
//!   port is bound, sockets received first when upgrading), the admin API, systemd
//!   notifications, and the one loop that answers signals, admin commands, config file changes
//!   and upgrade requests, then the shutdown.
//! - [`demo`] runs demo pools on loopback for `tandem demo` and the tests.
//!
//! The binary (`src/main.rs`) only parses arguments, sets up logging, builds the runtime and
//! maps what the library returns to exit codes. `fuzzing` (hidden) exposes the byte-reading code
//! to the cargo-fuzz targets in `fuzz/`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod events;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod health;
pub mod local_error;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod signals;
pub mod stats;
pub mod upgrade;
pub mod watch;
