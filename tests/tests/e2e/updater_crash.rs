//! `kill -9` of the real updater at random instants of download, install and trial, in a loop:
//! after every kill, `current` names a complete bundle whose content matches its name, the
//! agent keeps deciding frames, and a final uninterrupted run finishes the newest version.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use defect_e2e::agent_process::sample_bytes;
use defect_e2e::bundles;
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::subscriber::Received;
use defect_e2e::updater_box::{BoxSettings, EdgeLine, describe};
use defect_models::store::Pointer;

/// Kills to reach, and the most rounds allowed to reach them (a round whose run finished
/// before its kill instant counts as a round, not a kill).
const KILLS: u32 = 50;
const MAX_ROUNDS: u64 = 200;

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

fn decision_of(messages: &[Received], part: u64) -> Option<serde_json::Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/decision"))
        .map(Received::json)
        .find(|d| d["part"] == part)
}

#[test]
fn kill_9_of_the_updater_at_random_points_never_leaves_the_line_without_a_valid_model() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    println!("CRASH_SEED={seed}");
    let mut random = Lcg(seed);

    let repo = OwnRepo::init();
    let mut published = 2;
    repo.add(&bundles::with_model_version(published), &[]);
    let server = RepoServer::start(&repo.repo);
    let mut settings = BoxSettings::new(&server.url("/"), &repo.first_root());
    // About a second per download, so that kills land in it as well as in the install
    // and the trial.
    settings.max_bytes_per_second = 1_000_000;
    let line = EdgeLine::start(&settings);
    let frame = &sample_bytes()[0].0;
    let mut phases = std::collections::BTreeMap::<String, u32>::new();
    let mut installs_seen = 0;

    let mut kills = 0;
    for round in 0..MAX_ROUNDS {
        if kills >= KILLS {
            break;
        }
        let log = line.edge.path().join(format!("round-{round}.log"));
        let mut child = line.edge.spawn("check", &log);
        let delay = Duration::from_millis(random.below(1500));
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < delay {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let phase = line
            .edge
            .status()
            .and_then(|s| s["state"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "none".into());
        if exited.is_none() {
            let _ = child.kill();
            kills += 1;
            *phases.entry(format!("killed while {phase}")).or_default() += 1;
        } else {
            *phases.entry("finished".into()).or_default() += 1;
        }
        let _ = child.wait();

        // `current` names a complete bundle whose bytes hash to its name.
        let store = line.edge.store();
        let named = store
            .pointer(Pointer::Current)
            .expect("readable current")
            .expect("current exists");
        let (digest, version) = line.edge.current();
        assert_eq!(
            named, digest,
            "round {round}: current names a bundle that does not match"
        );
        assert!(
            version >= 1 && version <= published,
            "round {round}: {version}"
        );

        // The agent still decides frames.
        let part = 1000 + round;
        line.agent.drop_frame("cam1", part, frame);
        assert!(
            line.plc
                .wait_until(Duration::from_secs(30), |m| decision_of(m, part)
                    .is_some_and(|d| d["r"] != 2)),
            "round {round}: the agent gave no decision; log:\n{}",
            line.agent.log()
        );

        // Keep something to install: publish the next version once the last one is committed.
        let committed = line.edge.state().is_some_and(|s| s["trial"].is_null());
        if committed && version == published {
            installs_seen += 1;
            published += 1;
            repo.add(&bundles::with_model_version(published), &[]);
        }
    }
    println!("rounds: {phases:?}; versions completed during the loop: {installs_seen}");

    // An uninterrupted run finishes the newest version, and the store holds no debris.
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        line.edge.current().1,
        published,
        "{}\nstate: {:?}",
        describe(&output),
        line.edge.state()
    );
    line.wait_for_served_version(published);
    assert!(line.edge.state().is_some_and(|s| s["trial"].is_null()));
    let bundles_left = std::fs::read_dir(line.edge.store_dir.join("bundles"))
        .expect("bundles")
        .count();
    assert!(
        bundles_left <= 3,
        "current, previous and factory only: {bundles_left}"
    );
    let staging_left = std::fs::read_dir(line.edge.store_dir.join("staging"))
        .expect("staging")
        .count();
    assert_eq!(staging_left, 0);
    assert!(kills >= KILLS, "at least {KILLS} kills: {phases:?}");
}
