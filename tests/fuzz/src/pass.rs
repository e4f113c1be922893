//! The bounded pass: every regression input, every seed, then seeded mutations until a time
//! budget is spent. `cargo test` runs it for every target (`tests/bounded_pass.rs`).
//!
//! A panic is a finding: the input is written to `target/fuzz-findings/<target>/`, and the
//! pass fails with its path, the panic's text and how to keep it as a regression input.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::mutate::Mutator;
use crate::{Target, corpus_dir, regressions_dir};

/// What a pass over one target did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Regression inputs replayed.
    pub regressions: usize,
    /// Seed inputs replayed.
    pub seeds: usize,
    /// Mutated inputs run.
    pub mutations: u64,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A target has no seed corpus.
    #[error("{0}: no seed corpus (at least one real input is needed)")]
    NoSeeds(PathBuf),
    /// A corpus file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input made the target panic.
    #[error(
        "target {target} panicked on {input} ({kind}): {message}\n\
         reproduce: cargo test -p defect-fuzz --test bounded_pass {target}; keep it: move the file \
         into tests/fuzz/regressions/{target}/ with the fix"
    )]
    Finding {
        /// The target.
        target: &'static str,
        /// Where the input was written.
        input: PathBuf,
        /// A regression input, a seed or a mutation.
        kind: &'static str,
        /// The panic's text.
        message: String,
    },
}

/// The files of `dir`, sorted by name; none when it does not exist.
pub fn inputs(dir: &Path) -> Result<Vec<Vec<u8>>, PassError> {
    let read = |source| PassError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(read(error)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(read)?.path();
        if path.is_file() && path.file_name().is_none_or(|n| n != "README.md") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            std::fs::read(&path).map_err(|source| PassError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

/// Runs the bounded pass over `target` for about `budget`, mutating with `seed`.
pub fn run(target: &Target, budget: Duration, seed: u64) -> Result<PassReport, PassError> {
    let regressions = inputs(&regressions_dir(target.name))?;
    let seeds = inputs(&corpus_dir(target.name))?;
    if seeds.is_empty() {
        return Err(PassError::NoSeeds(corpus_dir(target.name)));
    }
    let start = Instant::now();
    for input in &regressions {
        execute(target, input, "regression input")?;
    }
    for input in &seeds {
        execute(target, input, "seed")?;
    }
    let mut mutator = Mutator::new(seed);
    let mut mutations = 0;
    while start.elapsed() < budget {
        let input = mutator.next(&seeds, target.max_len);
        execute(target, &input, "mutation")?;
        mutations += 1;
    }
    Ok(PassReport {
        regressions: regressions.len(),
        seeds: seeds.len(),
        mutations,
    })
}

fn execute(target: &Target, input: &[u8], kind: &'static str) -> Result<(), PassError> {
    let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.run)(input))) else {
        return Ok(());
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without text".to_owned());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fuzz-findings")
        .join(target.name);
    let path = dir.join(hex::encode(Sha256::digest(input)));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, input))
        .map_err(|source| PassError::Read {
            path: path.clone(),
            source,
        })?;
    Err(PassError::Finding {
        target: target.name,
        input: path,
        kind,
        message,
    })
}
