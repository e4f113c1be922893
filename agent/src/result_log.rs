//! The result log: every outcome, on disk, before its frame counts as handled.
//!
//! This module owns the agent's local store-and-forward log of [`Outcome`]s, a sled database in
//! its own folder: sequence numbers, the delivered cursor, retention of undelivered outcomes and
//! what happens to an entry that no longer decodes. It does not own publishing (the MQTT
//! forwarder reads [`ResultLog::undelivered`], publishes, then calls
//! [`ResultLog::mark_delivered`]) nor when retention runs (the daemon calls
//! [`ResultLog::enforce_retention`] on its own schedule). It registers its backlog and
//! retention drops for the metrics endpoint ([`ResultLog::register_metrics`]).
//!
//! # On disk
//!
//! - tree `results`: key = seq as a big-endian `u64`, so sled's key order is seq order; value =
//!   the outcome as JSON.
//! - tree `meta`: `high_water`, the highest seq ever assigned, and `delivered`, the delivered
//!   cursor; both big-endian `u64`.
//! - tree `corrupt`: entries that no longer decode, moved aside under their key for inspection.
//! - tree `frames`: the frame files whose outcome is logged while the file may still be in its
//!   hot folder, key = [`FrameIdentity`] (station, file name, content SHA-256), value = the
//!   seq. Written in the same transaction as the outcome ([`ResultLog::append_frames`]) and
//!   removed once the file is ([`ResultLog::forget_frame`]), so a file found again after a crash
//!   is recognised as decided ([`ResultLog::logged_frame`]) and not decided twice.
//!
//! # Crash safety
//!
//! [`ResultLog::append`] writes a call's outcomes and the new high-water mark in one sled
//! transaction, then flushes once: after a crash either all of them are there or none is, and
//! once `append` returns they survive. A flush is sled's `flush` followed by an `fdatasync` of
//! sled's `db` file: on Linux sled 0.34 syncs its log with `sync_file_range` only, which
//! survives a killed process but not a power cut (it neither flushes the drive's cache nor the
//! file's size), and leaves the real `fsync` to a background thread every 500 ms. The next seq is one past the largest of the
//! high-water mark, the last key and the cursor, so a seq is never handed out twice, even after
//! every entry was delivered and removed. [`ResultLog::mark_delivered`] persists the cursor
//! first and removes the entries after; [`ResultLog::open`] removes entries at or below the
//! cursor that a crash in between left behind.
//!
//! sled 0.34 writes a snapshot of its page table at every open that finds the log grown, into
//! `snap.<lsn>.generating`, and renames it to `snap.<lsn>` once complete. Its recovery then
//! reads the newest `snap.*` file *including* an unfinished `.generating` one (sled fixed this
//! after 0.34.7 and never released the fix), so a process killed while opening the log left a
//! folder sled refused to open again (`Corruption { at: None }`). [`ResultLog::open`] removes
//! such leftovers first, as later sled does by ignoring them: an unfinished snapshot holds
//! nothing the log and the previous snapshot do not.
//!
//! # Corrupt entries
//!
//! An entry whose value does not decode, or decodes to another seq than its key, is never
//! published: [`ResultLog::undelivered`] moves it to the `corrupt` tree, logs a warning naming
//! its seq and goes on with the next one, so one bad entry cannot block the forwarder forever.
//! [`ResultLog::get`] reports it as [`ResultLogError::Corrupt`].

use std::convert::Infallible;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, IVec, Transactional, Tree};
use tracing::{info, warn};

use crate::outcome::Outcome;

/// A frame file's identity: its station, its file name and the SHA-256 of its content.
///
/// Two files are the same frame only when all three match: a camera that writes new content
/// under a name it used before sends a new frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameIdentity {
    /// The station whose hot folder holds the file.
    pub station: String,
    /// The file's name in that folder.
    pub file: String,
    /// SHA-256 of the file's content, lowercase hex.
    pub sha256: String,
}

impl FrameIdentity {
    /// The key of this frame in the `frames` tree.
    fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.station.len() + self.file.len() + 66);
        key.extend_from_slice(self.station.as_bytes());
        key.push(0);
        key.extend_from_slice(self.file.as_bytes());
        key.push(0);
        key.extend_from_slice(self.sha256.as_bytes());
        key
    }
}

