//! libFuzzer driver of the `frame_decode` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::frame_decode::run(data));
