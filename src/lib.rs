//! tandem: a Layer-4 (TCP and UDP) load balancer for paired server pools.
//!
//! Data flows one way through the modules, and the imports follow it: `config` -> `hash`,
//! `health`, `failover`, `reload` -> `pool` -> `proxy`, `admin`, `app` -> `server`. A lower module
//! never imports a higher one (the health checker takes its members and metric handles as
//! values of its own types, so it knows neither `pool` nor `metrics`).
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
//! - [`sni`] reads the server name of a TLS ClientHello and matches it against a service's
//!   `[[service.route]]` patterns (pure); [`limits`] keeps the table of client sources behind
//!   `max_connections_per_source` and `max_rate_per_source` (clock passed in).
//! - [`proxy`] is the data path: accept, per-source limits, ClientHello (with routes), pick,
//!   connect with retries, PROXY header, relay (TCP); sessions per client address with replies
//!   from the listening socket (UDP).
//! - [`reload`] compares two configs into one pure [`reload::Plan`]: per pool what is added,
//!   kept, rebuilt or removed (and per member whether its health and connections carry over),
//!   per service whether it is new, kept, rebound or removed. [`pool::Snapshot::build`] carries
//!   over what the plan names and [`app`] applies the rest; neither decides again.
//!   [`watch`] notices the file changing.
//! - [`app`] wires it together: binds listeners, runs the checks and the failover controller,
//!   applies reloads with one snapshot swap, shuts down gracefully. The data path runs on
//!   [`workers`] (one single-threaded runtime per thread), each service on a [`listeners`]
//!   group of one `SO_REUSEPORT` socket per worker.
//! - [`kill`] holds one kill switch per open connection, flipped by shutdown, a removed
//!   service or a retired member.
//! - [`events`] broadcasts health, failover and reload transitions; [`stats`] holds the
//!   counters the data path bumps; [`metrics`] renders them for Prometheus.
//! - [`access_log`] writes one line per connection and UDP session on its own thread, fed by a
//!   bounded queue the data path never waits on.
//! - [`local_error`] tells this machine's exhaustion (ports, descriptors, memory) from a
//!   member's failure, so neither the data path nor the checks blame a member for it.
//! - [`admin`] is the HTTP admin API and status page, and the `tandem status` client;
//!   [`tls`] builds its TLS (and `tandem status`'s) from PEM files, checked when the config loads;
//!   it runs [`history`], the bounded recent past (counters sampled, transitions at their time)
//!   that the page charts;
//!   [`signals`] turns SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 into requests; [`notify`] tells systemd when
//!   tandem is ready, reloading or stopping.
//! - [`member`] is `tandem member set/list`: edits a member's state in the config file (comments
//!   kept), writes it atomically, and asks the running tandem to reload through the admin API
//!   or a SIGHUP.
//! - [`bgp`] announces the addresses of services that can serve to routers: a built-in,
//!   announce-only speaker (message codec and session state machine pure, a task per peer),
//!   fed from the snapshot on every health, failover and reload event.
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

pub mod access_log;
pub mod admin;
pub mod app;
pub mod bgp;
pub mod config;
pub mod demo;
pub mod events;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod health;
pub mod history;
pub mod kill;
pub mod limits;
pub mod listeners;
pub mod local_error;
pub mod member;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod signals;
pub mod sni;
pub mod stats;
pub mod tls;
pub mod upgrade;
pub mod watch;
pub mod workers;
