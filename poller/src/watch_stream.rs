//! Serving a `watch` channel as a gRPC server stream: the current value at
//! once, then each change, ending with UNAVAILABLE when the poller shuts down
//! so subscribers move elsewhere. Shared by `LiveFeed/Subscribe` and
//! `Presence/WatchPresence`, which differ only in what they send and when a
//! stream is over.

use futures_util::{Stream, stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Streams `holder`'s channel (reached through `rx`): for each value
/// (the current one first), `item` returns what to send, if anything, and
/// whether it is the last. `holder` lives as long as the stream, so guards in
/// it are released when the subscriber goes away.
pub(crate) fn latest<H, T, U>(
    holder: H,
    rx: fn(&mut H) -> &mut watch::Receiver<T>,
    item: fn(&T) -> Option<(U, bool)>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<U, Status>>
where
    H: Send + 'static,
    T: Send + Sync + 'static,
    U: Send + 'static,
{
    struct St<H> {
        holder: H,
        shutdown: CancellationToken,
        first: bool,
        done: bool,
    }
    let st = St { holder, shutdown, first: true, done: false };
    stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !std::mem::take(&mut st.first) {
                let open = tokio::select! {
                    biased;
                    _ = st.shutdown.cancelled() => false,
                    // Closed: the sender is gone without a last item, which
                    // only happens while shutting down.
                    changed = rx(&mut st.holder).changed() => changed.is_ok(),
                };
                if !open {
                    st.done = true;
                    return Some((Err(Status::unavailable("poller is shutting down")), st));
                }
            }
            let next = item(&rx(&mut st.holder).borrow_and_update());
            if let Some((value, last)) = next {
                st.done = last;
                return Some((Ok(value), st));
            }
        }
    })
}
