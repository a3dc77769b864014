//! Capture-file reader (`tandem_proto::capture::CaptureReader`, what `tandem-loader
//! --replay` and the throughput benchmark read): the input is the whole file. Every
//! event read is also printed by the processor's raw-event printer (text and JSON),
//! as `--print` does with whatever a capture holds.
//!
//! Checked: no panic and no unbounded allocation (a record's declared length is
//! bounded by `MAX_RECORD_LEN`); a corrupt file is an error.

#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_processor::printer::{json_value, text_line};
use tandem_proto::capture::CaptureReader;

fuzz_target!(|input: &[u8]| {
    let Ok(mut reader) = CaptureReader::new(Cursor::new(input), Path::new("fuzz.tcap")) else {
        return;
    };
    let offset = reader.header().realtime_offset_ns;
    while let Ok(Some(event)) = reader.next_event() {
        std::hint::black_box(text_line(&event, offset));
        std::hint::black_box(json_value(&event, offset));
    }
});
