//! The capture receiver's HTTP requests (`defect-central capture-server`), sent through its
//! real router, one input holding one or more requests in turn against an empty store.
//!
//! An input is requests separated by a line `%%`. A request is a line `METHOD PATH`, header
//! lines `name: value`, an empty line, and the body. After each request:
//! - nothing exists outside `<store>/<station>/<file>` (or that file's `.part`);
//! - an object the request made visible holds exactly the bytes whose SHA-256 it announced.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use defect_central::receiver::{self, SHA256};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

struct Receiver {
    runtime: tokio::runtime::Runtime,
    store: tempfile::TempDir,
}

thread_local! {
    static RECEIVER: RefCell<Option<Receiver>> = const { RefCell::new(None) };
}

fn receiver() -> Receiver {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"));
    let store = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a store: {e}"));
    Receiver { runtime, store }
}

/// Sends the requests in `data` to a fresh receiver, checking the store after each.
pub fn run(data: &[u8]) {
    RECEIVER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let receiver = cell.get_or_insert_with(receiver);
        let store = receiver.store.path();
        empty(store);
        let router = receiver::router(store);
        for raw in split(data, b"\n%%\n") {
            let Some((request, announced)) = request(raw) else {
                continue;
            };
            let before = objects(store);
            let response = receiver
                .runtime
                .block_on(router.clone().oneshot(request))
                .unwrap_or_else(|never| match never {});
            drop(response);
            for object in objects(store).into_iter().filter(|o| !before.contains(o)) {
                let bytes = std::fs::read(&object)
                    .unwrap_or_else(|e| panic!("{}: unreadable: {e}", object.display()));
                let sha = hex::encode(Sha256::digest(&bytes));
                assert_eq!(
                    Some(sha),
                    announced,
                    "{} became visible with content other than announced",
                    object.display()
                );
            }
        }
        empty(store);
    });
}

fn split<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    parts.push(rest);
    parts
}

/// The request in `raw`, and the SHA-256 it announces (lower case), if it is a request.
fn request(raw: &[u8]) -> Option<(Request<Body>, Option<String>)> {
    let head_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(raw.len());
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let body = raw.get(head_end + 2..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let mut builder = Request::builder().method(method).uri(path);
    let mut announced = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        if name.as_str() == SHA256 && announced.is_none() {
            // The receiver reads the first of repeated headers.
            announced = value.to_str().ok().map(str::to_ascii_lowercase);
        }
        builder = builder.header(name, value);
    }
    builder.body(Body::from(body)).ok().map(|r| (r, announced))
}

/// Every file in the store, checking that each is `<station>/<file>` or its `.part`.
fn objects(store: &Path) -> Vec<PathBuf> {
    let mut visible = Vec::new();
    let stations = std::fs::read_dir(store).unwrap_or_else(|e| panic!("store: {e}"));
    for station in stations.flatten() {
        let path = station.path();
        assert!(
            path.is_dir(),
            "{} is a file at the store's top",
            path.display()
        );
        assert!(
            !station.file_name().to_string_lossy().starts_with('.'),
            "hidden station {}",
            path.display()
        );
        let files = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for file in files.flatten() {
            let file_path = file.path();
            assert!(
                file_path.is_file(),
                "{} is not a plain file",
                file_path.display()
            );
            if !file.file_name().to_string_lossy().starts_with('.') {
                visible.push(file_path);
            }
        }
    }
    visible
}

fn empty(store: &Path) {
    if let Ok(entries) = std::fs::read_dir(store) {
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.unwrap_or_else(|e| panic!("cannot empty {}: {e}", path.display()));
        }
    }
}
