//! Stitching for databases: from the loader's raw events to [`DbTransaction`]s of
//! PostgreSQL and Redis connections.
//!
//! A [`DbStitcher`] is fed the same events as the HTTP [`super::Stitcher`], in stream
//! order, and keeps its own state per connection `(pid, conn_id)`. A connection's
//! protocol is decided by the first request-direction payload that starts like one
//! (a PostgreSQL startup packet or `Q`/`P` message, a Redis array of bulk strings;
//! [`crate::protocols::postgres::looks_like_start`],
//! [`crate::protocols::redis::looks_like_start`]); until then its bytes are skipped
//! and counted, and after a few undecided request payloads ([`MAX_UNDECIDED`]) the
//! connection is left alone (its bytes are counted, not parsed).
//!
//! The request direction is the client's sending direction: EGRESS when the
//! instrumented process is the client (CLIENT spans, e.g. `psql`, `redis-cli`),
//! INGRESS when it is the server (SERVER spans, e.g. `postgres` itself). A
//! connection without a known role takes the direction of that first payload as
//! the request direction, like HTTP.
//!
//! Memory: at most [`MAX_DB_CONNECTIONS`] connections (the least recently active is
//! dropped and counted), and each session's own bounds (pending operations,
//! prepared statements, kept bytes).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tandem_proto::v1::{self, Direction, Role};
use tandem_proto::{Event, EventKind};

use crate::model::{DbSystem, DbTransaction, Side};
use crate::protocols::db::{DbStats, Finished, Origin, Segment};
use crate::protocols::postgres::{self, PgSession};
use crate::protocols::redis::{self, RedisSession};

use super::socket_addr;

/// Default bound of tracked connections.
pub const MAX_DB_CONNECTIONS: usize = 65_536;
/// Request-direction payloads looked at before a connection is given up as not a
/// database's.
pub const MAX_UNDECIDED: u32 = 4;

type ConnKey = (u32, u64);

#[derive(Debug)]
enum Proto {
    Unknown { seen: u32 },
    Other,
    Postgres(Box<PgSession>),
    Redis(Box<RedisSession>),
}

#[derive(Debug)]
struct Conn {
    side: Option<Side>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Seen from its start (ConnectionOpened, not preexisting).
    fresh: bool,
    proto: Proto,
    gen: u64,
}

/// Per-connection database protocol reassembly; see the module documentation.
#[derive(Debug)]
pub struct DbStitcher {
    max_connections: usize,
    conns: BTreeMap<ConnKey, Conn>,
    lru: BTreeMap<u64, ConnKey>,
    clock: u64,
    stats: DbStats,
    scratch: Vec<Finished>,
}

impl Default for DbStitcher {
    fn default() -> Self {
        Self::new()
    }
}

impl DbStitcher {
    pub fn new() -> Self {
        Self::with_max_connections(MAX_DB_CONNECTIONS)
    }

    pub fn with_max_connections(max_connections: usize) -> Self {
        DbStitcher {
            max_connections: max_connections.max(1),
            conns: BTreeMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            stats: DbStats::default(),
            scratch: Vec::new(),
        }
    }

    pub fn stats(&self) -> DbStats {
        self.stats
    }

    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one event (in stream order); appends completed operations to `out`.
    pub fn push(&mut self, event: &Event, realtime_offset_ns: i64, out: &mut Vec<DbTransaction>) {
        let mono_ns = event.mono_ns;
        let Some(kind) = &event.kind else { return };
        match kind {
            EventKind::ConnectionOpened(opened) => {
                let key = (opened.pid, opened.conn_id);
                self.close(key, mono_ns, realtime_offset_ns, out);
                let conn = self.insert(key);
                conn.side = match opened.role() {
                    Role::Server => Some(Side::Server),
                    Role::Client => Some(Side::Client),
                    Role::Unspecified => None,
                };
                conn.local = opened.local.as_ref().and_then(socket_addr);
                conn.peer = opened.peer.as_ref().and_then(socket_addr);
                conn.fresh = !opened.preexisting;
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
                let keys: Vec<ConnKey> = self
                    .conns
                    .range((exited.pid, 0)..=(exited.pid, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.close(key, mono_ns, realtime_offset_ns, out);
                }
            }
            EventKind::Data(data) => self.data(mono_ns, data, realtime_offset_ns, out),
            EventKind::Loss(_) => {
                let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
                for key in keys {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        match &mut conn.proto {
                            Proto::Postgres(s) => {
                                s.lose(mono_ns, &mut self.stats, &mut self.scratch)
                            }
                            Proto::Redis(s) => s.lose(mono_ns, &mut self.stats, &mut self.scratch),
                            Proto::Unknown { .. } | Proto::Other => {}
                        }
                    }
                    self.emit(key, realtime_offset_ns, out);
                }
            }
            EventKind::ProcessStarted(_) => {}
        }
    }

