//! The Prometheus listener: `GET /metrics`, `/healthz` and `/readyz`.
//!
//! This module owns the `[metrics]` listener and the `defect_agent_` prefix of every metric
//! name. It owns no metric: each component registers its own families and collectors in the
//! [`Registry`] made by [`registry`] (the pipeline its frame counts and stage times, the MQTT
//! session its latencies, the result log, the model slot, health, monitoring, capture and the
//! canary what they keep), and the daemon hands that registry to [`bind`]. `/healthz` says the
//! process answers; `/readyz` is 200 only while the readiness it is given holds (the
//! heartbeat's `ready`). The text formats and their negotiation come from
//! `defect_shared::exposition`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use defect_shared::exposition::Format;
use prometheus_client::registry::Registry;

/// Prefix of every metric name.
const PREFIX: &str = "defect_agent";

/// An empty registry for the agent's metrics: every name registered in it is served with the
/// `defect_agent_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {address}: {source}")]
pub struct MetricsError {
    /// The configured address.
    pub address: String,
    /// The socket error.
    pub source: std::io::Error,
}

/// Whether the agent is ready, asked on every `/readyz`.
type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// Binds the metrics listener; the returned router serves `registry` on `/metrics`, and
/// `/healthz` and `/readyz` (200 while `ready` says so, 503 otherwise).
pub async fn bind(
    listen: &str,
    registry: Registry,
    ready: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<(SocketAddr, tokio::net::TcpListener, Router), MetricsError> {
    let error = |source| MetricsError {
        address: listen.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(error)?;
    let address = listener.local_addr().map_err(error)?;
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry: Arc::new(registry),
            ready: Arc::new(ready),
        });
    tracing::info!(%address, "metrics listening");
    Ok((address, listener, router))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "metrics server failed");
    }
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match defect_shared::exposition::render(&state.registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics scrape failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if (state.ready)() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;

    use super::*;

    /// GETs `path` from `address`: the status, the content type and the body.
    async fn get(address: SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
        let response = reqwest::Client::new()
            .get(format!("http://{address}{path}"))
            .header(header::ACCEPT, accept)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn the_listener_serves_what_was_registered_and_readiness_as_it_is_now() {
        let mut registry = registry();
        let frames = Counter::<u64>::default();
        frames.inc();
        registry.register("frames", "Frames", frames);
        let ready = Arc::new(AtomicBool::new(false));
        let readiness = Arc::clone(&ready);
        let (address, listener, router) = bind("127.0.0.1:0", registry, move || {
            readiness.load(Ordering::Relaxed)
        })
        .await
        .expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, async move {
            let _ = stopped.await;
        }));

        let (status, content_type, body) = get(address, "/metrics", "*/*").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(body.contains("defect_agent_frames_total 1\n"), "{body}");
        let (_, content_type, body) =
            get(address, "/metrics", "application/openmetrics-text").await;
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(get(address, "/healthz", "*/*").await.0, 200);
        assert_eq!(get(address, "/readyz", "*/*").await.0, 503);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(address, "/readyz", "*/*").await.0, 200);

        let _ = stop.send(());
        server.await.expect("server task");
    }
}
