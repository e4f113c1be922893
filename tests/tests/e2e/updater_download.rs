//! The box-side downloader (`model_updater::download`) against a real HTTP server on loopback
//! ([`RepoServer`]) that misbehaves on request: resets, ignored or wrong ranges, 503 storms,
//! endless data, tampered content, an outage, and a disk that fills up mid-download.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use defect_e2e::repo_server::{Fault, RepoServer, Request};
use defect_e2e::tmpfs::{Tmpfs, fill};
use model_updater::download::{self, DownloadError, Jitter, Policy, Target, Url};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
const WAIT: Duration = Duration::from_secs(10);
const TARGET_PATH: &str = "targets/model.dmb";

/// Deterministic pseudo-random bytes (xorshift64*), so that a misplaced range shows.
fn generated(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A repository folder served by a [`RepoServer`], one target in it, and a work folder for the
/// partial.
struct Setup {
    server: RepoServer,
    repo: tempfile::TempDir,
    work: tempfile::TempDir,
    content: Vec<u8>,
    target: Target,
    partial: PathBuf,
}

impl Setup {
    /// Serves `content` as the target, with the partial in a temporary work folder.
    fn new(content: Vec<u8>) -> Setup {
        let work = tempfile::tempdir().expect("work tempdir");
        let partial = work.path().join("model.dmb.partial");
        Setup::with_partial_at(content, work, partial)
    }

    fn with_partial_at(content: Vec<u8>, work: tempfile::TempDir, partial: PathBuf) -> Setup {
        let repo = tempfile::tempdir().expect("repo tempdir");
        fs::create_dir_all(repo.path().join("targets")).expect("targets folder");
        fs::create_dir_all(repo.path().join("metadata")).expect("metadata folder");
        fs::write(repo.path().join(TARGET_PATH), &content).expect("write target");
        let server = RepoServer::start(repo.path());
        let target = Target {
            url: Url::parse(&server.url(TARGET_PATH)).expect("target URL"),
            length: content.len() as u64,
            sha256: sha256(&content),
        };
        Setup {
            server,
            repo,
            work,
            content,
            target,
            partial,
        }
    }

    /// Replaces the file the server serves (the signed target stays the same).
    fn serve(&self, bytes: &[u8]) {
        fs::write(self.repo.path().join(TARGET_PATH), bytes).expect("rewrite target");
    }

    /// Runs one `download` call to completion.
    fn download(&self, policy: &Policy) -> Result<(), DownloadError> {
        runtime().block_on(download_owned(
            self.target.clone(),
            self.partial.clone(),
            policy.clone(),
        ))
    }

    /// Runs one `download_counted` call to completion, adding the bytes received to `received`.
    fn download_counted(
        &self,
        policy: &Policy,
        received: &Arc<AtomicU64>,
    ) -> Result<(), DownloadError> {
        let (target, partial, policy) = (self.target.clone(), self.partial.clone(), policy.clone());
        let received = Arc::clone(received);
        runtime().block_on(async move {
            let client = download::client(&policy).expect("HTTP client");
            download::download_counted(&client, &target, &partial, &policy, &received).await
        })
    }

    fn partial_bytes(&self) -> Vec<u8> {
        fs::read(&self.partial).expect("read the partial")
    }

    fn assert_complete(&self) {
        let got = self.partial_bytes();
        assert_eq!(got.len(), self.content.len(), "partial length");
        assert!(
            got == self.content,
            "the partial does not hold the target's bytes"
        );
    }

    /// The request log once every body has ended (so that `body_bytes` is known).
    fn settled_log(&self, count: usize) -> Vec<Request> {
        self.server.wait_until(
            WAIT,
            &format!("{count} requests with ended bodies"),
            |log| log.len() >= count && log.iter().all(|r| r.body_bytes.is_some()),
        )
    }
}

async fn download_owned(
    target: Target,
    partial: PathBuf,
    policy: Policy,
) -> Result<(), DownloadError> {
    let client = download::client(&policy).expect("HTTP client");
    download::download(&client, &target, &partial, &policy).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Small delays so that the tests are quick; full jitter as in production.
fn fast_policy() -> Policy {
    Policy {
        max_bytes_per_second: None,
        attempts: 6,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        jitter: Jitter::Full,
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(5),
    }
}

fn range_start(request: &Request) -> Option<u64> {
    request
        .range
        .as_deref()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

#[test]
fn plain_download_of_the_shipped_bundle_is_complete_and_verified() {
    let bundle = fs::read(defect_e2e::shipped_bundle()).expect("read the shipped bundle");
    let setup = Setup::new(bundle);

    setup.download(&fast_policy()).expect("download");

    setup.assert_complete();
    let log = setup.settled_log(1);
    assert_eq!(log.len(), 1, "one request: {log:#?}");
    assert_eq!(log[0].path, format!("/{TARGET_PATH}"));
    assert_eq!(log[0].range, None);
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].body_bytes, Some(setup.content.len() as u64));
}

#[test]
fn a_complete_partial_is_verified_without_any_request() {
    let setup = Setup::new(generated(MIB, 18));
    fs::write(&setup.partial, &setup.content).expect("write a complete partial");

    setup.download(&fast_policy()).expect("verify");

    setup.assert_complete();
    assert!(setup.server.requests().is_empty(), "nothing was fetched");
}

#[test]
fn a_partial_longer_than_the_signed_length_is_discarded_and_fetched_again() {
    let setup = Setup::new(generated(MIB, 19));
    let mut too_long = setup.content.clone();
    too_long.extend_from_slice(b"left over from another version");
    fs::write(&setup.partial, &too_long).expect("write a too long partial");

    setup.download(&fast_policy()).expect("download");

    setup.assert_complete();
    let log = setup.settled_log(1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!((log[0].range.as_deref(), log[0].status), (None, 200));
}

#[test]
fn a_reset_mid_body_is_resumed_with_a_range_request_and_completes() {
    let setup = Setup::new(generated(4 * MIB, 1));
    setup
        .server
        .faults()
        .add(Fault::ResetAfter(MIB as u64).times(1));

    setup.download(&fast_policy()).expect("download");

    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!((log[0].range.as_deref(), log[0].status), (None, 200));
    assert_eq!(
        log[0].body_bytes,
        Some(MIB as u64),
        "the reset came after 1 MiB"
    );
    let resumed_from = range_start(&log[1]).expect("the second request resumes with a Range");
    assert_eq!(
        log[1].range.as_deref(),
        Some(format!("bytes={resumed_from}-").as_str())
    );
    assert!(
        resumed_from > 0 && resumed_from <= MIB as u64,
        "resumed from {resumed_from}"
    );
    assert_eq!(log[1].status, 206);
    assert_eq!(
        log[1].body_bytes,
        Some(setup.content.len() as u64 - resumed_from),
        "only the missing bytes were sent again"
    );
}

#[test]
fn the_bytes_received_are_counted_once_across_a_resume_and_not_again_for_a_complete_partial() {
    let setup = Setup::new(generated(2 * MIB, 4));
    setup
        .server
        .faults()
        .add(Fault::ResetAfter(MIB as u64).times(1));
    let received = Arc::new(AtomicU64::new(0));

    setup
        .download_counted(&fast_policy(), &received)
        .expect("download");
    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!(log.len(), 2, "one reset, one resume: {log:#?}");
    assert_eq!(log[1].status, 206, "{log:#?}");
    assert_eq!(received.load(Ordering::Relaxed), setup.content.len() as u64);

    setup
        .download_counted(&fast_policy(), &received)
        .expect("verify the complete partial");
    assert_eq!(
        received.load(Ordering::Relaxed),
        setup.content.len() as u64,
        "a complete partial is not received again"
    );
}

#[test]
fn a_second_call_resumes_the_partial_left_by_a_failed_first_call() {
    let setup = Setup::new(generated(4 * MIB, 2));
    setup
        .server
        .faults()
        .add(Fault::ResetAfter(MIB as u64).times(1));
    let one_attempt = Policy {
        attempts: 1,
        ..fast_policy()
    };

    let first = setup.download(&one_attempt);
    let error = first.expect_err("the first call has one attempt, which is reset");
    assert!(
        matches!(error, DownloadError::Network { .. }),
        "a reset mid-body is a broken transfer, not offline: {error:?}"
    );
    let kept = setup.partial_bytes();
    assert!(
        !kept.is_empty() && kept.len() <= MIB,
        "partial of {} bytes",
        kept.len()
    );
    assert!(
        kept == setup.content[..kept.len()],
        "the partial is a prefix of the target"
    );

    // A new call (fresh client, as after a process restart) picks the partial up.
    setup.download(&fast_policy()).expect("second call");

    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(
        log[1].range.as_deref(),
        Some(format!("bytes={}-", kept.len()).as_str())
    );
    assert_eq!(log[1].status, 206);
    assert_eq!(
        log[1].body_bytes,
        Some((setup.content.len() - kept.len()) as u64)
    );
}

#[test]
fn a_server_ignoring_range_makes_the_download_restart_from_zero_and_succeed() {
    let setup = Setup::new(generated(2 * MIB, 3));
    fs::write(&setup.partial, &setup.content[..MIB]).expect("write a 1 MiB partial");
    setup.server.faults().add(Fault::IgnoreRange.always());

    setup.download(&fast_policy()).expect("download");

    setup.assert_complete();
    let log = setup.settled_log(1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].range.as_deref(), Some("bytes=1048576-"));
    assert_eq!(log[0].status, 200, "the server ignored the Range");
    assert_eq!(
        log[0].body_bytes,
        Some(setup.content.len() as u64),
        "the whole file was taken"
    );
}

#[test]
fn a_wrong_content_range_discards_the_partial_and_restarts_from_zero() {
    let setup = Setup::new(generated(2 * MIB, 4));
    fs::write(&setup.partial, &setup.content[..MIB]).expect("write a 1 MiB partial");
    setup
        .server
        .faults()
        .add(Fault::WrongContentRange(4096).times(1));

    setup.download(&fast_policy()).expect("download");

    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0].range.as_deref(), Some("bytes=1048576-"));
    assert_eq!(log[0].status, 206);
    assert_eq!(
        log[1].range, None,
        "after a bad Content-Range the partial is discarded and the next request has no Range"
    );
    assert_eq!(log[1].status, 200);
    assert_eq!(log[1].body_bytes, Some(setup.content.len() as u64));
}

