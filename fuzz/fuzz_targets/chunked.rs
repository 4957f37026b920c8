#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| levee_proxy::fuzz::chunked(data));
