//! Who watches what through this edge, for the heartbeat batches that replace
//! the per-viewer heartbeat POSTs of the polling days.
//!
//! An open SSE stream is proof that its viewer is there, so each stream holds
//! a [`ViewerGuard`] and the tracker reports, once per interval, everyone who
//! watched during that interval: viewers connected now, plus viewer ids that
//! left since the last report (a short visit still counts once), plus the
//! peak number of anonymous streams. Nothing grows while the poller is
//! unreachable: the state is per open stream, and ids that left are capped.

use livepush::{EventId, ViewerId, proto::EventViewers};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

/// Most viewer ids remembered as "left during this interval" across all
/// events; beyond it a departure is simply not reported (they are gone).
const MAX_LEFT: usize = 100_000;

#[derive(Clone, Default)]
pub struct Viewers {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    events: HashMap<EventId, Watching>,
    left_total: usize,
}

#[derive(Default)]
struct Watching {
    /// Open streams per viewer id (two tabs: 2).
    vids: HashMap<ViewerId, u32>,
    /// Viewer ids whose last stream closed since the last report.
    left: HashSet<ViewerId>,
    anonymous: u32,
    /// Most anonymous streams open at once since the last report.
    anonymous_peak: u32,
}

impl Watching {
    fn is_empty(&self) -> bool {
        self.vids.is_empty() && self.left.is_empty() && self.anonymous_peak == 0
    }
}

impl Viewers {
    /// Counts a stream of `event` by `vid` (or an anonymous one) until the
    /// guard is dropped.
    pub fn join(&self, event: EventId, vid: Option<ViewerId>) -> ViewerGuard {
        let mut table = self.lock();
        let watching = table.events.entry(event.clone()).or_default();
        match &vid {
            Some(vid) => *watching.vids.entry(vid.clone()).or_default() += 1,
            None => {
                watching.anonymous += 1;
                watching.anonymous_peak = watching.anonymous_peak.max(watching.anonymous);
            }
        }
        ViewerGuard { viewers: self.clone(), event, vid }
    }

    /// The batch for the interval that ends now: everyone who watched during
    /// it. Call [`Viewers::reported`] once the poller has it.
    pub fn batch(&self) -> Vec<EventViewers> {
        let table = self.lock();
        table
            .events
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(event, w)| {
                let mut vids: Vec<String> =
                    w.vids.keys().chain(w.left.iter()).map(|v| v.as_str().to_owned()).collect();
                vids.sort_unstable();
                vids.dedup();
                EventViewers { event_id: event.to_string(), vids, anonymous: w.anonymous_peak }
            })
            .collect()
    }

    /// The poller has the batch: start a new interval. If reporting fails,
    /// this is not called and the next batch still includes those who left.
    pub fn reported(&self) {
        let mut table = self.lock();
        table.left_total = 0;
        table.events.retain(|_, w| {
            w.left.clear();
            w.left.shrink_to_fit();
            w.anonymous_peak = w.anonymous;
            !w.is_empty()
        });
        // A crowd of events that came and went leaves a table sized for it:
        // give the space back once it is mostly empty.
        if table.events.capacity() > 2 * table.events.len() + 64 {
            table.events.shrink_to_fit();
        }
    }

    fn leave(&self, event: &EventId, vid: &Option<ViewerId>) {
        let mut table = self.lock();
        let Table { events, left_total } = &mut *table;
        let Some(watching) = events.get_mut(event) else { return };
        match vid {
            Some(vid) => {
                if let Some(n) = watching.vids.get_mut(vid) {
                    *n -= 1;
                    if *n == 0 {
                        watching.vids.remove(vid);
                        if *left_total < MAX_LEFT && watching.left.insert(vid.clone()) {
                            *left_total += 1;
                        }
                    }
                }
            }
            None => watching.anonymous = watching.anonymous.saturating_sub(1),
        }
    }

    /// Entries held now (events with viewers or departures to report), and
    /// the table's capacity: for tests of the bound.
    pub fn footprint(&self) -> (usize, usize) {
        let table = self.lock();
        (table.events.len(), table.events.capacity())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open stream's presence; dropping it is the viewer leaving.
pub struct ViewerGuard {
    viewers: Viewers,
    event: EventId,
    vid: Option<ViewerId>,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.viewers.leave(&self.event, &self.vid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> EventId {
        EventId::parse(s).unwrap()
    }
    fn vid(s: &str) -> Option<ViewerId> {
        Some(ViewerId::parse(s).unwrap())
    }

    #[test]
    fn batches_cover_the_whole_interval() {
        let v = Viewers::default();
        let tab1 = v.join(ev("a"), vid("ann"));
        let _tab2 = v.join(ev("a"), vid("ann"));
        let brief = v.join(ev("a"), vid("bob"));
        let anon1 = v.join(ev("a"), None);
        let _anon2 = v.join(ev("a"), None);
        drop((brief, anon1, tab1));
        let batch = v.batch();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].vids, ["ann", "bob"], "bob came and went: still counted once");
        assert_eq!(batch[0].anonymous, 2, "peak anonymous streams in the interval");
        v.reported();
        let batch = v.batch();
        assert_eq!((batch[0].vids.clone(), batch[0].anonymous), (vec!["ann".to_owned()], 1));
    }

    #[test]
    fn nothing_is_left_behind_once_everyone_left_and_was_reported() {
        let v = Viewers::default();
        for i in 0..100 {
            drop(v.join(ev(&format!("e{i}")), vid(&format!("v{i}"))));
        }
        assert_eq!(v.batch().len(), 100);
        v.reported();
        assert!(v.batch().is_empty());
        assert!(v.lock().events.is_empty() && v.lock().left_total == 0);
    }

    #[test]
    fn a_crowd_that_left_gives_its_table_space_back() {
        let v = Viewers::default();
        let stable = v.join(ev("stable"), vid("s"));
        for i in 0..10_000 {
            drop(v.join(ev(&format!("e{i}")), vid(&format!("v{i}"))));
        }
        assert!(v.footprint().1 >= 10_000);
        v.reported();
        let (len, capacity) = v.footprint();
        assert_eq!(len, 1);
        assert!(capacity < 128, "capacity {capacity} after the crowd left");
        drop(stable);
    }

    #[test]
    fn departures_remembered_are_capped() {
        let v = Viewers::default();
        for i in 0..(MAX_LEFT + 50) {
            drop(v.join(ev("big"), vid(&format!("v{i}"))));
        }
        assert_eq!(v.lock().left_total, MAX_LEFT);
        assert_eq!(v.batch()[0].vids.len(), MAX_LEFT);
    }
}