    fn data(&mut self, mono_ns: u64, data: &v1::Data, offset: i64, out: &mut Vec<DbTransaction>) {
        let key = (data.pid, data.conn_id);
        if self.conns.contains_key(&key) {
            self.touch(key);
        } else {
            self.insert(key);
        }
        let direction = data.direction();
        let seg = Segment::new(
            &data.payload,
            data.total_len,
            Origin {
                mono_ns,
                tid: data.tid,
            },
        );
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if direction == Direction::Unspecified {
            self.stats.skipped_bytes += seg.total();
            return;
        }
        let is_request = |side: Side| {
            matches!(
                (side, direction),
                (Side::Server, Direction::Ingress) | (Side::Client, Direction::Egress)
            )
        };
        if let Proto::Unknown { seen } = &mut conn.proto {
            let could_be_request = conn.side.is_none_or(is_request);
            if !could_be_request {
                self.stats.skipped_bytes += seg.total();
                return;
            }
            let total = seg.total();
            let proto = if postgres::looks_like_start(seg.data, total) {
                // A startup packet says the connection is seen from its start.
                let from_start = seg.data.get(4..8).is_some_and(|c| c != [0, 0, 0, 0])
                    && seg.data.first() == Some(&0);
                Some(Proto::Postgres(Box::new(PgSession::new(from_start))))
            } else if redis::looks_like_start(seg.data) {
                Some(Proto::Redis(Box::new(RedisSession::new(true))))
            } else {
                None
            };
            match proto {
                Some(p) => {
                    conn.proto = p;
                    if conn.side.is_none() {
                        conn.side = Some(match direction {
                            Direction::Egress => Side::Client,
                            _ => Side::Server,
                        });
                    }
                }
                None => {
                    *seen += 1;
                    if *seen >= MAX_UNDECIDED {
                        conn.proto = Proto::Other;
                    }
                    self.stats.skipped_bytes += total;
                    return;
                }
            }
        }
        let request = conn.side.is_some_and(is_request);
        let stats = &mut self.stats;
        let scratch = &mut self.scratch;
        match &mut conn.proto {
            Proto::Postgres(s) => {
                if request {
                    s.request(&seg, stats, scratch);
                } else {
                    s.response(&seg, stats, scratch);
                }
                if s.encrypted() {
                    conn.proto = Proto::Other;
                }
            }
            Proto::Redis(s) => {
                if request {
                    s.request(&seg, stats, scratch);
                } else {
                    s.response(&seg, stats, scratch);
                }
            }
            Proto::Unknown { .. } | Proto::Other => stats.skipped_bytes += seg.total(),
        }
        self.emit(key, offset, out);
    }

    /// Turns what the sessions finished into transactions of connection `key`.
    fn emit(&mut self, key: ConnKey, offset: i64, out: &mut Vec<DbTransaction>) {
        if self.scratch.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get(&key) else {
            self.scratch.clear();
            return;
        };
        let system = match conn.proto {
            Proto::Redis(_) => DbSystem::Redis,
            _ => DbSystem::Postgresql,
        };
        emit_into(key, conn, system, &mut self.scratch, offset, out);
    }

    fn close(&mut self, key: ConnKey, mono_ns: u64, offset: i64, out: &mut Vec<DbTransaction>) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.lru.remove(&conn.gen);
        let system = match &mut conn.proto {
            Proto::Postgres(s) => {
                s.close(mono_ns, &mut self.stats, &mut self.scratch);
                DbSystem::Postgresql
            }
            Proto::Redis(s) => {
                s.close(mono_ns, &mut self.stats, &mut self.scratch);
                DbSystem::Redis
            }
            Proto::Unknown { .. } | Proto::Other => return,
        };
        emit_into(key, &conn, system, &mut self.scratch, offset, out);
    }

    fn touch(&mut self, key: ConnKey) {
        self.clock += 1;
        if let Some(conn) = self.conns.get_mut(&key) {
            self.lru.remove(&conn.gen);
            conn.gen = self.clock;
            self.lru.insert(self.clock, key);
        }
    }

    fn insert(&mut self, key: ConnKey) -> &mut Conn {
        while self.conns.len() >= self.max_connections {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if self.conns.remove(&oldest).is_some() {
                self.stats.evicted_connections += 1;
            }
        }
        self.clock += 1;
        self.lru.insert(self.clock, key);
        let conn = Conn {
            side: None,
            local: None,
            peer: None,
            fresh: false,
            proto: Proto::Unknown { seen: 0 },
            gen: self.clock,
        };
        let slot = self.conns.entry(key).or_insert(conn);
        slot
    }

    /// The largest (pending, statements, buffered bytes) over all connections.
    pub fn footprint(&self) -> (usize, usize, usize) {
        self.conns
            .values()
            .fold((0, 0, 0), |acc, c| match &c.proto {
                Proto::Postgres(s) => {
                    let (p, n, b) = s.footprint();
                    (acc.0.max(p), acc.1.max(n), acc.2.max(b))
                }
                Proto::Redis(s) => {
                    let (p, b) = s.footprint();
                    (acc.0.max(p), acc.1, acc.2.max(b))
                }
                _ => acc,
            })
    }
}

fn emit_into(
    (pid, conn_id): ConnKey,
    conn: &Conn,
    system: DbSystem,
    scratch: &mut Vec<Finished>,
    offset: i64,
    out: &mut Vec<DbTransaction>,
) {
    for f in scratch.drain(..) {
        out.push(DbTransaction {
            pid,
            tid: f.origin.tid,
            conn_id,
            side: conn.side.unwrap_or(Side::Client),
            local: conn.local,
            peer: conn.peer,
            system,
            operation: f.operation,
            collection: f.collection,
            query_text: f.query_text,
            error: f.error,
            start_mono_ns: f.origin.mono_ns,
            end_mono_ns: f.end_mono_ns,
            realtime_offset_ns: offset,
            completion: f.completion,
        });
    }
}
