//! Token-bucket arithmetic in its GCRA form: a bucket is one number, the theoretical arrival
//! time (TAT, ns) of the next request once every earlier one is paid for. With `rate` tokens a
//! second (one every `T` ns) and `burst` tokens of capacity, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= burst * T`; it then moves the TAT to `max(TAT, now) + T`. This is
//! exactly a token bucket that starts full, and one `u64` is cheap to compare-and-swap.

/// A rule's bucket shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Nanoseconds per token.
    pub interval_ns: u64,
    /// Capacity in tokens.
    pub burst: u64,
}

impl Limit {
    /// `rate` tokens per second (may be fractional, > 0) and a capacity of `burst` (>= 1).
    pub fn new(rate_per_second: f64, burst: u64) -> Option<Self> {
        if rate_per_second.is_nan()
            || rate_per_second <= 0.0
            || !rate_per_second.is_finite()
            || burst == 0
        {
            return None;
        }
        let interval = (1e9 / rate_per_second).round();
        if !(1.0..=1e18).contains(&interval) {
            return None;
        }
        Some(Self {
            interval_ns: interval as u64,
            burst,
        })
    }

    fn window_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(self.burst)
    }
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The TAT to store (unchanged when refused).
    pub tat_ns: u64,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_seconds: u64,
    /// When refused: seconds until one token is back (`Retry-After`, at least 1).
    pub retry_after_seconds: u64,
}

fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Takes one token from the bucket whose stored TAT is `tat` (`None`: a new, full bucket).
pub fn take(limit: Limit, tat: Option<u64>, now_ns: u64) -> Verdict {
    let base = tat.unwrap_or(now_ns).max(now_ns);
    let next = base.saturating_add(limit.interval_ns);
    let window = limit.window_ns();
    if next - now_ns <= window {
        let used = next - now_ns;
        Verdict {
            allowed: true,
            tat_ns: next,
            remaining: (window - used) / limit.interval_ns,
            reset_seconds: ceil_seconds(used),
            retry_after_seconds: 0,
        }
    } else {
        Verdict {
            allowed: false,
            tat_ns: base,
            remaining: 0,
            reset_seconds: ceil_seconds(base - now_ns),
            retry_after_seconds: ceil_seconds(next - window - now_ns).max(1),
        }
    }
}

/// The stored form of a TAT.
pub fn encode(tat_ns: u64) -> [u8; 8] {
    tat_ns.to_be_bytes()
}

/// A stored TAT; `None` for anything that is not one (treated as a new bucket).
pub fn decode(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn run(limit: Limit, times: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&t| {
                let v = take(limit, tat, t);
                if v.allowed {
                    tat = Some(v.tat_ns);
                }
                v.allowed
            })
            .collect()
    }

    #[test]
    fn a_new_bucket_allows_its_burst_then_refuses() {
        let limit = Limit::new(1.0, 5).unwrap();
        let now = 100 * SEC;
        let got = run(limit, &[now; 7]);
        assert_eq!(got, [true, true, true, true, true, false, false]);
    }

    #[test]
    fn remaining_reset_and_retry_after() {
        let limit = Limit::new(2.0, 4).unwrap(); // a token every 0.5 s
        let now = 10 * SEC;
        let first = take(limit, None, now);
        assert_eq!((first.remaining, first.reset_seconds), (3, 1));
        let mut tat = Some(first.tat_ns);
        for expected in [2, 1, 0] {
            let v = take(limit, tat, now);
            assert!(v.allowed);
            assert_eq!(v.remaining, expected);
            tat = Some(v.tat_ns);
        }
        let refused = take(limit, tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.tat_ns, tat.unwrap(), "a refusal costs nothing");
        assert_eq!(refused.retry_after_seconds, 1); // 0.5 s, rounded up
        assert_eq!(refused.reset_seconds, 2);
        // Half a second later exactly one more.
        let later = take(limit, tat, now + SEC / 2);
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn refills_at_the_rate() {
        let limit = Limit::new(10.0, 10).unwrap();
        // 10 at once, then one every 100 ms for 2 s: 10 + 20 allowed, nothing more.
        let mut times = vec![0; 10];
        times.extend((1..=20).map(|i| i * SEC / 10));
        times.push(2 * SEC); // same instant as the last one: refused
        let got = run(limit, &times);
        assert_eq!(got.iter().filter(|a| **a).count(), 30);
        assert!(!got[30]);
    }

    #[test]
    fn long_idle_buckets_are_full_not_over_full() {
        let limit = Limit::new(1.0, 3).unwrap();
        let got = run(limit, &[0, 1000 * SEC, 1000 * SEC, 1000 * SEC, 1000 * SEC]);
        assert_eq!(got, [true, true, true, true, false]);
    }

    #[test]
    fn rejects_nonsense_limits() {
        assert!(Limit::new(0.0, 1).is_none());
        assert!(Limit::new(-1.0, 1).is_none());
        assert!(Limit::new(f64::NAN, 1).is_none());
        assert!(Limit::new(1.0, 0).is_none());
        assert!(Limit::new(1e-12, 1).is_none());
        assert_eq!(decode(&encode(42)), Some(42));
        assert_eq!(decode(b"abc"), None);
    }
}
