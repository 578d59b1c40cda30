//! Serving the HTTP endpoint's connections within limits.
//!
//! The endpoint is for operators and their tools, but whoever can reach its
//! port can open connections to it, so each one is bounded:
//!
//! - at most [`HttpLimits::connections_max`] at once; past that, a new
//!   connection is closed at once (and counted in the log), never queued;
//! - a request's head must arrive within [`HttpLimits::header_read_timeout`]
//!   and fit in [`HEAD_BYTES_MAX`] (a client sending a byte a second is cut);
//! - a connection lives at most [`HttpLimits::connection_lifetime`], then is
//!   asked to close after the request in flight (keep-alive clients such as
//!   Prometheus reconnect), and is dropped if that does not happen within
//!   [`HttpLimits::shutdown_grace`]; a client that never reads its response
//!   pins it for no longer;
//! - stopping the node stops accepting, asks every connection to close, and
//!   drops what is still open after the grace period: a half-sent request
//!   does not keep the node from exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

/// Largest request head (request line and headers) read from a client.
pub(crate) const HEAD_BYTES_MAX: usize = 16 << 10;

/// The bounds on the endpoint's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Connections served at once.
    pub connections_max: usize,
    /// Longest wait for a request's head, from its first byte or from the
    /// connection's start.
    pub header_read_timeout: Duration,
    /// Longest life of one connection.
    pub connection_lifetime: Duration,
    /// How long a connection asked to close (lifetime over, node stopping)
    /// may take to finish the request in flight.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections_max: 256,
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// The address of the client a request came from, for handlers that serve
/// some reports to local operators only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// Serves `app` on `listener` within `limits` until `stop` fires, then
/// closes every connection within the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (EMFILE, ENFILE) or a connection reset
                // before it was accepted: back off briefly rather than spin,
                // since the listener stays readable.
                tracing::warn!(%error, "HTTP endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.note(peer, limits.connections_max);
            continue;
        };
        let service = TowerToHyperService::new(app.clone().layer(Extension(Peer(peer))));
        let mut closing = closing_seen.clone();
        connections.spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(HEAD_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep(limits.connection_lifetime) => {}
                _ = closing.wait_for(|closing| *closing) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.shutdown_grace, connection).await;
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace * 2, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "HTTP connections still open at shutdown were dropped"
        );
    }
    connections.shutdown().await;
}

/// Says that connections are being refused at most once a minute.
#[derive(Default)]
struct Refusals {
    last_logged: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn note(&mut self, peer: SocketAddr, connections_max: usize) {
        self.since += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
        {
            tracing::warn!(
                %peer,
                refused = self.since,
                "HTTP endpoint at its limit of {connections_max} connections: refusing new ones"
            );
            self.last_logged = Some(now);
            self.since = 0;
        }
    }
}
