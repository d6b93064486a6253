//! `livepush.v1.LiveFeed`: turns a registry subscription into a gRPC server
//! stream. The stream owns the subscription, so a subscriber that goes away
//! (stream dropped by tonic) stops counting at once.

use crate::registry::{Registry, SubscribeError, Subscription};
use futures_util::{Stream, stream};
use livepush::{
    EventId,
    proto::{LiveUpdate, State, SubscribeRequest, live_feed_server::LiveFeed},
};
use std::pin::Pin;
use tokio_util::sync::CancellationToken;
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
        Ok(Response::new(Box::pin(updates(subscription, shutdown))))
    }
}

/// The latest value at once (when known), then every change; ends after an
/// ENDED update, or with UNAVAILABLE when the poller shuts down.
fn updates(
    subscription: Subscription,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<LiveUpdate, Status>> {
    struct St {
        sub: Subscription,
        shutdown: CancellationToken,
        first: bool,
        done: bool,
    }
    let st = St { sub: subscription, shutdown, first: true, done: false };
    stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !st.first {
                tokio::select! {
                    biased;
                    _ = st.shutdown.cancelled() => {
                        st.done = true;
                        return Some((Err(Status::unavailable("poller is shutting down")), st));
                    }
                    changed = st.sub.rx.changed() => {
                        if changed.is_err() {
                            // The poll task is gone without an ENDED update:
                            // only happens while shutting down.
                            st.done = true;
                            return Some((Err(Status::unavailable("poller is shutting down")), st));
                        }
                    }
                }
            }
            st.first = false;
            let latest = st.sub.rx.borrow_and_update().clone();
            if let Some(update) = latest {
                st.done = update.state == State::Ended as i32;
                return Some((Ok(LiveUpdate::clone(&update)), st));
            }
        }
    })
}
