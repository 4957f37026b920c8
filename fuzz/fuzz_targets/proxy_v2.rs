#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| levee_proxy::fuzz::proxy_v2(data));
