//! SHA-512-crypt (`$6$`), as specified by Ulrich Drepper ("Unix crypt using SHA-256
//! and SHA-512") and made by `openssl passwd -6` and `mkpasswd -m sha-512`.

use ring::digest::{Context, SHA512};

const ROUNDS_DEFAULT: u32 = 5000;
const ROUNDS_MIN: u32 = 1000;
const ROUNDS_MAX: u32 = 999_999_999;
const SALT_MAX: usize = 16;
const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Parses `$6$[rounds=N$]salt[$hash]` into (rounds, explicit rounds, salt).
fn parse_setting(setting: &str) -> Option<(u32, bool, &str)> {
    let rest = setting.strip_prefix("$6$")?;
    let (rounds, explicit, rest) = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let (n, rest) = r.split_once('$')?;
            let n: u64 = n.parse().ok()?;
            (
                n.clamp(u64::from(ROUNDS_MIN), u64::from(ROUNDS_MAX)) as u32,
                true,
                rest,
            )
        }
        None => (ROUNDS_DEFAULT, false, rest),
    };
    let salt = rest.split('$').next()?;
    let salt = &salt[..salt.len().min(SALT_MAX)];
    Some((rounds, explicit, salt))
}

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut c = Context::new(&SHA512);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// `len` bytes of `block` repeated.
fn stretch(block: &[u8; 64], len: usize) -> Vec<u8> {
    block.iter().copied().cycle().take(len).collect()
}

/// The full `$6$...` string for `password` under the salt (and rounds) of `setting`.
pub fn hash(password: &[u8], setting: &str) -> Option<String> {
    let (rounds, explicit, salt) = parse_setting(setting)?;
    let (p, s) = (password, salt.as_bytes());
    let b = sha512(&[p, s, p]);
    let mut a = Context::new(&SHA512);
    a.update(p);
    a.update(s);
    let mut n = p.len();
    while n > 64 {
        a.update(&b);
        n -= 64;
    }
    a.update(&b[..n]);
    let mut n = p.len();
    while n > 0 {
        a.update(if n & 1 == 1 { &b[..] } else { p });
        n >>= 1;
    }
    let mut digest = [0u8; 64];
    digest.copy_from_slice(a.finish().as_ref());

    let dp = {
        let mut c = Context::new(&SHA512);
        for _ in 0..p.len() {
            c.update(p);
        }
        let mut o = [0u8; 64];
        o.copy_from_slice(c.finish().as_ref());
        o
    };
    let p_seq = stretch(&dp, p.len());
    let ds = {
        let mut c = Context::new(&SHA512);
        for _ in 0..16 + usize::from(digest[0]) {
            c.update(s);
        }
        let mut o = [0u8; 64];
        o.copy_from_slice(c.finish().as_ref());
        o
    };
    let s_seq = stretch(&ds, s.len());

    for i in 0..rounds {
        let mut c = Context::new(&SHA512);
        if i & 1 == 1 {
            c.update(&p_seq);
        } else {
            c.update(&digest);
        }
        if i % 3 != 0 {
            c.update(&s_seq);
        }
        if i % 7 != 0 {
            c.update(&p_seq);
        }
        if i & 1 == 1 {
            c.update(&digest);
        } else {
            c.update(&p_seq);
        }
        digest.copy_from_slice(c.finish().as_ref());
    }

    let mut out = String::with_capacity(123);
    out.push_str("$6$");
    if explicit {
        out.push_str(&format!("rounds={rounds}$"));
    }
    out.push_str(salt);
    out.push('$');
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut push = |b2: u8, b1: u8, b0: u8, count: usize| {
        let mut w = u32::from(b2) << 16 | u32::from(b1) << 8 | u32::from(b0);
        for _ in 0..count {
            out.push(ALPHABET[(w & 63) as usize] as char);
            w >>= 6;
        }
    };
    for (x, y, z) in ORDER {
        push(digest[x], digest[y], digest[z], 4);
    }
    push(0, 0, digest[63], 2);
    Some(out)
}

/// Whether `password` matches `stored` (a full `$6$` string). The final comparison
/// takes the same time wherever the strings differ.
pub fn verify(password: &[u8], stored: &str) -> bool {
    match hash(password, stored) {
        Some(computed) => super::constant_time_eq(computed.as_bytes(), stored.as_bytes()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drepper_vectors_as_openssl_makes_them() {
        let cases = [
            (
                "Hello world!",
                "$6$saltstring",
                "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            ),
            (
                "Hello world!",
                "$6$rounds=10000$saltstringsaltstring",
                "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
            ),
            (
                "This is just a test",
                "$6$toolongsaltstring",
                "$6$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
            ),
        ];
        for (pw, setting, want) in cases {
            assert_eq!(hash(pw.as_bytes(), setting).as_deref(), Some(want));
            assert!(verify(pw.as_bytes(), want));
            assert!(!verify(b"wrong", want));
        }
        assert!(!verify(b"x", "$1$md5$notsupported"));
        assert!(!verify(b"x", "plaintext"));
        assert!(!verify(b"x", ""));
    }
}
