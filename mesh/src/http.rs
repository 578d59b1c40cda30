//! The node's HTTP endpoint: `/healthz`, Prometheus `/metrics`, and JSON
//! under `/v1/` (`node`, `connections`, `subscriptions`, and for a node in a
//! mesh `members`, `links`, `interest`). It runs on a
//! one-thread tokio runtime of its own, away from the data path.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::sync::{Semaphore, oneshot};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::cluster::view::ClusterView;
use crate::node_state::NodeState;
use crate::stats::{MetricsFormat, PatternSeries, Snapshot};

mod serve;

pub(crate) use serve::HttpLimits;
use serve::Peer;

/// Reports built from a snapshot of every connection and subscription at
/// once: each takes memory in proportion to the node's clients, so a flood
/// of requests waits its turn instead of multiplying it.
const SNAPSHOTS_AT_ONCE: usize = 2;

/// A running HTTP endpoint.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `address` and serves on a thread of its own.
    pub(crate) fn start(
        address: &str,
        limits: HttpLimits,
        state: Arc<NodeState>,
    ) -> io::Result<HttpServer> {
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
        let snapshots = Arc::new(Semaphore::new(SNAPSHOTS_AT_ONCE));
        let patterns: PatternSeriesState = Arc::new(Mutex::new(PatternSeries::new(
            state.config.limits.metrics_patterns_max,
        )));
        let about_the_node = Router::new()
            .route("/metrics", get(metrics).layer(Extension(patterns)))
            .route("/v1/node", get(node))
            .route("/varz", get(varz));
        // Who is connected and what each subscribes to: for the node's own
        // operators, who are on its host (or reach it through a tunnel or
        // `kubectl port-forward`, which arrive from loopback too).
        let about_the_clients = Router::new()
            .route("/v1/connections", get(connections))
            .route("/v1/subscriptions", get(subscriptions))
            .route("/connz", get(connz))
            .route("/subsz", get(subsz))
            .route_layer(middleware::from_fn(local_operators_only));
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/v1/members", get(members))
            .route("/v1/links", get(links))
            .route("/v1/interest", get(interest))
            .merge(
                about_the_node
                    .merge(about_the_clients)
                    .route_layer(GlobalConcurrencyLimitLayer::with_semaphore(snapshots)),
            )
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
                    serve::serve(listener, app, limits, stopped).await;
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

/// Serves the request only to a client on the node's own host.
async fn local_operators_only(
    Extension(Peer(peer)): Extension<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if is_local(peer) {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            "reports about the node's clients are served on its own host only\n",
        )
            .into_response()
    }
}

/// Whether `peer` is on this host: a loopback address, also as an
/// IPv4-mapped IPv6 one.
fn is_local(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

async fn cluster_view(state: &NodeState) -> Option<ClusterView> {
    match &state.cluster {
        Some(cluster) => cluster.view_async().await,
        None => None,
    }
}

/// The per-pattern series of `/metrics`, kept from scrape to scrape.
type PatternSeriesState = Arc<Mutex<PatternSeries>>;

/// In OpenMetrics for a scraper that asks for it (Prometheus does), else in
/// the classic text format.
async fn metrics(
    State(state): State<Arc<NodeState>>,
    Extension(patterns): Extension<PatternSeriesState>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = MetricsFormat::accepted(accept);
    let cluster = cluster_view(&state).await;
    let snapshot = Snapshot::take(&state, cluster);
    let text = {
        let mut patterns = patterns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        snapshot.prometheus(&mut patterns, format)
    };
    ([(header::CONTENT_TYPE, format.content_type())], text)
}

async fn node(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(serde_json::to_value(Snapshot::node_only(&state)).unwrap_or_default())
}

async fn connections(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(Snapshot::take(&state, None).connections())
}

async fn subscriptions(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    Json(Snapshot::take(&state, None).subscriptions())
}

/// One of nats-server's monitoring reports on the NATS listener, or 404 if
/// the node has none.
fn nats_report(
    state: &NodeState,
    report: impl FnOnce(&crate::nats::NatsServer) -> serde_json::Value,
) -> Response {
    match &state.nats {
        Some(nats) => Json(report(nats)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this node has no NATS listener (see --nats-listen)\n",
        )
            .into_response(),
    }
}

async fn varz(State(state): State<Arc<NodeState>>) -> Response {
    nats_report(&state, crate::nats::NatsServer::varz)
}

async fn connz(State(state): State<Arc<NodeState>>) -> Response {
    nats_report(&state, crate::nats::NatsServer::connz)
}

async fn subsz(State(state): State<Arc<NodeState>>) -> Response {
    nats_report(&state, crate::nats::NatsServer::subsz)
}

/// A part of the mesh's report, or 404 if the node is not in a mesh.
async fn mesh_part<T: serde::Serialize>(
    state: &NodeState,
    part: impl FnOnce(ClusterView) -> T,
) -> Response {
    match cluster_view(state).await {
        Some(view) => Json(part(view)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this node is not in a mesh (see --cluster-listen, --seed)\n",
        )
            .into_response(),
    }
}

async fn members(State(state): State<Arc<NodeState>>) -> Response {
    mesh_part(&state, |view| view.members).await
}

async fn links(State(state): State<Arc<NodeState>>) -> Response {
    mesh_part(&state, |view| view.links).await
}

async fn interest(State(state): State<Arc<NodeState>>) -> Response {
    mesh_part(&state, |view| {
        serde_json::json!({
            "node_id": view.node_id,
            "cluster": view.cluster,
            "interest": view.interest,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_are_local() {
        for (peer, local) in [
            ("127.0.0.1:1", true),
            ("127.8.9.10:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.5:1", false),
            ("[::ffff:10.0.0.5]:1", false),
            ("[2001:db8::1]:1", false),
            ("0.0.0.0:1", false),
        ] {
            assert_eq!(is_local(peer.parse().unwrap()), local, "{peer}");
        }
    }
}
