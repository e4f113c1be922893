//! Ops-side publishing of TUF repositories of model bundles.
//!
//! This module owns the server side of signed updates: creating a repository and its keys,
//! adding a model bundle as a signed target, re-signing the timestamp on a timer, and rotating
//! keys. It writes exactly the layout the box-side client expects:
//!
//! ```text
//! <repo>/metadata/1.root.json, 2.root.json, …   every root version (consistent_snapshot = true)
//! <repo>/metadata/root.json                      copy of the newest root
//! <repo>/metadata/timestamp.json                 (unversioned)
//! <repo>/metadata/<N>.snapshot.json, <N>.targets.json
//! <repo>/targets/<sha256hex>.<target-name>       immutable target files
//! ```
//!
//! Keys are ed25519, one PKCS#8 DER file per key (mode 0600) in a keys folder: `root-1.pk8` …,
//! `targets.pk8`, `snapshot.pk8`, `timestamp.pk8`; rotation adds `root-4.pk8`, `targets-2.pk8`
//! and so on and never deletes a key file. Key ids are the sha256 of the canonical key, as tough
//! and python-tuf compute them. Signatures cover the canonical JSON of `signed`; files are
//! written pretty-printed, atomically (temporary file, fsync, rename, fsync of the folder).
//!
//! Every target carries `length`, `hashes.sha256` and the flat `custom` fields of
//! [`TargetCustom`].
//!
//! The lower-level pieces ([`SigningKey`], [`sign_metadata`], [`write_metadata`],
//! [`RepoState`]) are public so tests can forge metadata for attack scenarios, and
//! [`load_with_tough`] loads a repository folder the way a box does.

mod cli;
mod keys;
mod metadata;
mod ops;
mod tough_view;

use std::path::PathBuf;

use tough::schema::RoleType;

pub use cli::{ExpiryArgs, KeyRole, RepoCommand};
pub use keys::{KeyRing, SigningKey, key_file_name};
pub use metadata::{
    MetaFileInfo, RepoLayout, RepoState, SPEC_VERSION, TargetCustom, canonical_json, expires_after,
    sign_metadata, write_metadata,
};
pub use ops::{
    AddedTarget, Expiries, InitOptions, InitReport, Rotation, TargetOptions, Versions, add_target,
    init, resign_timestamp, rotate_key,
};
pub use tough_view::{LoadedRepo, LoadedTarget, load_with_tough};

/// Why a publishing command failed; every variant names the file, role or key involved.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A file or folder could not be read or written.
    #[error("{path}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A metadata file is not valid JSON of the expected role.
    #[error("{path}: not valid {role} metadata")]
    ParseMetadata {
        /// The file concerned.
        path: PathBuf,
        /// The role the file should hold.
        role: RoleType,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Metadata could not be serialised.
    #[error("cannot serialise {what}")]
    Serialize {
        /// What was being serialised.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A key file is not an ed25519 PKCS#8 private key.
    #[error("{path}: not an ed25519 PKCS#8 (DER) private key")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What the key parser refused.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// The TUF key id of a key could not be computed.
    #[error("{path}: cannot compute the key id")]
    KeyId {
        /// The key file.
        path: PathBuf,
        /// tough's error.
        #[source]
        source: Box<tough::schema::Error>,
    },
    /// A key id or digest that must be hex is not.
    #[error("{what} is not hex")]
    Hex {
        /// What it is: `key id "…"`, `bundle digest of …`.
        what: String,
        /// The decoder's error.
        #[source]
        source: hex::FromHexError,
    },
    /// A new key could not be generated.
    #[error("cannot generate an ed25519 key for {role}")]
    KeyGeneration {
        /// The role the key was for.
        role: RoleType,
    },
    /// A key file already exists; keys are never overwritten.
    #[error("{path}: key file already exists; refusing to overwrite a key")]
    KeyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// `init` was pointed at a folder that already holds a repository.
    #[error("{path}: already holds repository files; refusing to overwrite a repository")]
    RepoExists {
        /// The file or folder found.
        path: PathBuf,
    },
    /// The folder is not a repository in the expected layout, or its metadata disagree.
    #[error("{path}: {reason}")]
    BadRepo {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Fewer keys of a role are available than its threshold requires.
    #[error(
        "{role}: threshold is {threshold} but only {available} of its keys ({listed}) are in {keys}"
    )]
    NotEnoughKeys {
        /// The role that needs signing.
        role: RoleType,
        /// The role's threshold.
        threshold: u64,
        /// How many of its keys were found.
        available: usize,
        /// The key ids the root lists for the role.
        listed: String,
        /// Where keys were looked for.
        keys: PathBuf,
    },
    /// A key file was given for a role that does not list it.
    #[error("{path}: key {key_id} is not a {role} key of root version {root_version}")]
    WrongKey {
        /// The key file.
        path: PathBuf,
        /// Its key id.
        key_id: String,
        /// The role it was meant to sign.
        role: RoleType,
        /// The root version consulted.
        root_version: u64,
    },
    /// The options do not make sense.
    #[error("{0}")]
    InvalidOptions(String),
    /// A bundle could not be read.
    #[error("bundle {path}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// The underlying error.
        source: defect_models::bundle::BundleError,
    },
    /// A target name would break the flat `<sha256>.<name>` layout.
    #[error("target name {name:?}: {reason}")]
    BadTargetName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// tough refuses a target name.
    #[error("target name {name:?}")]
    TargetNameRefused {
        /// The name.
        name: String,
        /// tough's error.
        #[source]
        source: Box<tough::error::Error>,
    },
    /// A target of that name is already published; targets are immutable.
    #[error("target {name} is already published in targets version {targets_version}")]
    TargetExists {
        /// The target name.
        name: String,
        /// The targets version that lists it.
        targets_version: u64,
    },
    /// The bundle's model version is not above every published version of the same model.
    #[error(
        "{model} model_version {model_version} is not greater than model_version \
         {published} already published as target {target}; bump model_version in the manifest"
    )]
    NotNewer {
        /// The model name.
        model: String,
        /// The bundle's model version.
        model_version: u64,
        /// The published model version it does not exceed.
        published: u64,
        /// The published target holding that version.
        target: String,
    },
    /// A published target's `custom` fields are missing or malformed.
    #[error("target {target}: custom fields")]
    BadCustom {
        /// The target name.
        target: String,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The key to revoke is not one of the role's keys, or none was named when several exist.
    #[error("{role}: {reason}")]
    Revoke {
        /// The role being rotated.
        role: RoleType,
        /// What is wrong.
        reason: String,
    },
    /// A version number or expiry would overflow.
    #[error("{what} overflows")]
    Overflow {
        /// What overflowed.
        what: String,
    },
    /// tough refused the repository (only from [`load_with_tough`]).
    #[error("tough: {what}")]
    Tough {
        /// What tough was doing.
        what: String,
        /// tough's error.
        source: Box<tough::error::Error>,
    },
    /// A background task running the command failed.
    #[error("publishing task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The four top-level roles, in the order they are listed and re-signed.
pub const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];
