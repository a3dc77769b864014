//! What the database protocol sessions ([`super::postgres`], [`super::redis`],
//! [`super::mysql`]) share: the bytes of one `Data` event ([`Segment`]) and the cursor
//! over them ([`Input`]), what they report ([`Finished`]), their counters ([`DbStats`])
//! and bounds.

use crate::model::{Completion, DbError};
use crate::protocols::sql;
pub use crate::protocols::{Origin, Segment};
pub use crate::stitch::StitchStats as DbStats;

/// Most requests awaiting their answer per connection; further ones are counted in
/// [`DbStats::untracked_requests`] and not reported.
pub const MAX_PENDING: usize = 256;
/// Most bytes of one message kept for decoding (the capture is usually 1 KiB).
pub const MAX_KEEP: usize = 4096;
/// Most bytes of an error message kept.
pub const MAX_ERROR_MESSAGE: usize = 256;

/// The cursor over one segment: captured bytes read up to `pos`, then `unknown`
/// uncaptured ones; `skipped` counts the bytes passed over while resynchronising.
#[derive(Debug)]
pub struct Input<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) unknown: u64,
    pub(crate) skipped: u64,
}

impl<'a> Input<'a> {
    pub fn new(seg: &Segment<'a>) -> Self {
        Input {
            data: seg.data,
            pos: 0,
            unknown: seg.unknown,
            skipped: 0,
        }
    }

    /// The captured bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or_default()
    }

    /// Bytes the segment stands for: captured and uncaptured.
    pub(crate) fn total(&self) -> u64 {
        u64::try_from(self.data.len()).unwrap_or(u64::MAX) + self.unknown
    }

    /// Reads `n` captured bytes of a message body of which `remaining` bytes were
    /// left; where the captured bytes end, passes over the uncaptured ones of the
    /// body too. Returns whether it did (the body is cut).
    pub(crate) fn take_body(&mut self, n: usize, remaining: &mut u64) -> bool {
        self.pos += n;
        *remaining -= n as u64;
        if *remaining > 0 && self.rest().is_empty() && self.unknown > 0 {
            let u = (*remaining).min(self.unknown);
            *remaining -= u;
            self.unknown -= u;
            return true;
        }
        false
    }

    /// Reads header bytes into `hdr[*have..need]`; returns whether all `need` are in.
    pub(crate) fn fill(&mut self, hdr: &mut [u8], have: &mut usize, need: usize) -> bool {
        while *have < need {
            let (Some(&b), Some(slot)) = (self.rest().first(), hdr.get_mut(*have)) else {
                break;
            };
            *slot = b;
            *have += 1;
            self.pos += 1;
        }
        *have >= need
    }

    /// Passes over all that is left, counting it as skipped.
    pub(crate) fn skip_rest(&mut self) {
        self.skipped += u64::try_from(self.rest().len()).unwrap_or(u64::MAX) + self.unknown;
        self.pos = self.data.len();
        self.unknown = 0;
    }
}

/// One operation and its answer, as a session found them.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub origin: Origin,
    pub end_mono_ns: u64,
    pub operation: Option<String>,
    pub collection: Option<String>,
    pub query_text: Option<String>,
    pub error: Option<DbError>,
    pub completion: Completion,
    /// `db.namespace`: the database the connection uses, when its start was seen.
    pub namespace: Option<String>,
}

impl Finished {
    /// A SQL operation's report: `query` summarized into its operation, collection
    /// and sanitized text (no text when the summary is empty); the end is never
    /// before the start.
    pub fn sql(
        origin: Origin,
        end_mono_ns: u64,
        query: Option<&str>,
        error: Option<DbError>,
        completion: Completion,
        namespace: Option<String>,
    ) -> Self {
        let (operation, collection, query_text) = match query.map(sql::summarize) {
            Some(s) => (
                s.operation,
                s.collection,
                Some(s.text).filter(|t| !t.is_empty()),
            ),
            None => (None, None, None),
        };
        Finished {
            origin,
            end_mono_ns: end_mono_ns.max(origin.mono_ns),
            operation,
            collection,
            query_text,
            error,
            completion,
            namespace,
        }
    }
}

/// A database protocol session of one connection, fed one segment at a time;
/// `stitch::db` turns it into a [`crate::stitch::Session`].
pub trait DbSession: Send + std::fmt::Debug {
    /// `db.system.name` of what it reports.
    fn system(&self) -> crate::model::DbSystem;
    /// The connection closed at `mono_ns`: operations still waiting are reported.
    fn close(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>);
    /// Events were lost at `mono_ns`: operations waiting are reported truncated, the
    /// directions resynchronise.
    fn lose(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>);
    /// (pending operations, remembered statements, buffered bytes), for the bounds.
    fn footprint(&self) -> (usize, usize, usize);
    /// The connection switched to encryption: its bytes can no longer be read.
    fn encrypted(&self) -> bool {
        false
    }
    /// A segment the client sent.
    fn request(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>);
    /// A segment the server sent.
    fn response(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>);
    /// A segment of the client (`request`) or of the server.
    fn feed(
        &mut self,
        request: bool,
        seg: &Segment<'_>,
        stats: &mut DbStats,
        out: &mut Vec<Finished>,
    ) {
        if request {
            self.request(seg, stats, out);
        } else {
            self.response(seg, stats, out);
        }
    }
}

/// Whether a new request goes untracked: it comes behind untracked ones, or
/// `pending` requests already wait (at [`MAX_PENDING`]). Counts it when so.
pub fn untracked(untracked: &mut u64, pending: usize, stats: &mut DbStats) -> bool {
    if *untracked > 0 || pending >= MAX_PENDING {
        *untracked += 1;
        stats.untracked_requests += 1;
        return true;
    }
    false
}

/// `bytes` as text, invalid UTF-8 replaced, cut to at most `max` bytes.
pub fn text(bytes: &[u8], max: usize) -> String {
    let bytes = bytes.get(..max.min(bytes.len())).unwrap_or_default();
    String::from_utf8_lossy(bytes).into_owned()
}
