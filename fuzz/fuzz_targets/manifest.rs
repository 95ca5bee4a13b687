//! Untrusted manifest text: parse and resolve config without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_signing::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.resolve_config(&Default::default());
        let _ = m.is_public_route("GET", "/a/b");
    }
});
