//! A socket wrapper that fails writes blocked for longer than a timeout.
//!
//! A browser that stops reading (a frozen tab, a dead phone behind a NAT that
//! still ACKs nothing) fills its TCP window; hyper's write then stays pending
//! forever and the connection would hold its file descriptor and buffers for
//! good. With this wrapper the stalled write errors after `--write-timeout`,
//! hyper closes the connection and the stream's resources are released. The
//! timer exists only while a write is blocked, so healthy connections pay
//! nothing for it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first returns `Pending`, cleared on progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The stall has been counted as a dropped slow consumer (once per
    /// connection, however often the failed write is retried).
    counted: bool,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self { inner, timeout, stalled: None, counted: false }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Turns a `Pending` write into an error once the stall lasts too long.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                if !std::mem::replace(&mut self.counted, true) {
                    livepush::metrics::edge().slow_consumers_dropped.increment(1);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write stalled past --write-timeout",
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// `livepush_edge_slow_consumers_dropped_total` in this process.
    fn dropped() -> u64 {
        let text = livepush::metrics::render();
        let line = text.lines().find(|l| l.starts_with("livepush_edge_slow_consumers_dropped_total "));
        line.map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_fails_the_write() {
        // The only test in this crate that stalls a write past its timeout,
        // so the process-wide counter moves by exactly what it does.
        let before = dropped();
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_millis(50));
        let err = w.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Retried writes keep failing, but the connection is counted once.
        assert_eq!(w.write_all(&[0; 1024]).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(dropped(), before + 1);
    }

    #[tokio::test]
    async fn a_slow_but_moving_reader_is_fine() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut total = 0;
            // 64 reads 10 ms apart: far longer in total than the timeout,
            // but no single stall reaches it.
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                total += b.read(&mut buf).await.unwrap();
            }
        });
        let mut w = WriteTimeout::new(a, Duration::from_millis(100));
        w.write_all(&[0; 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