/// Meta key of the highest seq ever assigned.
const HIGH_WATER: &str = "high_water";
/// Meta key of the delivered cursor.
const DELIVERED: &str = "delivered";
/// Removes the snapshot files sled 0.34 left unfinished (`snap.<lsn>.generating`) in `dir`, so
/// that sled recovers from its log and last complete snapshot instead of refusing to open.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut removed = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            warn!(
                path = %path.display(),
                "removing an unfinished result-log snapshot left by a crash while the log was opening"
            );
            std::fs::remove_file(&path)?;
            removed = true;
        }
    }
    if removed {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Most keys removed by one sled batch when delivering or dropping many entries.
const REMOVE_CHUNK: usize = 1024;
/// sled's page cache limit: the log is written and read once, it needs little cache.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Retention of undelivered results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Most undelivered outcomes kept; past it the oldest are dropped.
    pub max_entries: u64,
    /// Oldest undelivered outcome kept, by its `decided_ms`; older ones are dropped.
    pub max_age: Duration,
}

impl From<&ResultsSection> for RetentionPolicy {
    fn from(section: &ResultsSection) -> Self {
        RetentionPolicy {
            max_entries: section.max_entries,
            max_age: Duration::from_secs(section.max_age_h.saturating_mul(3600)),
        }
    }
}

