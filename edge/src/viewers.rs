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
    collections::HashMap,
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
    /// Numbers the batches: a departure is stamped with the batch it
    /// belongs to, so one that happens while a batch is in flight is kept
    /// for the next batch when that one is confirmed.
    epoch: u64,
}

#[derive(Default)]
struct Watching {
    /// Open streams per viewer id (two tabs: 2).
    vids: HashMap<ViewerId, u32>,
    /// Viewer ids whose last stream closed since the last report, with the
    /// epoch of the batch that first reports them.
    left: HashMap<ViewerId, u64>,
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
    /// it, and its epoch. Call [`Viewers::reported`] with the epoch once the
    /// poller has it.
    pub fn batch(&self) -> (Vec<EventViewers>, u64) {
        let mut table = self.lock();
        let epoch = table.epoch;
        table.epoch += 1;
        let events = table
            .events
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(event, w)| {
                let mut vids: Vec<String> =
                    w.vids.keys().chain(w.left.keys()).map(|v| v.as_str().to_owned()).collect();
                vids.sort_unstable();
                vids.dedup();
                EventViewers { event_id: event.to_string(), vids, anonymous: w.anonymous_peak }
            })
            .collect();
        (events, epoch)
    }

    /// The poller has batch `epoch`: forget the departures it reported (one
    /// that happened while it was in flight stays for the next batch). If
    /// reporting fails, this is not called and the next batch still
    /// includes those who left.
    pub fn reported(&self, epoch: u64) {
        let mut table = self.lock();
        let Table { events, left_total, .. } = &mut *table;
        *left_total = 0;
        events.retain(|_, w| {
            w.left.retain(|_, e| *e > epoch);
            *left_total += w.left.len();
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
        let Table { events, left_total, epoch } = &mut *table;
        let Some(watching) = events.get_mut(event) else { return };
        match vid {
            Some(vid) => {
                if let Some(n) = watching.vids.get_mut(vid) {
                    *n -= 1;
                    if *n == 0 {
                        watching.vids.remove(vid);
                        if *left_total < MAX_LEFT && watching.left.insert(vid.clone(), *epoch).is_none() {
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
        livepush::sync::lock(&self.inner, "viewers")
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
        let (batch, epoch) = v.batch();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].vids, ["ann", "bob"], "bob came and went: still counted once");
        assert_eq!(batch[0].anonymous, 2, "peak anonymous streams in the interval");
        v.reported(epoch);
        let (batch, _) = v.batch();
        assert_eq!((batch[0].vids.clone(), batch[0].anonymous), (vec!["ann".to_owned()], 1));
    }

    #[test]
    fn a_departure_while_a_batch_is_in_flight_is_in_the_next_batch() {
        let v = Viewers::default();
        let carol = v.join(ev("a"), vid("carol"));
        let _dan = v.join(ev("a"), vid("dan"));
        let (batch, epoch) = v.batch();
        assert_eq!(batch[0].vids, ["carol", "dan"]);
        // Carol leaves after the batch was taken, before the poller took it.
        drop(carol);
        v.reported(epoch);
        let (batch, epoch) = v.batch();
        assert_eq!(batch[0].vids, ["carol", "dan"], "carol watched during this interval too");
        v.reported(epoch);
        let (batch, _) = v.batch();
        assert_eq!(batch[0].vids, ["dan"], "then she is gone");
    }

    #[test]
    fn nothing_is_left_behind_once_everyone_left_and_was_reported() {
        let v = Viewers::default();
        for i in 0..100 {
            drop(v.join(ev(&format!("e{i}")), vid(&format!("v{i}"))));
        }
        let (batch, epoch) = v.batch();
        assert_eq!(batch.len(), 100);
        v.reported(epoch);
        assert!(v.batch().0.is_empty());
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
        v.reported(v.batch().1);
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
        assert_eq!(v.batch().0[0].vids.len(), MAX_LEFT);
    }
}
