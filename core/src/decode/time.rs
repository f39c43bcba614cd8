//! Event-time parsing: epoch milliseconds or seconds, RFC 3339, and `YYYY-MM-DD HH:MM:SS`
//! (taken as UTC, the NAB format).

use chrono::{DateTime, NaiveDateTime};
use vigil_api::v1alpha1::TimeFormat;

/// Parses a textual event time into epoch milliseconds.
///
/// # Errors
/// A message saying which formats were expected.
pub fn parse_event_time(s: &str, format: TimeFormat) -> Result<i64, String> {
    from_str(s, format)
}

/// Earliest event time accepted: 0001-01-01T00:00:00Z, epoch ms.
pub const MIN_EVENT_TIME_MS: i64 = -62_135_596_800_000;
/// Latest event time accepted: 9999-12-31T23:59:59.999Z, epoch ms. Within these bounds every
/// window computation (starts, ends, lateness; spans up to years) stays far from `i64`
/// overflow.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Longest part of a rejected value echoed in an error message, bytes.
const ECHO_MAX: usize = 64;

/// `s`, cut to [`ECHO_MAX`] bytes (at a character boundary) with its length said, so that a
/// hostile value is never copied whole into an error or a dead-letter header.
pub fn echo(s: &str) -> String {
    if s.len() <= ECHO_MAX {
        return s.to_string();
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn in_range(ms: i64) -> Result<i64, String> {
    if (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "{ms} ms is outside the supported range 0001-01-01 .. 9999-12-31 (epoch ms {MIN_EVENT_TIME_MS} .. {MAX_EVENT_TIME_MS})"
        ))
    }
}

pub(super) fn from_str(s: &str, format: TimeFormat) -> Result<i64, String> {
    let t = s.trim();
    parse_str(t, format)
        .map_err(|e| {
            if t.len() > ECHO_MAX {
                e.replace(t, &echo(t))
            } else {
                e
            }
        })
        .and_then(in_range)
}

fn parse_str(s: &str, format: TimeFormat) -> Result<i64, String> {
    let s = s.trim();
    let rfc3339 = || DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis());
    let datetime = || {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .map(|t| t.and_utc().timestamp_millis())
    };
    match format {
        TimeFormat::Rfc3339 => rfc3339().map_err(|e| format!("`{s}` is not RFC 3339: {e}")),
        TimeFormat::DateTime => {
            datetime().map_err(|e| format!("`{s}` is not `YYYY-MM-DD HH:MM:SS`: {e}"))
        }
        TimeFormat::EpochMillis => s
            .parse::<i64>()
            .map_err(|_| format!("`{s}` is not integer epoch milliseconds")),
        TimeFormat::EpochSeconds => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| (v * 1000.0).round() as i64)
            .ok_or_else(|| format!("`{s}` is not epoch seconds")),
        TimeFormat::Auto => {
            if let Ok(ms) = s.parse::<i64>() {
                return Ok(ms);
            }
            if s.contains('T') {
                rfc3339().or_else(|_| datetime())
            } else {
                datetime().or_else(|_| rfc3339())
            }
            .map_err(|_| {
                format!("`{s}` is neither epoch milliseconds, RFC 3339 nor `YYYY-MM-DD HH:MM:SS`")
            })
        }
    }
}

pub(super) fn from_number(v: f64, as_int: Option<i64>, format: TimeFormat) -> Result<i64, String> {
    if !v.is_finite() {
        return Err("not a finite number".into());
    }
    let ms = match format {
        TimeFormat::EpochSeconds => v * 1000.0,
        TimeFormat::EpochMillis | TimeFormat::Auto => match as_int {
            Some(i) => return in_range(i),
            None => v,
        },
        TimeFormat::Rfc3339 | TimeFormat::DateTime => {
            return Err(format!("expected a string, got the number {v}"));
        }
    };
    // Checked: `as` would saturate a number beyond i64 into a valid-looking time.
    if !(MIN_EVENT_TIME_MS as f64..=MAX_EVENT_TIME_MS as f64).contains(&ms) {
        return Err(format!(
            "{v} is outside the supported range 0001-01-01 .. 9999-12-31"
        ));
    }
    Ok(ms.round() as i64)
}
