//! What every protocol implements to take part in stitching: a [`Protocol`]
//! (detection: does this payload start a conversation of mine?) and a [`Session`]
//! (one connection's conversation: bytes in, transactions out), with the
//! connection's metadata and the output handed in as a [`Ctx`].

use std::fmt;
use std::net::SocketAddr;

use tandem_proto::v1::Direction;

use crate::model::{Completion, Exchange, Side, TraceIds, Transaction};
use crate::protocols::{Segment, Task};

use super::link::Linker;
use super::{Limits, StitchStats};

/// What the stitcher knows of a connection, shared by its sessions.
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    pub pid: u32,
    pub conn_id: u64,
    /// The traced process's end: from the loader's `ConnectionOpened`, or inferred
    /// by a detector (or later by the session, e.g. from an HTTP/2 header block).
    pub side: Option<Side>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Opened before the loader started: its first bytes may be mid-stream.
    pub preexisting: bool,
    /// Requests a session of this connection parsed (any protocol).
    pub requests_seen: u64,
}

/// Where a session reports to: the connection's metadata, the transactions out and
/// the counters.
pub struct Ctx<'a> {
    pub meta: &'a mut ConnMeta,
    pub out: &'a mut Vec<Transaction>,
    pub stats: &'a mut StitchStats,
    /// Gives each request its trace identity (see `stitch/link.rs`).
    pub linker: &'a mut Linker,
    /// The offset of the batch whose event is being fed.
    pub realtime_offset_ns: i64,
}

/// The timing of one finished transaction, as a session found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The task that carried the request's first byte.
    pub task: Task,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    /// The ids [`Ctx::begin`] gave the request; `None` when the session did not
    /// call it (the ids are then given when the transaction is reported).
    pub trace: Option<TraceIds>,
}

impl Ctx<'_> {
    /// A request began on `task` at `mono_ns`, seen from `side` (the
    /// connection's if known): its span's ids, to be handed back in [`Timing`].
    /// `stream` is its HTTP/2 stream id (0 otherwise), `traceparent` its header.
    pub fn begin(
        &mut self,
        side: Side,
        task: Task,
        mono_ns: u64,
        stream: u32,
        traceparent: Option<&str>,
    ) -> TraceIds {
        let side = self.meta.side.unwrap_or(side);
        self.linker
            .begin(self.meta, side, task, mono_ns, stream, traceparent)
    }

    /// Reports one transaction of this connection and counts it by completion.
    /// `side` is the connection's if known, else `fallback`.
    pub fn emit(
        &mut self,
        timing: Timing,
        completion: Completion,
        fallback: Side,
        exchange: Exchange,
    ) {
        self.stats.count(completion);
        self.emit_counted(timing, completion, fallback, exchange);
    }

    /// [`Ctx::emit`] for a transaction the session already counted.
    pub fn emit_counted(
        &mut self,
        timing: Timing,
        completion: Completion,
        fallback: Side,
        exchange: Exchange,
    ) {
        let m = &*self.meta;
        let side = m.side.unwrap_or(fallback);
        let begun = match timing.trace {
            Some(t) => t,
            None => self
                .linker
                .begin(m, side, timing.task, timing.start_mono_ns, 0, None),
        };
        let trace = self.linker.end(m, side, timing.task, &begun);
        self.out.push(Transaction {
            pid: m.pid,
            tid: timing.task.tid,
            conn_id: m.conn_id,
            side,
            local: m.local,
            peer: m.peer,
            start_mono_ns: timing.start_mono_ns,
            end_mono_ns: timing.end_mono_ns.max(timing.start_mono_ns),
            realtime_offset_ns: self.realtime_offset_ns,
            completion,
            exchange,
            trace: Some(trace),
        });
    }

    /// Whether bytes travelling in `direction` are requests, given the side.
    pub fn is_request(&self, direction: Direction) -> Option<bool> {
        is_request(self.meta.side?, direction)
    }
}

/// Whether bytes travelling in `direction` are requests for a process on `side`:
/// a server receives them (INGRESS), a client sends them (EGRESS).
pub fn is_request(side: Side, direction: Direction) -> Option<bool> {
    match (side, direction) {
        (_, Direction::Unspecified) => None,
        (Side::Server, Direction::Ingress) | (Side::Client, Direction::Egress) => Some(true),
        _ => Some(false),
    }
}

