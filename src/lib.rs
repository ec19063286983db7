//! smtp-relayd: a small, durable SMTP relay for embedded Linux.
#![forbid(unsafe_code)]

pub mod config;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod spool;
pub mod time;
