//! Fetching and verifying the signed repository, with the box's own safeguards on top of TUF.
//!
//! This module owns one check of the repository: judge the clock ([`crate::clock`]), load the
//! metadata with `tough` starting from the newest root this box trusts ([`crate::trust`]),
//! refuse anything below the anti-rollback floor, remember the new root and raise the floor,
//! and turn the signed targets into [`Release`]s. `tough` verifies signatures, thresholds, root
//! rotation, expiry, and the consistency of timestamp, snapshot and targets; its datastore is
//! a fresh temporary folder on every check, so none of its state can lock the box out or be
//! torn by a power cut: the floor here is what stops rollback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use url::Url;

use crate::clock::{self, ClockReading, ImplausibleClock};
use crate::transport::MetadataTransport;
use crate::trust::{TrustError, TrustStore};

/// Where the repository is.
#[derive(Debug, Clone)]
pub struct Source {
    /// Base URL of the metadata (ends with `/`).
    pub metadata_url: Url,
    /// Base URL of the targets (ends with `/`).
    pub targets_url: Url,
    /// The root shipped with the package.
    pub shipped_root: PathBuf,
}

impl Source {
    /// A source from configuration text, adding the trailing `/` base URLs need.
    pub fn new(
        metadata_url: &str,
        targets_url: &str,
        shipped_root: PathBuf,
    ) -> Result<Source, CheckError> {
        let parse = |text: &str| {
            let text = if text.ends_with('/') {
                text.to_owned()
            } else {
                format!("{text}/")
            };
            Url::parse(&text).map_err(|e| CheckError::Verification {
                reason: format!("{text:?} is not a URL: {e}"),
            })
        };
        Ok(Source {
            metadata_url: parse(metadata_url)?,
            targets_url: parse(targets_url)?,
            shipped_root,
        })
    }

    /// The source for a repository copied into a local folder (`<dir>/metadata`,
    /// `<dir>/targets`).
    pub fn local(dir: &std::path::Path, shipped_root: PathBuf) -> Result<Source, CheckError> {
        let absolute = std::path::absolute(dir).map_err(|e| CheckError::Verification {
            reason: format!("{}: {e}", dir.display()),
        })?;
        let url = |sub: &str| {
            Url::from_directory_path(absolute.join(sub)).map_err(|()| CheckError::Verification {
                reason: format!("{} is not a usable path", absolute.display()),
            })
        };
        Ok(Source {
            metadata_url: url("metadata")?,
            targets_url: url("targets")?,
            shipped_root,
        })
    }
}

/// A model version the repository offers, as its signed target entry describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// Target name (flat, e.g. `surface-classifier-3.dmb`).
    pub target: String,
    /// Model name.
    pub model: String,
    /// Integer model version.
    pub model_version: u64,
    /// Human-readable version.
    pub version: String,
    /// Stations the release is for; empty means all.
    pub stations: Vec<String>,
    /// Lines the release is for; empty means all.
    pub lines: Vec<String>,
    /// Its canary policy, when ops set one.
    pub canary: Option<crate::canary::CanaryOverrides>,
    /// Signed length in bytes.
    pub length: u64,
    /// Signed SHA-256.
    pub sha256: [u8; 32],
    /// Where to download it.
    pub url: Url,
}

impl Release {
    /// The SHA-256 as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// The outcome of a successful check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Root version the repository is at.
    pub root_version: u64,
    /// Timestamp version.
    pub timestamp_version: u64,
    /// Snapshot version.
    pub snapshot_version: u64,
    /// Targets version.
    pub targets_version: u64,
    /// Every release the targets list.
    pub releases: Vec<Release>,
    /// Target entries that are not model releases, with why (reported, not fatal).
    pub skipped: Vec<String>,
    /// The clock as judged for this check.
    pub clock: ClockReading,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The server could not be reached: expected on a box without connectivity; quiet.
    #[error("repository unreachable: {reason}")]
    Offline {
        /// What failed.
        reason: String,
    },
    /// The clock cannot be used to judge expiry.
    #[error(transparent)]
    Clock(#[from] ImplausibleClock),
    /// The metadata did not verify (signatures, thresholds, expiry, consistency): loud.
    #[error("repository metadata refused: {reason}")]
    Verification {
        /// The verifier's reason.
        reason: String,
    },
    /// Validly signed metadata older than what this box has already accepted: loud.
    #[error(
        "rollback refused: the repository offers {role} version {offered}, this box has already \
         accepted version {floor}"
    )]
    Rollback {
        /// The role.
        role: &'static str,
        /// The version offered.
        offered: u64,
        /// The floor.
        floor: u64,
    },
    /// The local trust state could not be read or written.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl CheckError {
    /// Whether the failure is the quiet kind (no connectivity) rather than a loud one.
    pub fn is_offline(&self) -> bool {
        matches!(self, CheckError::Offline { .. })
    }
}

