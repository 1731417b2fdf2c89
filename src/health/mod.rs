//! Member health: probes ([`probe`]), the pure rise/fall machine ([`state`]), and the loop that
//! runs probes and publishes verdicts into the routing snapshot ([`checker`]).

pub mod probe;
pub mod sip;
