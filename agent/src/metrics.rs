//! The agent's Prometheus endpoint: `GET /metrics`, `/healthz` and `/readyz`.
//!
//! This module owns the `defect_agent_` prefix of every metric name and the agent's side of
//! the shared listener (`defect_shared::metrics_listener`). It owns no metric: each component
//! registers its own families and collectors in the [`Registry`] made by [`registry`] (the
//! pipeline its frame counts and stage times, the MQTT session its latencies, the result log,
//! the model slot, health, monitoring, capture and the canary what they keep), and the daemon
//! hands that registry to [`bind`]. `/healthz` says the process answers; `/readyz` is 200 only
//! while the readiness it is given holds (the heartbeat's `ready`).

use defect_shared::metrics_listener::{Endpoint, MetricsListener};
use prometheus_client::registry::Registry;

pub use defect_shared::metrics_listener::BindError as MetricsError;

/// Prefix of every metric name.
const PREFIX: &str = "defect_agent";

/// An empty registry for the agent's metrics: every name registered in it is served with the
/// `defect_agent_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// The agent's registry and its readiness, as the listener serves them.
struct AgentEndpoint {
    registry: Registry,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Endpoint for AgentEndpoint {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ready(&self) -> bool {
        (self.ready)()
    }
}

/// Binds the metrics listener for `registry`; `/readyz` answers 200 while `ready` says so,
/// 503 otherwise.
pub async fn bind(
    listen: &str,
    registry: Registry,
    ready: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<MetricsListener, MetricsError> {
    let endpoint = AgentEndpoint {
        registry,
        ready: Box::new(ready),
    };
    MetricsListener::bind(listen, endpoint).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;

    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::http::header;

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
        let listener = bind("127.0.0.1:0", registry, move || {
            readiness.load(Ordering::Relaxed)
        })
        .await
        .expect("bind");
        let address = listener.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(async move {
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
