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

pub(super) fn from_str(s: &str, format: TimeFormat) -> Result<i64, String> {
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
    match format {
        TimeFormat::EpochSeconds => Ok((v * 1000.0).round() as i64),
        TimeFormat::EpochMillis | TimeFormat::Auto => Ok(as_int.unwrap_or(v.round() as i64)),
        TimeFormat::Rfc3339 | TimeFormat::DateTime => {
            Err(format!("expected a string, got the number {v}"))
        }
    }
}
