//! libFuzzer driver of the `agent_config` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::agent_config::run(data));