/// The error and its causes on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Fetches and verifies the repository; on success remembers the new root and raises the
/// metadata floor. `evidence` lists model versions found on disk (for rebuilding a damaged
/// floor).
pub async fn check(
    source: &Source,
    trust: &TrustStore,
    evidence: &BTreeMap<String, u64>,
    client: reqwest::Client,
) -> Result<Verified, CheckError> {
    let loaded = trust.load_floor(evidence)?;
    if let Some(reason) = &loaded.damaged {
        tracing::error!(
            reason,
            "the anti-rollback record was damaged; rebuilt from the root history and the model store"
        );
    }
    let mut floor = loaded.floor;
    let clock = clock::judge(clock::now_ms(), floor.latest_clock_ms)?;
    if let Some(back) = clock.stepped_back_ms {
        tracing::error!(
            now = %clock::rfc3339(clock.now_ms),
            latest = %clock::rfc3339(floor.latest_clock_ms),
            stepped_back_s = back / 1000,
            "the system clock stepped back since the last successful check; checking against the \
             current clock (the anti-rollback record still applies)"
        );
    }

    let transport = MetadataTransport::new(client);
    let mut last_error = None;
    let mut repository = None;
    for (origin, root) in trust.candidate_roots(&source.shipped_root)? {
        let loader = tough::RepositoryLoader::new(
            &root,
            source.metadata_url.clone(),
            source.targets_url.clone(),
        )
        .transport(transport.clone())
        .expiration_enforcement(tough::ExpirationEnforcement::Safe);
        match loader.load().await {
            Ok(repo) => {
                repository = Some(repo);
                break;
            }
            Err(
                e @ (tough::error::Error::ParseTrustedMetadata { .. }
                | tough::error::Error::VerifyTrustedMetadata { .. }),
            ) => {
                tracing::error!(root = origin, error = %chain(&e), "a trusted root does not verify; trying an older one");
                last_error = Some(e);
            }
            Err(e) => {
                if let Some(reason) = transport.unreachable() {
                    return Err(CheckError::Offline { reason });
                }
                return Err(CheckError::Verification { reason: chain(&e) });
            }
        }
    }
    let Some(repo) = repository else {
        return Err(CheckError::Verification {
            reason: last_error
                .map(|e| chain(&e))
                .unwrap_or_else(|| "no trusted root".into()),
        });
    };

    let versions = [
        ("root", repo.root().signed.version.get(), floor.root),
        (
            "timestamp",
            repo.timestamp().signed.version.get(),
            floor.timestamp,
        ),
        (
            "snapshot",
            repo.snapshot().signed.version.get(),
            floor.snapshot,
        ),
        (
            "targets",
            repo.targets().signed.version.get(),
            floor.targets,
        ),
    ];
    for (role, offered, at_least) in versions {
        if offered < at_least {
            return Err(CheckError::Rollback {
                role,
                offered,
                floor: at_least,
            });
        }
    }

    let root_version = repo.root().signed.version.get();
    let root_bytes =
        serde_json::to_vec_pretty(repo.root()).map_err(|e| CheckError::Verification {
            reason: format!("cannot serialise root version {root_version}: {e}"),
        })?;
    trust.remember_root(root_version, &root_bytes)?;
    floor.root = root_version;
    floor.timestamp = repo.timestamp().signed.version.get();
    floor.snapshot = repo.snapshot().signed.version.get();
    floor.targets = repo.targets().signed.version.get();
    floor.latest_clock_ms = clock.now_ms;
    trust.save_floor(&floor)?;

    let consistent = repo.root().signed.consistent_snapshot;
    let mut releases = Vec::new();
    let mut skipped = Vec::new();
    for (name, target) in repo.all_targets() {
        match release(name.raw(), target, &source.targets_url, consistent) {
            Ok(r) => releases.push(r),
            Err(why) => skipped.push(format!("target {:?}: {why}", name.raw())),
        }
    }
    releases.sort_by(|a, b| (&a.model, a.model_version).cmp(&(&b.model, b.model_version)));
    Ok(Verified {
        root_version,
        timestamp_version: floor.timestamp,
        snapshot_version: floor.snapshot,
        targets_version: floor.targets,
        releases,
        skipped,
        clock,
    })
}

fn release(
    name: &str,
    target: &tough::schema::Target,
    targets_url: &Url,
    consistent: bool,
) -> Result<Release, String> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        return Err("target names must be flat file names".into());
    }
    let digest: &[u8] = &target.hashes.sha256;
    let sha256: [u8; 32] = digest
        .try_into()
        .map_err(|_| format!("sha256 has {} bytes, not 32", digest.len()))?;
    let custom = &target.custom;
    let text = |key: &str| -> Result<String, String> {
        custom
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("custom field {key:?} is missing or not a string"))
    };
    let list = |key: &str| -> Result<Vec<String>, String> {
        match custom.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("custom field {key:?} holds a non-string"))
                })
                .collect(),
            Some(_) => Err(format!("custom field {key:?} is not a list")),
        }
    };
    let canary = match custom.get("canary") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let overrides: crate::canary::CanaryOverrides =
                serde_json::from_value(value.clone())
                    .map_err(|e| format!("custom field \"canary\": {e}"))?;
            if let Some(problem) = overrides.problem() {
                return Err(format!("custom field \"canary\": {problem}"));
            }
            Some(overrides)
        }
    };
    let model_version = custom
        .get("model_version")
        .and_then(Value::as_u64)
        .ok_or("custom field \"model_version\" is missing or not an integer")?;
    let file = if consistent {
        format!("{}.{name}", hex::encode(sha256))
    } else {
        name.to_owned()
    };
    let url = targets_url
        .join(&file)
        .map_err(|e| format!("cannot form its URL: {e}"))?;
    Ok(Release {
        target: name.to_owned(),
        model: text("model")?,
        model_version,
        version: text("version").unwrap_or_default(),
        stations: list("stations")?,
        lines: list("lines")?,
        canary,
        length: target.length,
        sha256,
        url,
    })
}
