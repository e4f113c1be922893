//! Helpers for the end-to-end tests: where the built binaries and the repository's model files
//! are.
//!
//! The tests in `tests/tests/` run the real `defect-agent`, `model-updater`, `defect-central`
//! and `model-bundle` binaries against the real shipped bundle and sample frames. The binaries are not built by
//! `cargo test` itself: build them first with `cargo build --workspace --bins` (the same
//! profile), or point `DEFECT_E2E_BIN_DIR` at a folder holding them (see [`binary`]).

pub mod agent_process;
pub mod broker;
pub mod bundles;
pub mod capture_server;
pub mod crash_fixture;
pub mod hot_swap;
pub mod publisher;
pub mod python_tuf;
pub mod repo_server;
pub mod scrape;
pub mod subscriber;
pub mod tmpfs;
pub mod updater_box;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Environment variable naming the folder that holds the workspace's built binaries; `.ci/run`
/// sets it to its build step's output folder.
pub const BIN_DIR_VAR: &str = "DEFECT_E2E_BIN_DIR";

/// The folder the workspace binaries are taken from: `$DEFECT_E2E_BIN_DIR` when set, otherwise
/// the profile folder of the running test binary (`target/<profile>`, the test itself being in
/// `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let parent = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// Path of a binary built from this workspace, in [`bin_dir`]; panics saying how to build it
/// when it is not there.
pub fn binary(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    let source = match std::env::var_os(BIN_DIR_VAR).filter(|d| !d.is_empty()) {
        Some(_) => format!("${BIN_DIR_VAR}"),
        None => format!("the test's profile folder (set {BIN_DIR_VAR} to take binaries elsewhere)"),
    };
    assert!(
        path.is_file(),
        "{} is not built: {name} is looked up in {source}; build the workspace's binaries \
         first with the same profile: cargo build --workspace --bins",
        path.display()
    );
    path
}

/// Runs a workspace binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// The shipped bundle.
pub fn shipped_bundle() -> PathBuf {
    repo_root().join("models/shipped/surface-classifier.dmb")
}

/// The sample frames with their labels, from `models/samples/labels.csv`.
pub fn sample_frames() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("models/samples");
    let csv = std::fs::read_to_string(dir.join("labels.csv"))
        .unwrap_or_else(|e| panic!("models/samples/labels.csv: {e}"));
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (file, label) = line
                .split_once(',')
                .unwrap_or_else(|| panic!("bad labels.csv line {line:?}"));
            (dir.join(file.trim()), label.trim().to_owned())
        })
        .collect()
}

/// Standard output of a finished command as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error of a finished command as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What `defect-agent classify --json` says about each sample frame, in `sample_frames` order.
pub fn classify_samples() -> Vec<serde_json::Value> {
    let files: Vec<String> = sample_frames()
        .iter()
        .map(|(path, _)| path.display().to_string())
        .collect();
    let mut args = vec!["classify", "--json"];
    args.extend(files.iter().map(String::as_str));
    let output = run("defect-agent", &args);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line {line:?}: {e}"))
        })
        .collect()
}
