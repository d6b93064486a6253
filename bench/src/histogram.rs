//! A lock-free latency histogram that thousands of connection tasks record
//! into from several threads: a record is a few relaxed atomic adds on fixed
//! log-linear buckets (32 per power of two, like an HDR histogram), so a
//! percentile is within 1/32 (3.1 %) of its value; values below 64 are exact.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two above the exact range: up to 2^45 (µs: a year), larger clamped.
const RANGES: usize = 40;
const BUCKETS: usize = SUB * (RANGES + 1);

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        let buckets = (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Self { buckets, sum: AtomicU64::new(0), max: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.buckets[index(value)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.max.fetch_max(value, Relaxed);
    }

    /// Forgets everything so far (a window starts); racing records land on either side.
    pub fn reset(&self) {
        self.buckets.iter().chain([&self.sum, &self.max]).for_each(|a| a.store(0, Relaxed));
    }

    pub fn snapshot(&self) -> Snapshot {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count = buckets.iter().sum();
        Snapshot { buckets, count, sum: self.sum.load(Relaxed), max: self.max.load(Relaxed) }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    buckets: Vec<u64>,
    pub count: u64,
    sum: u64,
    pub max: u64,
}

impl Snapshot {
    /// The value at quantile `q` (0..=1): its bucket's upper end, at most the maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let i = self.buckets.iter().position(|&c| {
            seen += c;
            seen >= rank
        })?;
        Some(upper(i).min(self.max))
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

/// Bucket of `value`: its top `SUB_BITS + 1` bits, offset by its magnitude (clamped).
fn index(value: u64) -> usize {
    let range = (64 - value.leading_zeros() as usize).saturating_sub(SUB_BITS as usize + 1);
    (range * SUB + (value >> range) as usize).min(BUCKETS - 1)
}

/// The largest value in bucket `i`.
fn upper(i: usize) -> u64 {
    let range = (i / SUB).saturating_sub(1);
    (((i - range * SUB) as u64 + 1) << range) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_tight_and_quantiles_within_them() {
        for v in (0..100_000u64).chain([1 << 30, (1 << 30) + 12_345, u64::from(u32::MAX)]) {
            let i = index(v);
            assert!(upper(i) >= v && upper(i) - v <= v / 32 && (v == 0 || index(v - 1) <= i), "{v}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let h = Histogram::default();
        (1..=10_000u64).for_each(|v| h.record(v));
        let s = h.snapshot();
        let q = |q| s.quantile(q).unwrap();
        assert!((5_000..=5_160).contains(&q(0.5)) && (9_900..=10_000).contains(&q(0.99)));
        assert_eq!((s.count, q(0.0), q(1.0), s.mean()), (10_000, 1, 10_000, Some(5_000.5)));
        h.reset();
        assert_eq!(h.snapshot().quantile(0.5), None);
    }
}
