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
