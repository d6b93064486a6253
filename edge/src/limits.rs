//! Caps on concurrent SSE streams, in total and per client address, so no
//! crowd and no single client can exhaust the edge's file descriptors or
//! memory. A refused browser gets `503` with `Retry-After` (EventSource treats
//! it as final, which is what an overloaded edge wants: the page's own retry
//! logic or the load balancer picks another edge).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

#[derive(Clone)]
pub struct StreamLimits {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    /// 0: no per-client cap.
    max_per_client: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Most streams open at once since [`StreamLimits::take_peak`] last ran.
    peak: usize,
    /// Only addresses with open streams are present, so the map is bounded by
    /// the total cap.
    per_client: HashMap<IpAddr, usize>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this edge is at its connection limit")]
    Full,
    #[error("too many streams from your address")]
    ClientFull,
}

impl StreamLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        let inner = Inner { max_total, max_per_client, counts: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// Reserves a stream for `client`; the reservation ends when the permit is
    /// dropped. Refusals are counted in `livepush_edge_rejected_total`.
    pub fn acquire(&self, client: IpAddr) -> Result<StreamPermit, Refused> {
        let metrics = livepush::metrics::edge();
        let mut counts = self.lock();
        if counts.total >= self.inner.max_total {
            metrics.rejected_max_connections.increment(1);
            return Err(Refused::Full);
        }
        let mine = counts.per_client.entry(client).or_default();
        if self.inner.max_per_client > 0 && *mine >= self.inner.max_per_client {
            metrics.rejected_per_client.increment(1);
            return Err(Refused::ClientFull);
        }
        *mine += 1;
        counts.total += 1;
        counts.peak = counts.peak.max(counts.total);
        Ok(StreamPermit { limits: self.clone(), client })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// The most streams open at once since the last call (a crowd that came
    /// and went between two looks still shows), and streams open now.
    pub fn take_peak(&self) -> (usize, usize) {
        let mut counts = self.lock();
        let open = counts.total;
        let peak = std::mem::replace(&mut counts.peak, open);
        (peak, counts.total)
    }

    fn release(&self, client: IpAddr) {
        let mut counts = self.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&client);
                // Thousands of client addresses that left give their space back.
                if counts.per_client.capacity() > 4 * counts.per_client.len() + 64 {
                    counts.per_client.shrink_to_fit();
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        livepush::sync::lock(&self.inner.counts, "stream limits")
    }
}

pub struct StreamPermit {
    limits: StreamLimits,
    client: IpAddr,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limits.release(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_client_and_forgets_idle_clients() {
        let limits = StreamLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.acquire(a).unwrap();
        let _a2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refused::ClientFull));
        let _b1 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some(Refused::Full));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.acquire(b).unwrap();
        drop((_a2, _b1, _b2));
        assert_eq!(limits.open(), 0);
        assert!(limits.lock().per_client.is_empty(), "no entry left behind");
    }

    #[test]
    fn zero_means_no_per_client_cap() {
        let limits = StreamLimits::new(100, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..100).map(|_| limits.acquire(a).unwrap()).collect();
        assert_eq!(limits.acquire(a).err(), Some(Refused::Full));
        drop(permits);
    }
}
