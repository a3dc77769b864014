//! PostgreSQL frontend/backend protocol 3.0, both directions of one connection.
//!
//! # Framing
//!
//! Every message is a type byte and a big-endian `u32` length that counts itself,
//! except the frontend's first packets (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest: a length and a 32-bit code, no type byte) and the backend's
//! one-byte answer to an SSLRequest/GSSENCRequest (`N`, or `S`/`G` after which the
//! bytes are encrypted and no longer read). A [`Framer`] keeps the 5-byte header
//! and at most [`MAX_KEEP`] bytes of a body it wants; uncaptured bytes inside a body
//! are skipped by its length. When uncaptured bytes hide a header the direction
//! loses its place and waits for an event whose payload starts with a plausible
//! message (known type byte, sane length).
//!
//! # Operations
//!
//! * Simple query `Q`: one operation, answered when `ReadyForQuery` (`Z`) comes.
//! * Extended query: `Parse` (statement name -> query text, remembered per
//!   connection, at most [`MAX_STATEMENTS`]), `Bind` (portal -> statement),
//!   `Execute` (portal), ..., `Sync`: everything up to `Sync` is one operation (the
//!   query of its first `Execute`, else of its `Parse`), answered by its `Z`.
//! * `ErrorResponse` (`E`) before the `Z`: the operation failed, with its SQLSTATE
//!   (field `C`) and message (`M`).
//! * Startup (StartupMessage .. first `Z`), SSLRequest, CancelRequest, a `Sync` with
//!   nothing before it and function calls are paired with their answers but not
//!   reported; the startup packets are counted.
//!
//! Uncaptured bytes often hide the end of a large result (rows, then
//! `CommandComplete` and `Z`, in one write). The operation is then finished when
//! the client sends its next request (libpq and most drivers wait for `Z` first) or
//! the connection closes, as `Completion::Truncated` ending at the last answer
//! event; a `Z` that does come first still ends it.

use std::collections::{HashMap, VecDeque};

use crate::model::{Completion, DbError};
/// The cursor the framer reads (shared by the database protocols).
pub use crate::protocols::db::Input;
use crate::protocols::db::{
    text, untracked, DbSession, DbStats, Finished, Origin, Segment, MAX_ERROR_MESSAGE, MAX_KEEP,
};
use crate::protocols::{prefix_utf8, truncate_utf8};

mod frame;
#[cfg(test)]
mod tests;

use frame::{be32, CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};
pub use frame::{looks_like_start, Frame, FrameError, Framer};

/// Most prepared statements (and portals) remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Most bytes of a remembered statement's query text, and of a statement or portal
/// name: with [`MAX_STATEMENTS`], at most about 600 KiB per connection in the worst
/// case (drivers use a handful of short names).
pub const MAX_STORED_QUERY: usize = 1024;
pub const MAX_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Startup,
    Ssl,
    /// Answered, not reported (a lone Sync, a function call).
    Silent,
    Op {
        query: Option<String>,
    },
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    origin: Origin,
    error: Option<DbError>,
    /// Uncaptured bytes hid the end of the answer: finished at this time when the
    /// client sends its next request.
    maybe_done: Option<u64>,
}

/// The extended-protocol messages since the last Sync.
#[derive(Debug)]
struct Batch {
    origin: Origin,
    query: Option<String>,
    executed: bool,
}

/// A bounded name -> query map, oldest forgotten first.
#[derive(Debug, Default)]
struct Names {
    map: HashMap<String, Option<String>>,
    order: VecDeque<String>,
}

