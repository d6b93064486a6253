//! One clock for every browser stream: keep-alives, watch-token deadlines
//! and the drain.
//!
//! Each stream used to own a timer, re-armed at every frame it wrote: at
//! 15,000 browsers of one event, one update meant 15,000 timer-wheel resets,
//! and every stream held a boxed `Sleep` and its own wait on the shutdown
//! token. Now one task beats every half `--keepalive` on a `watch` channel
//! that every stream follows; a stream notes the beat at which it last
//! wrote, and sends a keep-alive comment on the second beat with nothing
//! written (so it is never silent longer than `--keepalive`), closes with
//! `retry:` on the first beat past its token's deadline (so at most half a
//! keep-alive late), and on the drain's beat closes with a `retry:` spread
//! over `--drain-spread`.

use rand::Rng;
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

/// One beat of the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Beat {
    n: u64,
    draining: bool,
}

/// The clock's face; clones share it.
#[derive(Clone)]
pub struct Pulse {
    beats: watch::Receiver<Beat>,
    settings: Arc<Settings>,
}

struct Settings {
    retry: Duration,
    drain_spread: Duration,
}

/// What a beat asks of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing written for a keep-alive interval: send a comment.
    KeepAlive,
    /// The stream's time is over (token deadline): send `retry:` this many
    /// milliseconds, then end.
    Deadline(u64),
    /// The edge drains: send `retry:` this many milliseconds (spread), then
    /// end.
    Drain(u64),
}

impl Pulse {
    /// Beats every half `keepalive` until `stop`, then once more with the
    /// drain. `retry` is what streams past their deadline are told;
    /// `drain_spread` bounds the reconnect delays of the drain.
    pub fn start(
        keepalive: Duration,
        retry: Duration,
        drain_spread: Duration,
        stop: CancellationToken,
    ) -> Self {
        let (tx, beats) = watch::channel(Beat::default());
        let period = (keepalive / 2).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => tx.send_modify(|b| b.n += 1),
                }
            }
            // Streams that see the channel closed before this beat drain
            // all the same.
            tx.send_modify(|b| b.draining = true);
        });
        Self { beats, settings: Arc::new(Settings { retry, drain_spread }) }
    }

    /// The clock as one stream sees it; `deadline` (a watch token's expiry
    /// plus `--auth-grace`) ends the stream.
    pub fn follow(&self, deadline: Option<Instant>) -> Follower {
        let mut beats = self.beats.clone();
        let written = beats.borrow_and_update().n;
        Follower { beats, settings: self.settings.clone(), written, deadline }
    }
}

/// One stream's view of the clock: the beat of its last write.
pub struct Follower {
    beats: watch::Receiver<Beat>,
    settings: Arc<Settings>,
    written: u64,
    deadline: Option<Instant>,
}

impl Follower {
    /// The stream wrote something: no keep-alive is due for a while.
    pub fn wrote(&mut self) {
        self.written = self.beats.borrow().n;
    }

    /// The `retry:` delay for a browser whose stream ends for its deadline.
    pub fn retry_ms(&self) -> u64 {
        self.settings.retry.as_millis() as u64
    }

    /// Waits for the next beat that asks something of this stream.
    /// Cancel-safe: nothing is lost if it is dropped before it returns.
    pub async fn due(&mut self) -> Due {
        loop {
            let draining = match self.beats.changed().await {
                Ok(()) => self.beats.borrow_and_update().draining,
                // The clock is gone: the edge is stopping.
                Err(_) => true,
            };
            if draining {
                let spread = self.settings.drain_spread.as_millis() as u64;
                return Due::Drain(rand::rng().random_range(0..=spread));
            }
            if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Due::Deadline(self.retry_ms());
            }
            let n = self.beats.borrow().n;
            if n >= self.written + 2 {
                self.written = n;
                return Due::KeepAlive;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keepalives_come_after_a_quiet_keepalive_interval() {
        let stop = CancellationToken::new();
        let pulse =
            Pulse::start(Duration::from_secs(10), Duration::from_secs(3), Duration::ZERO, stop.clone());
        let mut f = pulse.follow(None);
        let start = Instant::now();
        assert_eq!(f.due().await, Due::KeepAlive);
        assert_eq!(start.elapsed(), Duration::from_secs(10), "two beats of 5 s");
        // A write just before a beat: the next keep-alive two beats later.
        tokio::time::sleep(Duration::from_secs(4)).await;
        f.wrote();
        assert_eq!(f.due().await, Due::KeepAlive);
        assert_eq!(start.elapsed(), Duration::from_secs(20), "never silent for more than 10 s");
        stop.cancel();
        assert_eq!(f.due().await, Due::Drain(0));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_end_streams_at_the_next_beat() {
        let stop = CancellationToken::new();
        let pulse =
            Pulse::start(Duration::from_secs(10), Duration::from_secs(3), Duration::ZERO, stop.clone());
        let mut f = pulse.follow(Some(Instant::now() + Duration::from_secs(12)));
        assert_eq!(f.due().await, Due::KeepAlive);
        let at = Instant::now();
        assert_eq!(f.due().await, Due::Deadline(3000));
        assert_eq!(at.elapsed(), Duration::from_secs(5), "the first beat past 12 s is at 15 s");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_spreads_reconnects() {
        let stop = CancellationToken::new();
        let pulse = Pulse::start(
            Duration::from_secs(10),
            Duration::from_secs(3),
            Duration::from_secs(5),
            stop.clone(),
        );
        let mut followers: Vec<Follower> = (0..200).map(|_| pulse.follow(None)).collect();
        stop.cancel();
        let mut delays = Vec::new();
        for f in &mut followers {
            match f.due().await {
                Due::Drain(ms) => delays.push(ms),
                other => panic!("{other:?}"),
            }
        }
        assert!(delays.iter().all(|&d| d <= 5000));
        assert!(delays.iter().any(|&d| d < 2500) && delays.iter().any(|&d| d >= 2500), "spread");
    }
}
