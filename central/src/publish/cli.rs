//! The `defect-central repo …` commands.
//!
//! This module owns the command-line surface of publishing: argument parsing with clap and a
//! one-line report per command on standard output. The work itself is in the operations module.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use jiff::SignedDuration;
use tough::schema::RoleType;

use super::PublishError;
use super::ops::{self, Expiries, InitOptions, TargetOptions};

/// Repository publishing commands (`defect-central repo <command>`).
#[derive(Debug, Clone, Subcommand)]
pub enum RepoCommand {
    /// Create a repository and generate its keys: root (threshold of root keys), targets,
    /// snapshot, timestamp; empty targets. Refuses an existing repository or key file.
    Init {
        /// Repository folder (gets metadata/ and targets/).
        #[arg(long)]
        repo: PathBuf,
        /// Keys folder (created mode 0700; one PKCS#8 DER file per key, mode 0600).
        #[arg(long)]
        keys: PathBuf,
        /// Root signatures required for a root version.
        #[arg(long, default_value_t = 2)]
        root_threshold: u64,
        /// Root keys to generate.
        #[arg(long, default_value_t = 3)]
        root_keys: u32,
        /// Expiries.
        #[command(flatten)]
        expiries: ExpiryArgs,
    },
    /// Publish a model bundle as a new target (targets, snapshot and timestamp N+1). Refuses a
    /// model_version not greater than every published version of the same model.
    AddTarget {
        /// Repository folder.
        #[arg(long)]
        repo: PathBuf,
        /// Keys folder holding the targets, snapshot and timestamp keys.
        #[arg(long)]
        keys: PathBuf,
        /// The bundle file (.dmb).
        #[arg(long)]
        bundle: PathBuf,
        /// Stations allowed to install it, comma-separated; none means every station.
        #[arg(long, value_delimiter = ',')]
        stations: Vec<String>,
        /// Lines allowed to install it, comma-separated; none means every line.
        #[arg(long, value_delimiter = ',')]
        lines: Vec<String>,
        /// Target name; default `<model name>-<model_version>.dmb`.
        #[arg(long)]
        name: Option<String>,
        /// Canary policy of this version, JSON overriding the boxes' `[canary]`, such as
        /// '{"min_frames":2000,"max_reject_to_pass":0}' or '{"enabled":false}'.
        #[arg(long, value_parser = parse_canary)]
        canary: Option<model_updater::canary::CanaryOverrides>,
        /// Expiries (root is not re-signed by this command).
        #[command(flatten)]
        expiries: ExpiryArgs,
    },
    /// Write a new timestamp version for the current snapshot, signed with the timestamp key
    /// only (for a server timer).
    ResignTimestamp {
        /// Repository folder.
        #[arg(long)]
        repo: PathBuf,
        /// The timestamp key file.
        #[arg(long)]
        key: PathBuf,
        /// Hours until the new timestamp expires.
        #[arg(long, default_value_t = 24)]
        expires_hours: u32,
    },
    /// Replace a key of a role with a newly generated one in root N+1 and re-sign what depends
    /// on it. A new root is signed by a threshold of the old and of the new root keys.
    RotateKey {
        /// Repository folder.
        #[arg(long)]
        repo: PathBuf,
        /// Keys folder: the new key is written there, signing keys are read from there.
        #[arg(long)]
        keys: PathBuf,
        /// The role whose key is replaced.
        #[arg(long, value_enum)]
        role: KeyRole,
        /// Key id or key file of the key to remove; may be left out when the role has one key.
        #[arg(long, value_name = "KEYID_OR_FILE")]
        revoke: Option<String>,
        /// Expiries.
        #[command(flatten)]
        expiries: ExpiryArgs,
    },
}

/// A top-level role, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyRole {
    /// The root role.
    Root,
    /// The targets role.
    Targets,
    /// The snapshot role.
    Snapshot,
    /// The timestamp role.
    Timestamp,
}

impl From<KeyRole> for RoleType {
    fn from(role: KeyRole) -> Self {
        match role {
            KeyRole::Root => RoleType::Root,
            KeyRole::Targets => RoleType::Targets,
            KeyRole::Snapshot => RoleType::Snapshot,
            KeyRole::Timestamp => RoleType::Timestamp,
        }
    }
}

