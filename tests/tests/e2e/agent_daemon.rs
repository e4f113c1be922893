//! `defect-agent run` end to end: the real daemon, a real Mosquitto started on a free loopback
//! port, real subscribers speaking MQTT 3.1.1 and 5, the shipped model and sample frames.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use defect_e2e::agent_process::{
    AgentProcess, AgentSettings, label_index, sample_bytes, wait_gone,
};
use defect_e2e::broker::Mosquitto;
use defect_e2e::subscriber::{Received, Subscriber, Version, count_on};

const WAIT: Duration = Duration::from_secs(60);

fn decisions_by_part(messages: &[Received]) -> BTreeMap<u64, Vec<serde_json::Value>> {
    let mut by_part: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for m in messages.iter().filter(|m| m.topic.ends_with("/decision")) {
        let value = m.json();
        let part = value["part"].as_u64().expect("part");
        by_part.entry(part).or_default().push(value);
    }
    by_part
}

fn expected_result(label: &str) -> u64 {
    u64::from(label != "good")
}

fn assert_labelled(by_part: &BTreeMap<u64, Vec<serde_json::Value>>, samples: &[(Vec<u8>, String)]) {
    let mut wrong = Vec::new();
    for (index, (_, label)) in samples.iter().enumerate() {
        let part = index as u64 + 1;
        let seen = by_part.get(&part).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            seen.len(),
            1,
            "part {part}: expected one decision, saw {seen:?}"
        );
        let d = &seen[0];
        if d["r"] != expected_result(label) || d["c"] != label_index(label) {
            wrong.push(format!("part {part} labelled {label}: {d}"));
        }
    }
    assert!(wrong.is_empty(), "wrong decisions:\n{}", wrong.join("\n"));
}

#[test]
fn every_sample_frame_in_the_hot_folder_gets_its_labelled_decision_seen_by_v311_and_v5() {
    let broker = Mosquitto::start();
    let settings = AgentSettings::new(broker.port);
    let filter = format!("{}/+/decision", settings.prefix);
    let old_plc = Subscriber::start(broker.port, &filter, Version::V311);
    let new_plc = Subscriber::start(broker.port, &filter, Version::V5);
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let mut paths = Vec::new();
    for (index, (bytes, _)) in samples.iter().enumerate() {
        paths.push(agent.drop_frame("cam1", index as u64 + 1, bytes));
    }
    for plc in [&old_plc, &new_plc] {
        assert!(
            plc.wait_until(WAIT, |m| count_on(m, "decision") >= samples.len()),
            "decisions missing; agent log:\n{}",
            agent.log()
        );
        assert_labelled(&decisions_by_part(&plc.messages()), &samples);
    }
    for m in new_plc.on("decision") {
        assert!(!m.retain, "a decision was retained");
        assert_eq!(m.expiry_s.map(|e| e <= 5), Some(true), "no expiry: {m:?}");
        assert!(m.text.is_ascii() && m.text.len() < 200, "{}", m.text);
    }
    let seqs: BTreeSet<u64> = new_plc
        .on("decision")
        .iter()
        .map(|m| m.json()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), samples.len(), "sequence numbers repeat");
    // The file is removed once its outcome is logged, right after its decision went out.
    for path in paths {
        assert!(
            wait_gone(&path, WAIT),
            "{} was not removed after its decision",
            path.display()
        );
    }
}

#[test]
fn an_agent_speaking_mqtt_311_publishes_decisions_status_and_heartbeat() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.protocol = "v3.1.1";
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/#", settings.prefix),
        Version::V311,
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    for (index, (bytes, _)) in samples.iter().take(5).enumerate() {
        agent.drop_frame("cam1", index as u64 + 1, bytes);
    }
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 5
            && count_on(m, "heartbeat") >= 2),
        "agent log:\n{}",
        agent.log()
    );
    assert_labelled(&decisions_by_part(&plc.messages()), &samples[..5]);
    let status = plc.on("status");
    assert_eq!(status.last().expect("status").json()["state"], "online");
    let model = plc.on("model");
    let model = model.last().expect("model").json();
    assert_eq!(model["name"], "surface-classifier");
    assert_eq!(model["sha256"].as_str().map(str::len), Some(64));
    let beat = plc.on("heartbeat").last().expect("heartbeat").json();
    assert_eq!(beat["ready"], 1, "{beat}");
}

