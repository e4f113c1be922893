//! Resumable, rate-limited download of one TUF target whose signed length and sha256 are known.
//!
//! This module owns the box side of moving a target's bytes from the central server (or from a
//! repository copied onto a USB stick, `file://`) into a *partial* file next to its final place:
//!
//! * it resumes a partial left by an earlier call or an earlier process with a
//!   `Range: bytes=p-` request and accepts the answer only when its `Content-Range` is exactly the
//!   rest of the signed target;
//! * it never reads or writes past the signed length (a server sending endless data is cut off);
//! * it retries connection failures, stalls, 5xx and 429 within one call with exponential
//!   backoff and jitter, honouring `Retry-After`, keeping the bytes it already has;
//! * it limits its bandwidth with a token bucket;
//! * it checks the sha256 after the last byte and fsyncs the partial before reporting success.
//!
//! The caller owns what happens around it: choosing the partial's path, renaming the verified
//! partial into place (and fsyncing the folder), and deciding what to tell operators. For the
//! latter, [`DownloadError::is_offline`] separates the quiet case (the server cannot be reached,
//! which is normal for an edge box) from everything else, which deserves attention.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use defect_shared::error_chain::Chain;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE, RETRY_AFTER};
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, warn};

/// The URL type of [`Target::url`], re-exported so callers need no `url` dependency of their own.
pub use url::Url;

/// Size of the buffer used to hash an existing partial and to copy `file://` targets.
const COPY_BUFFER: usize = 64 * 1024;

/// A TUF target as the signed metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where its bytes are: `http://`, `https://` or `file://`.
    pub url: Url,
    /// Its signed length in bytes; nothing beyond it is ever read or written.
    pub length: u64,
    /// Its signed sha256.
    pub sha256: [u8; 32],
}

/// How the delay before a retry is drawn from the exponential backoff ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniformly between zero and the ceiling ("full jitter"): boxes that lost the server at the
    /// same moment do not come back at the same moment.
    #[default]
    Full,
    /// Exactly the ceiling. Deterministic; meant for tests that measure the backoff.
    None,
}

/// How hard and how fast [`download`] tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Bandwidth limit in bytes per second (`None` or `Some(0)`: unlimited). Not applied to
    /// `file://` targets.
    pub max_bytes_per_second: Option<u64>,
    /// Attempts per call of [`download`] (at least one is made).
    pub attempts: u32,
    /// Backoff ceiling before the first retry; it doubles with every further retry.
    pub backoff_initial: Duration,
    /// Largest backoff ceiling, and the cap on a server's `Retry-After`.
    pub backoff_max: Duration,
    /// How the retry delay is drawn below the ceiling.
    pub jitter: Jitter,
    /// Time allowed to connect. The clients made by [`client`] use it as their connect timeout;
    /// for any client, an attempt without response headers within `connect_timeout +
    /// stall_timeout` counts as not having reached the server.
    pub connect_timeout: Duration,
    /// An attempt that receives no byte for this long is aborted (and retried).
    pub stall_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_bytes_per_second: None,
            attempts: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter: Jitter::Full,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`download`] (or [`ensure_free_space`]) failed.
