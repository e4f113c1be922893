//! A real HTTP/1.1 server on loopback serving a folder (a TUF repository), with fault knobs.
//!
//! This module owns the tests' stand-in for the central update server: an axum server on
//! `127.0.0.1` running on its own tokio runtime in a background thread, so that plain `#[test]`
//! functions can use it and block (on [`RepoServer::wait_for_requests`], on a download of their
//! own, …) while it keeps serving.
//!
//! The URL path is the path below the folder (`/metadata/1.root.json`, `/targets/x.dmb`); files
//! are read from disk on every request, so tests may change them between requests. Single byte
//! ranges (`Range: bytes=a-`, `bytes=a-b`, `bytes=-n`) are answered with `206`, `Content-Range`
//! and `Content-Length`, unsatisfiable ones with `416`.
//!
//! Faults ([`Fault`]) are added and cleared at run time through [`RepoServer::faults`], each for
//! the next `k` matching responses or for all of them, optionally only for URL paths containing
//! a substring. Every request is recorded ([`Request`]: time since the server was created,
//! method, path, `Range` header, status, body bytes sent), and tests wait on that log through a
//! condition variable rather than sleeping.

use std::future::IntoFuture;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::{oneshot, watch};

/// Size of the body chunks the server sends.
const CHUNK: usize = 16 * 1024;

/// Byte value of the garbage sent after a file by [`Fault::EndlessData`] and
/// [`Fault::ExtraData`].
pub const GARBAGE: u8 = 0xAB;

/// A misbehaviour of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Abort the body with an error after this many body bytes, so that the connection is
    /// dropped mid-body (the client sees a reset / incomplete message).
    ResetAfter(u64),
    /// Stop sending after this many body bytes until [`Faults::release_stalls`] is called (a
    /// release made before the stall point is reached counts too).
    StallAfter(u64),
    /// Answer a `Range` request with `200` and the whole file. Only consumed by requests that
    /// carry a `Range` header.
    IgnoreRange,
    /// Answer a satisfiable `Range` request with a `206` whose range starts this many bytes
    /// away from the requested start (clamped to the file); body and headers agree with each
    /// other but not with the request. Only consumed by requests that carry a `Range` header.
    WrongContentRange(i64),
    /// Answer with this status and an empty body, with `Retry-After: <seconds>` when given
    /// (`503` for an overload storm, `404` for a missing target, `429`, …).
    Status {
        /// The HTTP status code.
        code: u16,
        /// Seconds for a `Retry-After` header.
        retry_after: Option<u32>,
    },
    /// Send the file, then garbage forever, without `Content-Length` (chunked encoding).
    EndlessData,
    /// Send the file, then this many bytes of garbage, with a `Content-Length` covering both
    /// (a length that lies about the file).
    ExtraData(u64),
}

impl Fault {
    /// `503 Service Unavailable`, optionally with `Retry-After`.
    pub fn unavailable(retry_after: Option<u32>) -> Fault {
        Fault::Status {
            code: 503,
            retry_after,
        }
    }

    /// `404 Not Found`.
    pub fn not_found() -> Fault {
        Fault::Status {
            code: 404,
            retry_after: None,
        }
    }

    /// This fault for the next `count` matching responses.
    pub fn times(self, count: u32) -> FaultRule {
        FaultRule {
            fault: self,
            remaining: Some(count),
            path_contains: None,
        }
    }

    /// This fault for every matching response until cleared.
    pub fn always(self) -> FaultRule {
        FaultRule {
            fault: self,
            remaining: None,
            path_contains: None,
        }
    }

    /// True for faults that only concern requests carrying a `Range` header.
    fn needs_range(&self) -> bool {
        matches!(self, Fault::IgnoreRange | Fault::WrongContentRange(_))
    }
}

/// A fault with how often and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    fault: Fault,
    remaining: Option<u32>,
    path_contains: Option<String>,
}

impl FaultRule {
    /// Limits the rule to URL paths containing `substring`.
    pub fn on_paths_containing(mut self, substring: &str) -> FaultRule {
        self.path_contains = Some(substring.to_owned());
        self
    }

