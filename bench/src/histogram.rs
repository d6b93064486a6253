//! A lock-free latency histogram shared by thousands of connection tasks.
//!
//! Every SSE connection of the load generator records into the same
//! histograms, up to tens of thousands of times per second from several
//! threads. A mutex-protected HDR histogram would serialise those tasks; here
//! a record is one relaxed atomic add on a fixed bucket array. Buckets are
//! log-linear (32 per power of two, like an HDR histogram with about 1.5
//! significant digits), so a percentile is off by at most 1/32 (3.1 %) of
//! its value, and values below 32 are exact. Count, sum and the maximum are
//! kept exactly.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Sub-buckets per power of two (as a power of two).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the exact range: values up to 2^(SUB_BITS +
/// RANGES) - 1 (2^45 µs, about a year) are bucketed; larger ones are clamped.
const RANGES: u32 = 40;
const BUCKETS: usize = (SUB + SUB * RANGES as u64) as usize;

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.buckets[index(value)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.max.fetch_max(value, Relaxed);
    }

    /// Forgets everything recorded so far (to start a measurement window).
    /// Records racing with the reset land on either side of it.
    pub fn reset(&self) {
        for b in &*self.buckets {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.sum.store(0, Relaxed);
        self.max.store(0, Relaxed);
    }

    /// A consistent-enough copy for computing figures.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

/// A frozen histogram.
#[derive(Debug, Clone)]
pub struct Snapshot {
    buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl Snapshot {
    /// The value at quantile `q` (0..=1): the upper end of the bucket holding
    /// it, never above the exact maximum. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the q-quantile, 1-based: at least the first value.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper(i).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let top = 63 - value.leading_zeros(); // >= SUB_BITS
    let range = top - SUB_BITS; // 0 for [32, 64)
    if range >= RANGES {
        return BUCKETS - 1;
    }
    let sub = (value >> range) & (SUB - 1);
    (SUB + u64::from(range) * SUB + sub) as usize
}

/// The largest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let range = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    let low = (SUB + sub) << range;
    low + (1 << range) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut last = None;
        for v in (0..100_000u64).chain([1 << 30, (1 << 30) + 12_345, u64::from(u32::MAX)]) {
            let i = index(v);
            assert!(upper(i) >= v, "{v} above its bucket's upper end {}", upper(i));
            assert!(upper(i) - v <= v / 32, "bucket of {v} is too wide");
            if let Some(prev) = last {
                assert!(i >= prev, "buckets not monotonic at {v}");
            }
            last = Some(i);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_bucket_error() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max, 10_000);
        for (q, want) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = s.quantile(q).unwrap() as f64;
            assert!(got >= want && got <= want * 1.032, "q{q}: {got} vs {want}");
        }
        assert_eq!(s.quantile(1.0), Some(10_000));
        assert_eq!(s.quantile(0.0), Some(1));
        assert!((s.mean().unwrap() - 5_000.5).abs() < 1e-9);
    }

    #[test]
    fn small_values_are_exact_and_reset_empties() {
        let h = Histogram::default();
        for v in [3, 3, 7, 31] {
            h.record(v);
        }
        assert_eq!(h.snapshot().quantile(0.5), Some(3));
        assert_eq!(h.snapshot().quantile(0.75), Some(7));
        h.reset();
        let s = h.snapshot();
        assert_eq!((s.count, s.max, s.quantile(0.5), s.mean()), (0, 0, None, None));
    }
}
