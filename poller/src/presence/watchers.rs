//! `WatchPresence`: one `watch` channel per watched event, created with its
//! first watcher and removed with its last.

use super::*;

/// One watcher of an event's presence. Dropping it (the gRPC stream ends or
/// the client goes away) releases the watch; the event's channel goes with
/// its last watcher.
pub struct PresenceWatch {
    pub rx: watch::Receiver<EventPresence>,
    pub(super) _guard: WatchGuard,
}

impl std::fmt::Debug for PresenceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWatch").field("event_id", &self._guard.id).finish_non_exhaustive()
    }
}

pub(super) struct WatchGuard {
    pub(super) store: PresenceStore,
    pub(super) id: EventId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.store.unwatch(&self.id);
    }
}
