//! Per-token request rate limits: one token bucket per `oauth_token` (`rate_limit`), refilled at
//! `requests_per_s` up to `burst`; a request finding its bucket empty is refused with 429 and how
//! long until a request would pass. Pure (the clock is the caller's); held behind one mutex.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; past it, full buckets (tokens idle long enough to refill) are forgotten,
/// which loses nothing (a new bucket starts full). Bounds memory when auth is open and any string
/// is a token.
const MAX_BUCKETS: usize = 65_536;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// None when `requests_per_s` is 0 (no limit).
    pub fn new(requests_per_s: f64, burst: f64) -> Option<Self> {
        (requests_per_s > 0.0).then(|| Self { rate: requests_per_s, burst, buckets: Mutex::new(HashMap::new()) })
    }

    /// Takes one request from `key`'s bucket at `now`, or says how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = key;
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_BUCKETS {
                // Every bucket busy: new tokens share one.
                key = "";
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_refills_per_token() {
        let l = RateLimiter::new(2.0, 3.0).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("a", t0).is_ok());
        }
        let wait = l.take("a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Another token has its own bucket.
        assert!(l.take("b", t0).is_ok());
        // Half a second later one request has refilled, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take("a", t1).is_ok());
        assert!(l.take("a", t1).is_err());
        // Idle for long: back to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.take("a", t2).is_ok());
        }
        assert!(l.take("a", t2).is_err());
        assert!(RateLimiter::new(0.0, 10.0).is_none(), "0 = no limit");
    }

    #[test]
    fn buckets_stay_bounded_whatever_the_tokens() {
        let l = RateLimiter::new(1.0, 1.0).unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            l.take(&format!("t{i}"), t0).unwrap();
        }
        // Two seconds on, every bucket has refilled: a new token finds room.
        l.take("new", t0 + Duration::from_secs(2)).unwrap();
        assert!(l.buckets.lock().unwrap().len() <= 2, "{}", l.buckets.lock().unwrap().len());
    }
}
