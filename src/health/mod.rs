//! Member health: probes ([`probe`], with the SIP message handling in [`sip`]), the pure
//! rise/fall machine ([`state`]), the published per-member verdict ([`cell`]), and the loop
//! that runs probes ([`checker`]).

pub mod cell;
pub mod checker;
pub mod probe;
pub mod sip;
pub mod state;