#[test]
fn a_storm_of_503s_is_outlasted_with_backoff_that_grows_and_stays_under_the_cap() {
    let setup = Setup::new(generated(256 * KIB, 5));
    setup.server.faults().add(Fault::unavailable(None).times(5));
    let initial = Duration::from_millis(50);
    let cap = Duration::from_millis(300);
    let policy = Policy {
        attempts: 8,
        backoff_initial: initial,
        backoff_max: cap,
        // The ceiling itself, so that growth is measurable; full jitter draws below it.
        jitter: Jitter::None,
        ..fast_policy()
    };

    setup.download(&policy).expect("download after the storm");

    setup.assert_complete();
    let log = setup.settled_log(6);
    assert_eq!(log.len(), 6, "{log:#?}");
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 503, 200]);
    let gaps: Vec<Duration> = log.windows(2).map(|w| w[1].at - w[0].at).collect();
    let ceilings = [50u64, 100, 200, 300, 300].map(Duration::from_millis);
    for (i, (gap, ceiling)) in gaps.iter().zip(ceilings).enumerate() {
        assert!(
            *gap + Duration::from_millis(5) >= ceiling,
            "gap {i} is {gap:?}, below the backoff of {ceiling:?}: {gaps:?}"
        );
        assert!(
            *gap < cap + Duration::from_millis(250),
            "gap {i} is {gap:?}, far above the cap {cap:?}: {gaps:?}"
        );
    }
    for i in 0..3 {
        assert!(
            gaps[i + 1] > gaps[i],
            "the backoff grows until the cap: {gaps:?}"
        );
    }
}

