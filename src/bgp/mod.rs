//! BGP announcements of service addresses: a built-in, announce-only speaker.
pub mod codec;
pub mod session;
