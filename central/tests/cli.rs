//! The `defect-central` command line: its commands, their help, and how a failure exits.

use std::process::{Command, Output};

fn central(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_defect-central"))
        .args(args)
        .output()
        .expect("run defect-central")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_capture_server_and_the_repository_commands() {
    let out = central(&["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(help.contains("capture-server"), "{help}");
    assert!(help.contains("repo"), "{help}");
}

#[test]
fn repo_help_lists_every_publishing_command_and_capture_server_its_flags() {
    let out = central(&["repo", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for command in ["init", "add-target", "resign-timestamp", "rotate-key"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    let out = central(&["capture-server", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(
        help.contains("--listen") && help.contains("--dir"),
        "{help}"
    );
}

#[test]
fn a_refused_command_names_the_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let keys = dir.path().join("keys");
    let init = [
        "repo",
        "init",
        "--repo",
        repo.to_str().expect("path"),
        "--keys",
        keys.to_str().expect("path"),
    ];
    let out = central(&init);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("initialised "),
        "{}",
        text(&out.stdout)
    );
    let again = central(&init);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(
        stderr.starts_with("defect-central: ") && stderr.contains("refusing to overwrite"),
        "{stderr}"
    );
}
