//! `livepush.v1.Presence`: the gRPC face of the [`PresenceStore`]. Ids are
//! checked here before the store sees them; store errors become the status
//! codes the proto promises, and watch streams end with UNAVAILABLE on
//! shutdown like LiveFeed streams, so watchers move to another poller.

use crate::{
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
}

impl PresenceService {
    pub fn new(store: PresenceStore) -> Self {
        Self { store }
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
        let batch = request.into_inner();
        let result = tokio::task::spawn_blocking(move || store.report(batch))
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
        Ok(Response::new(self.store.get(&id)))
    }

    async fn watch_presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceStream>, Status> {
        let id = event_id(&request)?;
        let watch = self.store.watch(id).map_err(|e| match e {
            WatchError::ShuttingDown => Status::unavailable(e.to_string()),
            WatchError::TooManyWatched(_) => Status::resource_exhausted(e.to_string()),
        })?;
        let shutdown = self.store.shutdown_token().clone();
        // Presence now, then at every change; open until shutdown.
        let changes = watch_stream::latest(watch, |w| &mut w.rx, |p| Some((p.clone(), false)), shutdown);
        Ok(Response::new(Box::pin(changes)))
    }
}

fn event_id(request: &Request<PresenceRequest>) -> Result<EventId, Status> {
    EventId::parse(&request.get_ref().event_id).map_err(|e| Status::invalid_argument(e.to_string()))
}
