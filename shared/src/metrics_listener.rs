//! The `[metrics]` listener both daemons run: `GET /metrics`, `/healthz` and `/readyz`.
//!
//! - `/metrics`: the daemon's [`Registry`], in the format the scraper negotiates
//!   ([`crate::exposition`]).
//! - `/healthz`: `200 ok` while the process answers.
//! - `/readyz`: `200 ready` when the daemon's [`Endpoint::ready`] says so, `503 not ready`
//!   otherwise.
//!
//! This module owns the socket, the routes and the graceful shutdown. It owns no metric: each
//! daemon builds its registry (collectors read live state on every scrape) and says what ready
//! means.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::error_chain::Chain;
use crate::exposition::{self, Format};

/// What a daemon serves on its metrics listener.
pub trait Endpoint: Send + Sync + 'static {
    /// The registry a scrape encodes.
    fn registry(&self) -> &Registry;

    /// Whether `/readyz` answers 200. Ready as soon as the listener runs, unless the daemon
    /// says otherwise.
    fn ready(&self) -> bool {
        true
    }
}

/// A registry alone: always ready.
impl Endpoint for Registry {
    fn registry(&self) -> &Registry {
        self
    }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {address}")]
pub struct BindError {
    /// The configured address.
    pub address: String,
    /// The socket error.
    #[source]
    pub source: std::io::Error,
}

/// A bound metrics listener, not serving yet.
#[derive(Debug)]
pub struct MetricsListener {
    /// The address it is bound to (the real port when the configuration said port 0).
    address: SocketAddr,
    /// The bound socket.
    listener: tokio::net::TcpListener,
    /// The routes, with the endpoint as their state.
    router: Router,
}

impl MetricsListener {
    /// Binds `listen` (`host:port`) for `endpoint`.
    pub async fn bind(listen: &str, endpoint: impl Endpoint) -> Result<MetricsListener, BindError> {
        let error = |source| BindError {
            address: listen.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(error)?;
        let address = listener.local_addr().map_err(error)?;
        let endpoint: Arc<dyn Endpoint> = Arc::new(endpoint);
        let router = Router::new()
            .route("/metrics", get(scrape))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(endpoint);
        tracing::info!(%address, "metrics listening");
        Ok(MetricsListener {
            address,
            listener,
            router,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves, then finishes the requests under way. A failure of
    /// the server is logged: the daemon goes on without its metrics.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        if let Err(error) = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %Chain(&error), "metrics server failed");
        }
    }
}

async fn scrape(State(endpoint): State<Arc<dyn Endpoint>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match exposition::render(endpoint.registry(), format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(error) => {
            tracing::error!(error = %Chain(&error), "metrics scrape failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn ready(State(endpoint): State<Arc<dyn Endpoint>>) -> Response {
    if endpoint.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A registry with one counter and a readiness flag the test flips.
    #[derive(Debug)]
    struct Daemon {
        registry: Registry,
        ready: Arc<AtomicBool>,
    }

    impl Endpoint for Daemon {
        fn registry(&self) -> &Registry {
            &self.registry
        }

        fn ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }
    }

    /// One HTTP/1.1 request; the whole answer as text.
    async fn get(address: SocketAddr, path: &str, accept: Option<&str>) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn serves_metrics_by_negotiation_health_and_readiness_until_shutdown() {
        let mut registry = Registry::with_prefix("demo");
        let frames: Counter = Counter::default();
        frames.inc_by(3);
        registry.register("frames", "Frames seen", frames);
        let ready = Arc::new(AtomicBool::new(false));
        let daemon = Daemon {
            registry,
            ready: Arc::clone(&ready),
        };
        let listener = MetricsListener::bind("127.0.0.1:0", daemon)
            .await
            .expect("bind");
        let address = listener.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(async {
            let _ = stopped.await;
        }));

        let classic = get(address, "/metrics", None).await;
        assert!(classic.starts_with("HTTP/1.1 200"), "{classic}");
        assert!(classic.contains("text/plain; version=0.0.4"), "{classic}");
        assert!(classic.contains("demo_frames_total 3\n"), "{classic}");
        let open = get(address, "/metrics", Some("application/openmetrics-text")).await;
        assert!(open.contains("application/openmetrics-text"), "{open}");
        assert!(open.contains("# EOF\n"), "{open}");
        assert!(get(address, "/healthz", None).await.contains("200 OK"));
        let not_ready = get(address, "/readyz", None).await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        ready.store(true, Ordering::Relaxed);
        let now_ready = get(address, "/readyz", None).await;
        assert!(now_ready.starts_with("HTTP/1.1 200"), "{now_ready}");

        stop.send(()).expect("stop");
        server.await.expect("server ends on shutdown");
    }

    #[tokio::test]
    async fn an_address_in_use_names_the_configured_address() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = taken.local_addr().expect("address").to_string();
        let error = MetricsListener::bind(&address, Registry::default())
            .await
            .expect_err("in use");
        assert_eq!(error.to_string(), format!("metrics.listen {address}"));
        assert_eq!(crate::error_chain::repeated_cause(&error), None);
    }
}