    fn matches(&self, path: &str, has_range: bool) -> bool {
        self.remaining != Some(0)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|needle| path.contains(needle))
            && (has_range || !self.fault.needs_range())
    }
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> FaultRule {
        fault.always()
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Time since the server was created (across stops and restarts).
    pub at: Duration,
    /// The HTTP method.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Body bytes handed to the connection, once the body has ended or was dropped (`None`
    /// while it is still being sent; `Some(0)` for bodyless answers).
    pub body_bytes: Option<u64>,
}

/// What tests wait on.
#[derive(Debug, Default)]
struct Events {
    log: Vec<Request>,
    stalls: usize,
}

/// State shared by the server's threads and the test.
struct Shared {
    root: PathBuf,
    started: Instant,
    rules: Mutex<Vec<FaultRule>>,
    events: Mutex<Events>,
    changed: Condvar,
    release: watch::Sender<u64>,
}

impl Shared {
    fn events(&self) -> MutexGuard<'_, Events> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rules(&self) -> MutexGuard<'_, Vec<FaultRule>> {
        self.rules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, request: Request) -> usize {
        let mut events = self.events();
        events.log.push(request);
        self.changed.notify_all();
        events.log.len() - 1
    }

    fn record_body_end(&self, index: usize, sent: u64) {
        let mut events = self.events();
        if let Some(entry) = events.log.get_mut(index) {
            entry.body_bytes = Some(sent);
        }
        self.changed.notify_all();
    }

    fn record_stall(&self) {
        self.events().stalls += 1;
        self.changed.notify_all();
    }

    /// Waits until `done` holds for the events, or panics after `timeout` describing `what`.
    fn wait(&self, timeout: Duration, what: &str, done: impl Fn(&Events) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut events = self.events();
        loop {
            if done(&events) {
                return events.log.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "repo server: timed out after {timeout:?} waiting for {what}; requests so far: {:#?}",
                events.log
            );
            events = self
                .changed
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// The fault knobs of a running [`RepoServer`].
pub struct Faults<'a> {
    shared: &'a Shared,
}

impl Faults<'_> {
    /// Adds a rule (a bare [`Fault`] applies always). Several rules may be active; a status
    /// rule answers alone, body rules combine.
    pub fn add(&self, rule: impl Into<FaultRule>) -> &Self {
        self.shared.rules().push(rule.into());
        self
    }

    /// Removes every rule.
    pub fn clear(&self) -> &Self {
        self.shared.rules().clear();
        self
    }

    /// Lets every stalled body (and every body that will reach its stall point from now on in
    /// a response already started) continue.
    pub fn release_stalls(&self) -> &Self {
        self.shared
            .release
            .send_modify(|generation| *generation += 1);
        self
    }
}

/// The running server thread.
struct Running {
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// An HTTP/1.1 server on a loopback port serving a folder, with fault knobs and a request log.
pub struct RepoServer {
    port: u16,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl RepoServer {
    /// Starts serving `root` on a free loopback port.
    pub fn start(root: impl Into<PathBuf>) -> RepoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared {
            root: root.into(),
            started: Instant::now(),
            rules: Mutex::new(Vec::new()),
            events: Mutex::new(Events::default()),
            changed: Condvar::new(),
            release: watch::Sender::new(0),
        });
        let running = Some(serve(listener, Arc::clone(&shared)));
        RepoServer {
            port,
            shared,
            running,
        }
    }

    /// The port it listens on (the same across [`RepoServer::stop`] and
    /// [`RepoServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder it serves.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// `http://127.0.0.1:<port>/<path>` (`path` without a leading slash, e.g.
    /// `targets/x.dmb`).
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The fault knobs.
    pub fn faults(&self) -> Faults<'_> {
        Faults {
            shared: &self.shared,
        }
    }

    /// Stops listening and drops every open connection (mid-body ones included). Connections
    /// to the port are refused until [`RepoServer::restart`].
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // The thread may already be gone if it panicked; joining reports that.
            let _ = running.shutdown.send(());
            if let Err(panic) = running.thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Listens again on the same port after [`RepoServer::stop`] (no-op when running).
    pub fn restart(&mut self) {
        if self.running.is_some() {
            return;
        }
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = TcpListener::bind(address)
            .unwrap_or_else(|e| panic!("repo server: cannot listen on {address} again: {e}"));
        self.running = Some(serve(listener, Arc::clone(&self.shared)));
    }

