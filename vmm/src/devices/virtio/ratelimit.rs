//! Token buckets for I/O QoS: pure arithmetic over a clock the caller passes in, so every
//! decision is unit-tested without sleeping.
//!
//! A bucket refills continuously at `rate` tokens per second up to `capacity` (the burst). A
//! request takes its tokens or is refused with the instant at which it would fit; a request
//! larger than the whole bucket may run when the bucket is full and drives it into debt, so big
//! I/Os are slowed, never starved.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` per second holding `burst` seconds of it, starting full.
    pub fn new(rate: u64, burst: Duration, now: Instant) -> Self {
        let rate = rate as f64;
        let capacity = (rate * burst.as_secs_f64()).max(1.0);
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes `n` tokens, or says when to try again.
    pub fn take(&mut self, n: u64, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        let n = n as f64;
        // Oversized requests go when the bucket is full, leaving a debt.
        if self.tokens >= n || (n > self.capacity && self.tokens >= self.capacity) {
            self.tokens -= n;
            return Ok(());
        }
        let missing = n.min(self.capacity) - self.tokens;
        Err(now + Duration::from_secs_f64(missing / self.rate))
    }

    /// This bucket's rate and burst with `self`'s tokens (clamped) and clock.
    fn retuned(self, new: TokenBucket) -> TokenBucket {
        TokenBucket {
            tokens: self.tokens.min(new.capacity),
            last: self.last,
            ..new
        }
    }

    /// Gives back tokens taken for a request that did not run after all.
    pub fn refund(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.capacity);
    }
}

/// Limits of one device: operations per second and bytes per second, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

/// The default burst: a tenth of a second of the rate.
pub const DEFAULT_BURST: Duration = Duration::from_millis(100);

impl RateLimiter {
    pub fn new(
        iops: Option<u64>,
        bytes_per_sec: Option<u64>,
        burst: Duration,
        now: Instant,
    ) -> Self {
        let bucket = |rate: Option<u64>| {
            rate.filter(|&r| r > 0)
                .map(|r| TokenBucket::new(r, burst, now))
        };
        Self {
            ops: bucket(iops),
            bytes: bucket(bytes_per_sec),
        }
    }

    /// Gives back one operation of `bytes` that was admitted but did not run.
    pub fn refund(&mut self, bytes: u64) {
        if let Some(ops) = &mut self.ops {
            ops.refund(1);
        }
        if let Some(b) = &mut self.bytes {
            b.refund(bytes);
        }
    }

    /// `new`'s limits, keeping the tokens of buckets that stay limited.
    pub fn retuned(self, new: RateLimiter) -> RateLimiter {
        let keep = |old: Option<TokenBucket>, new: Option<TokenBucket>| match (old, new) {
            (Some(old), Some(new)) => Some(old.retuned(new)),
            (_, new) => new,
        };
        RateLimiter {
            ops: keep(self.ops, new.ops),
            bytes: keep(self.bytes, new.bytes),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.ops.is_none() && self.bytes.is_none()
    }

    /// Admits one operation of `bytes`, or says when it would be admitted. Nothing is taken
    /// when it is refused.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Instant> {
        if let Some(ops) = &mut self.ops {
            ops.take(1, now)?;
        }
        if let Some(b) = &mut self.bytes {
            if let Err(at) = b.take(bytes, now) {
                if let Some(ops) = &mut self.ops {
                    ops.refund(1);
                }
                return Err(at);
            }
        }
        Ok(())
    }
}

/// A device's limiter with the timer that wakes its I/O thread when a refused request would
/// fit. The timer's fd is one of the device's host events, watched edge-triggered, so its
/// expiry count is never read (a blocking read could stall the I/O thread after a re-arm).
#[derive(Debug)]
pub struct Throttle {
    limiter: RateLimiter,
    timer: vmm_sys_util::timerfd::TimerFd,
}

impl Throttle {
    pub fn new(limiter: RateLimiter) -> std::io::Result<Self> {
        Ok(Self {
            limiter,
            timer: vmm_sys_util::timerfd::TimerFd::new()?,
        })
    }

