//! `kill -9` of the real agent in a loop while frames flow: nothing it acknowledged is lost.
//!
//! A decision seen on the broker or a frame file removed from the hot folder means the outcome
//! was in the result log first. After every crash and a final clean run, the `results` topic
//! must carry every such outcome, and a sequence number must never name two outcomes. Each part
//! is decided exactly once across the crashes: it has one seq on `results` (delivered at least
//! once, so possibly twice under that seq) and at most one live decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings, sample_bytes};
use defect_e2e::broker::Mosquitto;
use defect_e2e::subscriber::{Subscriber, Version, count_on};

const ROUNDS: u64 = 20;
const FRAMES_PER_ROUND: u64 = 6;

#[test]
fn kill_9_in_a_loop_loses_no_acknowledged_outcome() {
    let broker = Mosquitto::start();
    let settings = AgentSettings::new(broker.port);
    let prefix = settings.prefix.clone();
    let plc = Subscriber::start(broker.port, &format!("{prefix}/+/decision"), Version::V5);
    let trace = Subscriber::start(broker.port, &format!("{prefix}/+/results"), Version::V5);
    let mut agent = AgentProcess::start(settings);
    let samples = sample_bytes();
    let mut removed = BTreeSet::new();
    let mut dropped = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            agent.restart();
        }
        let before = count_on(&plc.messages(), "decision");
        for i in 0..FRAMES_PER_ROUND {
            let part = round * 100 + i + 1;
            let bytes = &samples[(part as usize) % samples.len()].0;
            dropped.push((part, agent.drop_frame("cam1", part, bytes)));
        }
        // Kill at a different point of each round: after 1 to 3 decisions of this round.
        let wanted = before + 1 + (round as usize % 3);
        assert!(
            plc.wait_until(Duration::from_secs(60), |m| count_on(m, "decision")
                >= wanted),
            "round {round}: no decision; log:\n{}",
            agent.log()
        );
        agent.kill9();
        for (part, path) in &dropped {
            if !path.exists() {
                removed.insert(*part);
            }
        }
    }
    // A last run decides what was left in the hot folder and forwards the whole log.
    agent.restart();
    let acknowledged: BTreeSet<u64> = plc
        .on("decision")
        .iter()
        .map(|m| m.json()["part"].as_u64().expect("part"))
        .chain(removed.iter().copied())
        .collect();
    let all_parts: BTreeSet<u64> = dropped.iter().map(|(p, _)| *p).collect();
    let complete = |m: &[defect_e2e::subscriber::Received]| {
        let parts: BTreeSet<u64> = m
            .iter()
            .map(|m| m.json()["part"].as_u64().expect("part"))
            .collect();
        all_parts.is_subset(&parts)
    };
    assert!(
        trace.wait_until(Duration::from_secs(60), complete),
        "results missing for acknowledged parts {:?}; log:\n{}",
        acknowledged
            .difference(
                &trace
                    .messages()
                    .iter()
                    .map(|m| m.json()["part"].as_u64().expect("part"))
                    .collect()
            )
            .collect::<Vec<_>>(),
        agent.log()
    );
    let mut seq_to_part: BTreeMap<u64, u64> = BTreeMap::new();
    for m in trace.messages() {
        let v = m.json();
        let (seq, part) = (
            v["seq"].as_u64().expect("seq"),
            v["part"].as_u64().expect("part"),
        );
        let previous = seq_to_part.insert(seq, part);
        assert!(
            previous.is_none_or(|p| p == part),
            "seq {seq} names parts {previous:?} and {part}"
        );
    }
    for part in &acknowledged {
        assert!(
            seq_to_part.values().any(|p| p == part),
            "acknowledged part {part} has no result"
        );
    }
    // A part's live outcome has one seq; a model result that came after the deadline is a
    // second, late record of the same decision, not a second decision.
    let mut seqs_of_part: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for m in trace.messages() {
        let v = m.json();
        if v["late"] == true {
            continue;
        }
        let (seq, part) = (
            v["seq"].as_u64().expect("seq"),
            v["part"].as_u64().expect("part"),
        );
        seqs_of_part.entry(part).or_default().insert(seq);
    }
    let decided_twice: Vec<_> = seqs_of_part.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        decided_twice.is_empty(),
        "parts decided more than once (part, seqs): {decided_twice:?}"
    );
    let mut live: BTreeMap<u64, usize> = BTreeMap::new();
    for m in plc.on("decision") {
        *live
            .entry(m.json()["part"].as_u64().expect("part"))
            .or_default() += 1;
    }
    let published_twice: Vec<_> = live.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        published_twice.is_empty(),
        "parts with two live decisions (part, count): {published_twice:?}"
    );
    println!(
        "kill -9 loop: {ROUNDS} rounds, {} parts, {} seqs on results, 0 decided twice, 0 published twice",
        all_parts.len(),
        seq_to_part.len()
    );
}