    /// True between [`RepoServer::start`]/[`RepoServer::restart`] and [`RepoServer::stop`].
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The request log so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.events().log.clone()
    }

    /// Waits until at least `count` requests were answered and returns the log; panics with
    /// the log after `timeout`.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Request> {
        self.shared
            .wait(timeout, &format!("{count} requests"), |events| {
                events.log.len() >= count
            })
    }

    /// Waits until `done` holds for the request log and returns it; panics naming `what`
    /// after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        self.shared.wait(timeout, what, |events| done(&events.log))
    }

    /// Waits until bodies have reached a [`Fault::StallAfter`] point `count` times in total;
    /// panics with the log after `timeout`.
    pub fn wait_for_stalls(&self, count: usize, timeout: Duration) -> Vec<Request> {
        self.shared
            .wait(timeout, &format!("{count} stalled bodies"), |events| {
                events.stalls >= count
            })
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(());
            // Do not turn a test failure into a double panic.
            let _ = running.thread.join();
        }
    }
}

/// Runs the server on `listener` in a thread with its own runtime until told to stop.
fn serve(listener: TcpListener, shared: Arc<Shared>) -> Running {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (shutdown, stop) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("repo-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("repo server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = Router::new().fallback(handle).with_state(shared);
                tokio::select! {
                    result = axum::serve(listener, app).into_future() => {
                        if let Err(e) = result {
                            panic!("repo server failed: {e}");
                        }
                    }
                    _ = stop => {}
                }
            });
            // Dropping the runtime now cancels the connection tasks: open connections are
            // closed, stalled bodies included.
            runtime.shutdown_timeout(Duration::ZERO);
        })
        .expect("spawn the repo server thread");
    Running { shutdown, thread }
}

/// How a response's body misbehaves.
#[derive(Debug, Default, Clone, Copy)]
struct BodyPlan {
    reset_after: Option<u64>,
    stall_after: Option<u64>,
    garbage: Garbage,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Garbage {
    #[default]
    None,
    Forever,
    Bytes(u64),
}

/// The faults that apply to one request, each rule consumed once.
#[derive(Debug, Default)]
struct Applied {
    status: Option<(u16, Option<u32>)>,
    ignore_range: bool,
    shift: Option<i64>,
    body: BodyPlan,
}

fn apply_rules(rules: &mut Vec<FaultRule>, path: &str, has_range: bool) -> Applied {
    let mut applied = Applied::default();
    if let Some(rule) = rules
        .iter_mut()
        .find(|r| r.matches(path, has_range) && matches!(r.fault, Fault::Status { .. }))
    {
        if let Fault::Status { code, retry_after } = rule.fault {
            applied.status = Some((code, retry_after));
        }
        consume(rule);
    } else {
        for rule in rules.iter_mut().filter(|r| r.matches(path, has_range)) {
            match rule.fault {
                Fault::ResetAfter(n) => applied.body.reset_after = Some(n),
                Fault::StallAfter(n) => applied.body.stall_after = Some(n),
                Fault::IgnoreRange => applied.ignore_range = true,
                Fault::WrongContentRange(shift) => applied.shift = Some(shift),
                Fault::EndlessData => applied.body.garbage = Garbage::Forever,
                Fault::ExtraData(n) => applied.body.garbage = Garbage::Bytes(n),
                Fault::Status { .. } => continue,
            }
            consume(rule);
        }
    }
    rules.retain(|r| r.remaining != Some(0));
    applied
}

fn consume(rule: &mut FaultRule) {
    if let Some(remaining) = rule.remaining.as_mut() {
        *remaining = remaining.saturating_sub(1);
    }
}

/// The answer to a `Range` header for a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeAnswer {
    /// No (usable) range: the whole file with 200.
    Whole,
    /// Bytes `first..=last` with 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Interprets a single-range `Range` header; malformed or multi-range headers are ignored, as
/// RFC 9110 allows.
fn range_answer(value: &str, len: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part(len - n.min(len), len - 1),
            None => RangeAnswer::Whole,
        },
        (first, "") => match number(first) {
            Some(a) if a < len => RangeAnswer::Part(a, len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (first, last) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a > b => RangeAnswer::Whole,
            (Some(a), Some(_)) if a >= len => RangeAnswer::Unsatisfiable,
            (Some(a), Some(b)) => RangeAnswer::Part(a, b.min(len - 1)),
            _ => RangeAnswer::Whole,
        },
    }
}