/// Why the result log could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResultLogError {
    /// The sled database could not be opened or recovered.
    #[error("cannot open result log {path}")]
    Open {
        /// The log's folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// sled failed while reading.
    #[error("cannot read result log {path}")]
    Read {
        /// The log's folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// sled failed while writing or flushing.
    #[error("cannot write result log {path}")]
    Write {
        /// The log's folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// An entry does not decode, or holds another seq than its key.
    #[error("result log {path}: entry {seq} is corrupt: {reason}")]
    Corrupt {
        /// The log's folder.
        path: PathBuf,
        /// The entry's seq (its key).
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A bookkeeping value is unreadable; the log refuses to guess it, since a wrong guess
    /// could reuse seqs or skip undelivered outcomes.
    #[error("result log {path}: meta value {key} is corrupt: {reason}")]
    CorruptMeta {
        /// The log's folder.
        path: PathBuf,
        /// `high_water` or `delivered`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An outcome could not be encoded.
    #[error("cannot encode outcome {seq} for the result log")]
    Encode {
        /// The seq it was given.
        seq: u64,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// `mark_delivered` named a seq that was never written.
    #[error("result log {path}: cannot mark {seq} delivered, the last seq written is {last}")]
    NotWritten {
        /// The log's folder.
        path: PathBuf,
        /// The seq asked for.
        seq: u64,
        /// The highest seq written and flushed.
        last: u64,
    },
}

/// The agent's durable log of outcomes, shared by the pipeline (appending) and the forwarder
/// (reading and marking delivered); clones share one database.
#[derive(Clone)]
pub struct ResultLog {
    /// The database and the counters, shared by every clone.
    shared: Arc<Shared>,
}

/// What every clone of a [`ResultLog`] shares.
struct Shared {
    /// The log's folder, for errors and logs.
    path: PathBuf,
    /// The sled database; `flush` writes out every tree.
    db: sled::Db,
    /// sled's log file, `<dir>/db`, opened again to `fdatasync` it after sled's flush.
    db_file: File,
    /// Outcomes by big-endian seq.
    results: Tree,
    /// `high_water` and `delivered`.
    meta: Tree,
    /// Entries moved aside because they do not decode.
    corrupt: Tree,
    /// Frame files whose outcome is logged, by [`FrameIdentity`]: the seq.
    frames: Tree,
    /// Retention of undelivered outcomes.
    policy: RetentionPolicy,
    /// Held by every writer, so seqs are written in the order they are assigned and the
    /// counters below match the trees.
    writer: Mutex<()>,
    /// Highest seq assigned.
    last_seq: AtomicU64,
    /// Highest seq written and flushed; readers see nothing above it.
    durable_seq: AtomicU64,
    /// Delivered cursor: every seq up to it is delivered.
    delivered: AtomicU64,
    /// Undelivered entries in `results`.
    backlog: AtomicU64,
    /// Undelivered outcomes dropped by retention since open.
    dropped_total: AtomicU64,
    /// Entries moved to `corrupt` since open.
    corrupt_total: AtomicU64,
}

impl std::fmt::Debug for ResultLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultLog")
            .field("path", &self.shared.path)
            .field("last_seq", &self.last_seq())
            .field("backlog", &self.backlog())
            .finish_non_exhaustive()
    }
}

impl ResultLog {
    /// Opens (or creates) the log in `dir`, recovering it after a crash.
    ///
    /// Reads every entry once to count the backlog.
    pub fn open(dir: &Path, policy: RetentionPolicy) -> Result<ResultLog, ResultLogError> {
        let open_err = |source| ResultLogError::Open {
            path: dir.to_owned(),
            source,
        };
        remove_unfinished_snapshots(dir).map_err(|e| open_err(e.into()))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(open_err)?;
        let results = db.open_tree("results").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let corrupt = db.open_tree("corrupt").map_err(open_err)?;
        let frames = db.open_tree("frames").map_err(open_err)?;
        // sled does not sync the folder it creates its files in; do it once here, so the log
        // file itself survives a power cut.
        let db_file = File::open(dir.join("db"))
            .and_then(|file| {
                file.sync_all()?;
                File::open(dir)?.sync_all()?;
                Ok(file)
            })
            .map_err(|e| open_err(e.into()))?;
        let high_water = read_meta(&meta, HIGH_WATER, dir)?;
        let delivered = read_meta(&meta, DELIVERED, dir)?;

        let mut backlog = 0;
        let mut max_key = 0;
        let mut stale = Batch::default();
        let mut stale_count = 0_u64;
        let mut bad_keys = Vec::new();
        for item in results.iter() {
            let (key, _) = item.map_err(open_err)?;
            match seq_of(&key) {
                Some(seq) if seq <= delivered => {
                    stale.remove(key);
                    stale_count += 1;
                }
                Some(seq) => {
                    backlog += 1;
                    max_key = max_key.max(seq);
                }
                None => bad_keys.push(key),
            }
        }
        let last_seq = high_water.max(max_key).max(delivered);
        let log = ResultLog {
            shared: Arc::new(Shared {
                path: dir.to_owned(),
                db,
                db_file,
                results,
                meta,
                corrupt,
                frames,
                policy,
                writer: Mutex::new(()),
                last_seq: AtomicU64::new(last_seq),
                durable_seq: AtomicU64::new(last_seq),
                delivered: AtomicU64::new(delivered),
                backlog: AtomicU64::new(backlog),
                dropped_total: AtomicU64::new(0),
                corrupt_total: AtomicU64::new(0),
            }),
        };
        if stale_count > 0 {
            // A crash between persisting the cursor and removing the delivered entries.
            log.shared.results.apply_batch(stale).map_err(open_err)?;
            log.shared.flush()?;
        }
        for key in bad_keys {
            log.quarantine(&key, None, "key is not an 8-byte seq")?;
        }
        info!(
            path = %dir.display(),
            last_seq,
            delivered,
            backlog,
            removed_delivered = stale_count,
            "result log opened"
        );
        Ok(log)
    }

    /// Assigns each outcome the next sequence number (strictly increasing, persisted, never
    /// reused after restart or crash), writes them all, and flushes to disk before returning
    /// (one flush per call: group commit).
    ///
    /// All or nothing: after a crash either every outcome of the call is in the log or none is.
    /// Seqs assigned by a call that fails are not handed out again.
    pub fn append(&self, outcomes: &mut [Outcome]) -> Result<(), ResultLogError> {
        self.append_frames(outcomes, &[])
    }

    /// [`ResultLog::append`], recording in the same transaction, for each outcome whose
    /// `identities` entry (same index) is a frame file, that the file's outcome is logged under
    /// its seq. `identities` may be shorter than `outcomes`.
    pub fn append_frames(
        &self,
        outcomes: &mut [Outcome],
        identities: &[Option<FrameIdentity>],
    ) -> Result<(), ResultLogError> {
        let Some(count) = u64::try_from(outcomes.len()).ok().filter(|&n| n > 0) else {
            return Ok(());
        };
        let s = &*self.shared;
        let _writer = s.lock();
        let first = s.last_seq.load(Ordering::Acquire) + 1;
        let last = first + count - 1;
        // Consumed even if the call fails below: a seq is never handed out twice.
        s.last_seq.store(last, Ordering::Release);
        let mut encoded = Vec::with_capacity(outcomes.len());
        let mut frames = Vec::new();
        for (index, (seq, outcome)) in (first..=last).zip(outcomes.iter_mut()).enumerate() {
            outcome.seq = seq;
            let value = serde_json::to_vec(outcome)
                .map_err(|source| ResultLogError::Encode { seq, source })?;
            encoded.push((seq.to_be_bytes(), value));
            if let Some(Some(identity)) = identities.get(index) {
                frames.push((identity.key(), seq.to_be_bytes()));
            }
        }
        (&s.results, &s.meta, &s.frames)
            .transaction(|(results, meta, frame_tree)| {
                for (key, value) in &encoded {
                    results.insert(&key[..], value.as_slice())?;
                }
                for (key, seq) in &frames {
                    frame_tree.insert(key.as_slice(), &seq[..])?;
                }
                meta.insert(HIGH_WATER, &last.to_be_bytes()[..])?;
                Ok::<(), ConflictableTransactionError<Infallible>>(())
            })
            .map_err(|e| s.transaction_error(e))?;
        s.backlog.fetch_add(count, Ordering::AcqRel);
        s.flush()?;
        s.durable_seq.store(last, Ordering::Release);
        Ok(())
    }

    /// The seq under which the outcome of the frame file `identity` was logged, if it was and
    /// the file was not completed since.
    pub fn logged_frame(&self, identity: &FrameIdentity) -> Result<Option<u64>, ResultLogError> {
        let s = &*self.shared;
        let value = s
            .frames
            .get(identity.key())
            .map_err(|source| s.read_error(source))?;
        Ok(value.as_deref().and_then(seq_of))
    }

    /// Forgets the frame file `identity`: it left its hot folder. Not flushed: a crash before
    /// the next flush leaves an entry that [`ResultLog::forget_frames_of`] removes.
    pub fn forget_frame(&self, identity: &FrameIdentity) -> Result<(), ResultLogError> {
        let s = &*self.shared;
        s.frames
            .remove(identity.key())
            .map_err(|source| s.write_error(source))?;
        Ok(())
    }

    /// Forgets every frame file of `station` for which `gone(file name)` is true; returns how
    /// many were forgotten. Called at start-up with the files the hot folder no longer holds.
    pub fn forget_frames_of(
        &self,
        station: &str,
        gone: impl Fn(&str) -> bool,
    ) -> Result<usize, ResultLogError> {
        let s = &*self.shared;
        let mut prefix = station.as_bytes().to_vec();
        prefix.push(0);
        let mut stale = Batch::default();
        let mut count = 0;
        for item in s.frames.scan_prefix(&prefix) {
            let (key, _) = item.map_err(|source| s.read_error(source))?;
            let file = key[prefix.len()..]
                .split(|b| *b == 0)
                .next()
                .map(String::from_utf8_lossy);
            if file.is_some_and(|file| gone(&file)) {
                stale.remove(key);
                count += 1;
            }
        }
        s.frames
            .apply_batch(stale)
            .map_err(|source| s.write_error(source))?;
        Ok(count)
    }

    /// Up to `max` undelivered outcomes with seq > the delivered cursor, oldest first.
    ///
    /// Only flushed outcomes are returned. A corrupt entry is moved to the `corrupt` tree with
    /// a warning naming its seq, and skipped.
    pub fn undelivered(&self, max: usize) -> Result<Vec<Outcome>, ResultLogError> {
        let s = &*self.shared;
        let mut found = Vec::new();
        let from = s.delivered.load(Ordering::Acquire).saturating_add(1);
        let to = s.durable_seq.load(Ordering::Acquire);
        if max == 0 || from > to {
            return Ok(found);
        }
        let mut corrupt = Vec::new();
        for item in s.results.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = item.map_err(|source| s.read_error(source))?;
            let Some(seq) = seq_of(&key) else {
                corrupt.push((key, None, "key is not an 8-byte seq".to_owned()));
                continue;
            };
            match decode(seq, &value) {
                Ok(outcome) => {
                    found.push(outcome);
                    if found.len() >= max {
                        break;
                    }
                }
                Err(reason) => corrupt.push((key, Some(seq), reason)),
            }
        }
        for (key, seq, reason) in corrupt {
            self.quarantine(&key, seq, &reason)?;
        }
        Ok(found)
    }

    /// Makes everything written so far durable, the delivered cursor included (done at a clean
    /// shutdown; appends flush by themselves).
    pub fn sync(&self) -> Result<(), ResultLogError> {
        let s = &*self.shared;
        let _writer = s.lock();
        s.flush()
    }

    /// Marks every outcome up to and including `seq` as delivered and removes them.
    ///
    /// A `seq` at or below the cursor is a no-op; one above the last written seq is refused.
    /// The cursor is not flushed here (it rides on the next append's flush or sled's own
    /// periodic one): after a crash a few delivered outcomes may be forwarded again, which
    /// consumers absorb by `seq`, and the frame path never waits for a second `fdatasync`.
    pub fn mark_delivered(&self, seq: u64) -> Result<(), ResultLogError> {
        let s = &*self.shared;
        let _writer = s.lock();
        let delivered = s.delivered.load(Ordering::Acquire);
        if seq <= delivered {
            return Ok(());
        }
        let last = s.durable_seq.load(Ordering::Acquire);
        if seq > last {
            return Err(ResultLogError::NotWritten {
                path: s.path.clone(),
                seq,
                last,
            });
        }
        // The cursor first: should the removal below be cut short, open() finishes it.
        s.meta
            .insert(DELIVERED, &seq.to_be_bytes()[..])
            .map_err(|source| s.write_error(source))?;
        s.delivered.store(seq, Ordering::Release);
        let removed = s.remove_range(delivered + 1, seq, |_, _| Verdict::Remove)?;
        s.sub_backlog(removed);
        Ok(())
    }

    /// Number of undelivered outcomes.
    pub fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// The highest sequence number ever assigned (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The delivered cursor: every seq up to it is delivered (0 if none).
    pub fn delivered_seq(&self) -> u64 {
        self.shared.delivered.load(Ordering::Acquire)
    }

    /// The outcome logged under `seq`, if it is still in the log (undelivered).
    pub fn get(&self, seq: u64) -> Result<Option<Outcome>, ResultLogError> {
        let s = &*self.shared;
        let Some(value) = s
            .results
            .get(seq.to_be_bytes())
            .map_err(|source| s.read_error(source))?
        else {
            return Ok(None);
        };
        decode(seq, &value)
            .map(Some)
            .map_err(|reason| ResultLogError::Corrupt {
                path: s.path.clone(),
                seq,
                reason,
            })
    }

    /// Applies the retention policy at `now_ms` (Unix ms; compare with Outcome::decided_ms):
    /// drops the oldest undelivered outcomes beyond max_entries and those older than max_age;
    /// returns how many were dropped (also accumulated in a counter readable via
    /// `dropped_total()`).
    ///
    /// Age is checked from the oldest seq on and stops at the first outcome young enough, so an
    /// old outcome logged after a younger one goes at a later call.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<u64, ResultLogError> {
        let s = &*self.shared;
        let _writer = s.lock();
        let over = s
            .backlog
            .load(Ordering::Acquire)
            .saturating_sub(s.policy.max_entries);
        let max_age_ms = u64::try_from(s.policy.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let from = s.delivered.load(Ordering::Acquire).saturating_add(1);
        let mut by_count = 0_u64;
        let mut by_age = 0_u64;
        let dropped = s.remove_range(from, u64::MAX, |seq, value| {
            if by_count < over {
                by_count += 1;
                return Verdict::Remove;
            }
            match decode(seq, value) {
                Ok(outcome) if outcome.decided_ms < cutoff => {
                    by_age += 1;
                    Verdict::Remove
                }
                Ok(_) => Verdict::Stop,
                // Left for `undelivered` to move aside; it must not stop retention meanwhile.
                Err(_) => Verdict::Keep,
            }
        })?;
        if dropped == 0 {
            return Ok(0);
        }
        s.sub_backlog(dropped);
        s.dropped_total.fetch_add(dropped, Ordering::AcqRel);
        s.flush()?;
        warn!(
            dropped,
            by_count,
            by_age,
            backlog = s.backlog.load(Ordering::Acquire),
            max_entries = s.policy.max_entries,
            max_age_s = s.policy.max_age.as_secs(),
            "result log retention dropped undelivered results"
        );
        Ok(dropped)
    }

    /// Undelivered outcomes dropped by retention since the log was opened.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped_total.load(Ordering::Acquire)
    }

    /// Corrupt entries moved aside since the log was opened.
    pub fn corrupt_total(&self) -> u64 {
        self.shared.corrupt_total.load(Ordering::Acquire)
    }

    /// Moves one corrupt entry from `results` to `corrupt`, with a warning.
    fn quarantine(&self, key: &IVec, seq: Option<u64>, reason: &str) -> Result<(), ResultLogError> {
        let s = &*self.shared;
        let _writer = s.lock();
        let moved = (&s.results, &s.corrupt)
            .transaction(|(results, corrupt)| {
                let value = results.remove(key)?;
                if let Some(value) = &value {
                    corrupt.insert(key, value.clone())?;
                }
                Ok::<bool, ConflictableTransactionError<Infallible>>(value.is_some())
            })
            .map_err(|e| s.transaction_error(e))?;
        if !moved {
            return Ok(());
        }
        if seq.is_none_or(|seq| seq > s.delivered.load(Ordering::Acquire)) {
            s.sub_backlog(1);
        }
        s.corrupt_total.fetch_add(1, Ordering::AcqRel);
        s.flush()?;
        warn!(
            path = %s.path.display(),
            seq,
            key = ?key,
            reason,
            "result log entry is corrupt; moved aside, not published"
        );
        Ok(())
    }
}

impl Shared {
    /// Takes the writer lock; a panic in another writer leaves the trees consistent, since
    /// every write is a sled batch or transaction.
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes every tree out and syncs the log file to disk.
    fn flush(&self) -> Result<(), ResultLogError> {
        self.db
            .flush()
            .and_then(|_| Ok(self.db_file.sync_data()?))
            .map_err(|source| self.write_error(source))
    }

    /// Walks the entries with `from <= seq <= to` in seq order and removes those `verdict`
    /// says to, until it says stop; returns how many were removed.
    fn remove_range(
        &self,
        from: u64,
        to: u64,
        mut verdict: impl FnMut(u64, &[u8]) -> Verdict,
    ) -> Result<u64, ResultLogError> {
        let mut removed = 0;
        let mut batch = Batch::default();
        let mut in_batch = 0;
        for item in self.results.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = item.map_err(|source| self.read_error(source))?;
            let Some(seq) = seq_of(&key) else { continue };
            match verdict(seq, &value) {
                Verdict::Remove => {}
                Verdict::Keep => continue,
                Verdict::Stop => break,
            }
            batch.remove(key);
            in_batch += 1;
            if in_batch == REMOVE_CHUNK {
                self.results
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|source| self.write_error(source))?;
                removed += in_batch as u64;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.results
                .apply_batch(batch)
                .map_err(|source| self.write_error(source))?;
            removed += in_batch as u64;
        }
        Ok(removed)
    }

    /// Lowers the backlog counter, never below zero.
    fn sub_backlog(&self, n: u64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
    }

    fn read_error(&self, source: sled::Error) -> ResultLogError {
        ResultLogError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn write_error(&self, source: sled::Error) -> ResultLogError {
        ResultLogError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn transaction_error(&self, e: TransactionError<Infallible>) -> ResultLogError {
        match e {
            TransactionError::Storage(source) => self.write_error(source),
            TransactionError::Abort(never) => match never {},
        }
    }
}

/// What [`Shared::remove_range`] does with one entry.
enum Verdict {
    /// Remove it and go on.
    Remove,
    /// Keep it and go on.
    Keep,
    /// Keep it and stop.
    Stop,
}

/// The seq of a `results` key, if it is 8 bytes long.
fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Decodes the entry stored under `seq`, or says why it is corrupt.
fn decode(seq: u64, value: &[u8]) -> Result<Outcome, String> {
    let outcome: Outcome =
        serde_json::from_slice(value).map_err(|e| format!("does not decode: {e}"))?;
    if outcome.seq != seq {
        return Err(format!("holds seq {} under key {seq}", outcome.seq));
    }
    Ok(outcome)
}

/// Reads a `meta` counter; absent means 0.
fn read_meta(meta: &Tree, key: &'static str, dir: &Path) -> Result<u64, ResultLogError> {
    let value = meta.get(key).map_err(|source| ResultLogError::Open {
        path: dir.to_owned(),
        source,
    })?;
    match value {
        None => Ok(0),
        Some(value) => seq_of(&value).ok_or_else(|| ResultLogError::CorruptMeta {
            path: dir.to_owned(),
            key,
            reason: format!("{} bytes, not 8", value.len()),
        }),
    }
}

impl ResultLog {
    /// Registers the backlog and the retention drops in `registry`, read when scraped.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ResultLogMetrics(self.clone())));
    }
}

/// The result log as a metrics collector.
#[derive(Debug)]
struct ResultLogMetrics(ResultLog);

impl Collector for ResultLogMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        encoder
            .encode_descriptor(
                "result_log_backlog_entries",
                "Outcomes in the result log not yet delivered on the results topic.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.0.backlog())?;
        encoder
            .encode_descriptor(
                "result_log_dropped_entries",
                "Undelivered outcomes dropped from the result log by retention since start.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&self.0.dropped_total(), None)
    }
}

/// The local result log (`[results]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsSection {
    /// Most results kept undelivered; past it the oldest are dropped, with a log line.
    #[serde(default = "default_results_max_entries")]
    pub max_entries: u64,
    /// Oldest undelivered result kept, in hours; older ones are dropped, with a log line.
    #[serde(default = "default_results_max_age_h")]
    pub max_age_h: u64,
}

