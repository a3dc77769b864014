//! Stitching: from the loader's raw events to HTTP/1.x and HTTP/2 transactions.
//!
//! HTTP/2 connections (the client preface, or frames on a connection seen
//! mid-stream) are handed to `stitch/http2.rs`, which reports one transaction per
//! stream; everything below describes HTTP/1.x.
//!
//! A [`Stitcher`] is fed every event in stream order ([`Stitcher::push`]) and
//! returns the transactions that completed. It keeps one state per connection,
//! keyed by `(pid, conn_id)`, with one [`http1::Parser`] per direction.
//!
//! # Roles
//!
//! `ConnectionOpened.role` says which direction carries the requests: a server
//! (`Side::Server`) receives them (INGRESS) and sends the responses (EGRESS); a client
//! (`Side::Client`) sends them (EGRESS) and receives the responses (INGRESS).
//!
//! A connection with no `ConnectionOpened` (the processor started after it opened,
//! the event was lost, or the role is unspecified) has an unknown role. Its bytes
//! are ignored (counted in `non_http_bytes`) until a `Data` event's payload STARTS
//! with what parses as a request line (`METHOD target HTTP/1.x`, or at least an
//! upper-case method and a space when the line is longer than the capture): that
//! event's direction is then the request direction (INGRESS: server, EGRESS:
//! client). The response direction then waits for a payload that starts with a
//! status line, so the tail of an earlier response is not taken for one. A
//! connection opened before the loader started (`preexisting`) has a known role but
//! both directions start that way, waiting for a message start.
//!
//! # Pairing
//!
//! Requests queue in arrival order (keep-alive and pipelining alike) and each final
//! response (status >= 200, or 101) pairs with the oldest unanswered request.
//! Interim responses (1xx other than 101, e.g. the `100 Continue` of `Expect:
//! 100-continue`) are skipped. A response to `HEAD` has no body, whatever its
//! headers say. After `101 Switching Protocols` or a 2xx answer to `CONNECT` the
//! connection no longer carries HTTP/1.x: its later bytes are ignored.
//!
//! # Timing
//!
//! - `start_mono_ns`: the `mono_ns` of the `Data` event that carried the request's
//!   first byte (`tid` is that event's thread).
//! - `end_mono_ns`: the `mono_ns` of the `Data` event that carried the response's
//!   last byte. For a body delimited by the close, that is the last `Data` event of
//!   the response before the close. When no last byte was seen, the `mono_ns` of the
//!   event that ended the transaction: the `ConnectionClosed` (or `ProcessExited`)
//!   for `Completion::ConnectionClosed`, the `Data` event where the capture was cut
//!   or the `Loss` event for `Completion::Truncated`.
//! - `realtime_offset_ns`: the offset of the batch whose event completed it.
//!
//! # Completion
//!
//! - `Complete`: the response was seen to its last byte (its end known from its
//!   framing, or the close for a body delimited by the close).
//! - `ConnectionClosed`: the connection closed (or the process exited) before the
//!   response ended; `response` is `None` if it had not started. Every request still
//!   unanswered at the close is reported so.
//! - `Truncated`: uncaptured bytes (`total_len > payload.len()`) hid part of a
//!   header block or of chunked framing, or bytes did not parse, or events were lost
//!   (`Loss`): what was known is reported. Uncaptured bytes inside a body of known
//!   length do not truncate anything: they are counted into `body_size`.
//!
//! # Bounds and counters
//!
//! Memory is bounded by [`Limits`]: at most `max_connections` connections (the
//! least recently active is dropped, with its unanswered requests, and counted),
//! `max_pending` unanswered requests per connection (further requests are counted
//! and their responses skipped, keeping the pairing right), `max_head_bytes` of an
//! incomplete header block per direction. Bytes that are not HTTP/1.x are counted
//! and skipped, and the direction resynchronises at the next payload that starts a
//! message ([`http1`] explains). [`Stitcher::stats`] has the counters.
//!
//! A `Loss` event means any connection may have missed bytes: every connection's
//! unanswered requests are reported as `Truncated` and both its directions
//! resynchronise.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tandem_proto::v1::{self, Direction, Role};
use tandem_proto::{Event, EventKind};

use crate::model::{Completion, HttpRequest, HttpResponse, HttpTransaction, Side};
use crate::protocols::http1::{self, Chunk, CloseOutcome, Http1Event, MessageKind, Origin, Parser};
use crate::protocols::http2 as h2_frames;