/// The role of a process that sends requests in `request_direction`.
pub fn side_sending_requests(request_direction: Direction) -> Side {
    match request_direction {
        Direction::Egress => Side::Client,
        _ => Side::Server,
    }
}

/// How much memory a session holds, for checking its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes buffered (incomplete header blocks, messages being decoded).
    pub buffered: usize,
    /// Requests waiting for their answer (HTTP/2: open streams).
    pub pending: usize,
    /// Other remembered entries (prepared statements, HPACK table bytes).
    pub entries: usize,
}

impl Footprint {
    /// The larger of each field.
    pub fn max(self, other: Footprint) -> Footprint {
        Footprint {
            buffered: self.buffered.max(other.buffered),
            pending: self.pending.max(other.pending),
            entries: self.entries.max(other.entries),
        }
    }
}

/// One connection's conversation in one protocol: fed the connection's data in
/// stream order, it reports transactions through [`Ctx::emit`].
pub trait Session: Send + fmt::Debug {
    /// The protocol's name (`http1`, `http2`, `postgresql`, ...).
    fn name(&self) -> &'static str;

    /// One `Data` event's bytes travelling in `direction`.
    fn feed(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>);

    /// The connection closed (or its process exited) at `mono_ns`: whatever is
    /// still waiting is reported.
    fn close(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>);

    /// Events were lost at `mono_ns`: any byte of the connection may be missing.
    fn lose(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>);

    /// Memory held, for the bounds.
    fn footprint(&self) -> Footprint;

    /// Whether the stitcher may run detection again before the next payload (the
    /// session waits for nothing and would accept another protocol taking over):
    /// HTTP/1 between messages or after it lost its place. Default: never.
    fn redetectable(&self) -> bool {
        false
    }

    /// The session can read nothing more of this connection (it switched to
    /// encryption): the stitcher drops it and ignores the connection's bytes.
    fn finished(&self) -> bool {
        false
    }

    /// Whether a processor that takes over can pick the connection up again at a
    /// moment it is idle (nothing buffered, nothing pending; see `crate::resume`).
    /// HTTP/2 cannot: its header compression state spans the whole connection.
    fn resumable(&self) -> bool {
        true
    }
}

/// What a detector is shown: one payload of a connection whose protocol is not
/// decided (or whose session is [`Session::redetectable`]).
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    pub payload: &'a [u8],
    /// Bytes the syscall moved (captured and not).
    pub total: u64,
    pub direction: Direction,
    /// The role, when known (the loader's `ConnectionOpened`, or inferred earlier).
    pub side: Option<Side>,
    /// The connection's first data event.
    pub fresh: bool,
    pub preexisting: bool,
    /// Requests parsed on the connection so far (by any session).
    pub requests_seen: u64,
    /// Request-direction payloads looked at without a decision so far (the
    /// database detectors give up at `stitch::MAX_UNDECIDED`).
    pub attempts: u32,
    /// The protocol of the session that would be replaced, if any.
    pub current: Option<&'static str>,
    /// The stitcher's bounds, for the session made.
    pub limits: &'a Limits,
}

impl Probe<'_> {
    /// Whether the payload travels in the request direction, when the side is known.
    pub fn is_request(&self) -> Option<bool> {
        is_request(self.side?, self.direction)
    }
}

/// A detector's verdict: the session to use, and the process's role when the probe
/// had none and the payload tells it.
pub struct Detected {
    pub session: Box<dyn Session>,
    pub side: Option<Side>,
}

/// A protocol the stitcher can detect.
pub trait Protocol: Sync + fmt::Debug {
    /// The name of its sessions.
    fn name(&self) -> &'static str;

    /// `Some` when `probe`'s payload starts a conversation of this protocol.
    fn detect(&self, probe: &Probe<'_>) -> Option<Detected>;

    /// The session for a connection whose role is known but whose first payload no
    /// detector recognised, when this protocol is the fallback (HTTP/1 only: a
    /// known-role connection is parsed as HTTP/1 from its first byte).
    fn fallback(&self, _meta: &ConnMeta, _limits: &Limits) -> Option<Box<dyn Session>> {
        None
    }
}
