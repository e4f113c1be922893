//! Commands that moved to the `defect-central` binary and still run from here for one release.
//!
//! This module owns finding `defect-central` (next to the running executable, then on `PATH`)
//! and running it in place of this process, after a deprecation message on standard error. It
//! goes away with the deprecated commands in the next release.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The binary the central-server commands live in.
pub const CENTRAL: &str = "defect-central";

/// Exit status when `defect-central` is not installed (as a shell's "command not found").
pub const EXIT_NOT_INSTALLED: u8 = 127;

/// Exit status when `defect-central` was found but could not be started.
pub const EXIT_NOT_STARTED: u8 = 126;

/// Runs `defect-central <subcommand> <args…>` in place of this process, so it keeps the process
/// id and its exit status is this command's; `binary` names the deprecated command's binary
/// in messages. Returns only when `defect-central` cannot be run.
pub fn to_central(binary: &str, subcommand: &str, args: &[OsString]) -> ExitCode {
    eprintln!(
        "{binary} {subcommand} is deprecated and will be removed in the next release; \
         use `{CENTRAL} {subcommand}`"
    );
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let Some(central) = find(beside.as_deref(), std::env::var_os("PATH")) else {
        eprintln!(
            "{binary}: {CENTRAL} is not installed (looked next to this executable and on PATH); \
             install the {CENTRAL} binary of the {CENTRAL} package, which the central server \
             runs (`cargo build --release -p {CENTRAL}`)"
        );
        return ExitCode::from(EXIT_NOT_INSTALLED);
    };
    let error = Command::new(&central).arg(subcommand).args(args).exec();
    eprintln!("{binary}: cannot run {}: {error}", central.display());
    ExitCode::from(EXIT_NOT_STARTED)
}

/// The first executable `defect-central` in `beside`, then in the folders of `path`.
pub fn find(beside: Option<&Path>, path: Option<OsString>) -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    beside
        .map(Path::to_path_buf)
        .into_iter()
        .chain(on_path)
        .map(|folder| folder.join(CENTRAL))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(folder: &Path, mode: u32) -> PathBuf {
        let file = folder.join(CENTRAL);
        std::fs::write(&file, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        file
    }

    #[test]
    fn the_binary_beside_comes_before_path_and_only_executables_count() {
        let beside = tempfile::tempdir().expect("tempdir");
        let first = tempfile::tempdir().expect("tempdir");
        let second = tempfile::tempdir().expect("tempdir");
        let path = std::env::join_paths([first.path(), second.path()]).expect("join");
        assert_eq!(find(Some(beside.path()), Some(path.clone())), None);
        install(first.path(), 0o644);
        let on_path = install(second.path(), 0o755);
        assert_eq!(find(Some(beside.path()), Some(path.clone())), Some(on_path));
        let next_to = install(beside.path(), 0o755);
        assert_eq!(find(Some(beside.path()), Some(path)), Some(next_to));
        assert_eq!(find(None, None), None);
    }
}