const fn default_results_max_entries() -> u64 {
    1_000_000
}

const fn default_results_max_age_h() -> u64 {
    7 * 24
}

impl Default for ResultsSection {
    fn default() -> Self {
        ResultsSection {
            max_entries: default_results_max_entries(),
            max_age_h: default_results_max_age_h(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Decided, Ruling};
    use defect_models::Verdict;

    const HOUR_MS: u64 = 3_600_000;

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            max_entries: 1000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }

    fn outcome(part: u64, decided_ms: u64) -> Outcome {
        Outcome {
            seq: 0,
            station: "st1".to_owned(),
            part,
            acquired_ms: decided_ms.saturating_sub(5),
            decided_ms,
            latency_ms: 5,
            ruling: Ruling::Decided(Decided {
                verdict: Verdict::Pass,
                class: 0,
                label: "ok".to_owned(),
                confidence_permille: 990,
                model_version: 3,
                late: false,
            }),
        }
    }

    fn batch(parts: std::ops::Range<u64>, decided_ms: u64) -> Vec<Outcome> {
        parts.map(|p| outcome(p, decided_ms)).collect()
    }

    fn seqs(outcomes: &[Outcome]) -> Vec<u64> {
        outcomes.iter().map(|o| o.seq).collect()
    }

    #[test]
    fn append_assigns_increasing_seqs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ResultLog::open(dir.path(), policy()).expect("open");
        assert_eq!(log.last_seq(), 0);
        let mut first = batch(0..3, 1000);
        log.append(&mut first).expect("append");
        let mut second = batch(3..4, 1000);
        log.append(&mut second).expect("append");
        log.append(&mut []).expect("empty append");
        assert_eq!(seqs(&first), vec![1, 2, 3]);
        assert_eq!(seqs(&second), vec![4]);
        assert_eq!(log.last_seq(), 4);
        assert_eq!(log.backlog(), 4);
        assert_eq!(log.get(2).expect("get"), Some(first[1].clone()));
    }

