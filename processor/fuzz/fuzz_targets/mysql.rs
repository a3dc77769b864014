//! MySQL session (`protocols::mysql::MySqlSession`: both directions' packet readers,
//! the handshake, pairing, prepared statements), fed the segments of the input.
//!
//! Flags: bit 0 a connection seen from its start (else joined mid-stream). Segment
//! actions: see `tandem_processor_fuzz::run_db`.
//!
//! Checked: no panic; pending operations, remembered statements and the packet
//! readers' buffers stay within their bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::db::{MAX_KEEP, MAX_PENDING};
use tandem_processor::protocols::mysql::{MySqlSession, MAX_STATEMENTS};
use tandem_processor_fuzz::{run_db, split, DbBounds};

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let mut session = MySqlSession::new(flags & 1 != 0);
    let bounds = DbBounds {
        pending: MAX_PENDING,
        entries: MAX_STATEMENTS,
        buffered: 2 * MAX_KEEP,
    };
    run_db(&mut session, segments, bounds);
});
