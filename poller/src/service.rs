//! `livepush.v1.LiveFeed`: turns a registry subscription into a gRPC server
//! stream. The stream owns the subscription, so a subscriber that goes away
//! (stream dropped by tonic) stops counting at once.

use crate::{
    registry::{Registry, SubscribeError},
    watch_stream,
};
use futures_util::Stream;
use livepush::{
    EventId,
    proto::{LiveUpdate, State, SubscribeRequest, live_feed_server::LiveFeed},
};
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub struct LiveFeedService {
    registry: Registry,
}

impl LiveFeedService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<LiveUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl LiveFeed for LiveFeedService {
    type SubscribeStream = UpdateStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<UpdateStream>, Status> {
        let id = EventId::parse(&request.get_ref().event_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let subscription = self.registry.subscribe(id).map_err(|e| match e {
            SubscribeError::ShuttingDown => Status::unavailable(e.to_string()),
            SubscribeError::TooManyEvents(_) => Status::resource_exhausted(e.to_string()),
        })?;
        let shutdown = self.registry.shutdown_token().clone();
        // The latest value at once (when known), then every change; the
        // stream ends after an ENDED update.
        let updates = watch_stream::latest(
            subscription,
            |s| &mut s.rx,
            |latest| latest.as_ref().map(|u| (LiveUpdate::clone(u), u.state == State::Ended as i32)),
            shutdown,
        );
        Ok(Response::new(Box::pin(updates)))
    }
}