    /// New limits; the tokens in hand carry over (clamped to the new burst), so changing
    /// limits, or setting the same ones again, hands out no extra burst and forgives no debt.
    pub fn set(&mut self, limiter: RateLimiter) {
        self.limiter = self.limiter.retuned(limiter);
    }

    /// True when an operation of `bytes` may run now; otherwise the timer is armed for when it
    /// may, and the caller puts the request back.
    pub fn admit(&mut self, bytes: u64) -> bool {
        if self.limiter.is_unlimited() {
            return true;
        }
        let now = Instant::now();
        match self.limiter.admit(bytes, now) {
            Ok(()) => true,
            Err(at) => {
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(100));
                if let Err(e) = self.timer.reset(wait, None) {
                    tracing::warn!("arming the QoS timer: {e}");
                }
                false
            }
        }
    }

    /// Gives back what `admit` took for an operation that could not run after all.
    pub fn refund(&mut self, bytes: u64) {
        self.limiter.refund(bytes);
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, ms(100), t0); // 100 tokens
        assert_eq!(b.take(100, t0), Ok(()));
        let retry = b.take(10, t0).unwrap_err();
        assert_eq!(retry - t0, ms(10));
        assert_eq!(b.take(10, t0 + ms(10)), Ok(()));
        // Idle for a long time: still only a burst's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(100, later), Ok(()));
        assert!(b.take(1, later).is_err());
    }

    #[test]
    fn oversized_requests_run_on_a_full_bucket_and_leave_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, ms(100), t0);
        assert_eq!(b.take(300, t0), Ok(()));
        // 200 tokens of debt plus 100 for the next full bucket: 300 ms.
        let retry = b.take(300, t0).unwrap_err();
        assert_eq!(retry - t0, ms(300));
    }

    #[test]
    fn steady_state_throughput_is_the_rate() {
        // 4 KiB requests against 1 MiB/s: over 10 simulated seconds, 10 MiB plus one burst.
        let t0 = Instant::now();
        let mut l = RateLimiter::new(None, Some(1 << 20), DEFAULT_BURST, t0);
        let (mut now, mut bytes) = (t0, 0u64);
        while now < t0 + Duration::from_secs(10) {
            match l.admit(4096, now) {
                Ok(()) => bytes += 4096,
                Err(at) => now = at,
            }
        }
        let expected = 10.0 * f64::from(1 << 20) + 0.1 * f64::from(1 << 20);
        assert!(
            (bytes as f64 - expected).abs() / expected < 0.01,
            "{bytes} vs {expected}"
        );
    }

    #[test]
    fn retuning_keeps_the_tokens_in_hand() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Some(100), None, ms(1000), t0);
        for _ in 0..100 {
            l.admit(0, t0).unwrap();
        }
        // The same limits again: still empty, no new burst.
        let mut again = l.retuned(RateLimiter::new(Some(100), None, ms(1000), t0));
        assert!(again.admit(0, t0).is_err());
        // A higher rate refills faster but starts from what was left.
        let mut faster = l.retuned(RateLimiter::new(Some(1000), None, ms(1000), t0));
        assert!(faster.admit(0, t0).is_err());
        assert_eq!(faster.admit(0, t0 + ms(1)), Ok(()));
        // Removing a limit removes it.
        assert!(l.retuned(RateLimiter::default()).is_unlimited());
    }

    #[test]
    fn a_refused_operation_takes_nothing() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Some(10), Some(1000), ms(1000), t0); // 10 ops, 1000 bytes
        assert_eq!(l.admit(1000, t0), Ok(()));
        assert!(l.admit(1, t0).is_err(), "bytes exhausted");
        // The op token was refunded: 9 more zero-byte ops fit.
        for _ in 0..9 {
            assert_eq!(l.admit(0, t0), Ok(()));
        }
        assert!(l.admit(0, t0).is_err(), "ops exhausted");
        assert!(RateLimiter::new(None, Some(0), ms(100), t0).is_unlimited());
    }
}
