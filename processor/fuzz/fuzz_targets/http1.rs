//! HTTP/1.x parser of one direction (`protocols::http1::Parser`), fed the segments
//! of the input as `Data` events.
//!
//! Flags: bit 0 the direction (0 requests, 1 responses); bit 1 a 64-byte header-block
//! bound instead of the default, so that small inputs reach `HeadTooLong`. Segment
//! actions: bit 0 `no_body` after a head (a response to HEAD), bit 1 a close, bit 2 a
//! resynchronisation (a loss of events).
//!
//! Checked: no panic, and the header-block buffer never exceeds its bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::http1::{
    Chunk, Http1Event, MessageKind, Origin, Parser, MAX_HEAD_BYTES,
};
use tandem_processor_fuzz::{mono_ns, split};

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let kind = if flags & 1 == 0 {
        MessageKind::Request
    } else {
        MessageKind::Response
    };
    let max_head = if flags & 2 == 0 { MAX_HEAD_BYTES } else { 64 };
    let mut parser = Parser::new(kind, max_head);
    for (i, seg) in segments.enumerate() {
        let origin = Origin {
            mono_ns: mono_ns(i),
            ..Origin::default()
        };
        let mut chunk = Chunk::new(seg.data, seg.total(), origin);
        while let Some(event) = parser.next(&mut chunk) {
            if seg.action() & 1 != 0
                && matches!(
                    event,
                    Http1Event::Request { .. } | Http1Event::Response { .. }
                )
            {
                parser.no_body();
            }
            assert!(parser.buffered() <= max_head, "header block over its bound");
        }
        assert!(parser.buffered() <= max_head, "header block over its bound");
        if seg.action() & 2 != 0 {
            parser.close();
        }
        if seg.action() & 4 != 0 {
            parser.resync();
        }
    }
    parser.close();
});
