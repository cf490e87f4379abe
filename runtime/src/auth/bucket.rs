//! Each principal's share of the ingest: a token bucket of events, refilled at a steady rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are forgotten.
const MAX_TRACKED: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One bucket per principal.
pub struct Buckets {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl Buckets {
    /// `rate` events per second on average, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Buckets {
        Buckets {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` events from `principal`'s bucket, or says how long until they would fit.
    pub fn take(&self, principal: &Arc<str>, n: usize, now: Instant) -> Result<(), Duration> {
        let n = n as f64;
        if n > self.burst {
            // Checked at configuration time (burst ≥ max_batch_size); kept safe here.
            return Err(Duration::from_secs_f64(n / self.rate));
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(principal) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(Arc::clone(principal)).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = self.rate * now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_over_its_share_waits_while_another_passes() {
        let buckets = Buckets::new(10, 20);
        let (noisy, quiet): (Arc<str>, Arc<str>) = ("noisy".into(), "quiet".into());
        let t0 = Instant::now();
        assert!(buckets.take(&noisy, 20, t0).is_ok(), "the burst passes");
        let wait = buckets.take(&noisy, 5, t0).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500), "5 events at 10/s");
        assert!(
            buckets.take(&quiet, 20, t0).is_ok(),
            "another principal is not charged"
        );
        assert!(
            buckets
                .take(&noisy, 5, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            buckets
                .take(&noisy, 21, t0 + Duration::from_secs(60))
                .is_err(),
            "never above the burst"
        );
    }
}
