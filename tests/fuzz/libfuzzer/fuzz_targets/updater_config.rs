//! libFuzzer driver of the `updater_config` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::updater_config::run(data));