mod http2;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_http2;

pub mod db;

/// Default bound of tracked connections.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Default bound of unanswered requests per connection.
pub const MAX_PENDING: usize = 64;

/// Memory bounds of a [`Stitcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_head_bytes: usize,
}

impl Default for Limits {
    /// [`MAX_CONNECTIONS`], [`MAX_PENDING`], [`http1::MAX_HEAD_BYTES`].
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_pending: MAX_PENDING,
            max_head_bytes: http1::MAX_HEAD_BYTES,
        }
    }
}

/// Counters since the stitcher was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StitchStats {
    /// Transactions returned, whatever their completion.
    pub transactions: u64,
    /// Of which `Completion::Truncated`.
    pub truncated: u64,
    /// Of which `Completion::ConnectionClosed`.
    pub connection_closed: u64,
    /// Times bytes did not parse as HTTP/1.x (start line, header line, framing, or a
    /// header block over the bound); the direction then resynchronised.
    pub parse_errors: u64,
    /// Of `parse_errors`, header blocks over `max_head_bytes`.
    pub oversized_heads: u64,
    /// Bytes skipped, captured or not: not HTTP, or passed over while waiting for a
    /// message start (unknown role, after an error or a loss of synchronisation).
    pub non_http_bytes: u64,
    /// Times uncaptured bytes hid a message start, header-block end or chunk framing.
    pub lost_sync: u64,
    /// Final responses with no request to pair with (their request was not seen).
    pub unpaired_responses: u64,
    /// Requests over `max_pending` on one connection (not reported).
    pub untracked_requests: u64,
    /// Connections dropped to stay within `max_connections`.
    pub evicted_connections: u64,
    /// Connections that switched away from HTTP/1.x (101, CONNECT).
    pub upgraded_connections: u64,
    /// Connections detected as HTTP/2 (see `stitch/http2.rs`).
    pub http2_connections: u64,
    /// Of which detected mid-stream (no preface seen).
    pub http2_midstream_connections: u64,
    /// HPACK fields skipped: their index was not in the (out of step) dynamic table.
    pub hpack_unknown_indices: u64,
    /// HTTP/2 header blocks that did not decode to their end.
    pub hpack_errors: u64,
    /// HTTP/2 streams reset (RST_STREAM) by either side.
    pub http2_reset_streams: u64,
    /// HTTP/2 streams still open when a connection had `MAX_STREAMS` of them: the
    /// oldest, reported `Truncated`.
    pub evicted_streams: u64,
}

impl StitchStats {
    /// Counts one transaction reported with `completion`.
    fn count(&mut self, completion: Completion) {
        self.transactions += 1;
        match completion {
            Completion::Complete => {}
            Completion::Truncated => self.truncated += 1,
            Completion::ConnectionClosed => self.connection_closed += 1,
        }
    }
}

type ConnKey = (u32, u64);

/// Connections by last activity, for evicting the least recently active first.
#[derive(Debug, Default)]
struct ConnLru {
    /// Connection keys by generation (oldest first).
    by_gen: BTreeMap<u64, ConnKey>,
    clock: u64,
}

impl ConnLru {
    /// Records `key` as active now; returns its generation.
    fn stamp(&mut self, key: ConnKey) -> u64 {
        self.clock += 1;
        self.by_gen.insert(self.clock, key);
        self.clock
    }

    /// Records the tracked connection `key` (of generation `gen`) as active now.
    fn touch(&mut self, gen: &mut u64, key: ConnKey) {
        self.by_gen.remove(gen);
        *gen = self.stamp(key);
    }

    /// Forgets a connection no longer tracked.
    fn forget(&mut self, gen: u64) {
        self.by_gen.remove(&gen);
    }

    /// Drops the least recently active of `conns` until one more fits under `max`;
    /// returns how many it dropped.
    fn evict<C>(&mut self, conns: &mut BTreeMap<ConnKey, C>, max: usize) -> u64 {
        let mut evicted = 0;
        while conns.len() >= max {
            let Some((_, oldest)) = self.by_gen.pop_first() else {
                break;
            };
            if conns.remove(&oldest).is_some() {
                evicted += 1;
            }
        }
        evicted
    }
}

/// Per-connection HTTP/1.x reassembly; see the module documentation.
#[derive(Debug)]
pub struct Stitcher {
    limits: Limits,
    conns: BTreeMap<ConnKey, Conn>,
    lru: ConnLru,
    stats: StitchStats,
}

