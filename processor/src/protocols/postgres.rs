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
use crate::protocols::truncate_utf8;

#[cfg(test)]
mod tests;

/// Most prepared statements (and portals) remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Most bytes of a remembered statement's query text, and of a statement or portal
/// name: with [`MAX_STATEMENTS`], at most about 600 KiB per connection in the worst
/// case (drivers use a handful of short names).
pub const MAX_STORED_QUERY: usize = 1024;
pub const MAX_NAME: usize = 128;
/// Longest message accepted (the server's own limit for most messages is 1 GiB).
const MAX_LEN: u32 = 1 << 30;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
const PROTOCOL_3: u32 = 196_608;

const FRONTEND_TYPES: &[u8] = b"QPBESDCHXFdcfp";
const BACKEND_TYPES: &[u8] = b"RSKZTDCEN123nstIAGHWcdVv";

/// Whether a request-direction payload starts like a PostgreSQL connection or
/// message: a startup packet (protocol 3.0, SSL, GSS, cancel) or a `Q`/`P` message
/// whose length fits.
pub fn looks_like_start(payload: &[u8], total_len: u64) -> bool {
    if let Some(code) = startup_code(payload) {
        let len = be32(payload, 0).unwrap_or(0);
        return match code {
            SSL_REQUEST | GSSENC_REQUEST => len == 8,
            CANCEL_REQUEST => len == 16,
            PROTOCOL_3 => (8..10_000).contains(&len),
            _ => false,
        };
    }
    let Some(&t) = payload.first() else {
        return false;
    };
    let Some(len) = be32(payload, 1) else {
        return false;
    };
    let fits = u64::from(len) < total_len;
    match t {
        // A query's text is printable (or whitespace) and NUL-terminated.
        b'Q' => {
            fits && len > 4
                && payload
                    .get(5)
                    .is_some_and(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        }
        b'P' => fits && len >= 8,
        _ => false,
    }
}

/// The length field of fixed-size messages.
fn fixed_len(frontend: bool, t: u8) -> Option<u32> {
    match (frontend, t) {
        (true, b'S' | b'H' | b'X' | b'c') => Some(4),
        (false, b'1' | b'2' | b'3' | b'n' | b'c' | b'I') => Some(4),
        (false, b'Z') => Some(5),
        (false, b'K') => Some(12),
        _ => None,
    }
}

fn startup_code(payload: &[u8]) -> Option<u32> {
    let code = be32(payload, 4)?;
    matches!(
        code,
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST | PROTOCOL_3
    )
    .then_some(code)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// One message: its type (0 for the untyped startup packets) and its body's
/// captured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub typ: u8,
    pub body: Vec<u8>,
    /// Part of the body was not captured or not kept.
    pub cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FState {
    Resync,
    Header,
    Body,
}

/// Why framing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Uncaptured bytes hid a header.
    LostSync,
    /// A header that is not PostgreSQL's.
    Invalid,
}

/// Incremental framer of one direction.
#[derive(Debug)]
pub struct Framer {
    frontend: bool,
    state: FState,
    /// The next message is an untyped startup packet.
    untyped_next: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    typ: u8,
    body: Vec<u8>,
    remaining: u64,
    cut: bool,
}

impl Framer {
    /// `frontend`: the client's messages. `fresh`: the connection is seen from its
    /// start (else the framer waits for a plausible message start).
    pub fn new(frontend: bool, fresh: bool) -> Self {
        Framer {
            frontend,
            state: if fresh {
                FState::Header
            } else {
                FState::Resync
            },
            untyped_next: frontend && fresh,
            hdr: [0; 5],
            hdr_len: 0,
            typ: 0,
            body: Vec::new(),
            remaining: 0,
            cut: false,
        }
    }

    pub fn resync(&mut self) {
        self.state = FState::Resync;
        self.hdr_len = 0;
        self.body = Vec::new();
    }

    /// Between messages (the next byte starts one).
    pub fn at_boundary(&self) -> bool {
        self.state == FState::Header && self.hdr_len == 0
    }

    /// Bytes held (for checking the bound).
    pub fn buffered(&self) -> usize {
        self.body.capacity()
    }

    /// Whether a payload (of a write of `total` bytes) starts with messages: a
    /// known type, a length that fits the write (exact for fixed-size messages), and
    /// the next captured message (up to a few) plausible as well. Strict, because a
    /// payload that starts inside a large message (rows) must not be taken for one.
    fn plausible(&self, data: &[u8], total: u64) -> bool {
        if self.frontend && startup_code(data).is_some() {
            return true;
        }
        let mut at = 0usize;
        for _ in 0..4 {
            let rest = data.get(at..).unwrap_or_default();
            if rest.is_empty() {
                return true;
            }
            let (Some(&t), Some(len)) = (rest.first(), be32(rest, 1)) else {
                // A header cut by the capture: plausible if what is there is.
                return rest.first().is_some_and(|t| self.known(*t)) && at > 0;
            };
            if !self.known(t) || !(4..MAX_LEN).contains(&len) {
                return false;
            }
            if let Some(fixed) = fixed_len(self.frontend, t) {
                if len != fixed {
                    return false;
                }
            }
            let end = u64::try_from(at).unwrap_or(u64::MAX) + 1 + u64::from(len);
            if end > total {
                return false;
            }
            at = usize::try_from(end).unwrap_or(usize::MAX);
        }
        true
    }

    fn known(&self, t: u8) -> bool {
        if self.frontend {
            FRONTEND_TYPES.contains(&t)
        } else {
            BACKEND_TYPES.contains(&t)
        }
    }

    fn keep(&self, typ: u8) -> bool {
        // Rows and row descriptions are skipped, never kept.
        self.frontend || !matches!(typ, b'D' | b'T')
    }

    /// The next complete message in `input`, `None` when more bytes are needed.
    pub fn next(&mut self, input: &mut Input<'_>) -> Option<Result<Frame, FrameError>> {
        loop {
            match self.state {
                FState::Resync => {
                    if input.pos == 0 && self.plausible(input.data, input.total()) {
                        if self.frontend {
                            self.untyped_next = startup_code(input.data).is_some();
                        }
                        self.state = FState::Header;
                        self.hdr_len = 0;
                        continue;
                    }
                    input.skip_rest();
                    return None;
                }
                FState::Header => {
                    let need = if self.untyped_next { 4 } else { 5 };
                    if !input.fill(&mut self.hdr, &mut self.hdr_len, need) {
                        if input.unknown > 0 {
                            input.skip_rest();
                            self.resync();
                            return Some(Err(FrameError::LostSync));
                        }
                        return None;
                    }
                    let len = be32(&self.hdr, need - 4).unwrap_or(0);
                    self.typ = if self.untyped_next { 0 } else { self.hdr[0] };
                    let known = self.typ == 0
                        || if self.frontend {
                            FRONTEND_TYPES.contains(&self.typ)
                        } else {
                            BACKEND_TYPES.contains(&self.typ)
                        };
                    if !(4..MAX_LEN).contains(&len) || !known {
                        input.skip_rest();
                        self.resync();
                        return Some(Err(FrameError::Invalid));
                    }
                    self.remaining = u64::from(len - 4);
                    self.body = Vec::new();
                    self.cut = false;
                    self.state = FState::Body;
                }
                FState::Body => {
                    let rest = input.rest();
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let taken = rest.get(..n).unwrap_or_default();
                    if self.keep(self.typ) {
                        let room = MAX_KEEP.saturating_sub(self.body.len());
                        self.body
                            .extend_from_slice(taken.get(..room.min(n)).unwrap_or_default());
                        if n > room {
                            self.cut = true;
                        }
                    }
                    if input.take_body(n, &mut self.remaining) {
                        self.cut = true;
                    }
                    if self.remaining > 0 {
                        return None;
                    }
                    self.state = FState::Header;
                    self.hdr_len = 0;
                    let frame = Frame {
                        typ: self.typ,
                        body: std::mem::take(&mut self.body),
                        cut: self.cut,
                    };
                    if frame.typ == 0 {
                        // After an SSL/GSS request the startup packet follows.
                        let code = be32(&frame.body, 0).unwrap_or(0);
                        self.untyped_next = matches!(code, SSL_REQUEST | GSSENC_REQUEST);
                    }
                    return Some(Ok(frame));
                }
            }
        }
    }
}

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

    fn get(&self, name: &str) -> Option<String> {
        let name = name.get(..name.len().min(MAX_NAME)).unwrap_or(name);
        self.map.get(name).cloned().flatten()
    }

    fn remove(&mut self, name: &str) {
        let name = name.get(..name.len().min(MAX_NAME)).unwrap_or(name);
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
