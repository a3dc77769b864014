//! Stitching: from the loader's raw events to [`Transaction`]s of every protocol.
//!
//! A [`Stitcher`] is fed every event in stream order ([`Stitcher::push`]) and
//! returns the transactions that completed. It keeps ONE table of connections
//! (`table`: addresses, role, pid, bounded, least recently active evicted first),
//! looked up once per event. Each connection gets a protocol session
//! ([`Session`]: HTTP/1.x, HTTP/2, PostgreSQL, MySQL, Redis) chosen by the
//! detector (`detect`): the protocols of [`crate::protocols::REGISTRY`], tried in
//! order on a payload of a connection whose protocol is not decided yet, and again
//! whenever its session is [`Session::redetectable`] (HTTP/1.x between messages or
//! after it lost its place). A connection whose role the loader gave and whose
//! first payload no protocol recognised is parsed as HTTP/1.x from that byte (the
//! fallback; see `stitch/http1.rs`).
//!
//! # Roles
//!
//! `ConnectionOpened.role` says which direction carries the requests: a server
//! (`Side::Server`) receives them (INGRESS) and sends the answers (EGRESS); a client
//! (`Side::Client`) sends them (EGRESS) and receives the answers (INGRESS). A
//! connection with no `ConnectionOpened` (the processor started after it opened,
//! the event was lost, or the role is unspecified) has an unknown role until a
//! detector infers it from the direction of a payload that starts a request (or, for
//! MySQL, a server greeting). Its bytes are skipped and counted until then.
//!
//! # Events
//!
//! - `ConnectionOpened`: a connection of that key still tracked is closed first
//!   (the key was reused), then tracked with the loader's role and addresses.
//! - `Data`: fed to the connection's session (after detection).
//! - `ConnectionClosed`, and `ProcessExited` for each of the process's
//!   connections: the session reports what it still had ([`Session::close`]).
//! - `Loss`: any connection may have missed bytes: every session reports what it
//!   had waiting as `Truncated` and resynchronises ([`Session::lose`]).
//!
//! `realtime_offset_ns` of a transaction is the offset of the batch whose event
//! completed it. Each session's module documents its timing and completion rules.
//!
//! # Bounds and counters
//!
//! At most `max_connections` connections (the least recently active is dropped, with
//! what it had waiting, and counted); each session bounds its own state
//! (`max_pending` unanswered requests, `max_head_bytes` of a header block, HTTP/2
//! streams, prepared statements, ...). [`Stitcher::stats`] has the counters.

mod db;
mod http1;
mod http2;
mod ids;
pub mod link;
mod link_rules;
mod session;
mod table;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_db;
#[cfg(test)]
mod tests_http2;
#[cfg(test)]
mod tests_link;
#[cfg(test)]
mod tests_link_go;
#[cfg(test)]
mod tests_session;
#[cfg(test)]
mod tests_toy;
#[cfg(test)]
mod toykv;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tandem_proto::v1::{self, Direction, Role};
use tandem_proto::{Event, EventKind};

use crate::model::{Completion, Side, Transaction};
use crate::protocols::{http1 as http1_parser, Origin, Segment, Task, REGISTRY};

pub use db::{DbConn, MySqlProtocol, PostgresProtocol, RedisProtocol};
pub use http1::{Http1Protocol, Http1Session};
pub use http2::{Http2Protocol, Http2Session, KEPT_HEADERS, MAX_STREAMS};
use link::{LinkStats, Linker};
pub use session::{
    is_request, side_sending_requests, ConnMeta, Ctx, Detected, Footprint, Probe, Protocol,
    Session, Timing,
};
use table::{Conn, ConnKey, ConnTable};
pub use table::{FastMap, KeyHasher};

/// Default bound of tracked connections.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Default bound of unanswered HTTP/1.x requests per connection.
pub const MAX_PENDING: usize = 64;
/// Request-direction payloads looked at before the database detectors give a
/// connection up as not a database's.
pub const MAX_UNDECIDED: u32 = 4;

