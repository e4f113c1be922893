//! The model bundle: one file holding the ONNX graph, its manifest and its golden samples.
//!
//! This module owns creating a bundle from its parts, writing it byte-for-byte reproducibly,
//! and reading one back with every part checked against the digests its manifest records.
//! Whether the model inside actually runs and gives the right answers is the validation gate's
//! job ([`crate::gate`]).

pub mod archive;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{FileDigests, Manifest, ManifestError};

/// Name of the manifest entry.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the ONNX model entry.
pub const MODEL_ENTRY: &str = "model.onnx";
/// Folder of the golden sample entries.
pub const GOLDEN_DIR: &str = "golden";

/// Largest bundle file accepted, in bytes.
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;

/// Why a bundle could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a bundle at all, or are cut short.
    #[error("not a model bundle: {0}")]
    NotABundle(String),
    /// A part of the archive could not be read.
    #[error("not a model bundle: cannot read {part}")]
    Unreadable {
        /// The part: an entry, its name or size, the list of entries.
        part: String,
        /// The archive reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The archive holds an entry a bundle never has.
    #[error("not a model bundle: unexpected entry {0:?}")]
    UnexpectedEntry(String),
    /// A required entry is absent.
    #[error("bundle has no {0}")]
    Missing(String),
    /// The manifest is unreadable or inconsistent.
    #[error("bundle manifest")]
    Manifest(#[source] ManifestError),
    /// A part does not match the digest the manifest records.
    #[error("{part} was altered: manifest records sha256 {expected}, content has {actual}")]
    DigestMismatch {
        /// The entry concerned.
        part: String,
        /// Digest recorded in the manifest.
        expected: String,
        /// Digest of the content.
        actual: String,
    },
    /// Two golden samples would get the same name inside the bundle.
    #[error("golden samples {0:?} and {1:?} have the same file name")]
    GoldenNameClash(String, String),
    /// The archive could not be written.
    #[error("cannot write bundle: {part}")]
    Write {
        /// The part being written: an entry or the archive's end.
        part: String,
        /// The archive writer's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ManifestError> for BundleError {
    fn from(error: ManifestError) -> Self {
        BundleError::Manifest(error)
    }
}

/// A model bundle held in memory, with its parts checked against the manifest's digests.
#[derive(Debug, Clone)]
pub struct Bundle {
    manifest: Manifest,
    model: Vec<u8>,
    golden: BTreeMap<String, Vec<u8>>,
    bytes: Vec<u8>,
    digest: String,
}

impl Bundle {
    /// Builds a bundle from a manifest, the ONNX bytes and the golden sample files.
    ///
    /// `golden` maps each `validation.golden[].file` value of the manifest to that file's
    /// content. Golden files are stored as `golden/<file name>` and the manifest is rewritten
    /// to point there; the manifest's `files` section is filled in.
    pub fn create(
        mut manifest: Manifest,
        model: Vec<u8>,
        golden: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, BundleError> {
        let mut stored: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for sample in &mut manifest.validation.golden {
            let data = golden
                .get(&sample.file)
                .ok_or_else(|| BundleError::Missing(format!("golden sample {}", sample.file)))?;
            let file_name = Path::new(&sample.file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| BundleError::Missing(format!("golden sample {}", sample.file)))?;
            let inner = format!("{GOLDEN_DIR}/{file_name}");
            if let Some(previous) = origin.get(&inner)
                && *previous != sample.file
            {
                return Err(BundleError::GoldenNameClash(
                    previous.clone(),
                    sample.file.clone(),
                ));
            }
            origin.insert(inner.clone(), sample.file.clone());
            stored.insert(inner.clone(), data.clone());
            sample.file = inner;
        }
        manifest.files = Some(FileDigests {
            model: sha256_hex(&model),
            golden: stored
                .iter()
                .map(|(name, data)| (name.clone(), sha256_hex(data)))
                .collect(),
        });
        manifest.validate()?;
        let manifest_json = manifest.to_canonical_json();
        let mut entries: Vec<(String, &[u8])> = vec![
            (MANIFEST_ENTRY.to_owned(), &manifest_json),
            (MODEL_ENTRY.to_owned(), &model),
        ];
        entries.extend(stored.iter().map(|(n, d)| (n.clone(), d.as_slice())));
        let bytes = archive::write(&entries)?;
        let digest = sha256_hex(&bytes);
        Ok(Bundle {
            manifest,
            model,
            golden: stored,
            bytes,
            digest,
        })
    }

    /// Builds a bundle from a hand-written TOML manifest and an ONNX file; golden sample paths
    /// are relative to the manifest's folder.
    pub fn create_from_files(manifest_path: &Path, onnx_path: &Path) -> Result<Self, BundleError> {
        let text = read_file(manifest_path)?;
        let text = String::from_utf8(text).map_err(|_| {
            BundleError::NotABundle(format!("{} is not UTF-8 text", manifest_path.display()))
        })?;
        let manifest = Manifest::from_toml(&text)?;
        let model = read_file(onnx_path)?;
        let base = manifest_path.parent().unwrap_or(Path::new("."));
        let mut golden = BTreeMap::new();
        for sample in &manifest.validation.golden {
            golden.insert(sample.file.clone(), read_file(&base.join(&sample.file))?);
        }
        Self::create(manifest, model, &golden)
    }

    /// Reads a bundle file and checks its structure and digests.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        let size = std::fs::metadata(path)
            .map_err(|source| BundleError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size > MAX_BUNDLE_BYTES {
            return Err(BundleError::NotABundle(format!(
                "{} is {size} bytes, more than {MAX_BUNDLE_BYTES}",
                path.display()
            )));
        }
        Self::from_bytes(read_file(path)?)
    }

    /// Parses bundle bytes and checks every part against the manifest's digests.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, BundleError> {
        let entries = archive::read(&bytes)?;
        let mut manifest_json = None;
        let mut model = None;
        let mut golden = BTreeMap::new();
        for (name, data) in entries {
            if name == MANIFEST_ENTRY {
                manifest_json = Some(data);
            } else if name == MODEL_ENTRY {
                model = Some(data);
            } else if name
                .strip_prefix(GOLDEN_DIR)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|file| !file.contains('/'))
            {
                golden.insert(name, data);
            } else {
                return Err(BundleError::UnexpectedEntry(name));
            }
        }
        let manifest_json =
            manifest_json.ok_or_else(|| BundleError::Missing(MANIFEST_ENTRY.into()))?;
        let manifest = Manifest::from_json(&manifest_json)?;
        let model = model.ok_or_else(|| BundleError::Missing(MODEL_ENTRY.into()))?;
        let files = manifest
            .files
            .as_ref()
            .ok_or_else(|| BundleError::Missing("files section in its manifest".into()))?;
        check_digest(MODEL_ENTRY, &files.model, &model)?;
        for (name, expected) in &files.golden {
            let data = golden
                .get(name)
                .ok_or_else(|| BundleError::Missing(name.clone()))?;
            check_digest(name, expected, data)?;
        }
        if let Some(extra) = golden.keys().find(|name| !files.golden.contains_key(*name)) {
            return Err(BundleError::UnexpectedEntry(extra.clone()));
        }
        for sample in &manifest.validation.golden {
            if !golden.contains_key(&sample.file) {
                return Err(BundleError::Missing(sample.file.clone()));
            }
        }
        let digest = sha256_hex(&bytes);
        Ok(Bundle {
            manifest,
            model,
            golden,
            bytes,
            digest,
        })
    }

    /// Writes the bundle to `path`.
    pub fn write_to(&self, path: &Path) -> Result<(), BundleError> {
        std::fs::write(path, &self.bytes).map_err(|source| BundleError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The manifest, with its `files` section.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The ONNX model bytes.
    pub fn model(&self) -> &[u8] {
        &self.model
    }

    /// The content of a golden sample by its path inside the bundle.
    pub fn golden_file(&self, name: &str) -> Option<&[u8]> {
        self.golden.get(name).map(Vec::as_slice)
    }

    /// The bundle file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the whole bundle file, lowercase hex: the bundle's identity.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

fn check_digest(part: &str, expected: &str, data: &[u8]) -> Result<(), BundleError> {
    let actual = sha256_hex(data);
    if actual == expected {
        Ok(())
    } else {
        Err(BundleError::DigestMismatch {
            part: part.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::EXAMPLE;

    fn parts() -> (Manifest, Vec<u8>, BTreeMap<String, Vec<u8>>) {
        let manifest = Manifest::from_toml(EXAMPLE).expect("example manifest");
        let golden = BTreeMap::from([("golden/a.png".to_owned(), b"png bytes".to_vec())]);
        (manifest, b"onnx bytes".to_vec(), golden)
    }

    #[test]
    fn same_parts_give_the_same_bytes_and_read_back() {
        let (m, model, golden) = parts();
        let a = Bundle::create(m.clone(), model.clone(), &golden).expect("create");
        let b = Bundle::create(m, model, &golden).expect("create");
        assert_eq!(a.bytes(), b.bytes());
        let back = Bundle::from_bytes(a.bytes().to_vec()).expect("read back");
        assert_eq!(back.manifest(), a.manifest());
        assert_eq!(back.model(), b"onnx bytes");
        assert_eq!(back.golden_file("golden/a.png"), Some(&b"png bytes"[..]));
        assert_eq!(back.digest(), a.digest());
    }

    #[test]
    fn any_change_to_any_part_changes_the_digest() {
        let (m, model, golden) = parts();
        let base = Bundle::create(m.clone(), model.clone(), &golden).expect("create");
        let mut threshold = m.clone();
        threshold
            .output
            .reject_threshold
            .insert("scratch".into(), 0.6);
        let mut provenance = m.clone();
        provenance.provenance.notes = Some("retrained".into());
        let mut other_golden = golden.clone();
        other_golden.insert("golden/a.png".into(), b"png bytez".to_vec());
        let variants = [
            Bundle::create(threshold, model.clone(), &golden),
            Bundle::create(provenance, model.clone(), &golden),
            Bundle::create(m.clone(), b"onnx bytez".to_vec(), &golden),
            Bundle::create(m, model, &other_golden),
        ];
        for variant in variants {
            assert_ne!(variant.expect("create").digest(), base.digest());
        }
    }

    #[test]
    fn a_swapped_part_is_detected() {
        let (m, model, golden) = parts();
        let good = Bundle::create(m.clone(), model, &golden).expect("create");
        // Same manifest (with the original digests), other model bytes.
        let json = good.manifest().to_canonical_json();
        let entries: Vec<(String, &[u8])> = vec![
            (MANIFEST_ENTRY.into(), &json),
            (MODEL_ENTRY.into(), b"evil bytes"),
            ("golden/a.png".into(), b"png bytes"),
        ];
        let forged = archive::write(&entries).expect("write");
        let err = Bundle::from_bytes(forged).expect_err("forged bundle accepted");
        assert!(
            matches!(err, BundleError::DigestMismatch { ref part, .. } if part == MODEL_ENTRY),
            "{err}"
        );
    }

    #[test]
    fn unexpected_entries_are_refused() {
        let (m, model, golden) = parts();
        let good = Bundle::create(m, model, &golden).expect("create");
        let json = good.manifest().to_canonical_json();
        let entries: Vec<(String, &[u8])> = vec![
            (MANIFEST_ENTRY.into(), &json),
            (MODEL_ENTRY.into(), b"onnx bytes"),
            ("golden/a.png".into(), b"png bytes"),
            ("run.sh".into(), b"#!/bin/sh"),
        ];
        let err =
            Bundle::from_bytes(archive::write(&entries).expect("write")).expect_err("accepted");
        assert!(
            matches!(err, BundleError::UnexpectedEntry(ref name) if name == "run.sh"),
            "{err}"
        );
    }
}
