//! What the fuzz targets share: how one fuzz input becomes the `Data` events of a
//! connection.
//!
//! An input is one flags byte (each target gives its bits a meaning: which
//! direction, a fresh connection or one joined mid-stream, a small bound so that the
//! over-the-bound paths are reached by small inputs), then segments, each
//! `[ctl][len: u16 little-endian][len bytes]`; a segment whose length runs past the
//! input takes what is left. One segment is one `Data` event's captured bytes. `ctl`:
//!
//! - bit 0: the direction, 0 the client's bytes (requests), 1 the server's (answers);
//! - bits 1-3: how many more bytes the syscall moved without their being captured,
//!   an index into [`UNCAPTURED`] (the loader copies only the first bytes of each
//!   read or write, so every parser must cope with bytes it cannot see, and with
//!   absurd counts: a hostile peer controls the syscall sizes);
//! - bits 4-7: what happens after the segment (a loss of events, a close, ...), as
//!   each target documents.
//!
//! A framing, rather than arbitrary cuts, keeps the seeds readable (`seeds.py` writes
//! them from the unit tests' byte strings) and lets libFuzzer's mutations cut, join
//! and reorder whole syscalls.

use tandem_processor::protocols::db::{DbSession, DbStats, Origin, Segment};

/// The most bytes one read or write moves on Linux (`MAX_RW_COUNT`, `INT_MAX` rounded
/// down to a page), hence the largest `Data.total_len` the loader reports. Byte
/// counters (`StitchStats::skipped_bytes`, ...) are plain `u64` sums of these, which
/// no real stream overflows; larger made-up counts would only find those sums.
pub const MAX_RW_COUNT: u64 = 0x7fff_f000;

/// Uncaptured byte counts a segment may announce (`ctl` bits 1-3); zero is the most
/// likely, as in real traffic.
pub const UNCAPTURED: [u64; 8] = [0, 0, 0, 1, 100, 65_536, 1 << 24, MAX_RW_COUNT];

/// One `Data` event of a fuzz input.
#[derive(Debug, Clone, Copy)]
pub struct Seg<'a> {
    pub ctl: u8,
    pub data: &'a [u8],
}

impl Seg<'_> {
    /// The server's bytes (answers); else the client's (requests).
    pub fn response(&self) -> bool {
        self.ctl & 1 != 0
    }

    /// Bytes moved but not captured.
    pub fn uncaptured(&self) -> u64 {
        UNCAPTURED
            .get(usize::from((self.ctl >> 1) & 7))
            .copied()
            .unwrap_or(0)
    }

    /// The syscall's byte count: captured and uncaptured.
    pub fn total(&self) -> u64 {
        u64::try_from(self.data.len())
            .unwrap_or(u64::MAX)
            .saturating_add(self.uncaptured())
    }

    /// Bits 4-7 of `ctl`: what the target does after the segment.
    pub fn action(&self) -> u8 {
        self.ctl >> 4
    }
}

/// The segments of an input (after its flags byte).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Segments<'a> {
    type Item = Seg<'a>;

    fn next(&mut self) -> Option<Seg<'a>> {
        let (&ctl, rest) = self.rest.split_first()?;
        let len = match rest {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => rest.len(),
        };
        let body = rest.get(2..).unwrap_or_default();
        let (data, after) = body.split_at(len.min(body.len()));
        self.rest = after;
        Some(Seg { ctl, data })
    }
}

/// The flags byte (0 for an empty input) and the segments of `input`.
pub fn split(input: &[u8]) -> (u8, Segments<'_>) {
    match input.split_first() {
        Some((&flags, rest)) => (flags, Segments { rest }),
        None => (0, Segments { rest: &[] }),
    }
}

/// Monotonic time of the `i`-th segment: a millisecond apart, so that durations are
/// positive and distinct.
pub fn mono_ns(i: usize) -> u64 {
    1_000_000_000u64.saturating_add(
        u64::try_from(i)
            .unwrap_or(u64::MAX)
            .saturating_mul(1_000_000),
    )
}

/// Bounds a database session's footprint must keep (see `DbSession::footprint`).
#[derive(Debug, Clone, Copy)]
pub struct DbBounds {
    /// Operations waiting for their answer.
    pub pending: usize,
    /// Remembered prepared statements (and portals).
    pub entries: usize,
    /// Bytes buffered by the larger of the two directions.
    pub buffered: usize,
}

/// Feeds `segments` to a database session, both directions, checking its footprint
/// against `bounds` after every segment. Segment actions: bit 0 a loss of events
/// after the segment, bit 1 a close (the session is then reused, as a stitcher never
/// does, to reach states a fresh session would not).
pub fn run_db(session: &mut dyn DbSession, segments: Segments<'_>, bounds: DbBounds) {
    let mut stats = DbStats::default();
    let mut out = Vec::new();
    for (i, seg) in segments.enumerate() {
        let origin = Origin {
            mono_ns: mono_ns(i),
            ..Origin::default()
        };
        let segment = Segment::new(seg.data, seg.total(), origin);
        session.feed(!seg.response(), &segment, &mut stats, &mut out);
        if seg.action() & 1 != 0 {
            session.lose(mono_ns(i), &mut stats, &mut out);
        }
        if seg.action() & 2 != 0 {
            session.close(mono_ns(i), &mut stats, &mut out);
        }
        let (pending, entries, buffered) = session.footprint();
        assert!(pending <= bounds.pending, "{pending} operations pending");
        assert!(entries <= bounds.entries, "{entries} statements remembered");
        assert!(buffered <= bounds.buffered, "{buffered} bytes buffered");
        for f in out.drain(..) {
            assert!(f.end_mono_ns >= f.origin.mono_ns, "ends before it starts");
        }
    }
    session.close(u64::MAX, &mut stats, &mut out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_and_cut() {
        let (flags, segs) = split(&[7, 0x01, 2, 0, b'a', b'b', 0x08, 9, 0, b'c']);
        assert_eq!(flags, 7);
        let segs: Vec<_> = segs.collect();
        assert_eq!(segs.len(), 2);
        assert!(segs[0].response());
        assert_eq!(segs[0].data, b"ab");
        assert_eq!(segs[0].total(), 2);
        assert_eq!(segs[1].data, b"c");
        assert_eq!(segs[1].uncaptured(), 100);
        assert_eq!(segs[1].total(), 101);
    }
}
