//! Query parameters of the v0002 REST paths: time values in every form the
//! platform's clients send, and the other typed values. Every error names
//! the parameter.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::domain::Timestamp;

/// A time parameter: ISO 8601 with or without a zone (without: UTC), a date
/// alone (midnight UTC), or relative to now — `now`, `now-2d`, `now-15m`,
/// `now+1h30m`, an ISO 8601 duration such as `-P2D` or `-PT15M`, or the
/// platform's `{currentTime-2D}` (units D, H, M, S).
pub fn parse_time(value: &str, now: Timestamp) -> Result<Timestamp, String> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    relative(v, now).ok_or_else(|| {
        format!(
            "{value:?} is not a time; use ISO 8601 (2026-11-26T10:00:00Z) or a time relative to now (now-2d, -P2D)"
        )
    })
}

fn relative(v: &str, now: Timestamp) -> Option<Timestamp> {
    let lower = v.to_ascii_lowercase();
    let inner = lower
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(&lower);
    if let Some(rest) = inner
        .strip_prefix("now")
        .or_else(|| inner.strip_prefix("currenttime"))
    {
        if rest.is_empty() {
            return Some(now);
        }
        let (sign, amount) = split_sign(rest)?;
        let d = humantime::parse_duration(amount)
            .ok()
            .or_else(|| platform_units(amount))?;
        return offset(now, sign, d);
    }
    let (sign, iso) = match inner.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, inner.strip_prefix('+').unwrap_or(inner)),
    };
    let d = iso_duration(iso)?;
    offset(now, sign, d)
}

fn split_sign(s: &str) -> Option<(i32, &str)> {
    match s.as_bytes().first()? {
        b'-' => Some((-1, &s[1..])),
        b'+' => Some((1, &s[1..])),
        _ => None,
    }
}

fn offset(now: Timestamp, sign: i32, d: std::time::Duration) -> Option<Timestamp> {
    let d = chrono::Duration::from_std(d).ok()?;
    if sign < 0 {
        now.checked_sub_signed(d)
    } else {
        now.checked_add_signed(d)
    }
}

/// `2d`, `15m` in the platform's unit letters (d, h, m, s).
fn platform_units(s: &str) -> Option<std::time::Duration> {
    let (number, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "d" => n.checked_mul(86_400)?,
        "h" => n.checked_mul(3600)?,
        "m" => n.checked_mul(60)?,
        "s" => n,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

/// An ISO 8601 duration: `p2d`, `pt15m`, `p1dt2h`, `p1w` (lower-cased).
fn iso_duration(s: &str) -> Option<std::time::Duration> {
    let body = s.strip_prefix('p')?;
    if body.is_empty() {
        return None;
    }
    let mut secs: u64 = 0;
    let mut number = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in body.chars() {
        match c {
            '0'..='9' => number.push(c),
            't' if number.is_empty() && !in_time => in_time = true,
            unit => {
                let n: u64 = number.parse().ok()?;
                number.clear();
                let factor = match (unit, in_time) {
                    ('w', false) => 7 * 86_400,
                    ('d', false) => 86_400,
                    ('h', true) => 3600,
                    ('m', true) => 60,
                    ('s', true) => 1,
                    _ => return None,
                };
                secs = secs.checked_add(n.checked_mul(factor)?)?;
                any = true;
            }
        }
    }
    (any && number.is_empty()).then(|| std::time::Duration::from_secs(secs))
}

/// ISO 8601 UTC with milliseconds and `Z`, as the platform writes times.
pub fn format_time(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn t(s: &str) -> String {
        format_time(parse_time(s, now()).unwrap())
    }

    #[test]
    fn absolute_times_with_and_without_zone() {
        assert_eq!(t("2026-11-26T10:00:00Z"), "2026-11-26T10:00:00.000Z");
        assert_eq!(t("2026-11-26T10:00:00.5+01:00"), "2026-11-26T09:00:00.500Z");
        assert_eq!(t("2026-11-26T10:00:00"), "2026-11-26T10:00:00.000Z");
        assert_eq!(t("2026-11-26T10:00"), "2026-11-26T10:00:00.000Z");
        assert_eq!(t("2026-11-26"), "2026-11-26T00:00:00.000Z");
    }

    #[test]
    fn times_relative_to_now() {
        assert_eq!(t("now"), "2026-11-26T12:00:00.000Z");
        assert_eq!(t("now-2d"), "2026-11-24T12:00:00.000Z");
        assert_eq!(t("now-15m"), "2026-11-26T11:45:00.000Z");
        assert_eq!(t("now+1h30m"), "2026-11-26T13:30:00.000Z");
        assert_eq!(t("-P2D"), "2026-11-24T12:00:00.000Z");
        assert_eq!(t("-PT15M"), "2026-11-26T11:45:00.000Z");
        assert_eq!(t("-P1DT1H"), "2026-11-25T11:00:00.000Z");
        assert_eq!(t("{currentTime-2D}"), "2026-11-24T12:00:00.000Z");
        assert_eq!(t("currentTime-30M"), "2026-11-26T11:30:00.000Z");
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "yesterday",
            "now-",
            "now-2x",
            "P",
            "-PT",
            "P2H",
            "2026-13-01",
            "now*2d",
        ] {
            assert!(parse_time(bad, now()).is_err(), "{bad:?}");
        }
    }
}