#[test]
fn retry_after_is_honoured_on_503_and_429_up_to_the_cap() {
    let setup = Setup::new(generated(64 * KIB, 6));
    let faults = setup.server.faults();
    faults.add(Fault::unavailable(Some(1)).times(1));
    let long_cap = Policy {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_secs(5),
        ..fast_policy()
    };

    setup.download(&long_cap).expect("download after a 503");

    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!((log[0].status, log[1].status), (503, 200));
    let gap = log[1].at - log[0].at;
    assert!(
        gap >= Duration::from_millis(995),
        "Retry-After: 1 was not honoured: {gap:?}"
    );

    // With a cap of 200 ms, Retry-After: 1 waits only the cap.
    fs::remove_file(&setup.partial).expect("remove the downloaded file");
    faults.add(Fault::Status {
        code: 429,
        retry_after: Some(1),
    });
    let short_cap = Policy {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(200),
        attempts: 2,
        ..fast_policy()
    };
    let error = setup
        .download(&short_cap)
        .expect_err("429 on both attempts");
    assert!(
        matches!(error, DownloadError::Http { status: 429, .. }),
        "{error:?}"
    );
    let log = setup.settled_log(4);
    assert_eq!((log[2].status, log[3].status), (429, 429));
    let gap = log[3].at - log[2].at;
    assert!(
        gap >= Duration::from_millis(195) && gap < Duration::from_millis(800),
        "Retry-After is capped at backoff_max (200 ms): {gap:?}"
    );
}

