//! How sled packs a commit's audit events into one value: a segment.
//!
//! One key per commit instead of one per event: under load a commit carries
//! dozens of events, and each sled insert is a log entry and a page delta,
//! so segments cut the audit log's share of the write path by the batch
//! size (BENCHMARKS.md). Key: the first event's position (big-endian u64).
//! Value: [`TAG`] ‖ count (u32) ‖ for each event, its length (u32) and bytes.
//!
//! A value that does not start with [`TAG`] is one event on its own, as
//! logs written before segments hold them; readers take both.

use crate::codec::{DecodeError, Reader, Writer};
use crate::store::StoreError;

/// First byte of a segment. Events on their own start with their format
/// version (1), never with this.
pub const TAG: u8 = 0xA7;

/// The position a segment's key names.
pub(crate) fn position(key: &[u8]) -> Result<u64, StoreError> {
    let key: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Damaged("corrupt audit key"))?;
    Ok(u64::from_be_bytes(key))
}

/// Packs `events` into one value.
pub fn encode(events: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(TAG)
        .u32(u32::try_from(events.len()).unwrap_or(u32::MAX));
    for event in events {
        w.bytes(event);
    }
    w.finish()
}

/// The events of the value stored under position `first`, with their
/// positions.
pub fn decode(first: u64, value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, DecodeError> {
    if value.first() != Some(&TAG) {
        return Ok(vec![(first, value.to_vec())]);
    }
    let mut r = Reader::new(value);
    r.u8()?;
    let count = r.u32()?;
    let mut events = Vec::new();
    for index in 0..count {
        let seq = first
            .checked_add(u64::from(index))
            .ok_or(DecodeError { offset: 1 })?;
        events.push((seq, r.bytes()?.to_vec()));
    }
    r.end()?;
    Ok(events)
}

/// [`decode`] for readers of the log: a value whose framing does not
/// decode (tampered or damaged) comes back whole as one event at its
/// position, so verification names that position instead of failing, and
/// recovery can continue after it.
pub(crate) fn events_at(first: u64, value: &[u8]) -> Vec<(u64, Vec<u8>)> {
    decode(first, value).unwrap_or_else(|_| vec![(first, value.to_vec())])
}

/// The events from position `from` on, at most `limit`, out of the
/// segments that `segments` yields in key order, starting with the one
/// holding `from` (each engine finds it with a reverse range read).
pub(crate) fn collect_from<K, V>(
    from: u64,
    limit: usize,
    segments: impl Iterator<Item = Result<(K, V), StoreError>>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for segment in segments {
        let (key, value) = segment?;
        for (seq, event) in events_at(position(key.as_ref())?, value.as_ref()) {
            if out.len() == limit {
                return Ok(out);
            }
            if seq >= from {
                out.push((seq, event));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_single_events_still_read() {
        let events = vec![vec![1, 2, 3], Vec::new(), vec![9; 300]];
        let decoded = decode(40, &encode(&events)).unwrap();
        assert_eq!(
            decoded,
            vec![
                (40, events[0].clone()),
                (41, Vec::new()),
                (42, vec![9; 300])
            ]
        );
        assert_eq!(decode(7, &[1, 5, 5]).unwrap(), vec![(7, vec![1, 5, 5])]);
        let mut cut = encode(&events);
        cut.pop();
        assert!(decode(0, &cut).is_err(), "a truncated segment is corrupt");
        assert_eq!(events_at(5, &cut), vec![(5, cut.clone())], "read whole");
        assert!(
            decode(u64::MAX, &encode(&events)).is_err(),
            "positions never wrap"
        );
    }
}
