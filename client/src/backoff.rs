//! `ReconnectPolicy`: capped exponential backoff with jitter between reconnect attempts.
//! Pure arithmetic; the reconnect loop itself lives in `client/link.rs`.

use std::time::Duration;

/// How the client reconnects after losing its connection.
///
/// The delay before attempt `n` (0-based) is `min(max_delay, initial_delay * multiplier^n)`,
/// reduced by a random fraction of up to `jitter` (0.0 = none, 1.0 = anywhere between
/// zero and the full delay) so that many clients do not reconnect in lock step.
///
/// ```
/// use std::time::Duration;
/// use squall_client::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(2))
///     .max_attempts(Some(20));
/// assert!(policy.delay(0, 0.0) <= Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    pub(crate) enabled: bool,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
    pub(crate) max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// Reconnect forever: 100 ms, doubling, capped at 5 s, jitter 0.5.
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: a lost connection closes the client (calls fail with
    /// [`ClientError::Closed`](crate::ClientError::Closed)).
    pub fn disabled() -> Self {
        ReconnectPolicy {
            enabled: false,
            ..Self::default()
        }
    }

    /// Delay before the first reconnect attempt (default 100 ms).
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Upper bound of the delay between attempts (default 5 s).
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Growth factor per failed attempt (default 2.0; values below 1.0 count as 1.0).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }

    /// Fraction of the delay that is randomised away, clamped to `0.0..=1.0` (default 0.5).
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = if j.is_finite() {
            j.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Give up after this many failed attempts in a row (`None`, the default, = never).
    /// Giving up closes the client and ends every subscription with an error.
    pub fn max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// The delay before reconnect attempt `attempt` (0-based), with `random` a number in
    /// `0.0..1.0` that picks the jitter. The result lies in
    /// `[(1 - jitter) * base, base]` where `base = min(max_delay, initial * multiplier^attempt)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let base = self.base_delay(attempt);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base.mul_f64(1.0 - self.jitter * random)
    }

    fn base_delay(&self, attempt: u32) -> Duration {
        // powi on a capped exponent keeps the float finite; the min() does the capping.
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        let secs = self.initial_delay.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    pub(crate) fn gives_up_after(&self, failures: u32) -> bool {
        !self.enabled || self.max_attempts.is_some_and(|max| failures >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_then_caps() {
        let p = ReconnectPolicy::default().jitter(0.0);
        assert_eq!(p.delay(0, 0.7), Duration::from_millis(100));
        assert_eq!(p.delay(1, 0.7), Duration::from_millis(200));
        assert_eq!(p.delay(2, 0.7), Duration::from_millis(400));
        assert_eq!(p.delay(10, 0.7), Duration::from_secs(5));
        assert_eq!(p.delay(u32::MAX, 0.7), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = ReconnectPolicy::default().jitter(0.5);
        for attempt in 0..40 {
            let base = p.delay(attempt, 0.0);
            for i in 0..=100 {
                let r = i as f64 / 100.0;
                let d = p.delay(attempt, r);
                assert!(d <= base, "attempt {attempt}: {d:?} > {base:?}");
                assert!(
                    d >= base.mul_f64(0.5),
                    "attempt {attempt}: {d:?} below half"
                );
                assert!(d <= Duration::from_secs(5));
            }
        }
        // Out-of-range random numbers are clamped, never negative or above the base.
        assert_eq!(p.delay(0, -3.0), Duration::from_millis(100));
        assert_eq!(p.delay(0, f64::NAN), Duration::from_millis(100));
        assert_eq!(p.delay(0, 7.0), Duration::from_millis(50));
    }

    #[test]
    fn setters_clamp_nonsense() {
        let p = ReconnectPolicy::default().jitter(9.0).multiplier(0.1);
        assert_eq!(p.jitter, 1.0);
        assert_eq!(p.multiplier, 1.0);
        assert_eq!(p.delay(5, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(5, 1.0), Duration::ZERO);
    }

    #[test]
    fn giving_up() {
        assert!(!ReconnectPolicy::default().gives_up_after(1_000_000));
        assert!(ReconnectPolicy::disabled().gives_up_after(0));
        let p = ReconnectPolicy::default().max_attempts(Some(3));
        assert!(!p.gives_up_after(2));
        assert!(p.gives_up_after(3));
    }
}
