//! Routing by TLS server name (SNI), the pure parts: reading the server name from a
//! ClientHello ([`hello`]) and matching it against a service's route patterns ([`names`]).
//!
//! The data path ([`crate::proxy::sni`]) reads the first bytes of a connection with a timeout
//! and a size bound, asks these modules where the connection goes, and sends every byte it read
//! to the member unchanged: TLS passes through, tandem never terminates it. No I/O here.

pub mod hello;
pub mod names;
