//! Disk space on a real small file system (a tmpfs, so the tests need root and are ignored
//! unless asked for with `-- --ignored needs_root`, as `.ci/run` does): the updater
//! refuses an update that does not fit before downloading anything, and a disk that fills up
//! during the download fails cleanly with the current model untouched.

use std::time::Duration;

use defect_e2e::bundles;
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::{Fault, RepoServer};
use defect_e2e::tmpfs::{Tmpfs, fill};
use defect_e2e::updater_box::{BoxSettings, UpdaterBox, describe};

#[test]
#[ignore = "needs root (mounts a tmpfs); run with -- --ignored needs_root"]
fn needs_root_an_update_that_does_not_fit_is_refused_before_any_download() {
    let repo = OwnRepo::init();
    repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let mount_point = tempfile::tempdir().expect("mount point");
    let tmpfs = Tmpfs::mount(mount_point.path(), "2m");
    let mut settings = BoxSettings::new(&server.url("/"), &repo.first_root());
    settings.store_dir = Some(tmpfs.dir.join("models"));
    // The store holds the shipped bundle (0.95 MB); the update needs twice its size free.
    let edge = UpdaterBox::new(&settings);
    let before = edge.current();

    let output = edge.check();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("bytes available"),
        "{}",
        describe(&output)
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/targets/")),
        "nothing may be downloaded"
    );
    assert_eq!(edge.current(), before);
    drop(edge);
    drop(tmpfs);
}

#[test]
#[ignore = "needs root (mounts a tmpfs); run with -- --ignored needs_root"]
fn needs_root_a_disk_filling_up_during_the_download_fails_cleanly_and_current_is_untouched() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    server.faults().add(
        Fault::StallAfter(300_000)
            .times(1)
            .on_paths_containing("/targets/"),
    );
    let mount_point = tempfile::tempdir().expect("mount point");
    let tmpfs = Tmpfs::mount(mount_point.path(), "2m");
    let mut settings = BoxSettings::new(&server.url("/"), &repo.first_root());
    settings.state_dir = Some(tmpfs.dir.join("updater"));
    let edge = UpdaterBox::new(&settings);
    let before = edge.current();
    let current_bytes =
        std::fs::read(edge.store().bundle_path(&before.0)).expect("current bundle bytes");

    let log = edge.path().join("check.log");
    let mut child = edge.spawn("check", &log);
    server.wait_for_stalls(1, Duration::from_secs(30));
    let filled = fill(&tmpfs.dir);
    assert!(filled > 0);
    server.faults().release_stalls();
    let status = child.wait().expect("updater exit");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("disk full"), "{text}");
    let partial = edge.state_dir.join("downloads").join(format!("{sha}.part"));
    assert!(
        !partial.exists(),
        "the partial download must be removed to free the space"
    );
    assert_eq!(edge.current(), before);
    assert_eq!(
        std::fs::read(edge.store().bundle_path(&before.0)).expect("current bundle bytes"),
        current_bytes
    );
    assert!(!edge.store().bundle_path(&sha).exists());
    drop(edge);
    drop(tmpfs);
}
