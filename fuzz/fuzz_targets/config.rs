#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| castellan::fuzz_targets::config(data));