/// A request waiting for (the end of) its response.
#[derive(Debug)]
struct Pending {
    request: HttpRequest,
    origin: Origin,
    /// The request's own bytes ended (or will never be known).
    request_done: bool,
    truncated: bool,
    response: Option<HttpResponse>,
}

#[derive(Debug)]
struct Conn {
    pid: u32,
    conn_id: u64,
    side: Option<Side>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    requests: Parser,
    responses: Parser,
    pending: VecDeque<Pending>,
    /// Requests beyond `max_pending`, after all of `pending`; their responses are
    /// skipped.
    untracked: u64,
    /// The response in progress is skipped (unpaired or untracked).
    discard_response: bool,
    /// The response in progress switches the connection away from HTTP/1.x.
    upgrade_after_response: bool,
    /// No longer HTTP/1.x.
    opaque: bool,
    /// mono_ns of the last Data event in the response direction.
    last_response_ns: u64,
    gen: u64,
    /// Opened before the loader started: its first bytes may be mid-stream.
    preexisting: bool,
    /// An HTTP/1.x request was seen (no HTTP/2 mid-stream detection then).
    http1_seen: bool,
    /// No Data event seen yet (a first read shorter than the HTTP/2 preface, from 3
    /// bytes, is recognised as its start).
    fresh: bool,
    max_head: usize,
    /// The connection carries HTTP/2.
    h2: Option<Box<http2::H2Conn>>,
}

impl Default for Stitcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Stitcher {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Stitcher {
            limits: Limits {
                max_connections: limits.max_connections.max(1),
                max_pending: limits.max_pending.max(1),
                max_head_bytes: limits.max_head_bytes,
            },
            conns: BTreeMap::new(),
            lru: ConnLru::default(),
            stats: StitchStats::default(),
        }
    }

    pub fn stats(&self) -> StitchStats {
        self.stats
    }

    /// Connections tracked now.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one event (in stream order); appends completed transactions to `out`.
    /// `realtime_offset_ns` is the offset of the event's batch.
    pub fn push(&mut self, event: &Event, realtime_offset_ns: i64, out: &mut Vec<HttpTransaction>) {
        let mono_ns = event.mono_ns;
        let Some(kind) = &event.kind else { return };
        match kind {
            EventKind::ConnectionOpened(opened) => {
                let key = (opened.pid, opened.conn_id);
                // A known key opening again: the old connection is over.
                self.close(key, mono_ns, realtime_offset_ns, out);
                let conn = self.insert(key);
                (conn.side, conn.local, conn.peer) = opened_ends(opened);
                if opened.preexisting {
                    conn.preexisting = true;
                    conn.requests.resync();
                    conn.responses.resync();
                }
            }
            EventKind::ConnectionClosed(closed) => {
                self.close(
                    (closed.pid, closed.conn_id),
                    mono_ns,
                    realtime_offset_ns,
                    out,
                );
            }
            EventKind::ProcessExited(exited) => {
                for key in keys_of_pid(&self.conns, exited.pid) {
                    self.close(key, mono_ns, realtime_offset_ns, out);
                }
            }
            EventKind::Data(data) => {
                let max_pending = self.limits.max_pending;
                let key = (data.pid, data.conn_id);
                if self.conns.contains_key(&key) {
                    self.touch(key);
                } else {
                    self.insert(key);
                }
                let mut sink = Sink {
                    out,
                    stats: &mut self.stats,
                    realtime_offset_ns,
                };
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.data(mono_ns, data, max_pending, &mut sink);
                }
            }
            EventKind::Loss(_) => {
                let mut sink = Sink {
                    out,
                    stats: &mut self.stats,
                    realtime_offset_ns,
                };
                for conn in self.conns.values_mut() {
                    conn.lose(mono_ns, &mut sink);
                }
            }
            EventKind::ProcessStarted(_) => {}
        }
    }

    /// Stops tracking `key`, reporting what it had in progress as closed.
    fn close(
        &mut self,
        key: ConnKey,
        mono_ns: u64,
        realtime_offset_ns: i64,
        out: &mut Vec<HttpTransaction>,
    ) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.lru.forget(conn.gen);
        let mut sink = Sink {
            out,
            stats: &mut self.stats,
            realtime_offset_ns,
        };
        conn.close(mono_ns, &mut sink);
    }

    fn touch(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.lru.touch(&mut conn.gen, key);
        }
    }

    /// Inserts a fresh connection, evicting the least recently active if full.
    fn insert(&mut self, key: ConnKey) -> &mut Conn {
        self.stats.evicted_connections +=
            self.lru.evict(&mut self.conns, self.limits.max_connections);
        let gen = self.lru.stamp(key);
        let conn = Conn::new(key, gen, self.limits.max_head_bytes);
        match self.conns.entry(key) {
            Entry::Vacant(entry) => entry.insert(conn),
            Entry::Occupied(entry) => {
                let slot = entry.into_mut();
                *slot = conn;
                slot
            }
        }
    }

    /// Largest header-block buffer and pending queue over all connections (for
    /// checking the bounds).
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize) {
        self.conns.values().fold((0, 0), |(head, pending), c| {
            (
                head.max(c.requests.buffered()).max(c.responses.buffered()),
                pending.max(c.pending.len()),
            )
        })
    }
}

