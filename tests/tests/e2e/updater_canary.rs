//! Canary promotion and rejection end to end: the real `model-updater` (with `[canary]`)
//! stages a published version as the store's `candidate`; the real agent runs it in shadow on
//! the frames of the line and writes its evidence; the updater promotes it through the usual
//! trial, or rejects it and marks it bad, leaving the model in service untouched.

use std::process::Child;
use std::time::{Duration, Instant};

use defect_e2e::agent_process::sample_bytes;
use defect_e2e::bundles;
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::subscriber::count_on;
use defect_e2e::updater_box::{BoxSettings, EdgeLine};
use defect_models::store::Pointer;

const WAIT: Duration = Duration::from_secs(90);

fn canary_config(line: &EdgeLine, extra: &str) -> String {
    format!(
        "[canary]\nevidence_file = {:?}\nmin_frames = 10\nmin_agreement = 0.98\nmax_latency_ratio = 3.0\n{extra}",
        line.agent.state_dir().join("canary.json")
    )
}

/// Waits until the store's `candidate` names `sha`.
fn wait_for_candidate(line: &EdgeLine, sha: &str, check: &mut Child) {
    let until = Instant::now() + WAIT;
    while line
        .edge
        .store()
        .pointer(Pointer::Candidate)
        .ok()
        .flatten()
        .as_deref()
        != Some(sha)
    {
        assert!(
            check.try_wait().ok().flatten().is_none(),
            "the updater ended before staging the candidate"
        );
        assert!(
            Instant::now() < until,
            "no candidate; agent log:\n{}",
            line.agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drops sample frames one at a time, each after the previous decision, until `done`.
fn feed_until(line: &EdgeLine, mut done: impl FnMut() -> bool) -> usize {
    let samples = sample_bytes();
    let until = Instant::now() + WAIT;
    let mut part = 1u64;
    while !done() {
        assert!(
            Instant::now() < until,
            "still waiting; agent log:\n{}",
            line.agent.log()
        );
        let (bytes, _) = &samples[(part as usize - 1) % samples.len()];
        let before = count_on(&line.plc.messages(), "decision");
        line.agent.drop_frame("cam1", part, bytes);
        assert!(
            line.plc
                .wait_until(WAIT, |m| count_on(m, "decision") > before),
            "no decision; agent log:\n{}",
            line.agent.log()
        );
        part += 1;
    }
    part as usize - 1
}

fn decided_versions(line: &EdgeLine) -> Vec<u64> {
    line.plc
        .on("decision")
        .iter()
        .map(|m| m.json()["mv"].as_u64().expect("mv"))
        .collect()
}

fn exit_code(check: &mut Child) -> Option<i32> {
    check.try_wait().ok().flatten().and_then(|s| s.code())
}

#[test]
fn a_candidate_that_agrees_is_promoted_after_the_minimum_of_frames_through_the_usual_trial() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    line.edge.append_config(&canary_config(&line, ""));
    let log = line.edge.path().join("check.log");
    let mut check = line.edge.spawn("check", &log);
    wait_for_candidate(&line, &sha, &mut check);
    assert_eq!(
        line.edge.current().1,
        1,
        "the candidate must not be current yet"
    );

    let fed = feed_until(&line, || exit_code(&mut check).is_some());
    let code = check.wait().expect("wait").code();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(line.edge.current(), (sha.clone(), 2));
    line.wait_for_served_version(2);
    assert_eq!(
        line.edge.store().pointer(Pointer::Candidate).ok().flatten(),
        None
    );
    let state = line.edge.state().expect("state");
    assert_eq!(state["canary"], serde_json::Value::Null, "{state}");
    assert_eq!(state["bad"], serde_json::json!({}), "{state}");
    assert!(output.contains("canary promoted"), "{output}");
    // Live decisions: the model in service's until the switch (after at least the 10 frames
    // the candidate had to earn it with), the promoted one's after it, never mixed.
    let versions = decided_versions(&line);
    let switched_at = versions
        .iter()
        .position(|v| *v == 2)
        .expect("decisions by version 2");
    assert!(switched_at >= 10, "{versions:?}");
    assert!(
        versions[..switched_at].iter().all(|v| *v == 1),
        "{versions:?}"
    );
    assert!(
        versions[switched_at..].iter().all(|v| *v == 2),
        "{versions:?}"
    );
    eprintln!("{fed} frames fed; switched at frame {}", switched_at + 1);
}

#[test]
fn a_candidate_that_lets_defects_through_is_rejected_marked_bad_and_never_decides_live() {
    let repo = OwnRepo::init();
    let lenient = bundles::lets_defects_through(2);
    let sha = repo.add(&lenient, &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let (factory, _) = line.edge.current();
    line.edge.append_config(&canary_config(&line, ""));
    let log = line.edge.path().join("check.log");
    let mut check = line.edge.spawn("check", &log);
    wait_for_candidate(&line, &sha, &mut check);

    feed_until(&line, || exit_code(&mut check).is_some());
    let code = check.wait().expect("wait").code();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(2), "{output}");
    assert_eq!(
        line.edge.current(),
        (factory, 1),
        "current must be untouched"
    );
    assert_eq!(
        line.edge.store().pointer(Pointer::Candidate).ok().flatten(),
        None
    );
    let state = line.edge.state().expect("state");
    let reason = state["bad"][&sha]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rejected in canary") && reason.contains("passed"),
        "{state}"
    );
    assert!(decided_versions(&line).iter().all(|v| *v == 1));
    assert_eq!(line.served_version(), Some(1));

    // Never tried again.
    let output = line.edge.check();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        line.edge.store().pointer(Pointer::Candidate).ok().flatten(),
        None
    );
}

