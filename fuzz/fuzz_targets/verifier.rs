#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| segvault::fuzzing::verifier(data));