impl Names {
    fn insert(&mut self, mut name: String, mut query: Option<String>, stats: &mut DbStats) {
        truncate_utf8(&mut name, MAX_NAME);
        if let Some(q) = query.as_mut() {
            truncate_utf8(q, MAX_STORED_QUERY);
        }
        if self.map.insert(name.clone(), query).is_none() {
            self.order.push_back(name);
        }
        while self.map.len() > MAX_STATEMENTS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.map.remove(&old).is_some() {
                stats.evicted_statements += 1;
            }
        }
    }

    /// Names are kept cut to [`MAX_NAME`] bytes at a character boundary, and
    /// looked up cut the same way.
    fn get(&self, name: &str) -> Option<String> {
        self.map.get(prefix_utf8(name, MAX_NAME)).cloned().flatten()
    }

    fn remove(&mut self, name: &str) {
        let name = prefix_utf8(name, MAX_NAME);
        if self.map.remove(name).is_some() {
            self.order.retain(|n| n != name);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// One PostgreSQL connection: both directions, pairing, prepared statements.
#[derive(Debug)]
pub struct PgSession {
    front: Framer,
    back: Framer,
    pending: VecDeque<Pending>,
    untracked: u64,
    statements: Names,
    portals: Names,
    batch: Option<Batch>,
    encrypted: bool,
    last_answer_ns: u64,
    /// The startup packet's `database` (else `user`, PostgreSQL's default).
    database: Option<String>,
}

impl PgSession {
    /// `fresh`: seen from the connection's start.
    pub fn new(fresh: bool) -> Self {
        PgSession {
            front: Framer::new(true, fresh),
            back: Framer::new(false, fresh),
            pending: VecDeque::new(),
            untracked: 0,
            statements: Names::default(),
            portals: Names::default(),
            batch: None,
            encrypted: false,
            last_answer_ns: 0,
            database: None,
        }
    }

    /// Sets `db.namespace` on what was finished from `from` on.
    fn name(&self, out: &mut [Finished], from: usize) {
        if let Some(db) = &self.database {
            for f in out.iter_mut().skip(from) {
                f.namespace = Some(db.clone());
            }
        }
    }

    fn request_inner(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        if self.encrypted {
            return;
        }
        let mut input = Input::new(seg);
        while let Some(frame) = self.front.next(&mut input) {
            match frame {
                Ok(frame) => self.on_request(frame, seg.origin, stats, out),
                Err(e) => {
                    count_error(e, stats);
                    // libpq writes Parse..Sync at once: the Sync was probably hidden.
                    self.push_batch(stats, out);
                }
            }
        }
        stats.skipped_bytes += input.skipped;
    }

    fn response_inner(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        if self.encrypted {
            return;
        }
        self.last_answer_ns = seg.origin.mono_ns;
        let mut input = Input::new(seg);
        if self.back.at_boundary() && self.pending.front().is_some_and(|p| p.kind == Kind::Ssl) {
            if let Some(&answer) = seg.data.first() {
                self.pending.pop_front();
                match answer {
                    b'N' => input.pos = 1,
                    b'S' | b'G' => {
                        self.encrypted = true;
                        stats.encrypted_connections += 1;
                        return;
                    }
                    // An old server's ErrorResponse: framed below.
                    _ => {}
                }
            }
        }
        while let Some(frame) = self.back.next(&mut input) {
            match frame {
                Ok(frame) => self.on_response(frame, seg.origin.mono_ns, stats, out),
                Err(e) => {
                    count_error(e, stats);
                    if let Some(front) = self.pending.front_mut() {
                        front.maybe_done = Some(seg.origin.mono_ns);
                    }
                }
            }
        }
        stats.skipped_bytes += input.skipped;
    }

    fn on_request(
        &mut self,
        frame: Frame,
        origin: Origin,
        stats: &mut DbStats,
        out: &mut Vec<Finished>,
    ) {
        let body = &frame.body;
        match frame.typ {
            0 => match be32(body, 0).unwrap_or(0) {
                SSL_REQUEST | GSSENC_REQUEST => {
                    stats.pg_ssl_requests += 1;
                    self.push(Kind::Ssl, origin, stats, out);
                }
                CANCEL_REQUEST => stats.pg_cancel_requests += 1,
                _ => {
                    stats.pg_startups += 1;
                    self.database = startup_database(body);
                    self.push(Kind::Startup, origin, stats, out);
                }
            },
            b'Q' => {
                self.push_batch(stats, out);
                let query = cstr(body, 0).map(|(q, _)| q);
                self.push(Kind::Op { query }, origin, stats, out);
            }
            b'P' => {
                let (name, next) = cstr(body, 0).unwrap_or_default();
                let query = cstr(body, next).map(|(q, _)| q);
                self.statements.insert(name, query.clone(), stats);
                let batch = self.batch(origin);
                if batch.query.is_none() {
                    batch.query = query;
                }
            }
            b'B' => {
                let (portal, next) = cstr(body, 0).unwrap_or_default();
                let statement = cstr(body, next).map(|(s, _)| s).unwrap_or_default();
                let query = self.statements.get(&statement);
                self.portals.insert(portal, query, stats);
                self.batch(origin);
            }
            b'E' => {
                let portal = cstr(body, 0).map(|(p, _)| p).unwrap_or_default();
                let query = self.portals.get(&portal);
                let batch = self.batch(origin);
                if !batch.executed {
                    batch.executed = true;
                    if query.is_some() {
                        batch.query = query;
                    }
                }
            }
            b'C' => {
                // Close a statement ('S') or portal ('P').
                let name = cstr(body, 1).map(|(n, _)| n).unwrap_or_default();
                match body.first() {
                    Some(b'S') => self.statements.remove(&name),
                    Some(b'P') => self.portals.remove(&name),
                    _ => {}
                }
                self.batch(origin);
            }
            b'D' | b'H' => {
                self.batch(origin);
            }
            b'S' => {
                if self.batch.is_some() {
                    self.push_batch(stats, out);
                } else {
                    self.push(Kind::Silent, origin, stats, out);
                }
            }
            b'F' => self.push(Kind::Silent, origin, stats, out),
            // Terminate, copy data/done/fail, password messages.
            _ => {}
        }
    }

    fn batch(&mut self, origin: Origin) -> &mut Batch {
        self.batch.get_or_insert(Batch {
            origin,
            query: None,
            executed: false,
        })
    }

    fn push_batch(&mut self, stats: &mut DbStats, out: &mut Vec<Finished>) {
        if let Some(batch) = self.batch.take() {
            self.push(Kind::Op { query: batch.query }, batch.origin, stats, out);
        }
    }

    fn push(&mut self, kind: Kind, origin: Origin, stats: &mut DbStats, out: &mut Vec<Finished>) {
        // A request while earlier answers lost their end: those are over.
        while let Some(end) = self.pending.front().and_then(|p| p.maybe_done) {
            if let Some(p) = self.pending.pop_front() {
                finish(p, end, Completion::Truncated, stats, out);
            }
        }
        if untracked(&mut self.untracked, self.pending.len(), stats) {
            return;
        }
        self.pending.push_back(Pending {
            kind,
            origin,
            error: None,
            maybe_done: None,
        });
    }

    fn on_response(
        &mut self,
        frame: Frame,
        mono_ns: u64,
        stats: &mut DbStats,
        out: &mut Vec<Finished>,
    ) {
        match frame.typ {
            b'E' => {
                if let Some(front) = self.pending.front_mut() {
                    if front.error.is_none() {
                        front.error = Some(error_fields(&frame.body));
                    }
                }
            }
            b'Z' => match self.pending.pop_front() {
                Some(p) => finish(p, mono_ns, Completion::Complete, stats, out),
                None if self.untracked > 0 => self.untracked -= 1,
                None => stats.unpaired_responses += 1,
            },
            _ => {}
        }
    }
}

impl DbSession for PgSession {
    fn system(&self) -> crate::model::DbSystem {
        crate::model::DbSystem::Postgresql
    }

    /// The connection closed at `mono_ns`: unanswered operations are reported.
    fn close(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let from = out.len();
        while let Some(p) = self.pending.pop_front() {
            match p.maybe_done {
                Some(end) => finish(p, end, Completion::Truncated, stats, out),
                None => finish(p, mono_ns, Completion::ConnectionClosed, stats, out),
            }
        }
        self.untracked = 0;
        self.batch = None;
        self.name(out, from);
    }

    /// Events were lost: unanswered operations are reported truncated, both
    /// directions resynchronise.
    fn lose(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let from = out.len();
        let end = self.last_answer_ns.max(mono_ns);
        while let Some(p) = self.pending.pop_front() {
            let at = p.maybe_done.unwrap_or(end);
            finish(p, at, Completion::Truncated, stats, out);
        }
        self.untracked = 0;
        self.batch = None;
        self.front.resync();
        self.back.resync();
        self.name(out, from);
    }

    /// (pending operations, statements + portals, framer bytes) for bound checks.
    fn footprint(&self) -> (usize, usize, usize) {
        (
            self.pending.len(),
            self.statements.len() + self.portals.len(),
            self.front.buffered().max(self.back.buffered()),
        )
    }

    /// The connection switched to TLS/GSS: its bytes are no longer read.
    fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Client-to-server bytes.
    fn request(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let from = out.len();
        self.request_inner(seg, stats, out);
        self.name(out, from);
    }

    /// Server-to-client bytes.
    fn response(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let from = out.len();
        self.response_inner(seg, stats, out);
        self.name(out, from);
    }
}

/// The database a startup packet names: its `database` parameter, else its `user`.
fn startup_database(body: &[u8]) -> Option<String> {
    let mut at = 4;
    let mut user = None;
    while let Some((key, next)) = cstr(body, at) {
        if key.is_empty() {
            break;
        }
        let (value, after) = cstr(body, next)?;
        match key.as_str() {
            "database" if !value.is_empty() => return Some(value),
            "user" => user = Some(value),
            _ => {}
        }
        at = after;
    }
    user.filter(|u| !u.is_empty())
}

fn count_error(e: FrameError, stats: &mut DbStats) {
    match e {
        FrameError::LostSync => stats.lost_sync += 1,
        FrameError::Invalid => stats.parse_errors += 1,
    }
}

fn finish(
    p: Pending,
    end: u64,
    completion: Completion,
    stats: &mut DbStats,
    out: &mut Vec<Finished>,
) {
    let Kind::Op { query } = p.kind else {
        return;
    };
    stats.count(completion);
    out.push(Finished::sql(
        p.origin,
        end,
        query.as_deref(),
        p.error,
        completion,
        None,
    ));
}

/// A NUL-terminated string at `at` (or the rest, when the capture cut it) and the
/// index after its NUL.
fn cstr(body: &[u8], at: usize) -> Option<(String, usize)> {
    let rest = body.get(at..)?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some((text(rest.get(..end)?, MAX_KEEP), at + end + 1))
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse body.
fn error_fields(body: &[u8]) -> DbError {
    let mut error = DbError::default();
    let mut at = 0;
    while let Some(&field) = body.get(at) {
        if field == 0 {
            break;
        }
        let Some((value, next)) = cstr(body, at + 1) else {
            break;
        };
        match field {
            b'C' => error.code = Some(value),
            b'M' => {
                let mut m = value;
                truncate_utf8(&mut m, MAX_ERROR_MESSAGE);
                error.message = m;
            }
            _ => {}
        }
        at = next;
    }
    error
}
