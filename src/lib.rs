//! smtp-relayd: a small, durable SMTP relay for embedded Linux.
// Unsafe code only where std has no wrapper (privileges.rs), nowhere else.
#![deny(unsafe_code)]

#[cfg(feature = "tls")]
pub mod auth;
pub mod config;
pub mod header;
pub mod logger;
pub mod longlines;
pub mod notice;
pub mod notify;
pub mod oauth;
pub mod privileges;
pub mod probe;
pub mod process;
pub mod protocol;
pub mod relay;
pub mod rewrite;
pub mod sendmail;
pub mod server;
pub mod spool;
pub mod stats;
pub mod status;
pub mod stream;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;

/// A blocking socket read or write that ran into its timeout (Linux reports
/// `WouldBlock` for `SO_RCVTIMEO`, other systems `TimedOut`).
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
