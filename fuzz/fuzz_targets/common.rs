//! Pieces more than one fuzz target uses; each target includes this file with `#[path]`.
#![allow(dead_code)] // each target uses its own subset

use tandem::config::Check;
use tokio::runtime::Runtime;

/// A current-thread runtime with its clock paused: timeouts in the code under test cost no
/// real time.
pub fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The first check of the first pool of config `text`.
pub fn first_check(text: &str) -> Check {
    let config = tandem::config::parse(text, "fuzz.toml").expect("valid config");
    config.pools[0].checks[0].clone()
}