/// Where transactions go, with the counters.
struct Sink<'a> {
    out: &'a mut Vec<HttpTransaction>,
    stats: &'a mut StitchStats,
    realtime_offset_ns: i64,
}

/// What a `ConnectionOpened` tells of its connection: the traced process's end
/// (none when the loader did not know it), the local and the peer address.
fn opened_ends(
    opened: &v1::ConnectionOpened,
) -> (Option<Side>, Option<SocketAddr>, Option<SocketAddr>) {
    let side = match opened.role() {
        Role::Server => Some(Side::Server),
        Role::Client => Some(Side::Client),
        Role::Unspecified => None,
    };
    let local = opened.local.as_ref().and_then(socket_addr);
    let peer = opened.peer.as_ref().and_then(socket_addr);
    (side, local, peer)
}

/// The keys of process `pid`'s connections in `conns`.
fn keys_of_pid<V>(conns: &BTreeMap<ConnKey, V>, pid: u32) -> Vec<ConnKey> {
    conns
        .range((pid, 0)..=(pid, u64::MAX))
        .map(|(k, _)| *k)
        .collect()
}

fn socket_addr(address: &v1::SocketAddress) -> Option<SocketAddr> {
    let ip = match address.ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(address.ip.as_slice()).ok()?,
        )),
        16 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(address.ip.as_slice()).ok()?,
        )),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::try_from(address.port).ok()?))
}

fn is_method(request: &HttpRequest, method: &str) -> bool {
    request.method.eq_ignore_ascii_case(method)
}

impl Conn {
    fn new((pid, conn_id): ConnKey, gen: u64, max_head: usize) -> Self {
        Conn {
            pid,
            conn_id,
            side: None,
            local: None,
            peer: None,
            requests: Parser::new(MessageKind::Request, max_head),
            responses: Parser::new(MessageKind::Response, max_head),
            pending: VecDeque::new(),
            untracked: 0,
            discard_response: false,
            upgrade_after_response: false,
            opaque: false,
            last_response_ns: 0,
            gen,
            preexisting: false,
            http1_seen: false,
            fresh: true,
            max_head,
            h2: None,
        }
    }

    fn meta(&self) -> http2::Meta {
        http2::Meta {
            pid: self.pid,
            conn_id: self.conn_id,
            side: self.side,
            local: self.local,
            peer: self.peer,
        }
    }

    /// Feeds `data` to the HTTP/2 state when the connection is (or turns out to be)
    /// HTTP/2; returns false when it is not.
    fn http2_data(
        &mut self,
        mono_ns: u64,
        data: &v1::Data,
        total: u64,
        sink: &mut Sink<'_>,
    ) -> bool {
        if self.h2.is_none() && self.pending.is_empty() {
            // `PRI` is no HTTP/1.x method: 3 bytes tell (1 or 2 could be `POST`).
            let short_start = self.fresh
                && data.payload.len() >= 3
                && h2_frames::PREFACE.starts_with(&data.payload);
            let preface = short_start || h2_frames::starts_with_preface(&data.payload);
            let midstream = !preface
                && (self.side.is_none() || self.preexisting)
                && !self.http1_seen
                && h2_frames::looks_like_frames(&data.payload, total);
            if preface || midstream {
                sink.stats.http2_connections += 1;
                if midstream {
                    sink.stats.http2_midstream_connections += 1;
                }
                self.opaque = false;
                self.h2 = Some(Box::new(http2::H2Conn::new(
                    self.max_head,
                    self.side,
                    preface,
                )));
            }
        }
        let meta = self.meta();
        match self.h2.as_mut() {
            Some(h2) => {
                h2.data(&meta, mono_ns, data, sink);
                true
            }
            None => false,
        }
    }

