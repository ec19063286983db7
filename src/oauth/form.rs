//! `application/x-www-form-urlencoded` (the WHATWG URL standard's form encoding, as
//! RFC 6749 §4 requests carry their parameters).

/// Appends `key=value` pairs joined by `&`, each side percent-encoded: ASCII
/// letters, digits and `*-._` stay, a space becomes `+`, every other octet `%XX`.
pub fn encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push(&mut out, k);
        out.push('=');
        push(&mut out, v);
    }
    out
}

fn push(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_table() {
        // RFC 6749 §4.4.2's example body, and Microsoft's scope with its URL.
        assert_eq!(
            encode(&[("grant_type", "client_credentials")]),
            "grant_type=client_credentials"
        );
        assert_eq!(
            encode(&[
                ("scope", "https://outlook.office365.com/.default"),
                ("client_id", "6731de76-14a6-49ae-97bc-6eba6914391e"),
            ]),
            "scope=https%3A%2F%2Foutlook.office365.com%2F.default\
             &client_id=6731de76-14a6-49ae-97bc-6eba6914391e"
        );
        // Space-separated scopes, and a secret with every awkward character.
        assert_eq!(
            encode(&[(
                "scope",
                "https://outlook.office.com/SMTP.Send offline_access"
            )]),
            "scope=https%3A%2F%2Foutlook.office.com%2FSMTP.Send+offline_access"
        );
        assert_eq!(
            encode(&[("client_secret", "a+b&c=d%e~f é")]),
            "client_secret=a%2Bb%26c%3Dd%25e%7Ef+%C3%A9"
        );
        assert_eq!(encode(&[]), "");
    }
}