    /// The snapshot files sled keeps in the log's folder, by name.
    fn snapshot_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read the log folder")
            .map(|entry| {
                entry
                    .expect("folder entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.starts_with("snap."))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_left_unfinished_by_a_kill_while_opening_does_not_stop_the_log_from_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = ResultLog::open(dir.path(), policy()).expect("open");
            log.append(&mut batch(0..5, 1000)).expect("append");
        }
        // This open finds the log grown and writes a complete snapshot, `snap.<lsn>`.
        {
            let log = ResultLog::open(dir.path(), policy()).expect("reopen");
            log.append(&mut batch(5..8, 1000)).expect("append");
        }
        let complete = snapshot_names(dir.path());
        assert_eq!(complete.len(), 1, "one complete snapshot: {complete:?}");
        let bytes = std::fs::read(dir.path().join(&complete[0])).expect("read snapshot");
        // What a process killed in sled's `write_snapshot` leaves: a newer snapshot, part
        // written and never renamed; and one killed right after creating the file: empty.
        std::fs::write(
            dir.path().join("snap.00000000FFFFFFFF.generating"),
            &bytes[..bytes.len() / 2],
        )
        .expect("write partial snapshot");
        std::fs::write(dir.path().join("snap.00000000FFFFFFFE.generating"), b"")
            .expect("write empty snapshot");

        let log = ResultLog::open(dir.path(), policy()).expect("the log opens after the kill");
        assert_eq!(log.last_seq(), 8);
        assert_eq!(log.backlog(), 8);
        let kept = log.undelivered(100).expect("undelivered");
        assert_eq!(seqs(&kept), (1..=8).collect::<Vec<_>>());
        assert!(
            snapshot_names(dir.path())
                .iter()
                .all(|name| !name.ends_with(".generating")),
            "the unfinished snapshots are gone: {:?}",
            snapshot_names(dir.path())
        );
    }

    #[test]
    fn reopen_continues_the_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = ResultLog::open(dir.path(), policy()).expect("open");
            log.append(&mut batch(0..5, 1000)).expect("append");
        }
        let log = ResultLog::open(dir.path(), policy()).expect("reopen");
        assert_eq!(log.last_seq(), 5);
        assert_eq!(log.backlog(), 5);
        let mut more = batch(5..7, 1000);
        log.append(&mut more).expect("append");
        assert_eq!(seqs(&more), vec![6, 7]);
    }

    #[test]
    fn undelivered_then_mark_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ResultLog::open(dir.path(), policy()).expect("open");
        let mut written = batch(0..10, 1000);
        log.append(&mut written).expect("append");

        let first = log.undelivered(4).expect("undelivered");
        assert_eq!(first, written[..4].to_vec());
        log.mark_delivered(4).expect("mark");
        assert_eq!(log.delivered_seq(), 4);
        assert_eq!(log.backlog(), 6);
        assert_eq!(
            log.get(4).expect("get"),
            None,
            "delivered entries are removed"
        );
        assert_eq!(
            seqs(&log.undelivered(100).expect("undelivered")),
            (5..=10).collect::<Vec<_>>()
        );

        // Going back is a no-op; going past what was written is refused.
        log.mark_delivered(2).expect("mark below the cursor");
        assert_eq!(log.delivered_seq(), 4);
        assert!(matches!(
            log.mark_delivered(11),
            Err(ResultLogError::NotWritten {
                seq: 11,
                last: 10,
                ..
            })
        ));

        log.mark_delivered(10).expect("mark all");
        assert_eq!(log.backlog(), 0);
        assert!(log.undelivered(100).expect("undelivered").is_empty());
    }

    #[test]
    fn seq_is_never_reused_after_delivering_everything_and_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = ResultLog::open(dir.path(), policy()).expect("open");
            log.append(&mut batch(0..3, 1000)).expect("append");
            log.mark_delivered(3).expect("mark");
            assert_eq!(log.backlog(), 0);
        }
        let log = ResultLog::open(dir.path(), policy()).expect("reopen");
        assert_eq!(log.last_seq(), 3);
        assert_eq!(log.backlog(), 0);
        let mut next = batch(3..4, 1000);
        log.append(&mut next).expect("append");
        assert_eq!(seqs(&next), vec![4]);
    }

    #[test]
    fn delivered_entries_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = ResultLog::open(dir.path(), policy()).expect("open");
            log.append(&mut batch(0..5, 1000)).expect("append");
            // What a crash after persisting the cursor and before removing leaves behind.
            log.shared
                .meta
                .insert(DELIVERED, &3_u64.to_be_bytes()[..])
                .expect("insert cursor");
            log.shared.flush().expect("flush");
        }
        let log = ResultLog::open(dir.path(), policy()).expect("reopen");
        assert_eq!(log.delivered_seq(), 3);
        assert_eq!(log.backlog(), 2);
        assert_eq!(log.get(3).expect("get"), None);
        assert_eq!(seqs(&log.undelivered(10).expect("undelivered")), vec![4, 5]);
    }

    #[test]
    fn retention_drops_the_oldest_beyond_max_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = RetentionPolicy {
            max_entries: 3,
            ..policy()
        };
        let log = ResultLog::open(dir.path(), small).expect("open");
        log.append(&mut batch(0..5, 10 * HOUR_MS)).expect("append");
        assert_eq!(log.enforce_retention(10 * HOUR_MS).expect("retention"), 2);
        assert_eq!(log.backlog(), 3);
        assert_eq!(log.dropped_total(), 2);
        assert_eq!(
            seqs(&log.undelivered(10).expect("undelivered")),
            vec![3, 4, 5]
        );
        assert_eq!(log.enforce_retention(10 * HOUR_MS).expect("retention"), 0);
        assert_eq!(log.dropped_total(), 2);
    }

    #[test]
    fn retention_drops_outcomes_older_than_max_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ResultLog::open(dir.path(), policy()).expect("open");
        let now = 100 * HOUR_MS;
        log.append(&mut batch(0..2, now - 30 * HOUR_MS))
            .expect("append");
        log.append(&mut batch(2..3, now - 25 * HOUR_MS))
            .expect("append");
        log.append(&mut batch(3..5, now - HOUR_MS)).expect("append");
        assert_eq!(log.enforce_retention(now).expect("retention"), 3);
        assert_eq!(log.dropped_total(), 3);
        assert_eq!(log.backlog(), 2);
        assert_eq!(seqs(&log.undelivered(10).expect("undelivered")), vec![4, 5]);
        // Dropped seqs are not handed out again either.
        let mut next = batch(5..6, now);
        log.append(&mut next).expect("append");
        assert_eq!(seqs(&next), vec![6]);
    }

    #[test]
    fn a_corrupt_entry_is_moved_aside_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ResultLog::open(dir.path(), policy()).expect("open");
        log.append(&mut batch(0..3, 1000)).expect("append");
        log.shared
            .results
            .insert(2_u64.to_be_bytes(), &b"{not json"[..])
            .expect("insert");

        assert!(matches!(
            log.get(2),
            Err(ResultLogError::Corrupt { seq: 2, .. })
        ));
        assert_eq!(seqs(&log.undelivered(10).expect("undelivered")), vec![1, 3]);
        assert_eq!(log.corrupt_total(), 1);
        assert_eq!(log.backlog(), 2);
        assert_eq!(log.get(2).expect("get"), None);
        assert!(
            log.shared
                .corrupt
                .get(2_u64.to_be_bytes())
                .expect("get")
                .is_some()
        );
    }

    #[test]
    fn a_corrupt_entry_does_not_stop_retention_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ResultLog::open(dir.path(), policy()).expect("open");
        let now = 100 * HOUR_MS;
        log.append(&mut batch(0..3, now - 30 * HOUR_MS))
            .expect("append");
        log.shared
            .results
            .insert(1_u64.to_be_bytes(), &b"\xff"[..])
            .expect("insert");
        assert_eq!(log.enforce_retention(now).expect("retention"), 2);
        assert_eq!(log.dropped_total(), 2);
    }

    #[test]
    fn retention_policy_from_config() {
        let section = ResultsSection {
            max_entries: 10,
            max_age_h: 2,
        };
        assert_eq!(
            RetentionPolicy::from(&section),
            RetentionPolicy {
                max_entries: 10,
                max_age: Duration::from_secs(7200),
            }
        );
    }
}