    fn data(&mut self, mono_ns: u64, data: &v1::Data, max_pending: usize, sink: &mut Sink<'_>) {
        let captured = u64::try_from(data.payload.len()).unwrap_or(u64::MAX);
        let total = data.total_len.max(captured);
        let direction = data.direction();
        let handled = self.http2_data(mono_ns, data, total, sink);
        self.fresh = false;
        if handled {
            return;
        }
        if self.opaque {
            return;
        }
        let side = match (self.side, direction) {
            (_, Direction::Unspecified) => None,
            (Some(side), _) => Some(side),
            (None, _) => {
                let inferred = match direction {
                    Direction::Egress => Side::Client,
                    _ => Side::Server,
                };
                let side = http1::looks_like_start(MessageKind::Request, &data.payload)
                    .then_some(inferred);
                if side.is_some() {
                    // The request parser (never fed so far) starts on this payload;
                    // the response direction waits for a status line.
                    self.side = side;
                    self.responses.resync();
                }
                side
            }
        };
        let Some(side) = side else {
            sink.stats.non_http_bytes += total;
            return;
        };
        let origin = Origin {
            mono_ns,
            tid: data.tid,
        };
        let mut chunk = Chunk::new(&data.payload, total, origin);
        let is_request = matches!(
            (side, direction),
            (Side::Server, Direction::Ingress) | (Side::Client, Direction::Egress)
        );
        if is_request {
            while let Some(event) = self.requests.next(&mut chunk) {
                self.on_request_event(event, max_pending, sink);
            }
        } else {
            self.last_response_ns = mono_ns;
            while let Some(event) = self.responses.next(&mut chunk) {
                self.on_response_event(event, mono_ns, sink);
                if self.opaque {
                    break;
                }
            }
        }
        sink.stats.non_http_bytes += chunk.skipped();
        sink.stats.lost_sync += chunk.lost_sync();
    }

