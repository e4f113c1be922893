//! The central server's side of the capture upload: `defect-central capture-server`.
//!
//! This module owns what the central side stores, under `<dir>/<station>/<file>`: bytes of a
//! cut upload are kept in `.<file>.part` as they arrive (synced when the request ends, however
//! it ends), so an edge box resumes from there; an object becomes visible (renamed into place,
//! folder synced) only once all of it arrived and its SHA-256 matches the one the box sent.
//! A `PUT` of an object already held with the same hash succeeds without writing, so a box
//! that did not hear the answer may send again safely. One request per object at a time.
//!
//! The uploading client is `defect-agent`'s `capture::upload` module; the header names below
//! are the protocol both sides speak, and the `data_capture` end-to-end tests run the two real
//! binaries against each other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Bytes the server holds of an object (request and response).
pub const OFFSET: &str = "upload-offset";
/// The object's full length.
pub const LENGTH: &str = "upload-length";
/// `1` when the server holds the whole object, hash checked.
pub const COMPLETE: &str = "upload-complete";
/// Hex SHA-256 of the whole object.
pub const SHA256: &str = "content-sha256";

/// Largest object accepted, in bytes.
const MAX_OBJECT: u64 = 256 * 1024 * 1024;

#[derive(Clone)]
struct Receiver {
    dir: PathBuf,
    busy: Arc<Mutex<HashSet<PathBuf>>>,
}

/// The receiver's routes, storing under `dir`.
pub fn router(dir: &Path) -> Router {
    Router::new()
        .route("/v1/capture/{station}/{file}", put(store).head(held))
        .with_state(Receiver {
            dir: dir.to_owned(),
            busy: Arc::new(Mutex::new(HashSet::new())),
        })
}

/// Serves the receiver on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, dir: &Path) -> std::io::Result<()> {
    axum::serve(listener, router(dir)).await
}

/// Why the receiver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The storage folder could not be created.
    #[error("{path}: {source}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("--listen {address}: {source}")]
    Bind {
        /// The address as given.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("capture server: {0}")]
    Serve(std::io::Error),
}

/// Creates `dir`, listens on `address` and serves the receiver until the process ends.
pub async fn run(address: &str, dir: &Path) -> Result<(), ReceiverError> {
    std::fs::create_dir_all(dir).map_err(|source| ReceiverError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ReceiverError::Bind {
            address: address.to_owned(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| address.to_owned(), |a| a.to_string());
    tracing::info!(address = %local, dir = %dir.display(), "receiving captured frames");
    serve(listener, dir).await.map_err(ReceiverError::Serve)
}

fn text(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// Station and file names: one path level of `[A-Za-z0-9._-]`, no leading dot.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Receiver {
    fn paths(&self, station: &str, file: &str) -> Option<(PathBuf, PathBuf)> {
        (valid_name(station) && valid_name(file)).then(|| {
            let folder = self.dir.join(station);
            (folder.join(file), folder.join(format!(".{file}.part")))
        })
    }
}

async fn held(
    State(receiver): State<Receiver>,
    UrlPath((station, file)): UrlPath<(String, String)>,
) -> Response {
    let Some((done, part)) = receiver.paths(&station, &file) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if let Ok(meta) = tokio::fs::metadata(&done).await {
        return (
            StatusCode::OK,
            [(COMPLETE, "1".to_owned()), (OFFSET, meta.len().to_string())],
        )
            .into_response();
    }
    match tokio::fs::metadata(&part).await {
        Ok(meta) => (
            StatusCode::OK,
            [(COMPLETE, "0".to_owned()), (OFFSET, meta.len().to_string())],
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Frees an object for the next request when its request ends, however it ends.
struct Claim {
    busy: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.path);
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let bytes = tokio::fs::read(path).await?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

async fn store(
    State(receiver): State<Receiver>,
    UrlPath((station, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((done, part)) = receiver.paths(&station, &file) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("station {station:?} or file {file:?} is not a plain name"),
        );
    };
    let (Some(offset), Some(length)) = (header_u64(&headers, OFFSET), header_u64(&headers, LENGTH))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("headers {OFFSET} and {LENGTH} must be unsigned integers"),
        );
    };
    let sha = headers
        .get(SHA256)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(sha) = sha else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("header {SHA256} missing or not 64 hex digits"),
        );
    };
    if length > MAX_OBJECT || offset > length {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{OFFSET} {offset} / {LENGTH} {length} out of range"),
        );
    }
    let _claim = {
        let Ok(mut busy) = receiver.busy.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if !busy.insert(done.clone()) {
            return text(StatusCode::CONFLICT, format!("{file} is being uploaded"));
        }
        Claim {
            busy: Arc::clone(&receiver.busy),
            path: done.clone(),
        }
    };
    if tokio::fs::metadata(&done).await.is_ok() {
        return match sha256_of(&done).await {
            Ok(held) if held == sha => StatusCode::OK.into_response(),
            Ok(_) => text(
                StatusCode::CONFLICT,
                format!("{station}/{file} is held with other content"),
            ),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        };
    }
    if let Some(folder) = part.parent()
        && let Err(error) = tokio::fs::create_dir_all(folder).await
    {
        return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
    }
    let have = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    if have != offset {
        return (
            StatusCode::CONFLICT,
            [(OFFSET, have.to_string())],
            format!("{file}: {have} bytes held, the upload starts at {offset}\n"),
        )
            .into_response();
    }
    let mut out = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
    {
        Ok(out) => out,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let mut received = offset;
    let mut stream = body.into_data_stream();
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if received > length {
                    drop(out);
                    let _ = tokio::fs::remove_file(&part).await;
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("{file}: more than {LENGTH} {length} bytes"),
                    );
                }
                if let Err(error) = out.write_all(&bytes).await {
                    return text(StatusCode::INSUFFICIENT_STORAGE, error.to_string());
                }
            }
            Err(error) => {
                cut = Some(error.to_string());
                break;
            }
        }
    }
    // What arrived is kept for a resume, however the request ended.
    let _ = out.flush().await;
    let _ = out.sync_all().await;
    drop(out);
    if let Some(error) = cut {
        tracing::info!(station, file, received, length, %error, "upload cut; kept for a resume");
        return text(StatusCode::BAD_REQUEST, format!("upload cut: {error}"));
    }
    if received < length {
        return (StatusCode::ACCEPTED, [(OFFSET, received.to_string())]).into_response();
    }
    match sha256_of(&part).await {
        Ok(held) if held == sha => {}
        Ok(held) => {
            let _ = tokio::fs::remove_file(&part).await;
            tracing::warn!(
                station,
                file,
                sent = sha,
                received = held,
                "hash mismatch; discarded"
            );
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{file}: SHA-256 {held} does not match {SHA256} {sha}"),
            );
        }
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
    if let Err(error) = tokio::fs::rename(&part, &done).await {
        return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
    }
    if let Some(folder) = done.parent() {
        let _ = defect_shared::atomic::sync_dir(folder);
    }
    tracing::info!(station, file, bytes = length, "stored");
    StatusCode::CREATED.into_response()
}
