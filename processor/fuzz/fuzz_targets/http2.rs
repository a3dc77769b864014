//! HTTP/2 frame reader of one direction (`protocols::http2::FrameReader`, which
//! decodes header blocks with its HPACK table), fed the segments of the input.
//!
//! Flags: bit 0 synchronised from the start (else it waits for bytes that look like
//! frames, as for a connection joined mid-stream); bit 1 a 64-byte header-block bound
//! instead of the default. Segment actions: bit 0 a resynchronisation (a loss).
//!
//! Checked: no panic; buffered bytes, the HPACK table and the fields of each block
//! stay within their documented bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::hpack::{MAX_FIELDS, MAX_FIELD_LEN, MAX_TABLE_SIZE};
use tandem_processor::protocols::http2::{FrameReader, H2Event, MAX_HEADER_BLOCK};
use tandem_processor_fuzz::split;

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let max_block = if flags & 2 == 0 { MAX_HEADER_BLOCK } else { 64 };
    let mut reader = FrameReader::new(max_block, flags & 1 != 0);
    let mut out = Vec::new();
    for seg in segments {
        reader.feed(seg.data, seg.total(), &mut out);
        // A partial frame's payload and the header block, each at most `max_block`
        // bytes long (a vector's capacity at most doubles what it held), the frame
        // header, and a small payload allocation kept for reuse.
        assert!(
            reader.buffered() <= 4 * max_block + 2048,
            "buffered {} over the bound",
            reader.buffered()
        );
        assert!(reader.table_size() <= MAX_TABLE_SIZE);
        for event in out.drain(..) {
            if let H2Event::Headers { headers, .. } = event {
                assert!(headers.len() <= MAX_FIELDS);
                assert!(headers
                    .iter()
                    .all(|(n, v)| n.len() <= MAX_FIELD_LEN && v.len() <= MAX_FIELD_LEN));
            }
        }
        if seg.action() & 1 != 0 {
            reader.resync();
        }
    }
});