///
/// URLs are carried as text: a `Url` is large, and this error travels through every `Result`
/// of the update path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The server could not be reached (connection refused, DNS failure, no network, no answer
    /// in time) by the last attempt. Normal for an edge box; the partial is kept for the next
    /// call.
    #[error("{url} is unreachable")]
    Offline {
        /// The target's URL.
        url: String,
        /// What the last connection attempt reported.
        #[source]
        cause: TransferCause,
    },
    /// The server was reached but the transfer broke (reset, stall) on the last attempt. The
    /// partial is kept for the next call.
    #[error("transfer of {url} failed")]
    Network {
        /// The target's URL.
        url: String,
        /// What went wrong.
        #[source]
        cause: TransferCause,
    },
    /// The server answered with an HTTP status that is not a success (not retried for 4xx other
    /// than 408 and 429; for 5xx, 408 and 429 the status of the last attempt).
    #[error("{url} answered HTTP {status}")]
    Http {
        /// The target's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server sent (or announced) more bytes than the signed length. The partial is deleted.
    #[error("{url} sent more than the signed length of {length} bytes")]
    EndlessData {
        /// The target's URL.
        url: String,
        /// The signed length.
        length: u64,
    },
    /// The server announced fewer bytes than the rest of the signed target in its
    /// `Content-Length`: it does not have the signed file.
    #[error("{url} announced {declared} bytes where {expected} are missing from the signed target")]
    LengthMismatch {
        /// The target's URL.
        url: String,
        /// The announced `Content-Length`.
        declared: u64,
        /// The number of bytes still missing.
        expected: u64,
    },
    /// The body (or the `file://` source) ended cleanly before the signed length was reached.
    #[error("{url} ended after {received} of {expected} bytes")]
    ShortBody {
        /// The target's URL.
        url: String,
        /// Bytes of the target held after the body ended.
        received: u64,
        /// The signed length.
        expected: u64,
    },
    /// All bytes arrived but their sha256 is not the signed one. The partial is deleted.
    #[error("sha256 of {url} is {actual}, the signed metadata says {expected}")]
    HashMismatch {
        /// The target's URL.
        url: String,
        /// The signed sha256, hex.
        expected: String,
        /// The sha256 of the received bytes, hex.
        actual: String,
    },
    /// A `206 Partial Content` answer did not cover exactly the requested rest of the target.
    /// The partial is discarded; the next attempt starts from byte 0.
    #[error("{url} answered with Content-Range {got:?}, expected {expected:?}")]
    BadContentRange {
        /// The target's URL.
        url: String,
        /// The `Content-Range` received (`(missing)` when there was none).
        got: String,
        /// The `Content-Range` that would have been accepted.
        expected: String,
    },
    /// Not enough free space for the rest of the target.
    #[error("{dir} has {available} bytes available, {needed} needed")]
    NotEnoughSpace {
        /// The folder checked.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes available to unprivileged users.
        available: u64,
    },
    /// The file system ran out of space (or quota) while writing. The partial is deleted to give
    /// the space back.
    #[error("disk full while writing {path}")]
    DiskFull {
        /// The partial that could not be written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading or writing a local file failed.
    #[error("{path}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The URL's scheme is not `http`, `https` or `file`, or a `file://` URL has no local path.
    #[error("unsupported target URL {url}")]
    UnsupportedUrl {
        /// The target's URL.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Why a connection or transfer attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferCause {
    /// The HTTP client reported an error (connect, TLS, reset, body).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The server did not answer in time.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// The body stopped arriving.
    #[error("no data for {0:?}")]
    Stalled(Duration),
    /// No attempt was made (a policy with zero attempts).
    #[error("no attempt was made")]
    NoAttempt,
}

impl DownloadError {
    /// True when the server could not be reached: expected on an edge box and worth only a quiet
    /// log line. Every other error deserves attention.
    pub fn is_offline(&self) -> bool {
        matches!(self, DownloadError::Offline { .. })
    }
}

/// An HTTP client suited to [`download`]: connect timeout from `policy`, a `model-updater`
/// user agent, no automatic decompression (bytes are counted against the signed length as they
/// come from the wire).
pub fn client(policy: &Policy) -> Result<reqwest::Client, DownloadError> {
    reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .user_agent(concat!("model-updater/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(DownloadError::Client)
}

/// Fails with [`DownloadError::NotEnoughSpace`] unless the file system holding `dir` has at
/// least `needed` bytes available to unprivileged users (`f_bavail * f_frsize`).
pub fn ensure_free_space(dir: &Path, needed: u64) -> Result<(), DownloadError> {
    let stats = rustix::fs::statvfs(dir).map_err(|e| DownloadError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    if available < needed {
        return Err(DownloadError::NotEnoughSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Brings `target` into `partial`, resuming what an earlier call left there.
///
/// On `Ok`, `partial` holds exactly `target.length` bytes whose sha256 is `target.sha256`, and
/// the file is fsynced; the caller renames it into place (and fsyncs the folder). On an error
/// that leaves a consistent prefix (offline, broken transfer, 5xx), the partial is kept for the
/// next call; on errors that make it worthless (endless data, hash mismatch, disk full) it is
/// deleted.
pub async fn download(
    client: &reqwest::Client,
    target: &Target,
    partial: &Path,
    policy: &Policy,
) -> Result<(), DownloadError> {
    download_counted(client, target, partial, policy, &AtomicU64::new(0)).await
}

/// As [`download`], adding every byte received from the repository to `received` as it is
/// written (bytes a resume already had are not received again).
pub async fn download_counted(
    client: &reqwest::Client,
    target: &Target,
    partial: &Path,
    policy: &Policy,
    received: &AtomicU64,
) -> Result<(), DownloadError> {
    match target.url.scheme() {
        "file" => return copy_local(target, partial, received).await,
        "http" | "https" => {}
        _ => {
            return Err(DownloadError::UnsupportedUrl {
                url: target.url.to_string(),
            });
        }
    }
    let mut progress = Progress::load(target, partial).await?;
    if progress.written == target.length {
        debug!(path = %partial.display(), "partial already complete; verifying");
        let mut file = open_partial(partial).await?;
        return finish(target, partial, &mut file, &progress).await;
    }
    ensure_free_space(parent_dir(partial), target.length - progress.written)?;

    let mut bucket = policy
        .max_bytes_per_second
        .filter(|rate| *rate > 0)
        .map(|rate| TokenBucket::new(rate, Instant::now()));
    let attempts = policy.attempts.max(1);
    let mut last_error = None;
    let mut retry_after = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            let delay = retry_delay(policy, attempt - 1, retry_after, jitter_fraction(policy));
            debug!(
                url = %target.url,
                attempt = attempt + 1,
                attempts,
                delay_ms = delay.as_millis() as u64,
                resume_from = progress.written,
                "retrying download"
            );
            tokio::time::sleep(delay).await;
        }
        let once = attempt_once(
            client,
            target,
            partial,
            policy,
            &mut progress,
            &mut bucket,
            received,
        );
        match once.await {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Retry { error, after }) => {
                debug!(url = %target.url, attempt = attempt + 1, error = %Chain(&error), "download attempt failed");
                retry_after = after;
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| DownloadError::Network {
        url: target.url.to_string(),
        cause: TransferCause::NoAttempt,
    }))
}

/// The outcome of a failed attempt.
enum Failure {
    /// Give up now.
    Fatal(DownloadError),
    /// Worth another attempt (after at least `after`, when the server said so).
    Retry {
        error: DownloadError,
        after: Option<Duration>,
    },
}

impl Failure {
    fn retry(error: DownloadError) -> Failure {
        Failure::Retry { error, after: None }
    }
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        Failure::Fatal(error)
    }
}

/// What the partial holds: its length and the running hash of those bytes.
struct Progress {
    written: u64,
    hasher: Sha256,
}

impl Progress {
    /// Reads the partial left by an earlier call, if any: discards it when it is longer than
    /// the target, hashes it otherwise.
    async fn load(target: &Target, partial: &Path) -> Result<Progress, DownloadError> {
        let len = match tokio::fs::metadata(partial).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error(partial, e)),
        };
        if len > target.length {
            warn!(
                path = %partial.display(),
                len,
                length = target.length,
                "partial is longer than the signed target; discarding it"
            );
            discard(partial).await?;
            return Ok(Progress::empty());
        }
        if len == 0 {
            return Ok(Progress::empty());
        }
        let mut file = File::open(partial)
            .await
            .map_err(|e| io_error(partial, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; COPY_BUFFER];
        let mut remaining = len;
        while remaining > 0 {
            let want = usize::try_from(remaining.min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
            let n = file
                .read(&mut buffer[..want])
                .await
                .map_err(|e| io_error(partial, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            remaining -= n as u64;
        }
        let written = len - remaining;
        debug!(path = %partial.display(), written, "found a partial to resume");
        Ok(Progress { written, hasher })
    }

    fn empty() -> Progress {
        Progress {
            written: 0,
            hasher: Sha256::new(),
        }
    }
}

/// One request: sends it, checks the answer, streams the body into the partial (counting the
/// bytes into `received`).
async fn attempt_once(
    client: &reqwest::Client,
    target: &Target,
    partial: &Path,
    policy: &Policy,
    progress: &mut Progress,
    bucket: &mut Option<TokenBucket>,
    received: &AtomicU64,
) -> Result<(), Failure> {
    let url = &target.url;
    let on_disk = match tokio::fs::metadata(partial).await {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(Failure::Fatal(io_error(partial, e))),
    };
    if on_disk != progress.written {
        // Something else changed the partial (or a write failed half-way): trust the disk.
        *progress = Progress::load(target, partial).await?;
    }
    let start = progress.written;

    let mut request = client.get(url.clone());
    if start > 0 {
        request = request.header(RANGE, format!("bytes={start}-"));
    }
    let no_answer = policy.connect_timeout.saturating_add(policy.stall_timeout);
    let mut response = match tokio::time::timeout(no_answer, request.send()).await {
        Err(_) => {
            return Err(Failure::retry(DownloadError::Offline {
                url: url.to_string(),
                cause: TransferCause::NoAnswer(no_answer),
            }));
        }
        Ok(Err(e)) if e.is_connect() => {
            return Err(Failure::retry(DownloadError::Offline {
                url: url.to_string(),
                cause: e.into(),
            }));
        }
        Ok(Err(e)) => {
            return Err(Failure::retry(DownloadError::Network {
                url: url.to_string(),
                cause: e.into(),
            }));
        }
        Ok(Ok(response)) => response,
    };

    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let got = response
                .headers()
                .get(CONTENT_RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if !content_range_matches(got.as_deref(), start, target.length) {
                let error = DownloadError::BadContentRange {
                    url: url.to_string(),
                    got: got.unwrap_or_else(|| "(missing)".to_owned()),
                    expected: format!(
                        "bytes {start}-{}/{}",
                        target.length.saturating_sub(1),
                        target.length
                    ),
                };
                warn!(error = %Chain(&error), path = %partial.display(), "discarding the partial; the next attempt starts from byte 0");
                discard(partial).await?;
                *progress = Progress::empty();
                return Err(Failure::retry(error));
            }
        }
        StatusCode::OK => {
            if start > 0 {
                warn!(url = %url, path = %partial.display(), discarded = start, "server ignored the Range request; restarting from byte 0");
                discard(partial).await?;
                *progress = Progress::empty();
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            warn!(url = %url, path = %partial.display(), "server cannot satisfy the resume request; discarding the partial");
            discard(partial).await?;
            *progress = Progress::empty();
            return Err(Failure::retry(http_error(url, status)));
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            let after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Err(Failure::Retry {
                error: http_error(url, status),
                after,
            });
        }
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
            return Err(Failure::retry(http_error(url, status)));
        }
        _ => return Err(Failure::Fatal(http_error(url, status))),
    }

    let missing = target.length - progress.written;
    if let Some(declared) = response.content_length() {
        if declared > missing {
            discard(partial).await?;
            return Err(Failure::Fatal(DownloadError::EndlessData {
                url: url.to_string(),
                length: target.length,
            }));
        }
        if declared < missing {
            return Err(Failure::Fatal(DownloadError::LengthMismatch {
                url: url.to_string(),
                declared,
                expected: missing,
            }));
        }
    }

    let mut file = open_partial(partial).await?;
    file.seek(io::SeekFrom::Start(progress.written))
        .await
        .map_err(|e| io_error(partial, e))?;
    loop {
        let chunk = match tokio::time::timeout(policy.stall_timeout, response.chunk()).await {
            Err(_) => {
                flush(&mut file, partial).await?;
                return Err(Failure::retry(DownloadError::Network {
                    url: url.to_string(),
                    cause: TransferCause::Stalled(policy.stall_timeout),
                }));
            }
            Ok(Err(e)) => {
                flush(&mut file, partial).await?;
                return Err(Failure::retry(DownloadError::Network {
                    url: url.to_string(),
                    cause: e.into(),
                }));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        if chunk.len() as u64 > target.length - progress.written {
            drop(file);
            warn!(url = %url, path = %partial.display(), "server sent more than the signed length; discarding the partial");
            discard(partial).await?;
            *progress = Progress::empty();
            return Err(Failure::Fatal(DownloadError::EndlessData {
                url: url.to_string(),
                length: target.length,
            }));
        }
        if let Some(bucket) = bucket.as_mut() {
            let wait = bucket.reserve(chunk.len() as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        write(&mut file, partial, &chunk).await?;
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        progress.hasher.update(&chunk);
        progress.written += chunk.len() as u64;
    }
    flush(&mut file, partial).await?;
    if progress.written < target.length {
        return Err(Failure::retry(DownloadError::ShortBody {
            url: url.to_string(),
            received: progress.written,
            expected: target.length,
        }));
    }
    finish(target, partial, &mut file, progress)
        .await
        .map_err(Failure::Fatal)
}

/// Copies a `file://` target (a repository on a USB stick) with the same length limit and hash
/// check as a download (counting the bytes into `received`). No resume and no rate limit.
async fn copy_local(
    target: &Target,
    partial: &Path,
    received: &AtomicU64,
) -> Result<(), DownloadError> {
    let source = target
        .url
        .to_file_path()
        .map_err(|()| DownloadError::UnsupportedUrl {
            url: target.url.to_string(),
        })?;
    let mut input = File::open(&source)
        .await
        .map_err(|e| io_error(&source, e))?;
    ensure_free_space(parent_dir(partial), target.length)?;
    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .await
        .map_err(|e| io_error(partial, e))?;
    let mut progress = Progress::empty();
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = input
            .read(&mut buffer)
            .await
            .map_err(|e| io_error(&source, e))?;
        if n == 0 {
            break;
        }
        if n as u64 > target.length - progress.written {
            drop(output);
            discard(partial).await?;
            return Err(DownloadError::EndlessData {
                url: target.url.to_string(),
                length: target.length,
            });
        }
        write(&mut output, partial, &buffer[..n]).await?;
        received.fetch_add(n as u64, Ordering::Relaxed);
        progress.hasher.update(&buffer[..n]);
        progress.written += n as u64;
    }
    flush(&mut output, partial).await?;
    if progress.written < target.length {
        drop(output);
        discard(partial).await?;
        return Err(DownloadError::ShortBody {
            url: target.url.to_string(),
            received: progress.written,
            expected: target.length,
        });
    }
    finish(target, partial, &mut output, &progress).await
}

/// Checks the hash of a complete partial and fsyncs it; deletes it on a mismatch.
async fn finish(
    target: &Target,
    partial: &Path,
    file: &mut File,
    progress: &Progress,
) -> Result<(), DownloadError> {
    let actual: [u8; 32] = progress.hasher.clone().finalize().into();
    if actual != target.sha256 {
        let error = DownloadError::HashMismatch {
            url: target.url.to_string(),
            expected: hex::encode(target.sha256),
            actual: hex::encode(actual),
        };
        warn!(error = %Chain(&error), path = %partial.display(), "discarding the partial");
        discard(partial).await?;
        return Err(error);
    }
    file.sync_all().await.map_err(|e| write_error(partial, e))?;
    debug!(url = %target.url, path = %partial.display(), length = target.length, "target downloaded and verified");
    Ok(())
}

/// Opens (creating it if needed) the partial for writing without truncating it.
async fn open_partial(partial: &Path) -> Result<File, DownloadError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)
        .await
        .map_err(|e| io_error(partial, e))
}

async fn write(file: &mut File, partial: &Path, bytes: &[u8]) -> Result<(), DownloadError> {
    match file.write_all(bytes).await {
        Ok(()) => Ok(()),
        Err(e) => Err(failed_write(partial, e).await),
    }
}

async fn flush(file: &mut File, partial: &Path) -> Result<(), DownloadError> {
    match file.flush().await {
        Ok(()) => Ok(()),
        Err(e) => Err(failed_write(partial, e).await),
    }
}

/// Turns a write error into the error to report; a full disk also deletes the partial so that
/// its space is given back.
async fn failed_write(partial: &Path, e: io::Error) -> DownloadError {
    let error = write_error(partial, e);
    if let DownloadError::DiskFull { .. } = error {
        warn!(path = %partial.display(), "disk full; discarding the partial to free its space");
        if let Err(discard_error) = discard(partial).await {
            warn!(error = %Chain(&discard_error), "cannot delete the partial");
        }
    }
    error
}

fn write_error(partial: &Path, e: io::Error) -> DownloadError {
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        DownloadError::DiskFull {
            path: partial.to_path_buf(),
            source: e,
        }
    } else {
        io_error(partial, e)
    }
}

/// Deletes the partial (it may not exist).
async fn discard(partial: &Path) -> Result<(), DownloadError> {
    match tokio::fs::remove_file(partial).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(partial, e)),
    }
}

fn io_error(path: &Path, source: io::Error) -> DownloadError {
    DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn http_error(url: &Url, status: StatusCode) -> DownloadError {
    DownloadError::Http {
        url: url.to_string(),
        status: status.as_u16(),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A parsed `Content-Range: bytes first-last/total` (`total` is `None` for `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    total: Option<u64>,
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.total {
            Some(total) => write!(f, "bytes {}-{}/{}", self.first, self.last, total),
            None => write!(f, "bytes {}-{}/*", self.first, self.last),
        }
    }
}

/// Parses a satisfied `Content-Range` value; `None` for anything else (including the
/// unsatisfied form `bytes */total`).
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?;
    let rest = rest.strip_prefix(' ')?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first = parse_digits(first)?;
    let last = parse_digits(last)?;
    let total = match total {
        "*" => None,
        digits => Some(parse_digits(digits)?),
    };
    if first > last || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange { first, last, total })
}

fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// True when `value` is exactly the rest of a `length`-byte target from `start`.
fn content_range_matches(value: Option<&str>, start: u64, length: u64) -> bool {
    let Some(range) = value.and_then(parse_content_range) else {
        return false;
    };
    length > 0
        && range.first == start
        && range.last == length - 1
        && range.total.is_none_or(|t| t == length)
}

/// `Retry-After` in seconds (the HTTP-date form is not supported and ignored).
fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_digits(value.trim()).map(Duration::from_secs)
}

/// The backoff ceiling before retry number `retry` (0 for the first retry):
/// `backoff_initial * 2^retry`, at most `backoff_max`.
fn backoff_ceiling(policy: &Policy, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    policy
        .backoff_initial
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(policy.backoff_max)
}

/// The fraction of the ceiling to wait: random in `[0, 1]` for full jitter, 1 otherwise.
fn jitter_fraction(policy: &Policy) -> f64 {
    match policy.jitter {
        Jitter::Full => rand::random_range(0.0..=1.0),
        Jitter::None => 1.0,
    }
}

/// The delay before retry number `retry`: `fraction` of the backoff ceiling, but at least the
/// server's `Retry-After` (capped at `backoff_max`).
fn retry_delay(
    policy: &Policy,
    retry: u32,
    retry_after: Option<Duration>,
    fraction: f64,
) -> Duration {
    let backoff = backoff_ceiling(policy, retry).mul_f64(fraction.clamp(0.0, 1.0));
    let server = retry_after.map_or(Duration::ZERO, |d| d.min(policy.backoff_max));
    backoff.max(server)
}

/// A token bucket: `rate` tokens (bytes) per second, holding at most a tenth of a second's
/// worth; it starts empty so that the limit holds from the first byte. Taking more tokens than
/// it holds goes into debt, and the caller waits until the debt is paid back.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate as f64;
        TokenBucket {
            rate,
            burst: (rate / 10.0).max(1.0),
            tokens: 0.0,
            last: now,
        }
    }

    /// Takes `n` tokens at `now` and returns how long to wait before using them.
    fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_the_satisfied_forms() {
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            Some(ContentRange {
                first: 100,
                last: 999,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-0/*"),
            Some(ContentRange {
                first: 0,
                last: 0,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes 7-9/10")
                .expect("valid")
                .to_string(),
            "bytes 7-9/10"
        );
    }

    #[test]
    fn content_range_rejects_malformed_and_unsatisfied_values() {
        for bad in [
            "",
            "bytes */1000",
            "bytes=100-999/1000",
            "items 100-999/1000",
            "bytes 100-999",
            "bytes 999-100/1000",
            "bytes 100-1000/1000",
            "bytes -1-999/1000",
            "bytes +1-999/1000",
            "bytes 1-999/x",
            "bytes 100-/1000",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_range_must_be_exactly_the_rest_of_the_target() {
        assert!(content_range_matches(Some("bytes 100-999/1000"), 100, 1000));
        assert!(content_range_matches(Some("bytes 100-999/*"), 100, 1000));
        assert!(!content_range_matches(
            Some("bytes 101-999/1000"),
            100,
            1000
        ));
        assert!(!content_range_matches(Some("bytes 99-999/1000"), 100, 1000));
        assert!(!content_range_matches(
            Some("bytes 100-998/1000"),
            100,
            1000
        ));
        assert!(!content_range_matches(
            Some("bytes 100-1000/1001"),
            100,
            1000
        ));
        assert!(!content_range_matches(
            Some("bytes 100-999/2000"),
            100,
            1000
        ));
        assert!(!content_range_matches(None, 100, 1000));
    }

    #[test]
    fn retry_after_accepts_only_delay_seconds() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    fn policy(initial_ms: u64, max_ms: u64) -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_millis(max_ms),
            ..Policy::default()
        }
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let p = policy(100, 1000);
        let ceilings: Vec<u128> = (0..6).map(|r| backoff_ceiling(&p, r).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        // Absurd retry numbers saturate instead of overflowing.
        assert_eq!(backoff_ceiling(&p, 1_000), Duration::from_millis(1000));
        let default = Policy::default();
        assert_eq!(backoff_ceiling(&default, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_ceiling_and_varies() {
        let p = policy(100, 1000);
        for retry in 0..8 {
            let ceiling = backoff_ceiling(&p, retry);
            let delays: Vec<Duration> = (0..200)
                .map(|_| retry_delay(&p, retry, None, jitter_fraction(&p)))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {retry}");
            let first = delays[0];
            assert!(
                delays.iter().any(|d| *d != first),
                "full jitter must vary (retry {retry})"
            );
        }
        assert_eq!(retry_delay(&p, 2, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(&p, 2, None, 1.0), Duration::from_millis(400));
    }

    #[test]
    fn no_jitter_waits_exactly_the_ceiling() {
        let p = Policy {
            jitter: Jitter::None,
            ..policy(100, 1000)
        };
        for retry in 0..6 {
            assert_eq!(
                retry_delay(&p, retry, None, jitter_fraction(&p)),
                backoff_ceiling(&p, retry)
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_backoff_max() {
        let p = policy(100, 1000);
        assert_eq!(
            retry_delay(&p, 0, Some(Duration::from_millis(700)), 0.0),
            Duration::from_millis(700)
        );
        assert_eq!(
            retry_delay(&p, 0, Some(Duration::from_secs(3600)), 0.5),
            Duration::from_millis(1000)
        );
        // A short Retry-After does not shorten the backoff.
        assert_eq!(
            retry_delay(&p, 3, Some(Duration::from_millis(1)), 1.0),
            Duration::from_millis(800)
        );
    }

    #[test]
    fn token_bucket_starts_empty_and_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, t0);
        // 500 bytes at once at 1000 B/s: half a second of debt.
        assert_eq!(bucket.reserve(500, t0), Duration::from_millis(500));
        // Waiting the debt off brings the bucket back to zero; the next 100 bytes cost 100 ms.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(bucket.reserve(100, t1), Duration::from_millis(100));
        // Over a long transfer, the total wait is bytes / rate.
        let mut now = t1 + Duration::from_millis(100);
        let mut total = Duration::ZERO;
        for _ in 0..100 {
            let wait = bucket.reserve(50, now);
            total += wait;
            now += wait;
        }
        assert_eq!(total.as_millis(), 5000);
    }

    #[test]
    fn token_bucket_burst_after_idle_is_a_tenth_of_a_second() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, t0);
        // An hour idle only buys a burst of rate/10 = 100 bytes.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.reserve(100, later), Duration::ZERO);
        assert_eq!(bucket.reserve(100, later), Duration::from_millis(100));
    }

    #[test]
    fn token_bucket_handles_tiny_rates() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1, t0);
        assert_eq!(bucket.reserve(2, t0), Duration::from_secs(2));
    }

    #[test]
    fn offline_is_the_only_quiet_error() {
        let url = "http://127.0.0.1:1/targets/x".to_owned();
        assert!(
            DownloadError::Offline {
                url: url.clone(),
                cause: TransferCause::NoAnswer(Duration::from_secs(1))
            }
            .is_offline()
        );
        assert!(
            !DownloadError::Http {
                url: url.clone(),
                status: 404
            }
            .is_offline()
        );
        assert!(
            !DownloadError::Network {
                url,
                cause: TransferCause::Stalled(Duration::from_secs(1))
            }
            .is_offline()
        );
    }

    #[test]
    fn free_space_check_compares_with_the_available_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_free_space(dir.path(), 1).expect("a temporary folder has one free byte");
        match ensure_free_space(dir.path(), u64::MAX) {
            Err(DownloadError::NotEnoughSpace {
                needed, available, ..
            }) => {
                assert_eq!(needed, u64::MAX);
                assert!(available < u64::MAX);
            }
            other => panic!("expected NotEnoughSpace, got {other:?}"),
        }
        assert!(matches!(
            ensure_free_space(&dir.path().join("missing"), 1),
            Err(DownloadError::Io { .. })
        ));
    }
}
