//! Request latency histograms: log-linear buckets (four per power of two from 1 µs), fixed
//! size, no allocation, one array increment per sample. A worker keeps one per export; the
//! control plane adds them up and reads percentiles from the sum.

use crate::status::{Bucket, Latency};

/// Buckets: `< 1 µs`, then four per power of two from 1.024 µs up to ~4.3 s; the last also
/// counts everything slower.
pub const BUCKETS: usize = 2 + 4 * 22;

/// A latency histogram over nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            sum_ns: 0,
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
pub fn bucket(ns: u64) -> usize {
    if ns < 1024 {
        return 0;
    }
    let e = 63 - ns.leading_zeros() as usize; // ≥ 10
    let sub = ((ns >> (e - 2)) & 3) as usize;
    (1 + (e - 10) * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in nanoseconds (exclusive).
pub fn upper_ns(i: usize) -> u64 {
    if i == 0 {
        return 1024;
    }
    let e = 10 + (i - 1) / 4;
    let sub = ((i - 1) % 4) as u64;
    (5 + sub) << (e - 2)
}

impl Histogram {
    /// Count one sample.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket(ns)) {
            *c += 1;
        }
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `other` into this one.
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1); 0 with no sample.
    pub fn quantile_us(&self, q: f64) -> f64 {
        quantile(
            self.counts
                .iter()
                .enumerate()
                .map(|(i, c)| (upper_ns(i), *c)),
            q,
        )
    }

    /// The summary the status shows.
    pub fn summary(&self) -> Latency {
        Latency {
            count: self.count(),
            sum_us: self.sum_ns as f64 / 1000.0,
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| Bucket {
                    le_us: upper_ns(i) as f64 / 1000.0,
                    count: *c,
                })
                .collect(),
        }
    }
}

/// The bound of the bucket holding quantile `q` of `(upper bound ns, count)` buckets, in µs.
fn quantile(buckets: impl Iterator<Item = (u64, u64)> + Clone, q: f64) -> f64 {
    let total: u64 = buckets.clone().map(|(_, c)| c).sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (le, c) in buckets {
        seen += c;
        if seen >= rank {
            return le as f64 / 1000.0;
        }
    }
    0.0
}

/// Quantile `q` of a status histogram (`buckets` of [`Latency`], or a difference of two), in µs.
pub fn quantile_of(buckets: &[Bucket], q: f64) -> f64 {
    quantile(
        buckets.iter().map(|b| ((b.le_us * 1000.0) as u64, b.count)),
        q,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_samples() {
        let mut last = 0;
        for i in 0..BUCKETS {
            assert!(upper_ns(i) > last, "bucket {i}");
            last = upper_ns(i);
        }
        for ns in [
            0,
            1,
            1023,
            1024,
            1279,
            1280,
            5000,
            123_456,
            9_999_999,
            4_000_000_000,
        ] {
            let b = bucket(ns);
            assert!(ns < upper_ns(b), "{ns} ns in bucket {b} < {}", upper_ns(b));
            if b > 0 {
                assert!(ns >= upper_ns(b - 1), "{ns} ns above bucket {}", b - 1);
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // Within 25% resolution.
        assert_eq!(upper_ns(bucket(100_000)), 114_688);
    }

    #[test]
    fn percentiles_from_samples() {
        let mut h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(i * 1000); // 1 µs .. 1 ms
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((400.0..=640.0).contains(&s.p50_us), "{}", s.p50_us);
        assert!((990.0..=1280.0).contains(&s.p99_us), "{}", s.p99_us);
        assert_eq!(quantile_of(&s.buckets, 0.99), s.p99_us);
        assert_eq!(Histogram::default().summary().p99_us, 0.0);
        let mut sum = Histogram::default();
        sum.add(&h);
        sum.add(&h);
        assert_eq!(sum.count(), 2000);
        assert_eq!(sum.quantile_us(0.5), h.quantile_us(0.5));
    }
}