/// A frame uploaded over HTTP: status code and JSON body.
fn post_frame(
    address: &str,
    station: &str,
    part: Option<u64>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the agent");
    let part_header = part
        .map(|p| format!("X-Part-Id: {p}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/stations/{station}/frames HTTP/1.1\r\nHost: {address}\r\n{part_header}Content-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write request");
    stream.write_all(body).expect("write body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn wait_for_http(address: &str, agent: &AgentProcess) {
    let until = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "HTTP never listened; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_sample_frame_uploaded_over_http_gets_its_labelled_decision_in_the_answer_and_on_mqtt() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    let address = format!("127.0.0.1:{}", defect_e2e::broker::free_port());
    settings.http = Some(address.clone());
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    wait_for_http(&address, &agent);
    let samples = sample_bytes();
    for (index, (bytes, label)) in samples.iter().enumerate() {
        let part = index as u64 + 1;
        let (status, answer) = post_frame(&address, "cam1", Some(part), bytes);
        assert_eq!(status, 200, "part {part}: {answer}");
        assert_eq!(answer["part"], part);
        assert_eq!(
            answer["r"],
            expected_result(label),
            "part {part} labelled {label}: {answer}"
        );
        assert_eq!(answer["class"], label.as_str(), "part {part}: {answer}");
    }
    assert!(plc.wait_until(WAIT, |m| count_on(m, "decision") >= samples.len()));
    assert_labelled(&decisions_by_part(&plc.messages()), &samples);

    let (status, answer) = post_frame(&address, "no-such-station", Some(1), &samples[0].0);
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-station"))
    );
    let (status, answer) = post_frame(&address, "cam1", None, b"not an image");
    assert_eq!(status, 200);
    assert_eq!(answer["r"], 2, "{answer}");
    assert_eq!(answer["reason"], "unreadable_image", "{answer}");
}

#[test]
fn kill_9_leaves_the_retained_offline_status_and_sigterm_publishes_it_too() {
    let broker = Mosquitto::start();
    let settings = AgentSettings::new(broker.port);
    let status_topic = format!("{}/status", settings.prefix);
    let watcher = Subscriber::start(broker.port, &status_topic, Version::V5);
    let state_is =
        |m: &[Received], state: &str| m.last().is_some_and(|last| last.json()["state"] == state);
    let mut agent = AgentProcess::start(settings);
    assert!(
        watcher.wait_until(WAIT, |m| state_is(m, "online")),
        "log:\n{}",
        agent.log()
    );
    agent.kill9();
    // keep_alive_s = 5: the broker gives up on the dead client after about 7.5 s.
    assert!(watcher.wait_until(Duration::from_secs(20), |m| state_is(m, "offline")));
    let late_comer = Subscriber::start(broker.port, &status_topic, Version::V311);
    assert!(late_comer.wait_until(Duration::from_secs(5), |m| {
        m.last()
            .is_some_and(|l| l.retain && l.json()["state"] == "offline")
    }));

    agent.restart();
    assert!(watcher.wait_until(WAIT, |m| state_is(m, "online")));
    let status = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    assert!(watcher.wait_until(Duration::from_secs(5), |m| state_is(m, "offline")));
}

#[test]
fn sigterm_decides_every_frame_in_flight_before_exiting() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.workers = 1;
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let mut agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    // Warm up, so the agent is surely taking frames.
    agent.drop_frame("cam1", 100, &samples[0].0);
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 1),
        "log:\n{}",
        agent.log()
    );
    let paths: Vec<_> = (1..=12)
        .map(|part| agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0))
        .collect();
    assert!(plc.wait_until(WAIT, |m| count_on(m, "decision") >= 2));
    let status = agent.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    // A file is removed only once its frame was decided; those decisions are on their way.
    let taken: Vec<u64> = (1..=12u64)
        .zip(&paths)
        .filter(|(_, p)| !p.exists())
        .map(|(n, _)| n)
        .collect();
    plc.wait_until(Duration::from_secs(10), |m| {
        let by_part = decisions_by_part(m);
        taken.iter().all(|p| by_part.contains_key(p))
    });
    let by_part = decisions_by_part(&plc.messages());
    for (part, path) in (1..=12u64).zip(&paths) {
        let decided = by_part.get(&part).map_or(0, Vec::len);
        // A frame the agent took was decided; one it had not taken yet is still in the folder.
        assert!(
            decided == 1 || (decided == 0 && path.exists()),
            "part {part}: {decided} decisions, file present: {}; log:\n{}",
            path.exists(),
            agent.log()
        );
    }
    agent.restart();
    assert!(
        plc.wait_until(WAIT, |m| decisions_by_part(m).range(1..=12).count() == 12),
        "frames left in the hot folder were not decided after the restart"
    );
}

