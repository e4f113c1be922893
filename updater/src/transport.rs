//! How the TUF library fetches metadata: HTTP(S) through our own client, or local files.
//!
//! This module owns [`MetadataTransport`], the `tough` transport the updater hands to the
//! library. Metadata files are small: each is read whole, with a size cap, and a connection
//! failure is remembered so that the caller can tell "the server is unreachable" (quiet) from
//! "the server answered with something that does not verify" (loud). Bundles do not go through
//! here; the resumable downloader fetches them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Largest metadata file accepted over this transport.
pub const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;

/// Why the metadata server could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The request or the body failed (no connection, timeout, reset).
    #[error("{url}")]
    Request {
        /// The metadata file's URL.
        url: Url,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a server error.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The metadata file's URL.
        url: Url,
        /// The status it answered.
        status: StatusCode,
    },
}

/// A `tough` transport for `http`, `https` and `file` URLs.
#[derive(Debug, Clone)]
pub struct MetadataTransport {
    client: reqwest::Client,
    unreachable: Arc<Mutex<Option<Unreachable>>>,
}

impl MetadataTransport {
    /// A transport using `client` for HTTP.
    pub fn new(client: reqwest::Client) -> MetadataTransport {
        MetadataTransport {
            client,
            unreachable: Arc::new(Mutex::new(None)),
        }
    }

    /// Why the server could not be reached during the last load, if it could not (taken: a
    /// second call answers `None`).
    pub fn unreachable(&self) -> Option<Unreachable> {
        self.unreachable.lock().ok().and_then(|mut u| u.take())
    }

    fn note_unreachable(&self, reason: Unreachable) {
        if let Ok(mut slot) = self.unreachable.lock() {
            *slot = Some(reason);
        }
    }

    /// Notes why `url` could not be fetched; `tough` gets an error saying so (the check reads
    /// the reason from [`MetadataTransport::unreachable`]).
    fn unreachable_error(&self, url: Url, source: reqwest::Error) -> TransportError {
        self.note_unreachable(Unreachable::Request {
            url: url.clone(),
            source,
        });
        TransportError::new_with_cause(TransportErrorKind::Other, url, "the server is unreachable")
    }

    async fn fetch_http(&self, url: Url) -> Result<Vec<u8>, TransportError> {
        let response = match self.client.get(url.clone()).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() => {
                return Err(self.unreachable_error(url, e));
            }
            Err(e) => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url,
                    e,
                ));
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if !status.is_success() {
            if status.is_server_error() {
                self.note_unreachable(Unreachable::Status {
                    url: url.clone(),
                    status,
                });
            }
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("HTTP {status}"),
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_METADATA_BYTES as u64)
        {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("larger than {MAX_METADATA_BYTES} bytes"),
            ));
        }
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_METADATA_BYTES {
                        return Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            url,
                            format!("larger than {MAX_METADATA_BYTES} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.unreachable_error(url, e)),
            }
        }
    }

    async fn fetch_file(url: Url) -> Result<Vec<u8>, TransportError> {
        let path = url.to_file_path().map_err(|()| {
            TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.clone(),
                "not a file path",
            )
        })?;
        match tokio::fs::read(&path).await {
            Ok(bytes) if bytes.len() > MAX_METADATA_BYTES => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("larger than {MAX_METADATA_BYTES} bytes"),
            )),
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TransportError::new(TransportErrorKind::FileNotFound, url))
            }
            Err(e) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                e,
            )),
        }
    }
}

#[tough::async_trait]
impl Transport for MetadataTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let bytes = match url.scheme() {
            "http" | "https" => self.fetch_http(url).await?,
            "file" => Self::fetch_file(url).await?,
            _ => {
                return Err(TransportError::new(
                    TransportErrorKind::UnsupportedUrlScheme,
                    url,
                ));
            }
        };
        let stream = futures_util::stream::once(std::future::ready(Ok(bytes::Bytes::from(bytes))));
        Ok(Box::pin(stream))
    }
}

/// The HTTP client the updater uses for metadata and bundles.
pub fn http_client(connect_timeout: Duration, request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(request_timeout)
        .user_agent(concat!("model-updater/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
