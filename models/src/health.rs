//! The agent's model health report: its verdict on the model store's `current` bundle.
//!
//! This module owns the report file shared by the agent (writer) and the model updater
//! (reader): its JSON schema ([`ModelHealth`], version [`VERSION`]), reading it back (a missing
//! file is "no report yet", a torn or foreign file is an error naming the path), replacing it
//! crash-safely through [`defect_shared::atomic`], and the attempt counter ([`next_attempt`]) that
//! tells the updater how often the agent has started loading the same bundle without reaching
//! a verdict. What the updater does with a verdict is the updater's business.
//!
//! ```json
//! {"v":1,"sha256":"…","state":"serving","attempt":1,"model_version":2,"error":null,
//!  "agent_pid":4242,"at_ms":1767225600000}
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The schema version written in `v`.
pub const VERSION: u32 = 1;

/// One report: what the agent did with one bundle of the model store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHealth {
    /// Schema version, [`VERSION`].
    pub v: u32,
    /// SHA-256 of the bundle the report is about (the store's `current` when it was taken).
    pub sha256: String,
    /// Where the agent is with this bundle.
    pub state: HealthState,
    /// How many times the agent has started loading this bundle in a row: 1 normally, more
    /// when an earlier agent process died while loading it (see [`next_attempt`]).
    pub attempt: u32,
    /// The bundle's `model_version`, once its manifest has been read.
    pub model_version: Option<u64>,
    /// Why the bundle was refused; `None` unless the state is [`HealthState::Refused`].
    pub error: Option<String>,
    /// What kind of refusal it was, when the state is [`HealthState::Refused`]; absent in
    /// reports of agents that did not tell (read as [`Refusal::Rejected`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// Process id of the agent that wrote the report.
    pub agent_pid: u32,
    /// When the report was written, Unix milliseconds.
    pub at_ms: u64,
}

/// Where the agent is with a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Being read and validated by the gate; no verdict yet.
    Loading,
    /// Passed the gate and is in service.
    Serving,
    /// Could not be read or failed the gate; the previous model keeps serving.
    Refused,
}

/// What kind of refusal a [`HealthState::Refused`] report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The bundle met its golden samples but its inference ran over its latency budget, each
    /// time the agent measured it. A box busy deciding frames measures slow: this says as much
    /// about the box's load as about the model, so the updater tries it again later.
    OverBudget,
    /// The bundle cannot be served as it is: unreadable, or its golden samples do not match.
    Rejected,
}