#[test]
fn broker_outage_every_result_arrives_afterwards_and_no_expired_decision_is_delivered() {
    let mut broker = Mosquitto::persistent();
    let mut settings = AgentSettings::new(broker.port);
    settings.deadline_ms = 1000;
    let prefix = settings.prefix.clone();
    let plc = Subscriber::persistent(
        broker.port,
        &format!("{prefix}/+/decision"),
        Version::V5,
        "plc-outage",
    );
    let traceability = Subscriber::persistent(
        broker.port,
        &format!("{prefix}/+/results"),
        Version::V5,
        "trace-outage",
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    for part in 1..=10u64 {
        agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0);
    }
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 10),
        "log:\n{}",
        agent.log()
    );

    broker.stop_clean();
    let during: Vec<_> = (11..=20u64)
        .map(|part| agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0))
        .collect();
    // A file leaves the hot folder only once its outcome is in the result log.
    for path in &during {
        assert!(
            defect_e2e::agent_process::wait_gone(path, WAIT),
            "{} never decided",
            path.display()
        );
    }
    // Let every decision made during the outage pass its deadline.
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();

    let all_results = |m: &[Received]| {
        let parts: BTreeSet<u64> = m
            .iter()
            .filter(|m| m.topic.ends_with("/results"))
            .map(|m| m.json()["part"].as_u64().expect("part"))
            .collect();
        (1..=20).all(|p| parts.contains(&p))
    };
    assert!(
        traceability.wait_until(WAIT, all_results),
        "results missing after the outage; log:\n{}",
        agent.log()
    );
    let results = traceability.on("results");
    let seqs: Vec<u64> = results
        .iter()
        .map(|m| m.json()["seq"].as_u64().expect("seq"))
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "each result once by seq: {seqs:?}");
    // Decisions made while the broker was down are stale: never delivered live.
    assert!(plc.wait_until(WAIT, |m| count_on(m, "decision") >= 10));
    let late: Vec<_> = decisions_by_part(&plc.messages())
        .into_keys()
        .filter(|p| *p > 10)
        .collect();
    assert!(
        late.is_empty(),
        "expired decisions delivered for parts {late:?}"
    );
}

#[test]
fn empty_truncated_and_corrupt_files_get_no_decision_with_a_reason_and_the_agent_keeps_running() {
    let broker = Mosquitto::start();
    let settings = AgentSettings::new(broker.port);
    let plc = Subscriber::start(broker.port, &format!("{}/#", settings.prefix), Version::V5);
    let mut agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let (good, label) = &samples[0];
    agent.write_file("cam1", "part-1.jpg", b"");
    agent.write_file("cam1", "part-2.jpg", &good[..good.len() / 2]);
    agent.write_file("cam1", "part-3.png", b"this is a text file, not a PNG\n");
    // A camera that writes slowly: the file is taken only once it is closed.
    {
        use std::io::Write;
        let path = agent.hot_folder("cam1").join("part-4.jpg");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&good[..good.len() / 3]).expect("write");
        file.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        file.write_all(&good[good.len() / 3..]).expect("write");
    }
    agent.drop_frame("cam1", 5, good);
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 5
            && count_on(m, "results") >= 5),
        "log:\n{}",
        agent.log()
    );
    let by_part = decisions_by_part(&plc.messages());
    for part in 1..=3 {
        let d = &by_part[&part];
        assert_eq!(d.len(), 1, "part {part}: {d:?}");
        assert_eq!(d[0]["r"], 2, "part {part}: {}", d[0]);
        assert_eq!(d[0]["why"], 3, "part {part}: {}", d[0]);
    }
    for part in [4, 5] {
        let d = &by_part[&part];
        assert_eq!(d.len(), 1, "part {part}: {d:?}");
        assert_eq!(d[0]["r"], expected_result(label), "part {part}: {}", d[0]);
    }
    let reasons: Vec<String> = plc
        .on("results")
        .iter()
        .filter_map(|m| m.json()["reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(reasons, vec!["unreadable_image"; 3]);
    assert!(agent.is_running(), "log:\n{}", agent.log());
    assert!(agent.log().contains("part-3.png") || agent.log().contains("part=3"));
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn overload_every_frame_still_gets_one_decision_and_memory_stays_bounded() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.workers = 1;
    settings.queue_capacity = 4;
    settings.deadline_ms = 200;
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let frames = 150u64;
    for part in 1..=frames {
        agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0);
    }
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= frames as usize),
        "only {} decisions; log:\n{}",
        count_on(&plc.messages(), "decision"),
        agent.log()
    );
    let by_part = decisions_by_part(&plc.messages());
    assert_eq!(by_part.len(), frames as usize);
    let mut reasons = BTreeMap::new();
    for (part, d) in &by_part {
        assert_eq!(d.len(), 1, "part {part}: {d:?}");
        *reasons
            .entry(d[0]["why"].as_u64().expect("why"))
            .or_insert(0) += 1;
    }
    assert!(
        reasons.get(&0).copied().unwrap_or(0) > 0,
        "nothing decided: {reasons:?}"
    );
    let overloaded = reasons.get(&1).copied().unwrap_or(0) + reasons.get(&5).copied().unwrap_or(0);
    assert!(
        overloaded > 0,
        "no queue_full or deadline outcomes: {reasons:?}"
    );
    let pid = std::fs::read_dir("/proc")
        .ok()
        .and_then(|_| agent_pid(&agent))
        .expect("agent pid");
    let peak = peak_rss_kib(pid);
    assert!(peak < 400 * 1024, "peak RSS {peak} KiB");
}

