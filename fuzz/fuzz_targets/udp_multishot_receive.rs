#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2sgw::fuzzing::udp_multishot_receive(data));
