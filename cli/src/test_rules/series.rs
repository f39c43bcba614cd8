//! The expanding notation of input series values, as `promtool test rules` reads it
//! (<https://prometheus.io/docs/prometheus/latest/configuration/unit_testing_rules/#series>):
//! whitespace-separated tokens, each one of
//!
//! - `a`: one value;
//! - `_`: one missing value (no event at that step);
//! - `a+bxn` / `a-bxn`: `n + 1` values `a, a±b, ..., a±n·b`;
//! - `axn`: `n + 1` copies of `a` (`a+0xn`);
//! - `_xn`: `n` missing values.
//!
//! Prometheus' `stale` marker has no meaning for events and is refused.

/// The values of `text`, `None` for a missing one.
///
/// # Errors
/// The token that does not parse and why.
pub fn parse_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        expand(token, &mut out).map_err(|why| format!("`{token}`: {why}"))?;
    }
    Ok(out)
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

fn count(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("`{s}` after `x` is not a count (a non-negative integer)"))
}

fn expand(token: &str, out: &mut Vec<Option<f64>>) -> Result<(), String> {
    if token == "_" {
        out.push(None);
        return Ok(());
    }
    if token == "stale" {
        return Err(
            "`stale` is a Prometheus marker; events have no staleness (leave a gap with `_`)"
                .into(),
        );
    }
    let Some((head, n)) = token.rsplit_once('x') else {
        out.push(Some(number(token)?));
        return Ok(());
    };
    let n = count(n)?;
    if head == "_" {
        out.extend(std::iter::repeat_n(None, n));
        return Ok(());
    }
    // `a+b` or `a-b`: the operator is the last `+`/`-` that is neither the sign of `a` nor
    // part of an exponent (`1e-3`).
    let bytes = head.as_bytes();
    let op = (1..bytes.len())
        .rev()
        .find(|&i| matches!(bytes[i], b'+' | b'-') && !matches!(bytes[i - 1], b'e' | b'E'));
    let (a, step) = match op {
        Some(i) => {
            let b = number(&head[i + 1..])?;
            (number(&head[..i])?, if bytes[i] == b'-' { -b } else { b })
        }
        None => (number(head)?, 0.0),
    };
    out.extend((0..=n).map(|i| Some(a + step * i as f64)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(s: &str) -> Vec<Option<f64>> {
        parse_values(s).unwrap()
    }

    #[test]
    fn promtools_examples_expand_alike() {
        // The examples of the promtool documentation.
        assert_eq!(
            vals("1+1x3"),
            vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0)]
        );
        assert_eq!(
            vals("1-1x3"),
            vec![Some(1.0), Some(0.0), Some(-1.0), Some(-2.0)]
        );
        assert_eq!(vals("1x3"), vec![Some(1.0); 4]);
        assert_eq!(
            vals("1 _x3 2"),
            vec![Some(1.0), None, None, None, Some(2.0)]
        );
        assert_eq!(
            vals("-2+4x1 _ 1e-3"),
            vec![Some(-2.0), Some(2.0), None, Some(0.001)]
        );
        assert_eq!(
            vals("1e3-1e2x2"),
            vec![Some(1000.0), Some(900.0), Some(800.0)]
        );
        assert_eq!(vals("  "), Vec::<Option<f64>>::new());
    }

    #[test]
    fn bad_tokens_are_named() {
        for (text, says) in [
            ("1 two 3", "`two`"),
            ("1+1xN", "not a count"),
            ("stale", "Prometheus marker"),
            ("inf", "not a finite number"),
            ("1+x3", "is not a number"),
        ] {
            let e = parse_values(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
