//! PostgreSQL session (`protocols::postgres::PgSession`: both directions' framers,
//! pairing, prepared statements and portals), fed the segments of the input.
//!
//! Flags: bit 0 a connection seen from its start (else joined mid-stream). Segment
//! actions: see `tandem_processor_fuzz::run_db`.
//!
//! Checked: no panic; pending operations, remembered statements and portals, and the
//! framers' buffers stay within their bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_processor::protocols::db::{MAX_KEEP, MAX_PENDING};
use tandem_processor::protocols::postgres::{PgSession, MAX_STATEMENTS};
use tandem_processor_fuzz::{run_db, split, DbBounds};

fuzz_target!(|input: &[u8]| {
    let (flags, segments) = split(input);
    let mut session = PgSession::new(flags & 1 != 0);
    let bounds = DbBounds {
        pending: MAX_PENDING,
        // Statements and portals, each bounded.
        entries: 2 * MAX_STATEMENTS,
        // A kept body of at most MAX_KEEP bytes (a vector's capacity at most doubles).
        buffered: 2 * MAX_KEEP,
    };
    run_db(&mut session, segments, bounds);
});
