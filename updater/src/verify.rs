//! Fetching and verifying the signed repository, with the box's own safeguards on top of TUF.
//!
//! This module owns one check of the repository: judge the clock ([`crate::clock`]), load the
//! metadata with `tough` starting from the newest root this box trusts ([`crate::trust`]),
//! refuse anything below the anti-rollback floor or that delegates ([`crate::delegation`]),
//! remember the new root and raise the floor, and turn the top-level signed targets into
//! [`Release`]s. `tough` verifies signatures, thresholds, root rotation, expiry, and the
//! consistency of timestamp, snapshot and targets; its datastore is a fresh temporary folder
//! on every check, so none of its state can lock the box out or be torn by a power cut: the
//! floor here is what stops rollback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use url::Url;

use crate::clock::{self, ClockReading, ImplausibleClock};
use crate::delegation::{self, Delegated};
use defect_shared::error_chain::chain;

use crate::transport::{MetadataTransport, Unreachable};
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
            Url::parse(&text).map_err(|source| CheckError::BadUrl { text, source })
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
        let absolute = std::path::absolute(dir).map_err(|source| CheckError::LocalPath {
            path: dir.to_owned(),
            source,
        })?;
        let metadata = absolute.join("metadata");
        if !metadata.is_dir() {
            let what = if absolute.exists() {
                format!("{} has no metadata/ folder", absolute.display())
            } else {
                format!("{} does not exist", absolute.display())
            };
            return Err(CheckError::NoRepository {
                path: absolute,
                what,
            });
        }
        let url = |sub: &str| {
            Url::from_directory_path(absolute.join(sub)).map_err(|()| CheckError::UnusablePath {
                path: absolute.clone(),
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
    #[error("repository unreachable")]
    Offline {
        /// What failed.
        #[source]
        cause: Unreachable,
    },
    /// The clock cannot be used to judge expiry.
    #[error(transparent)]
    Clock(#[from] ImplausibleClock),
    /// The metadata did not verify (signatures, thresholds, expiry, consistency): loud.
    #[error("repository metadata refused")]
    Verification {
        /// The verifier's reason.
        #[source]
        source: Box<tough::error::Error>,
    },
    /// The repository delegates to targets roles besides the top-level one, which this
    /// updater does not support: loud, and nothing from it is remembered or installed.
    #[error("repository metadata refused")]
    Delegated(#[source] Delegated),
    /// A configured repository address is not a URL.
    #[error("{text:?} is not a URL")]
    BadUrl {
        /// The address, with the trailing `/` added.
        text: String,
        /// The URL parser's error.
        #[source]
        source: url::ParseError,
    },
    /// A local repository folder cannot be made absolute.
    #[error("{}", path.display())]
    LocalPath {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A local repository folder (a USB stick's) holds no repository: not mounted, or the
    /// wrong folder. The quiet kind, like an unreachable server.
    #[error("no repository at {}: {what}", path.display())]
    NoRepository {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// The configuration names no repository URL: the box installs from a folder only.
    #[error(
        "no repository URL in [repository] (metadata_url, targets_url): this box installs from a folder only, with `model-updater install-from PATH`"
    )]
    NoRepositoryUrl,
    /// A local repository folder cannot be written as a `file://` URL.
    #[error("{} is not a usable path", path.display())]
    UnusablePath {
        /// The folder.
        path: PathBuf,
    },
    /// No root this box trusts could start a load.
    #[error("repository metadata refused: no trusted root")]
    NoTrustedRoot,
    /// The verified root could not be serialised to be remembered.
    #[error("cannot serialise root version {version}")]
    SerializeRoot {
        /// The root's version.
        version: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
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
        matches!(
            self,
            CheckError::Offline { .. }
                | CheckError::NoRepository { .. }
                | CheckError::NoRepositoryUrl
        )
    }
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
    for damage in &loaded.damaged {
        tracing::error!(
            reason = %chain(damage),
            "a copy of the anti-rollback record was damaged; the floor is the highest of the other copy, the root history and the model store, and never goes down"
        );
    }
    for path in &loaded.missing {
        tracing::error!(
            path = %path.display(),
            "a copy of the anti-rollback record is missing; the floor is the highest of the other copy, the root history and the model store, and never goes down"
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
                if let Some(cause) = transport.unreachable() {
                    return Err(CheckError::Offline { cause });
                }
                return Err(CheckError::Verification {
                    source: Box::new(e),
                });
            }
        }
    }
    let Some(repo) = repository else {
        return Err(match last_error {
            Some(e) => CheckError::Verification {
                source: Box::new(e),
            },
            None => CheckError::NoTrustedRoot,
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

    delegation::refuse(&repo.targets().signed, &repo.snapshot().signed)
        .map_err(CheckError::Delegated)?;

    let root_version = repo.root().signed.version.get();
    let root_bytes =
        serde_json::to_vec_pretty(repo.root()).map_err(|source| CheckError::SerializeRoot {
            version: root_version,
            source,
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
    // The top-level role's own targets only: `all_targets` would add delegated roles' too.
    for (name, target) in &repo.targets().signed.targets {
        match release(name.raw(), target, &source.targets_url, consistent) {
            Ok(r) => releases.push(r),
            Err(why) => skipped.push(format!("target {:?}: {}", name.raw(), chain(&why))),
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

/// Why a signed target entry is not a model release (reported and skipped, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The target name has a folder part, starts with a dot, or is empty.
    #[error("target names must be flat file names")]
    NotFlat,
    /// The sha256 hash is not 32 bytes.
    #[error("sha256 has {0} bytes, not 32")]
    DigestLength(usize),
    /// A custom field that must be a string is missing or is not one.
    #[error("custom field {0:?} is missing or not a string")]
    NotText(String),
    /// A custom list field holds something other than strings.
    #[error("custom field {0:?} holds a non-string")]
    NonStringItem(String),
    /// A custom field that must be a list is not one.
    #[error("custom field {0:?} is not a list")]
    NotAList(String),
    /// The `canary` custom field does not parse.
    #[error("custom field \"canary\"")]
    Canary(#[source] serde_json::Error),
    /// The `canary` custom field parses but its values are unusable.
    #[error("custom field \"canary\": {0}")]
    CanaryValues(String),
    /// `model_version` is missing or not an integer.
    #[error("custom field \"model_version\" is missing or not an integer")]
    ModelVersion,
    /// The target's URL cannot be formed from the targets base URL.
    #[error("cannot form its URL")]
    Url(#[source] url::ParseError),
}

fn release(
    name: &str,
    target: &tough::schema::Target,
    targets_url: &Url,
    consistent: bool,
) -> Result<Release, ReleaseError> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        return Err(ReleaseError::NotFlat);
    }
    let digest: &[u8] = &target.hashes.sha256;
    let sha256: [u8; 32] = digest
        .try_into()
        .map_err(|_| ReleaseError::DigestLength(digest.len()))?;
    let custom = &target.custom;
    let text = |key: &str| -> Result<String, ReleaseError> {
        custom
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ReleaseError::NotText(key.to_owned()))
    };
    let list = |key: &str| -> Result<Vec<String>, ReleaseError> {
        match custom.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ReleaseError::NonStringItem(key.to_owned()))
                })
                .collect(),
            Some(_) => Err(ReleaseError::NotAList(key.to_owned())),
        }
    };
    let canary = match custom.get("canary") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let overrides: crate::canary::CanaryOverrides =
                serde_json::from_value(value.clone()).map_err(ReleaseError::Canary)?;
            if let Some(problem) = overrides.problem() {
                return Err(ReleaseError::CanaryValues(problem));
            }
            Some(overrides)
        }
    };
    let model_version = custom
        .get("model_version")
        .and_then(Value::as_u64)
        .ok_or(ReleaseError::ModelVersion)?;
    let file = if consistent {
        format!("{}.{name}", hex::encode(sha256))
    } else {
        name.to_owned()
    };
    let url = targets_url.join(&file).map_err(ReleaseError::Url)?;
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
