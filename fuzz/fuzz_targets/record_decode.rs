//! Store record decoders never panic; what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::store::{SealedRecord, Tombstone, WrappedKeyRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = SealedRecord::decode(data) {
        assert_eq!(SealedRecord::decode(&record.encode()).ok(), Some(record));
    }
    if let Ok(t) = Tombstone::decode(data) {
        assert_eq!(t.encode(), data);
    }
    if let Ok(k) = WrappedKeyRecord::decode(data) {
        assert_eq!(k.encode(), data);
    }
});
