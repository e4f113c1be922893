//! The bounded on-disk store of captured frames.
//!
//! This module owns the layout of the capture folder and its size cap. Each item is the
//! frame's bytes `<id>.<ext>` and its metadata `<id>.json`, written in that order, each
//! temp-then-rename, so an item exists exactly when its metadata does; once the central
//! server holds both, an empty `<id>.uploaded` marks it. Ids start with the capture time in
//! milliseconds, so name order is age order. Over the size cap the oldest items go first, but
//! an item still waiting for upload is never deleted: then the new frame is refused instead
//! (nothing is lost before the server has it). Without uploads (local only, or the privacy
//! switch) the oldest items are evicted. Opening the store removes what a crash left half
//! written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a captured frame was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureReason {
    /// A defect score near its reject threshold.
    Uncertain,
    /// Taken while the station's drift alarm is raised.
    Drift,
    /// The random sample.
    Random,
    /// Every reject, when asked for.
    Reject,
    /// The canary candidate decided otherwise than the model in service.
    Canary,
}

impl CaptureReason {
    /// Every reason, in report order.
    pub const ALL: [CaptureReason; 5] = [
        CaptureReason::Uncertain,
        CaptureReason::Drift,
        CaptureReason::Random,
        CaptureReason::Reject,
        CaptureReason::Canary,
    ];

    /// snake_case name, as in metadata and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            CaptureReason::Uncertain => "uncertain",
            CaptureReason::Drift => "drift",
            CaptureReason::Random => "random",
            CaptureReason::Reject => "reject",
            CaptureReason::Canary => "canary",
        }
    }
}

/// What is known about a captured frame: its metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// Schema version.
    pub v: u8,
    /// The item id (also the file stem).
    pub id: String,
    /// Image file name in the store.
    pub image: String,
    /// SHA-256 of the image bytes, hex.
    pub sha256: String,
    /// Image size in bytes.
    pub bytes: u64,
    /// Station the frame came from.
    pub station: String,
    /// Part id.
    pub part: u64,
    /// Why it was captured.
    pub reason: CaptureReason,
    /// `pass` or `reject`.
    pub result: String,
    /// Decided class label.
    pub label: String,
    /// Score per label, in the model's label order.
    pub scores: Vec<(String, f32)>,
    /// Bundle name.
    pub model: String,
    /// The bundle's `model_version`.
    pub model_version: u64,
    /// When the frame was acquired, Unix milliseconds.
    pub acquired_ms: u64,
    /// When it was captured, Unix milliseconds.
    pub captured_ms: u64,
    /// The canary candidate's decision, for frames it decided otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateDecision>,
}

/// What the canary candidate decided on a captured frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateDecision {
    /// The candidate's `model_version`.
    pub model_version: u64,
    /// `pass` or `reject`.
    pub result: String,
    /// Decided class label.
    pub label: String,
    /// Score per label, in the candidate's label order.
    pub scores: Vec<(String, f32)>,
}

/// A frame to store, with its metadata less what the store computes.
#[derive(Debug, Clone)]
pub struct NewCapture {
    /// The encoded frame as received.
    pub bytes: Vec<u8>,
    /// Metadata; `id`, `image`, `sha256` and `bytes` are set by the store.
    pub meta: CaptureMeta,
}

/// Why an item could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A file of the store could not be read or written.
    #[error("capture store {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A metadata file does not parse.
    #[error("capture metadata {path}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The frame does not fit without deleting frames the server does not have yet.
    #[error(
        "capture store full: {held} bytes held, {bytes} more would pass the cap of {cap}, and every item is waiting for upload"
    )]
    Full {
        /// Bytes held.
        held: u64,
        /// Size of the refused frame.
        bytes: u64,
        /// The cap.
        cap: u64,
    },
}

/// One item as indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    bytes: u64,
    uploaded: bool,
}

/// The store: its folder, cap and index.
#[derive(Debug)]
pub struct CaptureStore {
    dir: PathBuf,
    cap: u64,
    evict_pending: bool,
    items: BTreeMap<String, Entry>,
    held: u64,
    evicted: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// File extension for encoded image bytes.
fn extension(bytes: &[u8]) -> &'static str {
    match bytes {
        [0xFF, 0xD8, ..] => "jpg",
        [0x89, b'P', b'N', b'G', ..] => "png",
        [b'B', b'M', ..] => "bmp",
        _ => "bin",
    }
}

