//! The body of one browser's SSE response.
//!
//! It holds no queue: each poll of the stream writes the newest frame the
//! browser has not had yet (a `watch` receiver), a keep-alive comment when idle,
//! or ends the stream. Frames are shared `Bytes`, so fan-out costs a reference
//! count per browser, not a copy.

use crate::{
    feeds::{Frame, Watch},
    sse,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, stream};
use livepush::proto::State;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What the browser already has, from its `Last-Event-ID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    pub last_event_id: Option<u64>,
}

pub struct Options {
    pub retry: Duration,
    pub keepalive: Duration,
    pub shutdown: CancellationToken,
}

struct Conn {
    watch: Watch,
    /// `seq` of the last frame written; only newer frames are written, so no
    /// `seq` reaches a browser twice, even across upstream resubscriptions.
    last_sent: u64,
    keepalive: Interval,
    shutdown: CancellationToken,
    opening: Option<Bytes>,
    done: bool,
}

/// The SSE body for one browser: `retry:` and the latest value at once (so
/// `onopen` fires without waiting for a change), then every newer frame.
pub fn body(
    mut watch: Watch,
    resume: Resume,
    opts: Options,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let mut opening = BytesMut::from(&sse::retry(opts.retry.as_millis() as u64)[..]);
    let latest = watch.rx.borrow_and_update().clone();
    let mut last_sent = 0;
    let mut done = false;
    if let Some(frame) = latest {
        // The same `seq` as the browser's Last-Event-ID: it has this value.
        if resume.last_event_id != Some(frame.seq) {
            opening.extend_from_slice(&frame.bytes);
        }
        last_sent = frame.seq;
        done = frame.state == State::Ended;
    }
    let mut keepalive = tokio::time::interval_at(Instant::now() + opts.keepalive, opts.keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let conn =
        Conn { watch, last_sent, keepalive, shutdown: opts.shutdown, opening: Some(opening.freeze()), done };

    stream::unfold(conn, |mut c| async move {
        if let Some(opening) = c.opening.take() {
            return Some((Ok(opening), c));
        }
        if c.done {
            return None;
        }
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return None,
                _ = c.keepalive.tick() => return Some((Ok(sse::KEEPALIVE), c)),
                changed = c.watch.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let latest: Option<Arc<Frame>> = c.watch.rx.borrow_and_update().clone();
                    if let Some(frame) = latest.filter(|f| f.seq > c.last_sent) {
                        c.last_sent = frame.seq;
                        c.done = frame.state == State::Ended;
                        c.keepalive.reset();
                        return Some((Ok(frame.bytes.clone()), c));
                    }
                }
            }
        }
    })
}