/// Why a report could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The file could not be read or replaced.
    #[error("model health report {path}")]
    Io {
        /// The report file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not a report (torn, empty, or not this schema).
    #[error("model health report {path} is not a valid report")]
    Invalid {
        /// The report file.
        path: PathBuf,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// The file is a report of a schema version this build does not know.
    #[error("model health report {path} has version {version}; only {VERSION} is understood")]
    Version {
        /// The report file.
        path: PathBuf,
        /// The version it declares.
        version: u32,
    },
    /// The report could not be encoded.
    #[error("model health report {path}: cannot encode")]
    Encode {
        /// The report file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Reads the report at `path`; `Ok(None)` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<ModelHealth>, HealthError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HealthError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let report: ModelHealth =
        serde_json::from_slice(&bytes).map_err(|source| HealthError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    if report.v != VERSION {
        return Err(HealthError::Version {
            path: path.to_owned(),
            version: report.v,
        });
    }
    Ok(Some(report))
}

/// Replaces the report at `path` atomically and durably (a reader sees the old report or the
/// new one, never a mix, even across a power cut).
pub fn write(path: &Path, report: &ModelHealth) -> Result<(), HealthError> {
    let mut bytes = serde_json::to_vec(report).map_err(|source| HealthError::Encode {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    defect_shared::atomic::write(path, &bytes).map_err(|source| HealthError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The attempt number of a new load of bundle `sha256`, given the report found before it.
///
/// A previous report still `loading` the same bundle means the agent that wrote it died before
/// reaching a verdict: this is its attempt plus one. Anything else (no report, another bundle,
/// a verdict) starts again at 1.
pub fn next_attempt(previous: Option<&ModelHealth>, sha256: &str) -> u32 {
    match previous {
        Some(p) if p.state == HealthState::Loading && p.sha256 == sha256 => {
            p.attempt.saturating_add(1)
        }
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn report(sha256: &str, state: HealthState, attempt: u32) -> ModelHealth {
        ModelHealth {
            v: VERSION,
            sha256: sha256.to_owned(),
            state,
            attempt,
            model_version: Some(3),
            error: None,
            refusal: None,
            agent_pid: 4242,
            at_ms: 1_767_225_600_000,
        }
    }

    #[test]
    fn a_written_report_reads_back_equal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model-health.json");
        let mut refused = report(SHA_A, HealthState::Refused, 2);
        refused.error = Some("golden sample g1.png: scores differ".into());
        write(&path, &refused).expect("write");
        assert_eq!(read(&path).expect("read"), Some(refused));
        let serving = report(SHA_B, HealthState::Serving, 1);
        write(&path, &serving).expect("replace");
        assert_eq!(read(&path).expect("read"), Some(serving));
    }

    #[test]
    fn the_json_has_the_documented_keys_and_lowercase_states() {
        let text = serde_json::to_string(&report(SHA_A, HealthState::Loading, 1)).expect("json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(value["v"], 1);
        assert_eq!(value["state"], "loading");
        assert_eq!(value["sha256"], SHA_A);
        assert_eq!(value["attempt"], 1);
        assert_eq!(value["model_version"], 3);
        assert!(value["error"].is_null(), "{text}");
        assert_eq!(value["agent_pid"], 4242);
        assert_eq!(value["at_ms"], 1_767_225_600_000_u64);
        for (state, name) in [
            (HealthState::Serving, "\"serving\""),
            (HealthState::Refused, "\"refused\""),
        ] {
            assert_eq!(serde_json::to_string(&state).expect("state"), name);
        }
    }

    #[test]
    fn a_missing_file_is_no_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(&dir.path().join("absent.json")).expect("read"), None);
    }

    #[test]
    fn a_torn_or_garbage_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model-health.json");
        let full = serde_json::to_vec(&report(SHA_A, HealthState::Serving, 1)).expect("json");
        let contents: [&[u8]; 4] = [&full[..full.len() / 2], b"", b"\x00\xffgarbage", b"[1,2]"];
        for content in contents {
            std::fs::write(&path, content).expect("write");
            let err = read(&path).expect_err("not a report");
            assert!(matches!(err, HealthError::Invalid { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unknown_version_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model-health.json");
        let mut future = report(SHA_A, HealthState::Serving, 1);
        future.v = 2;
        write(&path, &future).expect("write");
        let err = read(&path).expect_err("version 2");
        assert!(
            matches!(err, HealthError::Version { version: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_folder_that_does_not_exist_is_a_write_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("model-health.json");
        let err = write(&path, &report(SHA_A, HealthState::Loading, 1)).expect_err("no folder");
        assert!(matches!(err, HealthError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn an_unfinished_load_of_the_same_bundle_counts_up() {
        let loading = report(SHA_A, HealthState::Loading, 2);
        assert_eq!(next_attempt(Some(&loading), SHA_A), 3);
        let saturated = report(SHA_A, HealthState::Loading, u32::MAX);
        assert_eq!(next_attempt(Some(&saturated), SHA_A), u32::MAX);
    }

    #[test]
    fn anything_else_starts_at_one() {
        assert_eq!(next_attempt(None, SHA_A), 1);
        let other = report(SHA_B, HealthState::Loading, 4);
        assert_eq!(next_attempt(Some(&other), SHA_A), 1);
        for state in [HealthState::Serving, HealthState::Refused] {
            let verdict = report(SHA_A, state, 4);
            assert_eq!(next_attempt(Some(&verdict), SHA_A), 1, "{state:?}");
        }
    }
}
