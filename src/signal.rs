//! Process signals that ask for a graceful shutdown. Both SIGTERM (what
//! orchestrators send) and SIGINT (Ctrl-C) drain; neither kills outright.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now and returns a future that
/// completes when either arrives.
///
/// Installing eagerly matters: a handler registered lazily, on the future's
/// first poll, leaves a window after start-up in which a signal still kills
/// the process with the default action. Call this before binding sockets.
/// Must be called inside a Tokio runtime.
pub fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down");
    }
}
