//! `livepush.v1.Presence`: the gRPC face of the [`PresenceStore`]. Ids are
//! checked here before the store sees them; store errors become the status
//! codes the proto promises, and watch streams end with UNAVAILABLE on
//! shutdown like LiveFeed streams, so watchers move to another poller.
//!
//! With `--clients-file`, a batch is stored under its client's name (see
//! [`crate::presence`]), `GetPresence` answers at most
//! `--max-presence-vids` viewer ids, and open watches count against
//! `--max-watches-per-client`.

use crate::{
    client_streams::{ClientKey, ClientStreams},
    clients::Caller,
    presence::{BatchError, PresenceStore, WatchError},
    watch_stream,
};
use futures_util::Stream;
use livepush::{
    EventId,
    proto::{EventPresence, HeartbeatAck, HeartbeatBatch, PresenceRequest, presence_server::Presence},
};
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub struct PresenceService {
    store: PresenceStore,
    max_vids: usize,
    watches: ClientStreams,
}

impl PresenceService {
    /// Serves `store`: `GetPresence` answers with at most `max_vids` viewer
    /// ids, and `watches` caps open `WatchPresence` streams per client.
    pub fn new(store: PresenceStore, max_vids: usize, watches: ClientStreams) -> Self {
        Self { store, max_vids, watches }
    }
}

type PresenceStream = Pin<Box<dyn Stream<Item = Result<EventPresence, Status>> + Send>>;

#[tonic::async_trait]
impl Presence for PresenceService {
    type WatchPresenceStream = PresenceStream;

    async fn report_heartbeats(
        &self,
        request: Request<HeartbeatBatch>,
    ) -> Result<Response<HeartbeatAck>, Status> {
        // A batch at the limits (a million ids) takes a few hundred
        // milliseconds of CPU to check and merge: do it on the blocking pool
        // so it never stalls the runtime's workers (poll loops, streams).
        let store = self.store.clone();
        // Without a clients file there is no caller, and every batch has the
        // same owner, as before tokens.
        let owner = request.extensions().get::<Caller>().map(|c| c.name.clone());
        let batch = request.into_inner();
        let result = tokio::task::spawn_blocking(move || store.report_for(owner, batch))
            .await
            .map_err(|_| Status::internal("handling the batch failed"))?;
        let batches = &livepush::metrics::poller().heartbeat_batches;
        let counter = match &result {
            Ok(_) => &batches.ok,
            Err(BatchError::Invalid(_)) => &batches.invalid,
            Err(BatchError::TooManyEdges(_)) => &batches.too_many_edges,
            Err(BatchError::Full(_)) => &batches.full,
            Err(BatchError::ShuttingDown) => &batches.shutting_down,
        };
        counter.increment(1);
        let ack = result.map_err(|e| match e {
            BatchError::Invalid(_) => Status::invalid_argument(e.to_string()),
            BatchError::TooManyEdges(_) | BatchError::Full(_) => Status::resource_exhausted(e.to_string()),
            BatchError::ShuttingDown => Status::unavailable(e.to_string()),
        })?;
        Ok(Response::new(ack))
    }

    async fn get_presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<EventPresence>, Status> {
        let id = event_id(&request)?;
        // At most --max-presence-vids ids are copied and sorted; off the
        // runtime's workers all the same, like batches.
        let (store, max) = (self.store.clone(), self.max_vids);
        let presence = tokio::task::spawn_blocking(move || store.get_at_most(&id, max))
            .await
            .map_err(|_| Status::internal("reading presence failed"))?;
        Ok(Response::new(presence))
    }

    // Begins like `get_presence` above on purpose: the signature tonic
    // gives, then the same id check.
    async fn watch_presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceStream>, Status> {
        let id = event_id(&request)?;
        let slot = self.watches.open(ClientKey::of(&request)).map_err(|status| *status)?;
        // Errors mapped like `subscribe`'s in service.rs on purpose: another
        // error type, the same status codes.
        let watch = self.store.watch(id).map_err(|e| match e {
            WatchError::ShuttingDown => Status::unavailable(e.to_string()),
            WatchError::TooManyWatched(_) => Status::resource_exhausted(e.to_string()),
        })?;
        let shutdown = self.store.shutdown_token().clone();
        // Presence now, then at every change; open until shutdown.
        let changes =
            watch_stream::latest((watch, slot), |(w, _)| &mut w.rx, |p| Some((p.clone(), false)), shutdown);
        Ok(Response::new(Box::pin(changes)))
    }
}

fn event_id(request: &Request<PresenceRequest>) -> Result<EventId, Status> {
    EventId::parse(&request.get_ref().event_id).map_err(|e| Status::invalid_argument(e.to_string()))
}
