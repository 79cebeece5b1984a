//! The server's wall clock: unix milliseconds, as the engine and the store count time.
//! The hub takes the time as an argument of each turn (`Hub::turn`), so that its tests
//! drive it with a fake clock; only the actors' loops read this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
