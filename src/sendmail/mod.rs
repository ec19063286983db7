//! The sendmail-compatible command: `smtp-relayd sendmail ...`, or the binary called
//! through a link named `sendmail` (and `mailq`).

pub mod args;
pub mod message;
pub mod queue;
pub mod stdio;
pub mod submit;
