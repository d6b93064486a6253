//! `livepush.v1.LiveFeed`: turns a registry subscription into a gRPC server
//! stream. The stream owns the subscription and its places in the
//! per-connection and per-client caps, so a subscriber that goes away
//! (stream dropped by tonic) stops counting at once.

use crate::{
    client_streams::{ClientKey, ClientStreams},
    connection_streams::{ConnectionStreams, MAX_STREAMS_KEY},
    publish::{self, Publisher},
    registry::{Registry, SubscribeError},
    watch_stream,
};
use futures_util::Stream;
use livepush::{
    EventId,
    proto::{LiveUpdate, PublishReply, PublishRequest, State, SubscribeRequest, live_feed_server::LiveFeed},
};
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub struct LiveFeedService {
    registry: Registry,
    streams: ConnectionStreams,
    per_client: ClientStreams,
    publisher: Publisher,
}

impl LiveFeedService {
    /// Serves `registry`, at most `max_streams` subscriptions per client
    /// connection (see [`ConnectionStreams`]) and `per_client`'s per client;
    /// `Publish` goes to `publisher`.
    pub fn new(
        registry: Registry,
        max_streams: u32,
        per_client: ClientStreams,
        publisher: Publisher,
    ) -> Self {
        Self { registry, streams: ConnectionStreams::new(max_streams), per_client, publisher }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<LiveUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl LiveFeed for LiveFeedService {
    type SubscribeStream = UpdateStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<UpdateStream>, Status> {
        let id = EventId::parse(&request.get_ref().event_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let slot = self.streams.open(request.remote_addr()).map_err(|status| *status)?;
        let client_slot = self.per_client.open(ClientKey::of(&request)).map_err(|status| *status)?;
        let subscription = self.registry.subscribe(id).map_err(|e| match e {
            SubscribeError::ShuttingDown => Status::unavailable(e.to_string()),
            SubscribeError::TooManyEvents(_) => Status::resource_exhausted(e.to_string()),
        })?;
        let shutdown = self.registry.shutdown_token().clone();
        // The latest value at once (when known), then every change; the
        // stream ends after an ENDED update.
        let updates = watch_stream::latest(
            (subscription, slot, client_slot),
            |(s, _, _)| &mut s.rx,
            |latest| latest.as_ref().map(|u| (LiveUpdate::clone(u), u.state == State::Ended as i32)),
            shutdown,
        );
        let mut response = Response::new(Box::pin(updates) as UpdateStream);
        response.metadata_mut().insert(MAX_STREAMS_KEY, self.streams.limit_metadata());
        Ok(response)
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        self.publisher.authorize(authorization).map_err(publish::status)?;
        let authorization = authorization.expect("authorized").to_owned();
        let PublishRequest { event_id, data } = request.into_inner();
        let accepted = self
            .publisher
            .hint(&event_id, data.as_bytes(), false, &authorization)
            .await
            .map_err(publish::status)?;
        Ok(Response::new(PublishReply { outcome: accepted.outcome.into(), peers: accepted.peers }))
    }
}
