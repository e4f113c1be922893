//! libFuzzer driver of the `bundle` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::bundle::run(data));
