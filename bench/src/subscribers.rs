//! Many gRPC `Subscribe` streams to a poller, read continuously, as an edge
//! would: each stream is a task that counts what it receives. The counters
//! are all a scenario needs (warm-up is "every stream has its first value",
//! throughput is updates per second), so nothing per update is stored.
//!
//! Subscribe calls are paced: at most `pending_per_channel` calls per
//! connection wait for their response headers at once. Without that, a burst
//! of thousands of `Subscribe` requests on one HTTP/2 connection leaves more
//! small unread request DATA frames at the server than h2 (0.4.20) accepts, and
//! the server closes the connection with GOAWAY `ENHANCE_YOUR_CALM`
//! ("too_many_data_frames"). See BENCHMARKS.md.
//!
//! Every task stops on its own at a hard deadline, on [`Fleet::stop`], or when
//! its stream ends or fails.

use livepush::proto::{SubscribeRequest, live_feed_client::LiveFeedClient};
use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering::Relaxed},
};
use std::time::Duration;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Default)]
struct Counters {
    /// Updates received across all streams.
    updates: AtomicU64,
    /// Streams that have received at least one update.
    started: AtomicU64,
    /// Streams that ended (the server closed them cleanly).
    ended: AtomicU64,
    /// Streams that failed (subscribe refused or stream error).
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

pub struct Fleet {
    counters: Arc<Counters>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Subscribes to every id in `ids`, `per_channel` streams on each channel
    /// in turn (so `channels.len() * per_channel` must cover `ids`; extra ids
    /// go to the last channel), with at most `pending_per_channel` subscribe
    /// calls awaiting their answer per channel. Every task stops by itself at
    /// `deadline`.
    pub fn start(
        channels: &[Channel],
        ids: Vec<String>,
        per_channel: usize,
        pending_per_channel: usize,
        deadline: Instant,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let pacers: Vec<_> =
            channels.iter().map(|_| Arc::new(Semaphore::new(pending_per_channel.max(1)))).collect();
        for (i, id) in ids.into_iter().enumerate() {
            let c = (i / per_channel.max(1)).min(channels.len().saturating_sub(1));
            let (Some(channel), Some(pacer)) = (channels.get(c), pacers.get(c)) else { break };
            let client = LiveFeedClient::new(channel.clone());
            let task = read_stream(client, id, pacer.clone(), counters.clone(), stop.clone(), deadline);
            tasks.spawn(task);
        }
        Self { counters, stop, tasks }
    }

    pub fn updates(&self) -> u64 {
        self.counters.updates.load(Relaxed)
    }

    /// Streams that have received their first update.
    pub fn started(&self) -> u64 {
        self.counters.started.load(Relaxed)
    }

    /// Streams that ended or failed.
    pub fn finished(&self) -> (u64, u64) {
        (self.counters.ended.load(Relaxed), self.counters.failed.load(Relaxed))
    }

    pub fn first_error(&self) -> Option<String> {
        self.counters.first_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Closes every stream; returns how many tasks had not finished within
    /// `grace` (they are aborted).
    pub async fn stop(mut self, grace: Duration) -> usize {
        self.stop.cancel();
        let deadline = Instant::now() + grace;
        while tokio::time::timeout_at(deadline, self.tasks.join_next()).await.is_ok_and(|r| r.is_some()) {}
        let left = self.tasks.len();
        self.tasks.shutdown().await;
        left
    }
}

async fn read_stream(
    mut client: LiveFeedClient<Channel>,
    event_id: String,
    pacer: Arc<Semaphore>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    deadline: Instant,
) {
    let fail = |what: String| {
        counters.failed.fetch_add(1, Relaxed);
        counters.first_error.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(what);
    };
    let subscribe = async {
        // The permit is held until the response headers arrive: by then the
        // server has read the request.
        let _permit = pacer.acquire().await;
        client.subscribe(SubscribeRequest { event_id: event_id.clone() }).await
    };
    let subscribed = tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep_until(deadline) => return,
        r = subscribe => r,
    };
    let mut stream = match subscribed {
        Ok(response) => response.into_inner(),
        Err(status) => return fail(format!("subscribe {event_id}: {status}")),
    };
    let mut first = true;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            m = stream.message() => m,
        };
        match message {
            Ok(Some(_update)) => {
                counters.updates.fetch_add(1, Relaxed);
                if std::mem::take(&mut first) {
                    counters.started.fetch_add(1, Relaxed);
                }
            }
            Ok(None) => {
                counters.ended.fetch_add(1, Relaxed);
                return;
            }
            Err(status) => return fail(format!("stream {event_id}: {status}")),
        }
    }
}
