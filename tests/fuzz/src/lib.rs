//! Fuzz harnesses for every input the box takes from outside, and the bounded pass CI runs.
//!
//! This crate owns one harness per kind of untrusted input: camera frames (through the same
//! decode and preprocessing entry point the agent's workers use), model bundles and manifests,
//! both daemons' configs, the PLC's line-state payloads and the canary approvals, the capture
//! receiver's HTTP requests, and the updater's trust-state files. A harness takes raw bytes,
//! feeds them to the product's own parser, and panics only when the product does or when one
//! of the invariants it checks is broken.
//!
//! Two drivers run the same harnesses:
//! - the coverage-guided one, libFuzzer on the stable toolchain, in `tests/fuzz/libfuzzer`
//!   (see `tests/fuzz/README.md`), for long runs;
//! - [`pass`], a bounded pass of the seed corpora, every regression input and seeded
//!   mutations, which `cargo test` runs in CI.

pub mod mutate;
pub mod pass;
pub mod targets;

use std::path::PathBuf;

/// One fuzz target: a name and the harness that takes any bytes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name: its corpus folder, regression folder and libFuzzer binary.
    pub name: &'static str,
    /// Runs one input through the product's parser; panics on a finding.
    pub run: fn(&[u8]),
    /// Longest input the mutators make for this target, in bytes.
    pub max_len: usize,
}

/// Every target, in the order the bounded pass runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decode",
        run: targets::frame_decode::run,
        max_len: 64 * 1024,
    },
    Target {
        name: "bundle",
        run: targets::bundle::run,
        max_len: 16 * 1024,
    },
    Target {
        name: "manifest",
        run: targets::manifest::run,
        max_len: 8 * 1024,
    },
    Target {
        name: "agent_config",
        run: targets::agent_config::run,
        max_len: 16 * 1024,
    },
    Target {
        name: "updater_config",
        run: targets::updater_config::run,
        max_len: 8 * 1024,
    },
    Target {
        name: "line_state",
        run: targets::line_state::run,
        max_len: 512,
    },
    Target {
        name: "approval",
        run: targets::approval::run,
        max_len: 1024,
    },
    Target {
        name: "capture_receiver",
        run: targets::capture_receiver::run,
        max_len: 4 * 1024,
    },
    Target {
        name: "trust_state",
        run: targets::trust_state::run,
        max_len: 8 * 1024,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The seed corpus of a target: real files of the kind it parses.
pub fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// Inputs that once broke a target; each is replayed on every run.
pub fn regressions_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(name)
}
