//! python-tuf, the independent TUF publisher of the interop and attack tests.
//!
//! This module owns the virtualenv at `<workspace>/target/tuf-venv` and running
//! `tests/python/tuf_publisher.py` in it. CI creates the virtualenv once in `.ci/run`; when it
//! is missing or was made from other requirements, the first test that needs it creates it
//! (`python3 -m venv`, `pip install -r tests/python/requirements.txt`) under a lock file, so
//! test processes running in parallel create it only once. `.requirements-sha256` in the
//! virtualenv records which requirements it was made from.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::repo_root;

/// File in the virtualenv holding the sha256 of the requirements it was made from.
pub const MARKER: &str = ".requirements-sha256";

/// `<workspace>/target/tuf-venv`.
pub fn venv_dir() -> PathBuf {
    repo_root().join("target").join("tuf-venv")
}

/// `tests/python/requirements.txt`.
pub fn requirements() -> PathBuf {
    repo_root().join("tests/python/requirements.txt")
}

/// `tests/python/tuf_publisher.py`.
pub fn publisher_script() -> PathBuf {
    repo_root().join("tests/python/tuf_publisher.py")
}

/// The virtualenv's Python interpreter, creating the virtualenv first if it is missing or
/// out of date. Panics when it cannot be created.
pub fn python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(ensure_venv).clone()
}

fn requirements_digest() -> String {
    let path = requirements();
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_ready(venv: &Path, wanted: &str) -> bool {
    venv.join("bin/python").exists()
        && fs::read_to_string(venv.join(MARKER)).is_ok_and(|found| found.trim() == wanted)
}

fn ensure_venv() -> PathBuf {
    let venv = venv_dir();
    let interpreter = venv.join("bin/python");
    let wanted = requirements_digest();
    if is_ready(&venv, &wanted) {
        return interpreter;
    }
    let target = venv
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
    let lock_path = target.join("tuf-venv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    // Released when `lock` is dropped at the end of this function. `File::lock` is stable
    // since Rust 1.89; the workspace's declared rust-version (1.88) is older than the
    // toolchain it is built with, hence the allowance.
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    if !is_ready(&venv, &wanted) {
        create_venv(&venv, &wanted);
    }
    interpreter
}

fn create_venv(venv: &Path, digest: &str) {
    if venv.exists() {
        fs::remove_dir_all(venv).unwrap_or_else(|e| panic!("{}: {e}", venv.display()));
    }
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(venv);
    run_checked(&mut make, "python3 -m venv");
    let mut install = Command::new(venv.join("bin/python"));
    install
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements());
    run_checked(&mut install, "pip install -r tests/python/requirements.txt");
    let marker = venv.join(MARKER);
    fs::write(&marker, format!("{digest}\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", marker.display()));
}

fn run_checked(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `tuf_publisher.py <args>` and returns its output whatever its exit status.
pub fn try_publisher<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(python())
        .arg(publisher_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tuf_publisher.py: {e}"))
}

/// Runs `tuf_publisher.py <args>`; panics with its standard error when it fails.
pub fn publisher<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let output = try_publisher(args);
    if !output.status.success() {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        panic!(
            "tuf_publisher.py {shown:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Runs `tuf_publisher.py <args>` and parses the JSON object it prints; panics on failure.
pub fn publisher_json<S: AsRef<OsStr>>(args: &[S]) -> serde_json::Value {
    let output = publisher(args);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "tuf_publisher.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
