//! Size limits from RFC 5321 §4.5.3.1, as named constants.

/// §4.5.3.1.4: a command line, including the verb and the CRLF, is at most 512 octets.
pub const COMMAND_LINE: usize = 512;
/// §4.5.3.1.6: a text line in DATA, including the CRLF, is at most 1000 octets.
pub const TEXT_LINE: usize = 1000;
/// §4.5.3.1.3: a path, including the angle brackets, is at most 256 octets.
pub const PATH: usize = 256;
/// The mailbox inside a path: the path less its two angle brackets.
pub const MAILBOX: usize = PATH - 2;
/// §4.5.3.1.1: a local part is at most 64 octets.
pub const LOCAL_PART: usize = 64;
/// §4.5.3.1.2: a domain is at most 255 octets.
pub const DOMAIN: usize = 255;
/// §4.5.3.1.8: a server must accept at least 100 recipients per transaction.
pub const RECIPIENTS: usize = 100;
/// RFC 4954 §4: a line the client sends in an AUTH exchange (a base64 response) is at
/// most 12,288 octets, CRLF included.
pub const AUTH_LINE: usize = 12288;
/// §4.5.3.1.5: a reply line, including the code and the CRLF, is at most 512 octets.
/// The client reader allows more, since real servers exceed it in EHLO text.
pub const REPLY_LINE: usize = 2048;
/// How many lines one reply may have before the client gives up on the peer.
pub const REPLY_LINES: usize = 128;
