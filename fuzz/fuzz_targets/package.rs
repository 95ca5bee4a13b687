//! Untrusted package bytes: parsing and verification must refuse cleanly,
//! never panic, and anything accepted must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_signing::Package;
use switchboard_signing::package::Trust;

fuzz_target!(|data: &[u8]| {
    if let Ok(package) = Package::parse(data) {
        let _ = package.verify(|_| Trust::Unknown);
        let _ = package.verify(|_| Trust::Revoked);
        assert_eq!(package.to_bytes(), data, "an accepted package must be canonical");
    }
});
