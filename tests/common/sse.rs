//! A browser stand-in: reads an SSE stream over HTTP with reqwest and parses
//! it with `eventsource-stream`, an SSE implementation independent of ours.

use crate::PATIENCE;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use std::pin::Pin;

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

pub struct SseClient {
    pub status: u16,
    pub headers: HeaderMap,
    events: Events,
}

impl SseClient {
    /// Opens `url` like `EventSource` does.
    pub async fn open(url: &str) -> Self {
        Self::open_with(url, &[]).await
    }

    pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req =
            crate::http().get(url).header("accept", "text/event-stream").header("cache-control", "no-cache");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("connect");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let events = Box::pin(resp.bytes_stream().eventsource());
        Self { status, headers, events }
    }

    /// The next event (named or not); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("SSE stream error: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no SSE event within {PATIENCE:?}"),
        }
    }

    /// The next event however long it takes; `None` when the stream ended
    /// or failed. For readers that run beside the test, which sets its own
    /// deadlines and checks whether streams ended.
    pub async fn next_patiently(&mut self) -> Option<Event> {
        self.events.next().await?.ok()
    }

    /// The next unnamed event, i.e. what `EventSource.onmessage` would get.
    pub async fn next_message(&mut self) -> Event {
        loop {
            let event = self.next().await.expect("stream ended while waiting for a message");
            if event.event == "message" {
                return event;
            }
        }
    }
}
