//! Wall-clock time in milliseconds, the unit of version timestamps.
//!
//! For conflict tests the clock can be frozen: with the environment variable
//! `KVS_TEST_CLOCK_MS` set, every new write starts from that timestamp, so
//! concurrent writes of one key on two nodes collide (equal timestamps,
//! different uuids) as they would under heavy clock skew. Never set it in
//! production.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

fn frozen() -> Option<u64> {
    static FROZEN: OnceLock<Option<u64>> = OnceLock::new();
    *FROZEN.get_or_init(|| {
        std::env::var("KVS_TEST_CLOCK_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Milliseconds since the Unix epoch (or the frozen test clock).
pub fn now_ms() -> u64 {
    frozen().unwrap_or_else(real_now_ms)
}

/// Milliseconds since the Unix epoch, never frozen: for membership
/// `last_seen`, purge horizons and logs.
pub fn real_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The longest time to live a write may ask for: ten years, in seconds.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A time to live given in seconds (`30`, `0.5`), in ms: a plain decimal
/// number, at least 1 ms and at most [`MAX_TTL_SECS`]. Signs, exponents,
/// `inf` and `NaN` are refused; the message says what is wrong.
pub fn parse_ttl_ms(text: &str) -> Result<u64, String> {
    let shape = |c: char| c.is_ascii_digit() || c == '.';
    let dots = text.chars().filter(|c| *c == '.').count();
    let digits = text.chars().filter(char::is_ascii_digit).count();
    if text.is_empty() || !text.chars().all(shape) || dots > 1 || digits == 0 {
        return Err(format!(
            "ttl must be a number of seconds such as 30 or 0.5, not {text:?}"
        ));
    }
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("ttl {text:?} is not a number"))?;
    if secs > MAX_TTL_SECS as f64 {
        return Err(format!(
            "ttl {text} is longer than ten years ({MAX_TTL_SECS} seconds)"
        ));
    }
    let ms = (secs * 1000.0).round();
    if ms < 1.0 {
        return Err(format!("ttl {text} is shorter than a millisecond"));
    }
    Ok(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_fractions_and_refuse_the_rest() {
        assert_eq!(parse_ttl_ms("30"), Ok(30_000));
        assert_eq!(parse_ttl_ms("0.5"), Ok(500));
        assert_eq!(parse_ttl_ms(".25"), Ok(250));
        assert_eq!(parse_ttl_ms("0.001"), Ok(1));
        assert_eq!(
            parse_ttl_ms(&MAX_TTL_SECS.to_string()),
            Ok(MAX_TTL_SECS * 1000)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "0",
            "0.0001",
            "NaN",
            "inf",
            "1e3",
            "1.2.3",
            ".",
            "ten",
            " 5",
            "315360001",
            "99999999999999999999999",
        ] {
            let e = parse_ttl_ms(bad).unwrap_err();
            assert!(e.contains("ttl"), "{bad:?}: {e}");
        }
    }
}
