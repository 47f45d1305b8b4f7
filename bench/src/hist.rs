//! A log-linear latency histogram (HdrHistogram-style, no dependency).
//!
//! Values below 128 are counted exactly; above, each power of two is split into 64 linear
//! buckets, so a bucket's width is at most 1/64 of its lower bound: any percentile is reported
//! within +1.6 % of the true value. 3776 buckets cover the whole `u64` range (30 KiB).

/// Linear sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for exponents 0..=63.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of `u64` values (nanoseconds, for us) in log-linear buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Bucket index of `v`.
fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // floor(log2 v) >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2 * SUB)
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as usize
}

/// Lowest and highest value counted in bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mantissa = SUB + i % SUB;
    let low = mantissa << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds all of `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest value counted (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value counted (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The non-empty buckets as (upper bound, count), lowest first: enough to merge
    /// histograms of several runs elsewhere and read percentiles as [`Histogram::quantile`]
    /// does (the bucket's upper bound).
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (bounds(i).1, c))
            .collect()
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket holding the
    /// `ceil(q * count)`-th smallest value, clamped to the observed min and max. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bounds(i).1.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_list_what_was_counted() {
        let mut h = Histogram::new();
        for v in [5, 5, 1000, 1001] {
            h.record(v);
        }
        let b = h.buckets();
        assert_eq!(b.iter().map(|&(_, c)| c).sum::<u64>(), 4);
        assert_eq!(b[0], (5, 2));
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            b.last().unwrap().0,
            h.quantile(1.0).max(b.last().unwrap().0)
        );
    }

    #[test]
    fn index_and_bounds_agree() {
        let mut probes: Vec<u64> = (0..1000).collect();
        for e in 0..64 {
            let p = 1u64 << e;
            probes.extend([p - 1, p, p + 1, p + p / 3]);
        }
        probes.push(u64::MAX);
        for v in probes {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            let (lo, hi) = bounds(i);
            assert!(lo <= v && v <= hi, "{v} not in bucket {i} [{lo}, {hi}]");
            // Relative width bound: at most 1/64 of the lower bound above the exact range.
            if v >= 2 * SUB {
                assert!(
                    (hi - lo) as f64 <= lo as f64 / SUB as f64,
                    "{v}: [{lo}, {hi}]"
                );
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        // Buckets are contiguous and increasing.
        for i in 1..BUCKETS {
            assert_eq!(bounds(i).0, bounds(i - 1).1 + 1, "gap before bucket {i}");
        }
    }

    #[test]
    fn empty() {
        let h = Histogram::new();
        assert_eq!((h.count(), h.min(), h.max(), h.quantile(0.5)), (0, 0, 0, 0));
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn exact_small_values() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!((h.min(), h.max()), (1, 100));
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_within_error_bound() {
        // 100k values spread from 1 µs to ~100 ms (ns units): quantiles within +1.6 %.
        let mut h = Histogram::new();
        let mut values: Vec<u64> = (0..100_000u64)
            .map(|i| 1_000 + (i * i) % 100_000_000)
            .collect();
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            let got = h.quantile(q);
            assert!(got >= exact, "q{q}: {got} < exact {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / 64.0 + 1.0,
                "q{q}: {got} vs exact {exact}"
            );
        }
        assert_eq!(h.max(), *values.last().unwrap());
        assert_eq!(h.quantile(1.0), h.max());
    }

    #[test]
    fn tail_is_visible() {
        let mut h = Histogram::new();
        for _ in 0..9990 {
            h.record(50_000);
        }
        for _ in 0..10 {
            h.record(250_000_000);
        }
        let p50 = h.quantile(0.5);
        assert!((50_000..=50_800).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) < 51_000);
        assert_eq!(h.quantile(0.9999), 250_000_000);
    }

    #[test]
    fn merge_adds_up() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record(10);
        b.record(1_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!((a.count(), a.min(), a.max()), (3, 5, 1_000_000));
        assert_eq!(a.quantile(0.5), 10);
    }
}
