//! Every fixed reply the server sends, complete with its RFC 3463 enhanced code.
//!
//! RFC 2034 §3 exempts the greeting and the answers to EHLO/HELO from enhanced
//! codes; those, and the replies that carry the host name or a queue id, are built
//! in `server.rs`. 354 is an intermediate reply and has no enhanced code either.

pub const OK: &str = "250 2.0.0 Ok\r\n";
pub const SENDER_OK: &str = "250 2.1.0 Ok\r\n";
pub const RECIPIENT_OK: &str = "250 2.1.5 Ok\r\n";
pub const BYE: &str = "221 2.0.0 Bye\r\n";
pub const HELP: &str = "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n";
pub const VRFY: &str =
    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const TLS_READY: &str = "220 2.0.0 Ready to start TLS\r\n";
/// RFC 3207 §4: TLS cannot be started here (`sendmail -bs`, which never offers it).
pub const TLS_UNAVAILABLE: &str = "454 4.7.0 TLS not available here\r\n";
pub const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
pub const AUTH_PLAIN_CHALLENGE: &str = "334 \r\n";
/// base64("Username:") and base64("Password:"), as every LOGIN server says them.
pub const AUTH_LOGIN_USER: &str = "334 VXNlcm5hbWU6\r\n";
pub const AUTH_LOGIN_PASSWORD: &str = "334 UGFzc3dvcmQ6\r\n";
pub const START_DATA: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";

pub const UNRECOGNIZED: &str = "500 5.5.2 Error: command not recognized\r\n";
pub const LINE_TOO_LONG: &str = "500 5.5.2 Error: line too long\r\n";
pub const BAD_CHARACTERS: &str = "500 5.5.2 Error: bad characters in command\r\n";
pub const SYNTAX: &str = "501 5.5.4 Syntax error in parameters or arguments\r\n";
pub const HELO_SYNTAX: &str = "501 5.5.4 Syntax: HELO hostname\r\n";
pub const EHLO_SYNTAX: &str = "501 5.5.4 Syntax: EHLO hostname\r\n";
pub const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
pub const RCPT_SYNTAX: &str = "501 5.5.4 Syntax: RCPT TO:<address>\r\n";
pub const NO_ARGUMENTS: &str = "501 5.5.4 Syntax error: no arguments allowed\r\n";
pub const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
pub const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Error: command not implemented\r\n";
pub const EXPN: &str = "502 5.5.1 EXPN not supported\r\n";
pub const TLS_ACTIVE: &str = "554 5.5.1 Error: TLS already active\r\n";
pub const IN_TRANSACTION: &str = "503 5.5.1 Error: MAIL transaction in progress\r\n";
pub const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
pub const AUTH_BAD_RESPONSE: &str = "501 5.5.2 Cannot decode response\r\n";
pub const AUTH_MECHANISM: &str = "504 5.5.4 Unrecognized authentication mechanism\r\n";
pub const ALREADY_AUTHENTICATED: &str = "503 5.5.1 Error: already authenticated\r\n";
pub const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
pub const AUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid\r\n";
pub const AUTH_NEEDS_TLS: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
pub const NEED_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first\r\n";
pub const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command\r\n";
pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
pub const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command\r\n";
pub const UNKNOWN_PARAMETER: &str = "555 5.5.4 Unsupported option\r\n";
pub const MESSAGE_TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed limit\r\n";
pub const RELAY_DENIED: &str = "554 5.7.1 Relay access denied\r\n";
pub const MAIL_LOOP: &str = "554 5.4.6 Too many hops: mail loop detected\r\n";
pub const BARE_NEWLINE: &str = "550 5.6.0 Message refused: bare CR or LF in message text\r\n";
pub const UTF8_WITHOUT_SMTPUTF8: &str = "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n";

pub const SENDER_DENIED: &str = "550 5.7.1 Error: sender address not allowed by policy\r\n";
pub const RECIPIENT_DENIED: &str = "553 5.7.1 Error: recipient address not allowed by policy\r\n";
pub const ADDRESS_TOO_LONG: &str = "553 5.1.3 Error: address too long once qualified\r\n";
pub const RATE_LIMITED: &str =
    "450 4.7.1 Error: too many messages from this address, try again later\r\n";
