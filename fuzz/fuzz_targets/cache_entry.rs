#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    segvault::fuzzing::cache_entry(data);
    segvault::fuzzing::cache_file_name(data);
});
