//! PAN parsing never panics, and what it accepts is a well-formed PAN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::domain::Pan;
use tessera::tokens::luhn;

fuzz_target!(|data: &[u8]| {
    if let Ok(pan) = Pan::parse_bytes(data) {
        let digits = pan.expose_digits();
        assert!((12..=19).contains(&digits.len()));
        assert!(luhn::is_valid(digits));
        let masked = pan.masked();
        assert_eq!(masked.as_str().len(), digits.len());
        assert!(
            !format!("{pan:?}").contains(std::str::from_utf8(&pan.expose_ascii()).unwrap_or(""))
        );
    }
});