/// Memory bounds of a [`Stitcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_head_bytes: usize,
}

impl Default for Limits {
    /// [`MAX_CONNECTIONS`], [`MAX_PENDING`], [`http1_parser::MAX_HEAD_BYTES`].
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_pending: MAX_PENDING,
            max_head_bytes: http1_parser::MAX_HEAD_BYTES,
        }
    }
}

/// Counters since the stitcher was made, every protocol's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StitchStats {
    /// Transactions returned, whatever their completion.
    pub transactions: u64,
    /// Of which `Completion::Truncated`.
    pub truncated: u64,
    /// Of which `Completion::ConnectionClosed`.
    pub connection_closed: u64,
    /// Times bytes did not parse (a start line, header line, framing, a message),
    /// or a header block was over its bound; the direction then resynchronised.
    pub parse_errors: u64,
    /// Of `parse_errors`, HTTP header blocks over `max_head_bytes`.
    pub oversized_heads: u64,
    /// Bytes skipped, captured or not: of no known protocol, of a connection of
    /// unknown role, or passed over while waiting for a message start.
    pub skipped_bytes: u64,
    /// Times uncaptured bytes hid a message start, header-block end or framing.
    pub lost_sync: u64,
    /// Answers with no request to pair with (their request was not seen).
    pub unpaired_responses: u64,
    /// Requests over a session's pending bound (not reported).
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
    /// PostgreSQL startup packets seen (StartupMessage), not reported as spans.
    pub pg_startups: u64,
    /// PostgreSQL SSLRequest / GSSENCRequest packets seen.
    pub pg_ssl_requests: u64,
    /// PostgreSQL CancelRequest packets seen.
    pub pg_cancel_requests: u64,
    /// Connections that switched to TLS/GSS encryption (no longer readable).
    pub encrypted_connections: u64,
    /// Prepared statements forgotten to stay within the per-connection bound.
    pub evicted_statements: u64,
}

impl StitchStats {
    /// Counts one transaction reported with `completion`.
    pub fn count(&mut self, completion: Completion) {
        self.transactions += 1;
        match completion {
            Completion::Complete => {}
            Completion::Truncated => self.truncated += 1,
            Completion::ConnectionClosed => self.connection_closed += 1,
        }
    }
}

