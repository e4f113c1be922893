//! HTTP frame upload, for camera software and gateways that cannot write a hot folder.
//!
//! This module owns `POST /v1/stations/{station}/frames`: the body is the encoded image, the
//! part id comes from the `X-Part-Id` header or the `part` query parameter (generated when
//! absent), and the answer is the frame's outcome as JSON, sent once it is in the result log.
//! It also serves `GET /healthz` (the process answers) and `GET /readyz` (the pipeline is
//! ready, as in the heartbeat).

use defect_shared::error_chain::Chain;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::oneshot;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FrameSource;
use crate::health::Health;
use crate::outcome::{Outcome, unix_ms};
use crate::pipeline::{FrameJob, Pipeline};

/// Header carrying the part id.
pub const PART_HEADER: &str = "x-part-id";

/// Why the HTTP endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct HttpError {
    /// The configured address.
    pub address: String,
    /// The socket error.
    pub source: std::io::Error,
}

#[derive(Clone)]
struct AppState {
    pipeline: Pipeline,
    stations: Arc<BTreeSet<String>>,
    health: Arc<Health>,
}

/// The JSON answer to an upload.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    v: u8,
    station: &'a str,
    part: u64,
    seq: u64,
    result: &'a str,
    r: u8,
    class: &'a str,
    c: u16,
    conf: u16,
    mv: u64,
    lat: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// The HTTP upload endpoint, bound and ready to serve.
pub struct HttpUpload {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    stations: BTreeSet<String>,
    health: Arc<Health>,
    max_frame_bytes: u64,
}

impl HttpUpload {
    /// Binds the listener, so a taken port fails the start-up; requests are served once the
    /// source is started.
    pub async fn bind(
        listen: &str,
        stations: BTreeSet<String>,
        health: Arc<Health>,
        max_frame_bytes: u64,
    ) -> Result<HttpUpload, HttpError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| HttpError {
                address: listen.to_owned(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| HttpError {
            address: listen.to_owned(),
            source,
        })?;
        Ok(HttpUpload {
            listener,
            address,
            stations,
            health,
            max_frame_bytes,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl FrameSource for HttpUpload {
    fn describe(&self) -> String {
        format!("HTTP upload on {}", self.address)
    }

    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let state = AppState {
            pipeline,
            stations: Arc::new(self.stations),
            health: self.health,
        };
        let limit = usize::try_from(self.max_frame_bytes).unwrap_or(usize::MAX);
        let router = Router::new()
            .route("/v1/stations/{station}/frames", post(upload))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(state);
        tracing::info!(address = %self.address, "HTTP frame upload listening");
        let listener = self.listener;
        // In-flight uploads still get their answers after the shutdown begins.
        tasks.spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %Chain(&error), "HTTP server failed");
            }
        });
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn upload(
    State(state): State<AppState>,
    Path(station): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.stations.contains(&station) {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown station {station:?}"),
        );
    }
    let given = headers
        .get(PART_HEADER)
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .or_else(|| query.get("part").cloned());
    let part = match given {
        Some(text) => match text.trim().parse::<u64>() {
            Ok(part) => part,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("part id {text:?} is not an unsigned integer"),
                );
            }
        },
        None => state.pipeline.generated_part_id(),
    };
    let (done, answer) = oneshot::channel::<Outcome>();
    state.pipeline.submit(FrameJob {
        station,
        part,
        acquired_ms: unix_ms(),
        bytes: body.to_vec(),
        completion: Some(Box::new(move |outcome, _logged| {
            let _ = done.send(outcome.clone());
        })),
        // An upload lives as long as its connection: after a crash the client sends it again.
        identity: None,
    });
    match answer.await {
        Ok(outcome) => answer_of(&outcome),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down".into(),
        ),
    }
}

fn answer_of(outcome: &Outcome) -> Response {
    let answer = Answer {
        v: crate::mqtt::payload::SCHEMA_VERSION,
        station: &outcome.station,
        part: outcome.part,
        seq: outcome.seq,
        result: outcome.result().name(),
        r: outcome.result().code(),
        class: outcome.label(),
        c: outcome.class(),
        conf: outcome.confidence_permille(),
        mv: outcome.model_version(),
        lat: outcome.latency_ms,
        reason: outcome.reason().map(|r| r.name()),
        detail: outcome.detail(),
    };
    (StatusCode::OK, axum::Json(answer)).into_response()
}
