//! Token-bucket rate limiting, sans-IO (time is passed in).

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens if available at `now`; returns whether it did.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// How long from the last [`try_take`](Self::try_take) until `cost` tokens are available
    /// (zero if they are now; `Duration::MAX` if `cost` exceeds the burst or nothing refills).
    pub fn wait_for(&self, cost: f64) -> Duration {
        if self.tokens >= cost {
            return Duration::ZERO;
        }
        if cost > self.burst || self.rate <= 0.0 {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64((cost - self.tokens) / self.rate).unwrap_or(Duration::MAX)
    }

    /// Whether the bucket has refilled completely by `now`: it holds no state worth keeping.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(bucket.try_take(1.0, t0));
        }
        assert!(!bucket.try_take(1.0, t0));
        assert!(bucket.try_take(1.0, t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(1.0, t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            assert!(bucket.try_take(1.0, later));
        }
        assert!(!bucket.try_take(1.0, later));
    }

    #[test]
    fn reports_wait_and_fullness() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2.0, t0);
        assert!(bucket.is_full(t0));
        assert_eq!(bucket.wait_for(1.0), Duration::ZERO);
        assert!(bucket.try_take(2.0, t0));
        assert!(!bucket.try_take(1.0, t0));
        assert_eq!(bucket.wait_for(1.0), Duration::from_millis(100));
        assert_eq!(bucket.wait_for(3.0), Duration::MAX);
        assert!(!bucket.is_full(t0 + Duration::from_millis(100)));
        assert!(bucket.is_full(t0 + Duration::from_millis(200)));
    }
}
