//! HPACK decoder (`protocols::hpack::Decoder`): each segment of the input is one
//! header block, decoded in order with one dynamic table (as one direction of a
//! connection does). Segment actions: bit 0 empties the table first (a loss).
//!
//! Checked: no panic; the table, the fields per block and their lengths stay within
//! the documented bounds, whatever sizes the blocks announce.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::hpack::{Decoder, MAX_FIELDS, MAX_FIELD_LEN, MAX_TABLE_SIZE};
use tandem_processor_fuzz::split;

fuzz_target!(|input: &[u8]| {
    let (_, segments) = split(input);
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for seg in segments {
        if seg.action() & 1 != 0 {
            decoder.reset();
        }
        out.clear();
        // An error is fine (the fields before it are kept); a panic is not.
        let _ = decoder.decode(seg.data, &mut out);
        assert!(decoder.table_size() <= MAX_TABLE_SIZE);
        assert!(out.len() <= MAX_FIELDS);
        assert!(out
            .iter()
            .all(|(n, v)| n.len() <= MAX_FIELD_LEN && v.len() <= MAX_FIELD_LEN));
    }
});