fn agent_pid(agent: &AgentProcess) -> Option<u32> {
    let config = agent.config_path();
    let config = config.to_str()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(config)
                .then_some(pid)
        })
}

#[test]
fn decided_files_are_moved_by_policy_and_csv_decisions_carry_the_same_integers() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.mqtt_extra = "payload = \"csv\"\n".into();
    let done = tempfile::tempdir().expect("tempdir");
    settings.hot_folder_extra = format!("after = \"move\"\nmove_to = {:?}\n", done.path());
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V311,
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let (bytes, label) = &samples[1];
    let path = agent.drop_frame("cam1", 42, bytes);
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= 1),
        "log:\n{}",
        agent.log()
    );
    let csv = plc.on("decision")[0].text.clone();
    let fields: Vec<u64> = csv
        .split(',')
        .map(|f| f.parse().expect("an integer"))
        .collect();
    // v, part, seq, r, c, conf, mv, ts, lat, why
    assert_eq!(fields.len(), 10, "{csv}");
    assert_eq!(fields[0], 1);
    assert_eq!(fields[1], 42);
    assert_eq!(fields[3], expected_result(label), "{csv}");
    assert_eq!(fields[4], label_index(label), "{csv}");
    assert_eq!(fields[9], 0, "{csv}");
    let moved = done.path().join("part-42.jpg");
    assert!(
        defect_e2e::agent_process::wait_gone(&path, WAIT) && moved.exists(),
        "{} was not moved to {}",
        path.display(),
        moved.display()
    );
    assert_eq!(std::fs::read(&moved).expect("moved frame"), *bytes);
}

#[test]
fn frames_past_their_deadline_get_a_live_no_decision_with_the_deadline_reason() {
    let broker = Mosquitto::start();
    let mut settings = AgentSettings::new(broker.port);
    settings.workers = 1;
    settings.queue_capacity = 64;
    settings.deadline_ms = 10;
    let plc = Subscriber::start(
        broker.port,
        &format!("{}/+/decision", settings.prefix),
        Version::V5,
    );
    let agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let frames = 30u64;
    // One worker and a 10 ms deadline: frames queued behind others miss it.
    for part in 1..=frames {
        agent.drop_frame("cam1", part, &samples[part as usize % samples.len()].0);
    }
    assert!(
        plc.wait_until(WAIT, |m| count_on(m, "decision") >= frames as usize),
        "only {} decisions; log:\n{}",
        count_on(&plc.messages(), "decision"),
        agent.log()
    );
    let by_part = decisions_by_part(&plc.messages());
    assert_eq!(by_part.len(), frames as usize);
    assert!(by_part.values().all(|d| d.len() == 1));
    let deadline_misses = by_part
        .values()
        .filter(|d| d[0]["r"] == 2 && d[0]["why"] == 5)
        .count();
    assert!(
        deadline_misses > 0,
        "some frames must have missed the 10 ms deadline: {by_part:?}"
    );
}
