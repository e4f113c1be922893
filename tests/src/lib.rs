//! Helpers for the end-to-end tests: where the built binaries and the repository's model files
//! are.
//!
//! The tests in `tests/tests/` run the real `defect-agent`, `model-updater`, `defect-central`
//! and `model-bundle` binaries, built by the same `cargo test` or `cargo nextest` invocation, against the real shipped bundle and
//! sample frames.

pub mod agent_process;
pub mod broker;
pub mod bundles;
pub mod capture_server;
pub mod crash_fixture;
pub mod hot_swap;
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

/// Path of a binary built from this workspace, in the same target folder as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    // target/<profile>/deps/<test-binary>
    let parent = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected binary location {}", exe.display()));
    // Test and bench binaries live in target/<profile>/deps, plain binaries in target/<profile>.
    let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().unwrap_or(parent)
    } else {
        parent
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through cargo test or cargo nextest on the workspace",
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
