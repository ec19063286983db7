//! Wall-clock helpers: Unix seconds, RFC 5322 dates and log timestamps, in UTC.
//! (A date crate would be more bytes on the device than these few lines.)

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    h: u64,
    m: u64,
    s: u64,
}

fn parts(unix: u64) -> Parts {
    let days = (unix / 86400) as i64;
    let (year, month, day) = civil(days);
    let secs = unix % 86400;
    Parts {
        year,
        month,
        day,
        weekday: ((days + 4).rem_euclid(7)) as usize,
        h: secs / 3600,
        m: secs / 60 % 60,
        s: secs % 60,
    }
}

/// `Mon, 30 Nov 2026 22:26:04 +0000` (RFC 5322 §3.3).
pub fn rfc5322(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(unix);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[p.weekday],
        p.day,
        MONTHS[p.month as usize - 1],
        p.year,
        p.h,
        p.m,
        p.s
    )
}

/// `Nov 30 22:26:04` (RFC 3164 §4.1.2, day space-padded), for syslog.
pub fn rfc3164(unix: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(unix);
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[p.month as usize - 1],
        p.day,
        p.h,
        p.m,
        p.s
    )
}

/// `2026-11-30T22:26:04Z`, for log lines.
pub fn iso8601(unix: u64) -> String {
    let p = parts(unix);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        p.year, p.month, p.day, p.h, p.m, p.s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_796_077_564), "Mon, 30 Nov 2026 22:26:04 +0000");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3164(1_796_077_564), "Nov 30 22:26:04");
        assert_eq!(rfc3164(0), "Jan  1 00:00:00");
        assert_eq!(iso8601(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