pub const TOO_MANY_MESSAGES: &str =
    "421 4.7.0 Error: too many messages in this connection, closing\r\n";
pub const TOO_MANY_FROM_ADDRESS: &str =
    "421 4.7.0 Error: too many connections from this address, try again later\r\n";
pub const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Error: too many recipients\r\n";
pub const NO_STORAGE: &str = "452 4.3.1 Insufficient system storage\r\n";
pub const LOCAL_ERROR: &str = "451 4.3.0 Error: local error in processing\r\n";
/// Passthrough: the smarthost answered with a code that makes no sense there.
pub const UPSTREAM_PROTOCOL: &str = "451 4.5.0 unexpected reply from the smarthost\r\n";
pub const TIMEOUT: &str = "421 4.4.2 Error: timeout exceeded, closing connection\r\n";
pub const TOO_MANY_CONNECTIONS: &str = "421 4.3.2 Too many connections, try again later\r\n";
pub const DATA_AFTER_STARTTLS: &str =
    "421 4.7.0 Error: data after STARTTLS; closing connection\r\n";
pub const AUTH_TOO_MANY: &str = "421 4.7.0 Error: too many failed authentication attempts\r\n";
pub const SHUTTING_DOWN: &str = "421 4.3.2 Service shutting down, closing connection\r\n";

#[cfg(test)]
mod tests {
    /// Every fixed reply is one CRLF-terminated line that starts with a 3-digit code
    /// and, outside 354/214/221-less cases, the enhanced code of the same class.
    #[test]
    fn replies_are_well_formed() {
        use super::*;
        let all = [
            OK,
            SENDER_OK,
            RECIPIENT_OK,
            BYE,
            HELP,
            VRFY,
            START_DATA,
            UNRECOGNIZED,
            LINE_TOO_LONG,
            BAD_CHARACTERS,
            SYNTAX,
            HELO_SYNTAX,
            EHLO_SYNTAX,
            MAIL_SYNTAX,
            RCPT_SYNTAX,
            NO_ARGUMENTS,
            BAD_SENDER,
            BAD_RECIPIENT,
            NOT_IMPLEMENTED,
            EXPN,
            NEED_HELO,
            NESTED_MAIL,
            NEED_MAIL,
            NEED_RCPT,
            UNKNOWN_PARAMETER,
            MESSAGE_TOO_BIG,
            RELAY_DENIED,
            MAIL_LOOP,
            BARE_NEWLINE,
            UTF8_WITHOUT_SMTPUTF8,
            TOO_MANY_RECIPIENTS,
            SENDER_DENIED,
            RECIPIENT_DENIED,
            ADDRESS_TOO_LONG,
            RATE_LIMITED,
            TOO_MANY_MESSAGES,
            TOO_MANY_FROM_ADDRESS,
            NO_STORAGE,
            LOCAL_ERROR,
            TIMEOUT,
            TOO_MANY_CONNECTIONS,
            SHUTTING_DOWN,
            TLS_READY,
            TLS_UNAVAILABLE,
            TLS_ACTIVE,
            IN_TRANSACTION,
            DATA_AFTER_STARTTLS,
            AUTH_OK,
            AUTH_PLAIN_CHALLENGE,
            AUTH_LOGIN_USER,
            AUTH_LOGIN_PASSWORD,
            AUTH_CANCELLED,
            AUTH_BAD_RESPONSE,
            AUTH_MECHANISM,
            ALREADY_AUTHENTICATED,
            AUTH_REQUIRED,
            AUTH_FAILED,
            AUTH_NEEDS_TLS,
            AUTH_TOO_MANY,
        ];
        for r in all {
            let b = r.as_bytes();
            assert!(
                r.ends_with("\r\n") && r.matches("\r\n").count() == 1,
                "{r:?}"
            );
            assert!(
                b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ',
                "{r:?}"
            );
            if b[0] != b'3' && b[4] != b'\r' {
                // RFC 3463: the class digit of the enhanced code equals the reply's.
                assert_eq!(b[4], b[0], "{r:?}");
                assert_eq!(b[5], b'.', "{r:?}");
            }
        }
    }
}