#[test]
fn a_missing_target_fails_at_once_with_http_404() {
    let setup = Setup::new(generated(64 * KIB, 7));
    setup
        .server
        .faults()
        .add(Fault::not_found().always().on_paths_containing("targets/"));

    let error = setup.download(&fast_policy()).expect_err("404");

    assert!(
        matches!(error, DownloadError::Http { status: 404, .. }),
        "{error:?}"
    );
    assert!(!error.is_offline(), "a 404 is loud");
    assert_eq!(setup.settled_log(1).len(), 1, "a 404 is not retried");
    assert!(!setup.partial.exists());
}

/// Creates an empty partial and a second hard link to it. The download discards the partial by
/// unlinking it, so the second link keeps the inode with the largest size it ever reached
/// (nothing truncates it on this path).
fn observe_partial(setup: &Setup) -> PathBuf {
    fs::write(&setup.partial, b"").expect("create the partial");
    let observer = setup.work.path().join("observer");
    fs::hard_link(&setup.partial, &observer).expect("hard link to the partial");
    observer
}

#[test]
fn endless_data_fails_with_endless_data_and_never_grows_the_partial_past_the_signed_length() {
    let setup = Setup::new(generated(MIB, 8));
    let observer = observe_partial(&setup);
    setup.server.faults().add(Fault::EndlessData.always());

    let error = setup
        .download(&fast_policy())
        .expect_err("endless data must fail");

    match &error {
        DownloadError::EndlessData { length, .. } => assert_eq!(*length, MIB as u64),
        other => panic!("expected EndlessData, got {other:?}"),
    }
    assert!(!setup.partial.exists(), "the partial is discarded");
    let largest = fs::metadata(&observer).expect("observer").len();
    assert!(
        largest <= MIB as u64,
        "the partial reached {largest} bytes, more than the signed {MIB}"
    );
    let log = setup.settled_log(1);
    assert_eq!(log.len(), 1, "endless data is not retried: {log:#?}");
    let sent = log[0].body_bytes.expect("body ended");
    assert!(
        sent < (MIB + 8 * MIB) as u64,
        "the client stopped reading; the server sent {sent} bytes"
    );
}

#[test]
fn a_content_length_beyond_the_signed_length_fails_before_anything_is_written() {
    let setup = Setup::new(generated(MIB, 9));
    let observer = observe_partial(&setup);
    setup
        .server
        .faults()
        .add(Fault::ExtraData(MIB as u64).always());

    let error = setup.download(&fast_policy()).expect_err("must fail");

    assert!(
        matches!(error, DownloadError::EndlessData { length, .. } if length == MIB as u64),
        "{error:?}"
    );
    assert!(!setup.partial.exists(), "the partial is discarded");
    assert_eq!(fs::metadata(&observer).expect("observer").len(), 0);
}

