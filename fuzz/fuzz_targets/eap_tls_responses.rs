#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2sgw::fuzzing::eap_tls_responses(data));
