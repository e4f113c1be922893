//! libFuzzer driver of the `approval` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::approval::run(data));