    fn on_request_event(&mut self, event: Http1Event, max_pending: usize, sink: &mut Sink<'_>) {
        match event {
            Http1Event::Request {
                request,
                origin,
                truncated,
            } => {
                self.http1_seen = true;
                if self.untracked > 0 || self.pending.len() >= max_pending {
                    self.untracked += 1;
                    sink.stats.untracked_requests += 1;
                } else {
                    self.pending.push_back(Pending {
                        request,
                        origin,
                        request_done: truncated,
                        truncated,
                        response: None,
                    });
                }
            }
            Http1Event::End { body_size } => {
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                }
            }
            Http1Event::BodyLost { body_size } => {
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                    current.truncated = true;
                }
            }
            Http1Event::Error(error) => {
                sink.stats.parse_errors += 1;
                if error == http1::ParseError::HeadTooLong {
                    sink.stats.oversized_heads += 1;
                }
                let body_size = self.requests.body_size();
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                    current.truncated = true;
                }
            }
            // A request parser reports no responses.
            Http1Event::Response { .. } => {}
        }
    }

    /// The request whose bytes are being received, if it is tracked: requests
    /// arrive one after the other, so it can only be the newest one.
    fn request_in_progress(&mut self) -> Option<&mut Pending> {
        if self.untracked > 0 {
            return None;
        }
        self.pending.back_mut().filter(|p| !p.request_done)
    }

    fn on_response_event(&mut self, event: Http1Event, mono_ns: u64, sink: &mut Sink<'_>) {
        match event {
            Http1Event::Response {
                response,
                truncated,
                ..
            } => {
                let status = response.status;
                if (100..200).contains(&status) && status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final one follows.
                    return;
                }
                self.discard_response = false;
                self.upgrade_after_response = false;
                let Some(front) = self.pending.front_mut() else {
                    if self.untracked > 0 {
                        self.untracked -= 1;
                    } else {
                        sink.stats.unpaired_responses += 1;
                    }
                    self.discard_response = true;
                    return;
                };
                let connect = is_method(&front.request, "CONNECT") && (200..300).contains(&status);
                if is_method(&front.request, "HEAD") || connect {
                    self.responses.no_body();
                }
                self.upgrade_after_response = status == 101 || connect;
                front.response = Some(response);
                if truncated {
                    self.finish(Completion::Truncated, 0, mono_ns, sink);
                }
            }
            Http1Event::End { body_size } => {
                self.finish(Completion::Complete, body_size, mono_ns, sink);
                if self.upgrade_after_response {
                    self.upgrade_after_response = false;
                    self.opaque = true;
                    sink.stats.upgraded_connections += 1;
                }
            }
            Http1Event::BodyLost { body_size } => {
                self.finish(Completion::Truncated, body_size, mono_ns, sink);
            }
            Http1Event::Error(error) => {
                sink.stats.parse_errors += 1;
                if error == http1::ParseError::HeadTooLong {
                    sink.stats.oversized_heads += 1;
                }
                let body_size = self.responses.body_size();
                self.finish(Completion::Truncated, body_size, mono_ns, sink);
            }
            // A response parser reports no requests.
            Http1Event::Request { .. } => {}
        }
    }

    /// Ends the response in progress: reports it with its request, unless it is
    /// skipped or none is in progress.
    fn finish(&mut self, completion: Completion, body_size: u64, end_ns: u64, sink: &mut Sink<'_>) {
        if std::mem::take(&mut self.discard_response) {
            return;
        }
        if self.pending.front().is_some_and(|p| p.response.is_some()) {
            if let Some(mut pending) = self.pending.pop_front() {
                if let Some(response) = pending.response.as_mut() {
                    response.body_size = body_size;
                }
                self.report(pending, completion, end_ns, sink);
            }
        }
    }

    fn report(
        &self,
        mut pending: Pending,
        completion: Completion,
        end_ns: u64,
        sink: &mut Sink<'_>,
    ) {
        if !pending.request_done {
            // The response ended before the request (e.g. a 413 or a 417): its body
            // as far as it was received.
            pending.request.body_size = self.requests.body_size();
        }
        let completion = match completion {
            Completion::Complete if pending.truncated => Completion::Truncated,
            other => other,
        };
        sink.stats.count(completion);
        sink.out.push(HttpTransaction {
            pid: self.pid,
            tid: pending.origin.tid,
            conn_id: self.conn_id,
            side: self.side.unwrap_or(Side::Server),
            local: self.local,
            peer: self.peer,
            request: pending.request,
            response: pending.response,
            start_mono_ns: pending.origin.mono_ns,
            end_mono_ns: end_ns.max(pending.origin.mono_ns),
            realtime_offset_ns: sink.realtime_offset_ns,
            completion,
        });
    }

    /// The connection closed (or its process exited) at `mono_ns`.
    fn close(mut self, mono_ns: u64, sink: &mut Sink<'_>) {
        let meta = self.meta();
        if let Some(h2) = self.h2.as_mut() {
            h2.flush(&meta, Completion::ConnectionClosed, mono_ns, sink);
        }
        // The request parser keeps its state: a request cut by the close is reported
        // with the body bytes received so far.
        match self.responses.close() {
            CloseOutcome::Ended { body_size } => {
                let end = self.last_response_ns;
                self.finish(Completion::Complete, body_size, end, sink);
            }
            CloseOutcome::Cut { body_size, .. } => {
                self.finish(Completion::ConnectionClosed, body_size, mono_ns, sink);
            }
            CloseOutcome::Between => {}
        }
        self.flush(Completion::ConnectionClosed, mono_ns, sink);
    }

    /// Reports every unanswered request with `completion`.
    fn flush(&mut self, completion: Completion, mono_ns: u64, sink: &mut Sink<'_>) {
        self.discard_response = false;
        self.upgrade_after_response = false;
        self.untracked = 0;
        while let Some(pending) = self.pending.pop_front() {
            self.report(pending, completion, mono_ns, sink);
        }
    }

    /// Events were lost: any byte of this connection may be missing.
    fn lose(&mut self, mono_ns: u64, sink: &mut Sink<'_>) {
        let meta = self.meta();
        if let Some(h2) = self.h2.as_mut() {
            h2.lose(&meta, mono_ns, sink);
        }
        if let Some(front) = self.pending.front_mut() {
            if let Some(response) = front.response.as_mut() {
                response.body_size = self.responses.body_size();
            }
        }
        self.flush(Completion::Truncated, mono_ns, sink);
        self.requests.resync();
        self.responses.resync();
    }
}
