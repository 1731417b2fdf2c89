//! The data path: listeners, member selection per connection (TCP) or session (UDP), and
//! relaying.
//!
//! Reads the routing snapshot; never builds tables or parses config.

mod access;
pub mod proxy_protocol;
pub mod relay;
mod setup;
pub mod sni;
pub mod source;
pub mod tcp;
pub mod udp;
pub mod udp_vip;
