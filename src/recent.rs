//! A map of recent entries bounded in count and in age: the memory of ended
//! events in the poller and the edges, where "remember for a while, but never
//! without limit" is the whole requirement. Oldest entries go first.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::{Duration, Instant},
};

pub struct RecentMap<K, V> {
    by_key: HashMap<K, (V, Instant)>,
    /// Insertion order; a key inserted again has a newer slot, and its older
    /// slot is skipped when it reaches the front.
    order: VecDeque<(K, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V> RecentMap<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { by_key: HashMap::new(), order: VecDeque::new(), capacity, ttl }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.expire();
        self.by_key.get(key).map(|(v, _)| v)
    }

    pub fn contains(&mut self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.expire();
        let now = Instant::now();
        self.by_key.insert(key.clone(), (value, now));
        self.order.push_back((key, now));
        while self.order.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn expire(&mut self) {
        while self.order.front().is_some_and(|(_, at)| at.elapsed() >= self.ttl) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front()
            && self.by_key.get(&key).is_some_and(|(_, t)| *t == at)
        {
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_count_keeping_the_newest() {
        let mut m = RecentMap::new(3, Duration::from_secs(60));
        for i in 0..1000 {
            m.insert(i, i * 2);
            assert!(m.len() <= 3 && m.order.len() <= 3);
        }
        assert_eq!(m.get(&999), Some(&1998));
        assert!(!m.contains(&0));
    }

    #[test]
    fn entries_expire_and_leave_nothing_behind() {
        let mut m = RecentMap::new(100, Duration::from_millis(30));
        m.insert("a", ());
        m.insert("a", ());
        assert!(m.contains(&"a"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!m.contains(&"a"));
        assert!(m.is_empty() && m.order.is_empty());
    }
}
