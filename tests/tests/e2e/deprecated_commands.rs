//! The commands that moved to `defect-central` still work under their old names for one
//! release: `model-updater repo …` and `defect-agent capture-server …` print a deprecation
//! message, then run `defect-central` with the same arguments in their place (same process,
//! same exit status). Without `defect-central` installed they say what to install and fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use defect_central::publish::load_with_tough;
use defect_e2e::capture_server::CaptureServer;
use defect_e2e::{binary, shipped_bundle, stderr, stdout};
use sha2::{Digest, Sha256};

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const REPO_DEPRECATED: &str = "model-updater repo is deprecated and will be removed in the next \
                               release; use `defect-central repo`";

#[tokio::test]
async fn model_updater_repo_still_publishes_through_defect_central_with_a_deprecation_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = |name: &str| {
        let repo = dir.path().join(format!("{name}-repo"));
        let keys = dir.path().join(format!("{name}-keys"));
        let args = [
            "repo",
            "init",
            "--repo",
            repo.to_str().expect("path"),
            "--keys",
            keys.to_str().expect("path"),
        ];
        (run(name, &args), repo, keys)
    };
    let (old, old_repo, old_keys) = init("model-updater");
    let (new, new_repo, new_keys) = init("defect-central");
    assert!(old.status.success(), "{}", stderr(&old));
    assert!(new.status.success(), "{}", stderr(&new));
    assert!(stderr(&old).contains(REPO_DEPRECATED), "{}", stderr(&old));
    assert!(!stderr(&new).contains("deprecated"), "{}", stderr(&new));
    assert!(stdout(&old).starts_with("initialised "), "{}", stdout(&old));
    assert_eq!(
        files(&old_repo),
        files(&new_repo),
        "the same repository layout"
    );
    assert_eq!(files(&old_keys), files(&new_keys), "the same keys");

    // Flags after the subcommand pass through untouched, and the repository is a real one.
    let bundle = shipped_bundle();
    let add = run(
        "model-updater",
        &[
            "repo",
            "add-target",
            "--repo",
            old_repo.to_str().expect("path"),
            "--keys",
            old_keys.to_str().expect("path"),
            "--bundle",
            bundle.to_str().expect("path"),
            "--stations",
            "st-1,st-2",
        ],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(stdout(&add).starts_with("published "), "{}", stdout(&add));
    let root = std::fs::read(old_repo.join("metadata/1.root.json")).expect("root");
    let loaded = load_with_tough(&root, &old_repo)
        .await
        .expect("tough loads it");
    assert_eq!(loaded.targets.len(), 1);

    // defect-central's failure is the old command's failure.
    let (again, _, _) = init("model-updater");
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );

    // --help goes to defect-central too, and the old command stays out of model-updater's help.
    let help = run("model-updater", &["repo", "--help"]);
    assert!(help.status.success(), "{}", stderr(&help));
    assert!(stdout(&help).contains("rotate-key"), "{}", stdout(&help));
    let top = run("model-updater", &["--help"]);
    assert!(
        !stdout(&top)
            .lines()
            .any(|line| line.trim_start().starts_with("repo ")),
        "{}",
        stdout(&top)
    );
}

/// Sends one object to a capture receiver and returns the response's status line.
fn put(port: u16, station: &str, file: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "PUT /v1/capture/{station}/{file} HTTP/1.1\r\nhost: central\r\nconnection: close\r\n\
         content-length: {len}\r\nupload-offset: 0\r\nupload-length: {len}\r\n\
         content-sha256: {sha}\r\n\r\n",
        len = body.len(),
        sha = hex(&Sha256::digest(body)),
    );
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response.lines().next().unwrap_or_default().to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn defect_agent_capture_server_still_receives_frames_as_defect_central_with_a_deprecation_message()
{
    let server = CaptureServer::start_with("defect-agent");
    let frame = std::fs::read(&defect_e2e::sample_frames()[0].0).expect("sample frame");
    let status = put(server.port, "station-1", "frame.jpg", &frame);
    assert!(status.contains(" 201 "), "{status}\n{}", server.log());
    assert_eq!(server.files("station-1"), [("frame.jpg".to_owned(), frame)]);
    assert!(
        server.log().contains(
            "defect-agent capture-server is deprecated and will be removed in the next release; \
             use `defect-central capture-server`"
        ),
        "{}",
        server.log()
    );
    // defect-central runs in place of defect-agent: the same process, so a unit's main PID
    // and its signals reach the receiver.
    let pid = server.pid().expect("running");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/PID/exe");
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some("defect-central")
    );

    let top = run("defect-agent", &["--help"]);
    assert!(!stdout(&top).contains("capture-server"), "{}", stdout(&top));
}

#[test]
fn without_defect_central_installed_the_old_names_say_what_to_install_and_fail() {
    let alone = tempfile::tempdir().expect("tempdir");
    for (name, args) in [
        ("model-updater", ["repo", "init"]),
        ("defect-agent", ["capture-server", "--help"]),
    ] {
        let copy = alone.path().join(name);
        std::fs::copy(binary(name), &copy).expect("copy binary");
        let out = Command::new(&copy)
            .args(args)
            .env("PATH", alone.path())
            .output()
            .expect("run the copy");
        assert_eq!(out.status.code(), Some(127), "{name}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(text.contains("is deprecated"), "{name}: {text}");
        assert!(
            text.contains("defect-central is not installed")
                && text.contains("install the defect-central binary"),
            "{name}: {text}"
        );
    }
}