/// Expiry options shared by the commands that sign several roles; each applies only to the
/// roles the command signs.
#[derive(Debug, Clone, Copy, Args)]
pub struct ExpiryArgs {
    /// Days until a root version written expires.
    #[arg(long, default_value_t = 365)]
    pub root_expires_days: u32,
    /// Days until a targets version written expires.
    #[arg(long, default_value_t = 90)]
    pub targets_expires_days: u32,
    /// Days until a snapshot version written expires. As long as targets by default: the
    /// timestamp, re-signed by a server timer, is what proves the repository is fresh, and it
    /// pins the snapshot version.
    #[arg(long, default_value_t = 90)]
    pub snapshot_expires_days: u32,
    /// Hours until a timestamp version written expires.
    #[arg(long, default_value_t = 24)]
    pub timestamp_expires_hours: u32,
}

impl From<ExpiryArgs> for Expiries {
    fn from(args: ExpiryArgs) -> Self {
        let days = |d: u32| SignedDuration::from_hours(i64::from(d) * 24);
        Self {
            root: days(args.root_expires_days),
            targets: days(args.targets_expires_days),
            snapshot: days(args.snapshot_expires_days),
            timestamp: SignedDuration::from_hours(i64::from(args.timestamp_expires_hours)),
        }
    }
}

impl RepoCommand {
    /// Runs the command on a blocking thread and prints a one-line report on standard output.
    pub async fn run(self) -> Result<(), PublishError> {
        let report = tokio::task::spawn_blocking(move || self.execute())
            .await
            .map_err(PublishError::Task)??;
        defect_shared::outln!("{report}");
        Ok(())
    }

    /// Runs the command on the current thread and returns its report line.
    pub fn execute(self) -> Result<String, PublishError> {
        match self {
            RepoCommand::Init {
                repo,
                keys,
                root_threshold,
                root_keys,
                expiries,
            } => {
                let report = ops::init(
                    &repo,
                    &keys,
                    &InitOptions {
                        root_keys,
                        root_threshold,
                        expiries: expiries.into(),
                    },
                )?;
                let roles: Vec<String> = report
                    .key_ids
                    .iter()
                    .map(|(role, ids)| format!("{role}={}", ids.join(",")))
                    .collect();
                Ok(format!(
                    "initialised {} (root threshold {root_threshold} of {root_keys}); keys in {}: {}",
                    repo.display(),
                    keys.display(),
                    roles.join(" ")
                ))
            }
            RepoCommand::AddTarget {
                repo,
                keys,
                bundle,
                stations,
                lines,
                name,
                canary,
                expiries,
            } => {
                let added = ops::add_target(
                    &repo,
                    &keys,
                    &bundle,
                    &TargetOptions {
                        name,
                        stations,
                        lines,
                        canary,
                        expiries: expiries.into(),
                    },
                )?;
                Ok(format!(
                    "published {} ({} model_version {}, sha256 {}, {} bytes) in targets {}, \
                     snapshot {}, timestamp {}",
                    added.name,
                    added.custom.model,
                    added.custom.model_version,
                    added.sha256,
                    added.length,
                    added.versions.targets,
                    added.versions.snapshot,
                    added.versions.timestamp
                ))
            }
            RepoCommand::ResignTimestamp {
                repo,
                key,
                expires_hours,
            } => {
                let version = ops::resign_timestamp(
                    &repo,
                    &key,
                    SignedDuration::from_hours(i64::from(expires_hours)),
                )?;
                Ok(format!(
                    "timestamp version {version} written, expires in {expires_hours} h"
                ))
            }
            RepoCommand::RotateKey {
                repo,
                keys,
                role,
                revoke,
                expiries,
            } => {
                let rotation = ops::rotate_key(
                    &repo,
                    &keys,
                    role.into(),
                    revoke.as_deref(),
                    &expiries.into(),
                )?;
                Ok(format!(
                    "{} key {} replaced by {} ({}); root {}, targets {}, snapshot {}, timestamp {}",
                    rotation.role,
                    rotation.revoked_key_id,
                    rotation.new_key_id,
                    rotation.new_key_file.display(),
                    rotation.versions.root,
                    rotation.versions.targets,
                    rotation.versions.snapshot,
                    rotation.versions.timestamp
                ))
            }
        }
    }
}

/// Parses `--canary`: a JSON object of [`model_updater::canary::CanaryOverrides`] fields.
fn parse_canary(text: &str) -> Result<model_updater::canary::CanaryOverrides, String> {
    let overrides: model_updater::canary::CanaryOverrides =
        serde_json::from_str(text).map_err(|e| format!("--canary {text:?}: {e}"))?;
    match overrides.problem() {
        Some(problem) => Err(format!("--canary {text:?}: {problem}")),
        None => Ok(overrides),
    }
}