/// Per-connection reassembly of every protocol; see the module documentation.
#[derive(Debug)]
pub struct Stitcher {
    limits: Limits,
    protocols: &'static [&'static dyn Protocol],
    table: ConnTable,
    stats: StitchStats,
    evicted: Vec<Conn>,
    linker: Linker,
    /// The position of the event being fed (see `crate::resume`).
    position: u64,
    /// How many connections are pending from each position (`Conn::pending_from`).
    pending: BTreeMap<u64, u32>,
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
        Self::with_protocols(limits, REGISTRY)
    }

    /// A stitcher detecting `protocols` (in this order) instead of the registry's.
    pub fn with_protocols(limits: Limits, protocols: &'static [&'static dyn Protocol]) -> Self {
        let limits = Limits {
            max_connections: limits.max_connections.max(1),
            max_pending: limits.max_pending.max(1),
            max_head_bytes: limits.max_head_bytes,
        };
        Stitcher {
            limits,
            protocols,
            table: ConnTable::new(limits.max_connections),
            stats: StitchStats::default(),
            evicted: Vec::new(),
            linker: Linker::default(),
            position: 0,
            pending: BTreeMap::new(),
        }
    }

    pub fn stats(&self) -> StitchStats {
        self.stats
    }

    /// What linking did (see `stitch/link.rs`).
    pub fn link_stats(&self) -> LinkStats {
        self.linker.stats()
    }

    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Connections tracked now per session protocol (`undecided` for those without
    /// one), for the footprint report.
    pub fn connections_by_protocol(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for c in self.table.iter() {
            let name = c.session.as_ref().map_or("undecided", |s| s.name());
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_unstable();
        counts
    }

    /// The largest of each footprint field over all sessions (for the bounds).
    pub fn footprint(&self) -> Footprint {
        self.table
            .iter()
            .filter_map(|c| c.session.as_ref())
            .fold(Footprint::default(), |acc, s| acc.max(s.footprint()))
    }

    /// The events fed next are at position `seq` of the subscription of `epoch`
    /// (see `crate::resume`): marks where connections become pending and seeds the
    /// span ids.
    pub fn set_position(&mut self, epoch: u64, seq: u64) {
        self.position = seq;
        self.linker.at(epoch, seq);
    }

    /// Span ids derive from `key` and the position (see `crate::resume`).
    pub fn set_id_key(&mut self, key: u64) {
        self.linker.set_key(key);
    }

    /// The first position of the oldest connection with unfinished bytes, and how
    /// many connections have been unfinished since `floor` or earlier.
    pub fn pending(&self, floor: u64) -> (Option<u64>, u64) {
        let first = self.pending.keys().next().copied();
        let stale = self
            .pending
            .range(..=floor)
            .map(|(_, n)| u64::from(*n))
            .sum();
        (first, stale)
    }

    fn unpend(pending: &mut BTreeMap<u64, u32>, conn: &mut Conn) {
        if let Some(p) = conn.pending_from.take() {
            if let Some(n) = pending.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(&p);
                }
            }
        }
    }

    /// Feeds one event (in stream order); appends completed transactions to `out`.
    /// `realtime_offset_ns` is the offset of the event's batch.
    pub fn push(&mut self, event: &Event, realtime_offset_ns: i64, out: &mut Vec<Transaction>) {
        let mono_ns = event.mono_ns;
        let Some(kind) = &event.kind else { return };
        match kind {
            EventKind::Data(data) => self.data(mono_ns, data, realtime_offset_ns, out),
            EventKind::ConnectionOpened(opened) => {
                let key = (opened.pid, opened.conn_id);
                // A known key opening again: the old connection is over.
                self.close(key, mono_ns, realtime_offset_ns, out);
                let (side, local, peer) = opened_ends(opened);
                if let Some(conn) = self.table.get_or_insert(key, &mut self.evicted) {
                    conn.meta.side = side;
                    conn.meta.local = local;
                    conn.meta.peer = peer;
                    conn.meta.preexisting = opened.preexisting;
                }
                self.drop_evicted();
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
                for key in self.table.keys_of_pid(exited.pid) {
                    self.close(key, mono_ns, realtime_offset_ns, out);
                }
                self.linker.on_exit(exited.pid);
            }
            EventKind::Loss(_) => {
                for conn in self.table.iter_mut() {
                    let Conn { meta, session, .. } = conn;
                    if let Some(s) = session.as_mut() {
                        let mut ctx = Ctx {
                            meta,
                            out,
                            stats: &mut self.stats,
                            linker: &mut self.linker,
                            realtime_offset_ns,
                        };
                        s.lose(mono_ns, &mut ctx);
                        let f = s.footprint();
                        if f.buffered == 0 && f.pending == 0 {
                            Self::unpend(&mut self.pending, conn);
                        }
                    }
                }
            }
            EventKind::ProcessStarted(p) => self.linker.on_process(p),
        }
    }

    fn data(&mut self, mono_ns: u64, data: &v1::Data, offset: i64, out: &mut Vec<Transaction>) {
        let key = (data.pid, data.conn_id);
        let seg = Segment::new(
            &data.payload,
            data.total_len,
            Origin {
                mono_ns,
                task: Task {
                    tid: data.tid,
                    goroutine: data.goroutine,
                    goroutine_parent: data.goroutine_parent,
                },
            },
        );
        let direction = data.direction();
        let limits = self.limits;
        let protocols = self.protocols;
        let Some(conn) = self.table.get_or_insert(key, &mut self.evicted) else {
            return;
        };
        let fresh = std::mem::replace(&mut conn.fresh, false);
        if direction == Direction::Unspecified || conn.opaque {
            self.stats.skipped_bytes += seg.total();
            self.drop_evicted();
            return;
        }
        if conn.session.as_ref().is_none_or(|s| s.redetectable()) {
            let probe = Probe {
                payload: seg.data,
                total: seg.total(),
                direction,
                side: conn.meta.side,
                fresh,
                preexisting: conn.meta.preexisting,
                requests_seen: conn.meta.requests_seen,
                attempts: conn.attempts,
                current: conn.session.as_ref().map(|s| s.name()),
                limits: &limits,
            };
            match protocols.iter().find_map(|p| p.detect(&probe)) {
                Some(found) => {
                    if conn.meta.side.is_none() {
                        conn.meta.side = found.side;
                    }
                    conn.session = Some(found.session);
                }
                None => {
                    if probe.is_request().unwrap_or(true) {
                        conn.attempts = conn.attempts.saturating_add(1);
                    }
                    if conn.session.is_none() {
                        conn.session = protocols
                            .iter()
                            .find_map(|p| p.fallback(&conn.meta, &limits));
                    }
                }
            }
        }
        let Conn {
            meta,
            session,
            opaque,
            pending_from,
            ..
        } = conn;
        match session.as_mut() {
            Some(s) => {
                let mut ctx = Ctx {
                    meta,
                    out,
                    stats: &mut self.stats,
                    linker: &mut self.linker,
                    realtime_offset_ns: offset,
                };
                if pending_from.is_none() && s.resumable() {
                    *pending_from = Some(self.position);
                    *self.pending.entry(self.position).or_default() += 1;
                }
                s.feed(&seg, direction, &mut ctx);
                if s.finished() {
                    *session = None;
                    *opaque = true;
                }
            }
            None => self.stats.skipped_bytes += seg.total(),
        }
        let idle = conn.session.as_ref().is_none_or(|s| {
            let f = s.footprint();
            f.buffered == 0 && f.pending == 0
        });
        if idle {
            Self::unpend(&mut self.pending, conn);
        }
        self.drop_evicted();
    }

    /// Counts (and drops, with what they had waiting) the connections evicted to
    /// make room.
    /// Their requests in flight are ended in the linker (what they had waiting is
    /// not reported).
    fn drop_evicted(&mut self) {
        if self.evicted.is_empty() {
            return;
        }
        self.stats.evicted_connections += self.evicted.len() as u64;
        let (mut out, mut stats) = (Vec::new(), StitchStats::default());
        for mut conn in self.evicted.drain(..) {
            Self::unpend(&mut self.pending, &mut conn);
            if let Some(s) = conn.session.as_mut() {
                let mut ctx = Ctx {
                    meta: &mut conn.meta,
                    out: &mut out,
                    stats: &mut stats,
                    linker: &mut self.linker,
                    realtime_offset_ns: 0,
                };
                s.close(0, &mut ctx);
            }
        }
    }

    /// Stops tracking `key`, reporting what it had in progress as closed.
    fn close(&mut self, key: ConnKey, mono_ns: u64, offset: i64, out: &mut Vec<Transaction>) {
        let Some(mut conn) = self.table.remove(key) else {
            return;
        };
        Self::unpend(&mut self.pending, &mut conn);
        if let Some(s) = conn.session.as_mut() {
            let mut ctx = Ctx {
                meta: &mut conn.meta,
                out,
                stats: &mut self.stats,
                linker: &mut self.linker,
                realtime_offset_ns: offset,
            };
            s.close(mono_ns, &mut ctx);
        }
    }
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

/// An address of the API as a socket address (`None` when malformed).
pub fn socket_addr(address: &v1::SocketAddress) -> Option<SocketAddr> {
    let ip = match address.ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&address.ip[..]).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&address.ip[..]).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::try_from(address.port).ok()?))
}