impl CaptureStore {
    /// Opens (creating) the store in `dir` with a cap of `cap` bytes; `evict_pending` lets the
    /// cap evict items not yet uploaded (when nothing is ever uploaded). Removes half-written
    /// items.
    pub fn open(dir: &Path, cap: u64, evict_pending: bool) -> Result<CaptureStore, CaptureError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Self::index(dir, cap, evict_pending, true)
    }

    /// Indexes the complete items of the store in `dir` without changing anything, for
    /// reading while the agent runs (an export).
    pub fn read_only(dir: &Path) -> Result<CaptureStore, CaptureError> {
        Self::index(dir, u64::MAX, false, false)
    }

    fn index(
        dir: &Path,
        cap: u64,
        evict_pending: bool,
        clean: bool,
    ) -> Result<CaptureStore, CaptureError> {
        let mut metas = BTreeMap::new();
        let mut others = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".json") {
                Some(id) if !name.starts_with('.') => {
                    metas.insert(id.to_owned(), entry.path());
                }
                _ => others.push((name, entry.path())),
            }
        }
        let mut items = BTreeMap::new();
        let mut held = 0;
        let mut keep = std::collections::BTreeSet::new();
        for (id, path) in &metas {
            match read_meta(path) {
                Ok(meta) if dir.join(&meta.image).is_file() => {
                    let uploaded = dir.join(format!("{id}.uploaded")).exists();
                    held += meta.bytes;
                    items.insert(
                        id.clone(),
                        Entry {
                            bytes: meta.bytes,
                            uploaded,
                        },
                    );
                    keep.insert(meta.image);
                    keep.insert(format!("{id}.json"));
                    keep.insert(format!("{id}.uploaded"));
                }
                Ok(_) | Err(_) if clean => {
                    tracing::warn!(file = %path.display(), "incomplete captured item removed");
                    let _ = std::fs::remove_file(path);
                }
                Ok(_) | Err(_) => {}
            }
        }
        for (name, path) in others {
            if clean && !keep.contains(&name) {
                tracing::info!(file = %path.display(), "leftover capture file removed");
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(CaptureStore {
            dir: dir.to_owned(),
            cap,
            evict_pending,
            items,
            held,
            evicted: 0,
        })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of images held.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items evicted by the cap since opening.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Items not yet uploaded.
    pub fn pending_count(&self) -> usize {
        self.items.values().filter(|e| !e.uploaded).count()
    }

    /// Ids of the items not yet uploaded, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|(_, e)| !e.uploaded)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every item's metadata, oldest first.
    pub fn list(&self) -> Result<Vec<CaptureMeta>, CaptureError> {
        self.items.keys().map(|id| self.meta(id)).collect()
    }

    /// The metadata of item `id`.
    pub fn meta(&self, id: &str) -> Result<CaptureMeta, CaptureError> {
        read_meta(&self.dir.join(format!("{id}.json")))
    }

    /// Path of a file of the store.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether item `id` was uploaded.
    pub fn is_uploaded(&self, id: &str) -> bool {
        self.items.get(id).is_some_and(|e| e.uploaded)
    }

    /// Stores a frame, evicting the oldest items the cap allows to; returns the metadata as
    /// stored.
    pub fn put(&mut self, capture: NewCapture) -> Result<CaptureMeta, CaptureError> {
        let NewCapture { bytes, mut meta } = capture;
        let size = bytes.len() as u64;
        self.make_room(size)?;
        let suffix: u32 = rand::random();
        let id = format!(
            "{:013}-{}-{}-{suffix:08x}",
            meta.captured_ms, meta.station, meta.part
        );
        meta.v = 1;
        meta.image = format!("{id}.{}", extension(&bytes));
        meta.sha256 = hex::encode(Sha256::digest(&bytes));
        meta.bytes = size;
        meta.id.clone_from(&id);
        let image = self.dir.join(&meta.image);
        defect_shared::atomic::write(&image, &bytes).map_err(io(&image))?;
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let path = self.dir.join(format!("{id}.json"));
        if let Err(error) = defect_shared::atomic::write(&path, &json) {
            let _ = std::fs::remove_file(&image);
            return Err(io(&path)(error));
        }
        self.held += size;
        self.items.insert(
            id,
            Entry {
                bytes: size,
                uploaded: false,
            },
        );
        Ok(meta)
    }

    /// Records that the central server holds item `id`.
    pub fn mark_uploaded(&mut self, id: &str) -> Result<(), CaptureError> {
        let marker = self.dir.join(format!("{id}.uploaded"));
        defect_shared::atomic::write(&marker, b"").map_err(io(&marker))?;
        if let Some(entry) = self.items.get_mut(id) {
            entry.uploaded = true;
        }
        Ok(())
    }

    fn make_room(&mut self, size: u64) -> Result<(), CaptureError> {
        while self.held + size > self.cap {
            let victim = self
                .items
                .iter()
                .find(|(_, e)| e.uploaded || self.evict_pending)
                .map(|(id, _)| id.clone());
            let Some(id) = victim else {
                return Err(CaptureError::Full {
                    held: self.held,
                    bytes: size,
                    cap: self.cap,
                });
            };
            self.remove(&id)?;
            self.evicted += 1;
        }
        Ok(())
    }

    /// Deletes an item: metadata first, so a crash in between leaves only an orphan file
    /// that the next open removes.
    fn remove(&mut self, id: &str) -> Result<(), CaptureError> {
        let meta = self.meta(id)?;
        let json = self.dir.join(format!("{id}.json"));
        std::fs::remove_file(&json).map_err(io(&json))?;
        let _ = std::fs::remove_file(self.dir.join(&meta.image));
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.uploaded")));
        if let Some(entry) = self.items.remove(id) {
            self.held -= entry.bytes;
        }
        Ok(())
    }
}

fn read_meta(path: &Path) -> Result<CaptureMeta, CaptureError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| CaptureError::Meta {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(part: u64, bytes: usize) -> NewCapture {
        NewCapture {
            bytes: {
                let mut b = vec![0u8; bytes];
                b[0] = 0xFF;
                b[1] = 0xD8;
                b
            },
            meta: CaptureMeta {
                v: 0,
                id: String::new(),
                image: String::new(),
                sha256: String::new(),
                bytes: 0,
                station: "cam1".into(),
                part,
                reason: CaptureReason::Random,
                result: "pass".into(),
                label: "good".into(),
                scores: vec![("good".into(), 0.9), ("scratch".into(), 0.1)],
                model: "m".into(),
                model_version: 1,
                acquired_ms: 1,
                captured_ms: 1_700_000_000_000 + part,
                candidate: None,
            },
        }
    }

    #[test]
    fn items_survive_reopening_and_half_written_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = CaptureStore::open(dir.path(), 1 << 20, true).expect("open");
        let first = store.put(capture(1, 100)).expect("put");
        store.put(capture(2, 100)).expect("put");
        assert_eq!(first.image, format!("{}.jpg", first.id));
        assert_eq!(first.sha256.len(), 64);
        store.mark_uploaded(&first.id).expect("mark");
        // What a crash between the image and its metadata leaves, and a temporary file.
        std::fs::write(dir.path().join("1799999999999-cam1-9-00000000.jpg"), b"x").expect("orphan");
        std::fs::write(dir.path().join(".tmp.json.1.tmp"), b"x").expect("temp");
        drop(store);
        let store = CaptureStore::open(dir.path(), 1 << 20, true).expect("reopen");
        assert_eq!(store.len(), 2);
        assert_eq!(store.held_bytes(), 200);
        assert!(store.is_uploaded(&first.id));
        assert_eq!(store.pending().len(), 1);
        let files = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(files, 5, "2 images, 2 metadata files, 1 marker");
    }

    #[test]
    fn the_cap_evicts_the_oldest_items_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = CaptureStore::open(dir.path(), 250, true).expect("open");
        let ids: Vec<String> = (1..=4)
            .map(|p| store.put(capture(p, 100)).expect("put").id)
            .collect();
        assert_eq!(store.len(), 2);
        assert_eq!(store.evicted(), 2);
        let left: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(left, ids[2..].to_vec());
    }

    #[test]
    fn items_waiting_for_upload_are_never_evicted_the_new_frame_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = CaptureStore::open(dir.path(), 250, false).expect("open");
        let first = store.put(capture(1, 100)).expect("put");
        store.put(capture(2, 100)).expect("put");
        let refused = store.put(capture(3, 100));
        assert!(
            matches!(refused, Err(CaptureError::Full { .. })),
            "{refused:?}"
        );
        assert_eq!(store.len(), 2);
        // Once the server holds the oldest, it makes room.
        store.mark_uploaded(&first.id).expect("mark");
        store.put(capture(3, 100)).expect("put after upload");
        assert_eq!(store.len(), 2);
        assert!(store.meta(&first.id).is_err());
    }
}