/// The file below `root` that a URL path names, if the path is a plain relative one.
fn file_for(root: &Path, url_path: &str) -> Option<PathBuf> {
    let relative = Path::new(url_path.trim_start_matches('/'));
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(root.join(relative))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    let range = headers
        .get(header::RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let applied = apply_rules(&mut shared.rules(), &path, range.is_some());
    let generation = *shared.release.borrow();

    let log = Request {
        at: shared.started.elapsed(),
        method: method.to_string(),
        path: path.clone(),
        range: range.clone(),
        status: 0,
        body_bytes: Some(0),
    };
    if method != Method::GET {
        return bodyless(&shared, log, StatusCode::METHOD_NOT_ALLOWED, &[]);
    }
    if let Some((code, retry_after)) = applied.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let extra: Vec<(header::HeaderName, HeaderValue)> = retry_after
            .map(|s| (header::RETRY_AFTER, HeaderValue::from(s)))
            .into_iter()
            .collect();
        return bodyless(&shared, log, status, &extra);
    }
    let content = match file_for(&shared.root, &path) {
        Some(file) => tokio::fs::read(&file).await,
        None => Err(io::Error::from(io::ErrorKind::NotFound)),
    };
    let content = match content {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => return bodyless(&shared, log, StatusCode::NOT_FOUND, &[]),
    };
    let len = content.len() as u64;

    let answer = match (&range, applied.ignore_range) {
        (Some(value), false) => range_answer(value, len),
        _ => RangeAnswer::Whole,
    };
    let (status, data, content_range) = match answer {
        RangeAnswer::Whole => (StatusCode::OK, content, None),
        RangeAnswer::Unsatisfiable => {
            let value = HeaderValue::from_str(&format!("bytes */{len}")).expect("header value");
            return bodyless(
                &shared,
                log,
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[(header::CONTENT_RANGE, value)],
            );
        }
        RangeAnswer::Part(first, last) => {
            let first = match applied.shift {
                Some(shift) => first.saturating_add_signed(shift).min(last),
                None => first,
            };
            let slice = content.slice(
                usize::try_from(first).expect("in memory")
                    ..=usize::try_from(last).expect("in memory"),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                slice,
                Some(format!("bytes {first}-{last}/{len}")),
            )
        }
    };

    let mut response_headers = HeaderMap::new();
    let declared = match applied.body.garbage {
        Garbage::None => Some(data.len() as u64),
        Garbage::Bytes(extra) => Some(data.len() as u64 + extra),
        Garbage::Forever => None,
    };
    if let Some(declared) = declared {
        response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
    }
    if let Some(content_range) = content_range {
        response_headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&content_range).expect("header value"),
        );
    }
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    let index = shared.record(Request {
        status: status.as_u16(),
        body_bytes: None,
        ..log
    });
    let body = BodyStream {
        data,
        pos: 0,
        sent: 0,
        plan: applied.body,
        stalled: false,
        done: false,
        release: shared.release.subscribe(),
        generation,
        shared,
        index,
    };
    let stream = stream::unfold(body, |mut body| async move {
        let item = body.next().await?;
        Some((item, body))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// Records a bodyless answer and builds it.
fn bodyless(
    shared: &Shared,
    mut log: Request,
    status: StatusCode,
    headers: &[(header::HeaderName, HeaderValue)],
) -> Response {
    log.status = status.as_u16();
    shared.record(log);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The state of one response body; records the bytes sent when it is dropped.
struct BodyStream {
    data: Bytes,
    pos: usize,
    sent: u64,
    plan: BodyPlan,
    stalled: bool,
    done: bool,
    release: watch::Receiver<u64>,
    generation: u64,
    shared: Arc<Shared>,
    index: usize,
}

impl BodyStream {
    async fn next(&mut self) -> Option<Result<Bytes, io::Error>> {
        if self.done {
            return None;
        }
        if let Some(at) = self.plan.stall_after
            && !self.stalled
            && self.sent >= at
        {
            self.stalled = true;
            self.shared.record_stall();
            let generation = self.generation;
            if self.release.wait_for(|g| *g > generation).await.is_err() {
                self.done = true;
                return None;
            }
        }
        if let Some(at) = self.plan.reset_after
            && self.sent >= at
        {
            self.done = true;
            return Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "repo server fault: connection reset mid-body",
            )));
        }
        let mut limit = CHUNK as u64;
        if let Some(at) = self.plan.stall_after.filter(|_| !self.stalled) {
            limit = limit.min(at - self.sent);
        }
        if let Some(at) = self.plan.reset_after {
            limit = limit.min(at - self.sent);
        }
        let limit = usize::try_from(limit).unwrap_or(CHUNK);
        let chunk = if self.pos < self.data.len() {
            let end = (self.pos + limit).min(self.data.len());
            let chunk = self.data.slice(self.pos..end);
            self.pos = end;
            chunk
        } else {
            let garbage_left = match self.plan.garbage {
                Garbage::None => 0,
                Garbage::Forever => limit as u64,
                Garbage::Bytes(extra) => (self.data.len() as u64 + extra) - self.sent,
            };
            let n = usize::try_from(garbage_left.min(limit as u64)).unwrap_or(limit);
            if n == 0 {
                self.done = true;
                return None;
            }
            Bytes::from(vec![GARBAGE; n])
        };
        self.sent += chunk.len() as u64;
        Some(Ok(chunk))
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        self.shared.record_body_end(self.index, self.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_answers_follow_rfc_9110_for_single_ranges() {
        assert_eq!(range_answer("bytes=0-", 10), RangeAnswer::Part(0, 9));
        assert_eq!(range_answer("bytes=4-", 10), RangeAnswer::Part(4, 9));
        assert_eq!(range_answer("bytes=4-6", 10), RangeAnswer::Part(4, 6));
        assert_eq!(range_answer("bytes=4-60", 10), RangeAnswer::Part(4, 9));
        assert_eq!(range_answer("bytes=-3", 10), RangeAnswer::Part(7, 9));
        assert_eq!(range_answer("bytes=-30", 10), RangeAnswer::Part(0, 9));
        assert_eq!(range_answer("bytes=10-", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range_answer("bytes=10-12", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range_answer("bytes=-0", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range_answer("bytes=6-4", 10), RangeAnswer::Whole);
        assert_eq!(range_answer("bytes=0-1,4-5", 10), RangeAnswer::Whole);
        assert_eq!(range_answer("items=0-1", 10), RangeAnswer::Whole);
        assert_eq!(range_answer("bytes=x-", 10), RangeAnswer::Whole);
    }

    #[test]
    fn url_paths_outside_the_folder_name_no_file() {
        let root = Path::new("/srv/repo");
        assert_eq!(
            file_for(root, "/targets/a.dmb"),
            Some(PathBuf::from("/srv/repo/targets/a.dmb"))
        );
        assert_eq!(file_for(root, "/../etc/passwd"), None);
        assert_eq!(file_for(root, "/targets/../../x"), None);
        assert_eq!(file_for(root, "/"), None);
    }

    #[test]
    fn counted_rules_are_consumed_and_range_faults_wait_for_range_requests() {
        let mut rules = vec![
            Fault::IgnoreRange.times(1),
            Fault::ResetAfter(5)
                .times(2)
                .on_paths_containing("targets/"),
        ];
        let first = apply_rules(&mut rules, "/targets/a", false);
        assert!(!first.ignore_range);
        assert_eq!(first.body.reset_after, Some(5));
        let second = apply_rules(&mut rules, "/metadata/root.json", true);
        assert!(second.ignore_range);
        assert_eq!(second.body.reset_after, None);
        let third = apply_rules(&mut rules, "/targets/a", true);
        assert!(!third.ignore_range);
        assert_eq!(third.body.reset_after, Some(5));
        assert!(rules.is_empty());
    }
}
