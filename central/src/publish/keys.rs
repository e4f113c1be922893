//! Signing keys: ed25519 PKCS#8 DER files in a keys folder, their TUF form and key ids.
//!
//! This module owns generating, writing (mode 0600, never overwriting) and reading key files,
//! and choosing which of the available keys sign a role.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::schema::key::Key;
use tough::schema::{RoleType, Root};

use super::PublishError;

/// Extension of key files.
pub const KEY_EXTENSION: &str = "pk8";

/// An ed25519 signing key with its TUF public key and key id.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key: Key,
    key_id: String,
    path: PathBuf,
}

impl SigningKey {
    /// Parses a PKCS#8 DER ed25519 private key (v1 as `openssl genpkey` writes, or v2);
    /// `path` names where it came from, for errors.
    pub fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, PublishError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|source| PublishError::BadKey {
            path: path.to_owned(),
            source,
        })?;
        let key = tough::sign::Sign::tuf_key(&pair);
        let key_id = key.key_id().map_err(|source| PublishError::KeyId {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        Ok(Self {
            pair,
            key,
            key_id: hex::encode(&key_id),
            path: path.to_owned(),
        })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, PublishError> {
        let der = fs::read(path).map_err(|source| PublishError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pkcs8(&der, path)
    }

    /// Generates a new key for `role` and writes it to `path` (mode 0600), refusing to
    /// overwrite an existing file.
    ///
    /// The file is PKCS#8 v1 DER, the form `openssl genpkey -algorithm ed25519 -outform DER`
    /// writes.
    pub fn generate(role: RoleType, path: &Path) -> Result<Self, PublishError> {
        let unsaved = UnsavedKey::generate(role, path)?;
        unsaved.save()
    }

    /// The public key as TUF metadata lists it.
    pub fn tuf_key(&self) -> &Key {
        &self.key
    }

    /// The key id: sha256 of the canonical JSON of [`Self::tuf_key`], lowercase hex.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The file the key was read from or written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs `message` (the canonical JSON of a role's `signed` object).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// A generated key not yet written to its file, so that a command can check everything else
/// before it leaves a new key behind.
pub(super) struct UnsavedKey {
    key: SigningKey,
    der: Vec<u8>,
}

impl UnsavedKey {
    /// Generates a key that [`Self::save`] will write to `path`.
    pub(super) fn generate(role: RoleType, path: &Path) -> Result<Self, PublishError> {
        let document = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
            .map_err(|_| PublishError::KeyGeneration { role })?;
        let key = SigningKey::from_pkcs8(document.as_ref(), path)?;
        Ok(Self {
            key,
            der: document.as_ref().to_vec(),
        })
    }

    /// The key, for signing before it is saved.
    pub(super) fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Writes the key file (mode 0600, never overwriting) and returns the key.
    pub(super) fn save(self) -> Result<SigningKey, PublishError> {
        write_key_file(&self.key.path, &self.der)?;
        Ok(self.key)
    }
}

/// Name of the key file for `role`: `root-<n>.pk8`, or `<role>.pk8` when `n` is 1 for the
/// other roles and `<role>-<n>.pk8` after that.
pub fn key_file_name(role: RoleType, n: u32) -> String {
    if role != RoleType::Root && n == 1 {
        format!("{role}.{KEY_EXTENSION}")
    } else {
        format!("{role}-{n}.{KEY_EXTENSION}")
    }
}

/// The first key file name for `role` that does not exist yet in `dir`, counting from 2 (or
/// from 1 for root).
pub(super) fn next_key_path(dir: &Path, role: RoleType) -> PathBuf {
    let mut n = if role == RoleType::Root { 1 } else { 2 };
    loop {
        let path = dir.join(key_file_name(role, n));
        if !path.exists() {
            return path;
        }
        n += 1;
    }
}

/// Creates the keys folder (mode 0700) if it is missing.
pub(super) fn create_keys_dir(dir: &Path) -> Result<(), PublishError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PublishError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn write_key_file(path: &Path, der: &[u8]) -> Result<(), PublishError> {
    let io = |source| PublishError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PublishError::KeyExists {
                    path: path.to_owned(),
                }
            } else {
                io(source)
            }
        })?;
    file.write_all(der).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        super::metadata::sync_dir(dir)?;
    }
    Ok(())
}