#[test]
fn an_updater_killed_in_the_shadow_period_resumes_the_canary_and_never_promotes_it_unproven() {
    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &[]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    line.edge
        .append_config(&canary_config(&line, "max_shadow_s = 4\n"));
    let log = line.edge.path().join("check.log");
    let mut check = line.edge.spawn("check", &log);
    wait_for_candidate(&line, &sha, &mut check);
    let since = line.edge.state().expect("state")["canary"]["since_ms"].clone();
    check.kill().expect("kill -9");
    let _ = check.wait();

    // A new updater resumes the same canary; with no frame on the line nothing is proven,
    // and at the time limit (counted from the first start) it is rejected, never promoted.
    let started = Instant::now();
    let output = line.edge.check();
    let text = defect_e2e::updater_box::describe(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");
    assert_eq!(line.edge.current().1, 1);
    let state = line.edge.state().expect("state");
    assert!(
        state["bad"][&sha]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("0 of 10 frames") || r.contains("no evidence")),
        "{state}"
    );
    assert!(since.as_u64().is_some());
    assert_eq!(
        line.edge.store().pointer(Pointer::Candidate).ok().flatten(),
        None
    );
    assert_eq!(line.served_version(), Some(1));
}

#[test]
fn a_version_published_with_its_own_manual_canary_waits_for_approval_over_mqtt() {
    let repo = OwnRepo::init();
    // This box runs no canary by default; ops ask for one, with manual approval, for this
    // version only.
    let sha = repo.add(
        &bundles::with_model_version(2),
        &[
            "--canary",
            r#"{"enabled":true,"min_frames":5,"approval":"manual"}"#,
        ],
    );
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let prefix = line.agent.settings.prefix.clone();
    // The latency ratio allowed as in the other canary tests: five shadow runs on a busy
    // machine can measure the candidate 1.5 times slower, and this test is about approval.
    line.edge.append_config(&format!(
        "[canary]\nenabled = false\nevidence_file = {:?}\nmax_latency_ratio = 3.0\n",
        line.agent.state_dir().join("canary.json")
    ));
    line.edge.append_config(&format!(
        "[mqtt]\nport = {}\nclient_id = \"updater-canary\"\ntopic_prefix = \"{prefix}\"\n",
        line.broker.port
    ));
    let log = line.edge.path().join("run.log");
    let mut updater = line.edge.spawn("run", &log);
    wait_for_candidate(&line, &sha, &mut updater);

    // The evidence holds after 5 frames, yet nothing is promoted without ops.
    let status = |m: &[defect_e2e::subscriber::Received]| {
        m.iter()
            .rev()
            .find(|r| r.topic.ends_with("/updater"))
            .map(|r| r.json())
    };
    feed_until(&line, || {
        line.plc
            .messages()
            .iter()
            .rev()
            .find(|m| m.topic.ends_with("/canary"))
            .is_some_and(|m| m.json()["frames"].as_u64() >= Some(5))
    });
    assert!(
        line.plc.wait_until(WAIT, |m| status(m).is_some_and(
            |s| s["state"] == "canary" && s["pending"]["sha256"] == sha.as_str()
        )),
        "status: {:?}",
        status(&line.plc.messages())
    );
    assert_eq!(line.edge.current().1, 1, "promoted without approval");

    // Ops approve on the MQTT command topic; the updater promotes through the trial.
    defect_e2e::subscriber::publish_once(
        line.broker.port,
        &format!("{prefix}/updater/approve"),
        b"2",
    );
    line.wait_for_served_version_logging(2, &log);
    let until = Instant::now() + WAIT;
    while line
        .edge
        .state()
        .is_none_or(|s| !s["canary"].is_null() || !s["trial"].is_null())
    {
        assert!(
            Instant::now() < until,
            "not committed; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(line.edge.current(), (sha, 2));
    let _ = updater.kill();
    let _ = updater.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("canary approval received"), "{text}");
}
