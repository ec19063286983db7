//! The sans-IO SMTP core: no sockets, no files, no clocks.

pub mod address;
pub mod base64;
pub mod client;
pub mod command;
pub mod data;
pub mod driver;
pub mod limits;
pub mod policy;
pub mod reply;
pub mod scan;
pub mod server;
pub mod stuff;

#[cfg(test)]
mod properties;