#[test]
fn tampered_content_of_the_signed_length_fails_with_hash_mismatch_and_removes_the_partial() {
    let setup = Setup::new(generated(MIB, 10));
    let mut tampered = setup.content.clone();
    tampered[MIB / 2] ^= 0x01;
    setup.serve(&tampered);

    let error = setup.download(&fast_policy()).expect_err("must fail");

    match &error {
        DownloadError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, hex(&setup.target.sha256));
            assert_eq!(*actual, hex(&sha256(&tampered)));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert!(!error.is_offline());
    assert!(!setup.partial.exists(), "the partial is deleted");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_stopped_server_is_offline_and_the_partial_is_kept() {
    let mut setup = Setup::new(generated(MIB, 11));
    fs::write(&setup.partial, &setup.content[..1000]).expect("write a partial");
    setup.server.stop();

    let error = setup
        .download(&Policy {
            attempts: 3,
            ..fast_policy()
        })
        .expect_err("nobody listens");

    assert!(error.is_offline(), "{error:?}");
    assert!(
        setup.partial_bytes() == setup.content[..1000],
        "the partial is kept for later"
    );
    assert!(setup.server.requests().is_empty());
}

#[test]
fn a_server_that_goes_away_mid_body_and_comes_back_is_resumed() {
    let mut setup = Setup::new(generated(2 * MIB, 12));
    setup
        .server
        .faults()
        .add(Fault::StallAfter(MIB as u64).times(1));
    let policy = Policy {
        attempts: 20,
        ..fast_policy()
    };
    let runtime = runtime();
    let running = runtime.spawn(download_owned(
        setup.target.clone(),
        setup.partial.clone(),
        policy,
    ));

    setup.server.wait_for_stalls(1, WAIT);
    setup.server.stop();
    setup.server.restart();
    let result = runtime.block_on(running).expect("download task");

    result.expect("download after the outage");
    setup.assert_complete();
    let log = setup.settled_log(2);
    assert_eq!(log[0].body_bytes, Some(MIB as u64), "{log:#?}");
    let last = log.last().expect("requests");
    let resumed_from = range_start(last).expect("the last request resumes with a Range");
    assert!(resumed_from > 0 && resumed_from <= MIB as u64, "{log:#?}");
    assert_eq!(last.status, 206);
}

#[test]
fn a_rate_limit_of_512_kib_per_second_makes_1_mib_take_at_least_1_8_s() {
    let setup = Setup::new(generated(MIB, 13));
    let policy = Policy {
        max_bytes_per_second: Some(512 * KIB as u64),
        ..fast_policy()
    };

    let started = Instant::now();
    setup.download(&policy).expect("download");
    let elapsed = started.elapsed();

    setup.assert_complete();
    assert!(
        elapsed >= Duration::from_millis(1800),
        "1 MiB at 512 KiB/s took only {elapsed:?}"
    );
}

#[test]
fn file_urls_are_copied_and_verified() {
    let setup = Setup::new(generated(MIB + 123, 14));
    let target = Target {
        url: Url::from_file_path(setup.repo.path().join(TARGET_PATH)).expect("file URL"),
        ..setup.target.clone()
    };

    runtime()
        .block_on(download_owned(target, setup.partial.clone(), fast_policy()))
        .expect("copy");

    setup.assert_complete();
    assert!(setup.server.requests().is_empty(), "nothing went over HTTP");
}

#[test]
fn file_urls_longer_than_the_signed_length_fail_with_endless_data() {
    let setup = Setup::new(generated(MIB, 15));
    let mut longer = setup.content.clone();
    longer.extend_from_slice(&[0xAB; 10]);
    setup.serve(&longer);
    let target = Target {
        url: Url::from_file_path(setup.repo.path().join(TARGET_PATH)).expect("file URL"),
        ..setup.target.clone()
    };

    let error = runtime()
        .block_on(download_owned(target, setup.partial.clone(), fast_policy()))
        .expect_err("must fail");

    assert!(
        matches!(error, DownloadError::EndlessData { .. }),
        "{error:?}"
    );
    assert!(!setup.partial.exists());
}

#[test]
#[ignore = "needs root (mounts a tmpfs); run with -- --ignored needs_root"]
fn needs_root_a_disk_filling_up_mid_download_fails_with_disk_full_removes_the_partial_and_spares_other_files()
 {
    let mount_point = tempfile::tempdir().expect("mount point");
    let tmpfs = Tmpfs::mount(mount_point.path(), "2m");
    let current_model = generated(300 * KIB, 16);
    let current_model_path = tmpfs.dir.join("current.dmb");
    fs::write(&current_model_path, &current_model).expect("place the current model");
    let work = tempfile::tempdir_in(&tmpfs.dir).expect("work folder on the tmpfs");
    let partial = work.path().join("model.dmb.partial");
    let setup = Setup::with_partial_at(generated(MIB, 17), work, partial);
    setup
        .server
        .faults()
        .add(Fault::StallAfter(256 * KIB as u64).times(1));
    let policy = Policy {
        stall_timeout: Duration::from_secs(20),
        ..fast_policy()
    };
    let runtime = runtime();
    let running = runtime.spawn(download_owned(
        setup.target.clone(),
        setup.partial.clone(),
        policy,
    ));

    setup.server.wait_for_stalls(1, WAIT);
    let filled = fill(&tmpfs.dir);
    assert!(filled > 0, "the filler took the free space");
    setup.server.faults().release_stalls();
    let result = runtime.block_on(running).expect("download task");

    match &result {
        Err(DownloadError::DiskFull { path, .. }) => assert_eq!(path, &setup.partial),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(
        !setup.partial.exists(),
        "the partial is removed to free its space"
    );
    assert!(
        fs::read(&current_model_path).expect("read the current model") == current_model,
        "the current model is untouched"
    );
    drop(setup);
    drop(tmpfs);
}
