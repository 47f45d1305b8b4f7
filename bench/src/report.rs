//! Number formatting for the human-readable output, and the latency summary shared by the JSON
//! and text reports.

use serde::Serialize;

use crate::hist::Histogram;

/// Bytes with an SI unit (`1.23 GB`), as aoe-stat and fio's MB/s do.
pub fn fmt_bytes(b: u64) -> String {
    let v = b as f64;
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.2} kB", v / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} MB", v / 1e6),
        1_000_000_000..1_000_000_000_000 => format!("{:.2} GB", v / 1e9),
        _ => format!("{:.2} TB", v / 1e12),
    }
}

/// A rate with a k/M suffix (`703.2k`).
pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Nanoseconds as ns, µs, ms or s with three significant digits.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    let three = |x: f64, unit: &str| {
        if x >= 100.0 {
            format!("{x:.0}{unit}")
        } else if x >= 10.0 {
            format!("{x:.1}{unit}")
        } else {
            format!("{x:.2}{unit}")
        }
    };
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => three(v / 1e3, "us"),
        1_000_000..1_000_000_000 => three(v / 1e6, "ms"),
        _ => three(v / 1e9, "s"),
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Summarizes a histogram of nanoseconds.
    pub fn of(h: &Histogram) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            count: h.count(),
            min: us(h.min()),
            mean: h.mean() / 1e3,
            p50: us(h.quantile(0.5)),
            p90: us(h.quantile(0.9)),
            p99: us(h.quantile(0.99)),
            p99_9: us(h.quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// One line: `min 40.1us  mean 91.2us  p50 88.0us ...`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        let f = |us: f64| fmt_ns((us * 1e3) as u64);
        format!(
            "min {}  mean {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            f(self.min),
            f(self.mean),
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.p99_9),
            f(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_bytes(999), "999 B");
        assert_eq!(fmt_bytes(1_099_511_627_776), "1.10 TB");
        assert_eq!(fmt_bytes(716_800_000), "716.80 MB");
        assert_eq!(fmt_rate(703_210.0), "703.2k");
        assert_eq!(fmt_rate(1_500_000.0), "1.50M");
        assert_eq!(fmt_rate(12.0), "12");
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(88_000), "88.0us");
        assert_eq!(fmt_ns(2_100_000), "2.10ms");
        assert_eq!(fmt_ns(250_000_000), "250ms");
        assert_eq!(fmt_ns(3_000_000_000), "3.00s");
    }

    #[test]
    fn latency_summary() {
        let mut h = Histogram::new();
        for v in [10_000, 20_000, 30_000] {
            h.record(v);
        }
        let l = Latency::of(&h);
        assert_eq!((l.count, l.min, l.max), (3, 10.0, 30.0));
        // Reported as the upper bound of the bucket (within 1/64).
        assert!((20.0..20.32).contains(&l.p50), "{}", l.p50);
        assert!(
            l.line().starts_with("min 10.0us  mean 20.0us  p50 20.2us"),
            "{}",
            l.line()
        );
        assert_eq!(Latency::of(&Histogram::new()).line(), "no samples");
    }
}
