//! Redis session (`protocols::redis::RedisSession`: RESP readers of both directions
//! and the pairing of replies with commands), fed the segments of the input.
//!
//! Flags: bit 0 a connection seen from its start (else joined mid-stream). Segment
//! actions: see `tandem_processor_fuzz::run_db`.
//!
//! Checked: no panic; pending commands and the readers' buffers (a bounded line and
//! the stack of open aggregates) stay within their bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::db::MAX_PENDING;
use tandem_processor::protocols::redis::{RedisSession, MAX_LINE_KEEP};
use tandem_processor_fuzz::{run_db, split, DbBounds};

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let mut session = RedisSession::new(flags & 1 != 0);
    let bounds = DbBounds {
        pending: MAX_PENDING,
        entries: 0,
        // The kept line (its capacity at most doubles) and at most 32 open
        // aggregates of 8 bytes each (likewise).
        buffered: 2 * MAX_LINE_KEEP + 2 * 32 * 8,
    };
    run_db(&mut session, segments, bounds);
});
