#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| segvault::fuzzing::storage_request(data));
