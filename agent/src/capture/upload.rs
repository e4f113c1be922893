//! Uploading captured frames to the central server: resumable, rate-limited, idempotent.
//!
//! This module owns the client side of the capture upload protocol (the server side is
//! `defect-central capture-server`, whose header names match the ones below). Every object
//! (an item's image, then its metadata) has a fixed URL `<url>/<station>/<file>`. Before
//! sending, a `HEAD` asks the server what it holds: nothing (404), a complete object (`Upload-Complete: 1`: nothing is sent again), or the
//! first `Upload-Offset` bytes of a cut upload, from which the `PUT` resumes. A `PUT` carries
//! `Upload-Offset`, `Upload-Length` and the whole object's `Content-SHA256`; the server keeps
//! the object only when the hash matches. An item is marked uploaded, and may be evicted,
//! only once the server confirmed both of its objects. The body is sent in small chunks at
//! no more than `max_bytes_per_second`. An unreachable server ends the round quietly; the
//! next round starts over from the oldest item still pending.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defect_shared::error_chain::Chain;
use tokio::time::Instant;

use super::CaptureShared;

/// Bytes the server holds of an object (request and response).
pub const OFFSET: &str = "upload-offset";
/// The object's full length.
pub const LENGTH: &str = "upload-length";
/// `1` when the server holds the whole object, hash checked.
pub const COMPLETE: &str = "upload-complete";
/// Hex SHA-256 of the whole object.
pub const SHA256: &str = "content-sha256";

/// Bytes per chunk of a request body.
const CHUNK: usize = 16 * 1024;

/// Where and how fast to upload.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// Base URL, such as `https://central.example/v1/capture`.
    pub url: String,
    /// Time between upload rounds.
    pub interval: Duration,
    /// Most bytes per second sent.
    pub max_bytes_per_second: u64,
}

/// Why an object was not uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The request failed (server unreachable, connection cut).
    #[error("{url}")]
    Http {
        /// The object's URL.
        url: String,
        /// reqwest's error.
        source: reqwest::Error,
    },
    /// The server answered with an unexpected status.
    #[error("{url}: the server answered {status}")]
    Status {
        /// The object's URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// A file of the store could not be read.
    #[error(transparent)]
    Store(#[from] super::store::CaptureError),
    /// A file of the store could not be read.
    #[error("{path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Paces bytes to a rate shared by every request of the uploader.
#[derive(Debug)]
struct Pace {
    rate: f64,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    /// When `bytes` more may be sent.
    fn reserve(&self, bytes: usize) -> Instant {
        let now = Instant::now();
        let Ok(mut next) = self.next.lock() else {
            return now;
        };
        let start = next.map_or(now, |n| n.max(now));
        *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate));
        start
    }
}

/// Runs upload rounds until the task is dropped.
pub async fn run(shared: Arc<CaptureShared>, settings: UploadSettings) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %Chain(&error), "capture upload cannot start");
            return;
        }
    };
    let pace = Arc::new(Pace {
        rate: settings.max_bytes_per_second.max(1) as f64,
        next: Mutex::new(None),
    });
    let base = settings.url.trim_end_matches('/').to_owned();
    let mut warned = false;
    loop {
        match round(&client, &base, &shared, &pace).await {
            Ok(0) => {}
            Ok(items) => {
                tracing::info!(items, "captured frames uploaded");
                warned = false;
            }
            Err(error) if !warned => {
                tracing::warn!(error = %Chain(&error), "capture upload paused; retrying every round");
                warned = true;
            }
            Err(error) => tracing::debug!(error = %Chain(&error), "capture upload still paused"),
        }
        tokio::time::sleep(settings.interval).await;
    }
}

