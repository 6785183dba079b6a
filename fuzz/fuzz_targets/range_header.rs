#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| segvault::fuzzing::range_header(data));