/// Every key file (`*.pk8`) of a keys folder, by key id.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    keys: BTreeMap<String, SigningKey>,
}

impl KeyRing {
    /// Reads every `*.pk8` file of `dir`; a file that is not an ed25519 key is an error.
    pub fn load(dir: &Path) -> Result<Self, PublishError> {
        let io = |source| PublishError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == KEY_EXTENSION) && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut ring = Self {
            dir: dir.to_owned(),
            keys: BTreeMap::new(),
        };
        for path in paths {
            ring.insert(SigningKey::load(&path)?);
        }
        Ok(ring)
    }

    /// Adds a key (a key already present under the same id is kept).
    pub fn insert(&mut self, key: SigningKey) {
        self.keys.entry(key.key_id.clone()).or_insert(key);
    }

    /// The key with this id, if its file is in the folder.
    pub fn get(&self, key_id: &str) -> Option<&SigningKey> {
        self.keys.get(key_id)
    }

    /// The folder the keys came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Picks a threshold of `root`'s keys for `role` from this ring and `extra` (keys not in
    /// the folder yet, e.g. one just generated).
    ///
    /// Keys in `prefer` come first, keys in `avoid` last (used only if the threshold cannot be
    /// met otherwise), the rest in the order the root lists them.
    pub fn signers_for<'a>(
        &'a self,
        root: &Root,
        role: RoleType,
        extra: &[&'a SigningKey],
        prefer: &[&str],
        avoid: &[&str],
    ) -> Result<Vec<&'a SigningKey>, PublishError> {
        let role_keys = root.roles.get(&role).ok_or_else(|| PublishError::BadRepo {
            path: self.dir.clone(),
            reason: format!("root version {} has no {role} role", root.version),
        })?;
        let listed: Vec<String> = role_keys.keyids.iter().map(hex::encode).collect();
        let rank = |id: &String| {
            if prefer.contains(&id.as_str()) {
                0
            } else if avoid.contains(&id.as_str()) {
                2
            } else {
                1
            }
        };
        let mut ordered: Vec<&String> = listed.iter().collect();
        ordered.sort_by_key(|id| rank(id));
        let available: Vec<&'a SigningKey> = ordered
            .iter()
            .filter_map(|id| {
                self.get(id)
                    .or_else(|| extra.iter().copied().find(|k| k.key_id() == id.as_str()))
            })
            .collect();
        let threshold = role_keys.threshold.get();
        let needed = usize::try_from(threshold).unwrap_or(usize::MAX);
        if available.len() < needed {
            return Err(PublishError::NotEnoughKeys {
                role,
                threshold,
                available: available.len(),
                listed: listed.join(", "),
                keys: self.dir.clone(),
            });
        }
        Ok(available.into_iter().take(needed).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(key_file_name(RoleType::Targets, 1));
        let key = SigningKey::generate(RoleType::Targets, &path).expect("generate");
        let mode = fs::metadata(&path).expect("stat").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(key.key_id().len(), 64);
        let again = SigningKey::generate(RoleType::Targets, &path).expect_err("overwrote");
        assert!(matches!(again, PublishError::KeyExists { .. }), "{again}");
        let back = SigningKey::load(&path).expect("load");
        assert_eq!(back.key_id(), key.key_id());
    }

    #[test]
    fn key_file_names_follow_the_layout() {
        assert_eq!(key_file_name(RoleType::Root, 1), "root-1.pk8");
        assert_eq!(key_file_name(RoleType::Targets, 1), "targets.pk8");
        assert_eq!(key_file_name(RoleType::Timestamp, 2), "timestamp-2.pk8");
        let dir = tempfile::tempdir().expect("tempdir");
        for n in 1..=3 {
            fs::write(dir.path().join(key_file_name(RoleType::Root, n)), b"x").expect("write");
        }
        assert_eq!(
            next_key_path(dir.path(), RoleType::Root),
            dir.path().join("root-4.pk8")
        );
        assert_eq!(
            next_key_path(dir.path(), RoleType::Snapshot),
            dir.path().join("snapshot-2.pk8")
        );
    }

    #[test]
    fn a_file_that_is_not_a_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("targets.pk8");
        fs::write(&path, b"not a key").expect("write");
        let err = KeyRing::load(dir.path()).expect_err("accepted");
        assert!(err.to_string().contains("targets.pk8"), "{err}");
    }
}
