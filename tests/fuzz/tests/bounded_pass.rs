//! The bounded fuzz pass CI runs: for each target, every regression input and seed, then
//! seeded mutations for `DEFECT_FUZZ_SECONDS` (default 6) seconds. `DEFECT_FUZZ_SEED` picks
//! other mutations (default: fixed, so a run is repeatable).

use std::time::Duration;

use defect_fuzz::{pass, target};

fn budget() -> Duration {
    let seconds = std::env::var("DEFECT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(6.0);
    Duration::from_secs_f64(seconds)
}

fn seed(name: &str) -> u64 {
    let base = std::env::var("DEFECT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5eed);
    name.bytes()
        .fold(base, |h, b| h.rotate_left(5) ^ u64::from(b))
}

fn pass_over(name: &str) {
    let Some(target) = target(name) else {
        panic!("no fuzz target {name}");
    };
    let seed = seed(name);
    match pass::run(target, budget(), seed) {
        Ok(report) => eprintln!(
            "{name}: {} regression inputs, {} seeds, {} mutations (seed {seed})",
            report.regressions, report.seeds, report.mutations
        ),
        Err(error) => panic!("{error}\n(mutation seed {seed})"),
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                pass_over(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for target in defect_fuzz::TARGETS {
                assert!(tested.contains(&target.name), "{} has no bounded pass", target.name);
            }
        }
    };
}

targets!(
    frame_decode,
    bundle,
    manifest,
    agent_config,
    updater_config,
    line_state,
    approval,
    capture_receiver,
    trust_state,
);
