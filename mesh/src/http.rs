//! The node's HTTP endpoint: `/healthz`, Prometheus `/metrics`, and JSON
//! under `/v1/` (`node`, `connections`, `subscriptions`). It runs on a
//! one-thread tokio runtime of its own, away from the data path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::sync::oneshot;

use crate::node::NodeState;
use crate::stats::Snapshot;

/// A running HTTP endpoint.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `address` and serves on a thread of its own.
    pub(crate) fn start(address: &str, state: Arc<NodeState>) -> io::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(address).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot serve HTTP on {address}: {error}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/v1/node", get(node))
            .route("/v1/connections", get(connections))
            .route("/v1/subscriptions", get(subscriptions))
            .with_state(state);
        let thread = std::thread::Builder::new()
            .name("starling-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "HTTP endpoint cannot start");
                            return;
                        }
                    };
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(error) = served {
                        tracing::error!(%error, "HTTP endpoint stopped");
                    }
                });
            })?;
        Ok(HttpServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let text = Snapshot::take(&state).prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn node(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(serde_json::to_value(Snapshot::take(&state).node()).unwrap_or_default())
}

async fn connections(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(Snapshot::take(&state).connections())
}

async fn subscriptions(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(Snapshot::take(&state).subscriptions())
}