/// Uploads every pending item, oldest first; returns how many the server confirmed.
async fn round(
    client: &reqwest::Client,
    base: &str,
    shared: &Arc<CaptureShared>,
    pace: &Arc<Pace>,
) -> Result<usize, UploadError> {
    let pending = shared.store.lock().map(|s| s.pending()).unwrap_or_default();
    let mut done = 0;
    for id in pending {
        let (meta, image_path, meta_path) = {
            let Ok(store) = shared.store.lock() else {
                break;
            };
            let Ok(meta) = store.meta(&id) else {
                // Evicted meanwhile (only without uploads) or unreadable: nothing to send.
                continue;
            };
            let image = store.path(&meta.image);
            let json = store.path(&format!("{id}.json"));
            (meta, image, json)
        };
        for (name, path) in [
            (meta.image.clone(), image_path),
            (format!("{id}.json"), meta_path),
        ] {
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|source| UploadError::Read {
                    path: path.clone(),
                    source,
                })?;
            let url = format!("{base}/{}/{name}", meta.station);
            put_object(client, &url, bytes, shared, pace).await?;
        }
        let marked = {
            let Ok(mut store) = shared.store.lock() else {
                break;
            };
            store.mark_uploaded(&id)
        };
        marked?;
        shared.stats.uploaded.fetch_add(1, Ordering::Relaxed);
        done += 1;
    }
    Ok(done)
}

/// What the server holds of an object.
enum Held {
    Complete,
    Partial(u64),
}

async fn held(client: &reqwest::Client, url: &str) -> Result<Held, UploadError> {
    let http = |source| UploadError::Http {
        url: url.to_owned(),
        source,
    };
    let response = client.head(url).send().await.map_err(http)?;
    match response.status() {
        reqwest::StatusCode::NOT_FOUND => Ok(Held::Partial(0)),
        status if status.is_success() => {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if header(COMPLETE).as_deref() == Some("1") {
                return Ok(Held::Complete);
            }
            Ok(Held::Partial(
                header(OFFSET).and_then(|v| v.parse().ok()).unwrap_or(0),
            ))
        }
        status => Err(UploadError::Status {
            url: url.to_owned(),
            status,
        }),
    }
}

/// Sends one object, resuming where the server stopped; nothing when it is already held.
async fn put_object(
    client: &reqwest::Client,
    url: &str,
    bytes: Vec<u8>,
    shared: &Arc<CaptureShared>,
    pace: &Arc<Pace>,
) -> Result<(), UploadError> {
    use sha2::Digest;
    let offset = match held(client, url).await? {
        Held::Complete => {
            tracing::debug!(url, "already held by the server; not sent again");
            return Ok(());
        }
        Held::Partial(offset) if offset as usize <= bytes.len() => offset,
        // The server holds more than the object: it refuses the PUT and starts over.
        Held::Partial(_) => 0,
    };
    if offset > 0 {
        tracing::info!(url, offset, length = bytes.len(), "resuming a cut upload");
    }
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let length = bytes.len();
    let stream_shared = Arc::clone(shared);
    let stream_pace = Arc::clone(pace);
    let body = futures_util::stream::unfold(offset as usize, move |at| {
        let shared = Arc::clone(&stream_shared);
        let pace = Arc::clone(&stream_pace);
        let chunk = bytes
            .get(at..(at + CHUNK).min(bytes.len()))
            .map(<[u8]>::to_vec);
        async move {
            let chunk = chunk.filter(|c| !c.is_empty())?;
            tokio::time::sleep_until(pace.reserve(chunk.len())).await;
            shared
                .stats
                .upload_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let next = at + chunk.len();
            Some((Ok::<_, std::io::Error>(chunk), next))
        }
    });
    let response = client
        .put(url)
        .header(OFFSET, offset)
        .header(LENGTH, length)
        .header(SHA256, sha)
        .header(reqwest::header::CONTENT_LENGTH, length as u64 - offset)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|source| UploadError::Http {
            url: url.to_owned(),
            source,
        })?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(UploadError::Status {
            url: url.to_owned(),
            status,
        }),
    }
}
