//! smtp-relayd: a small, durable SMTP relay for embedded Linux.
#![forbid(unsafe_code)]

pub mod protocol;
