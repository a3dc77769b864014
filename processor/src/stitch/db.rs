//! Stitching for databases: from the loader's raw events to [`DbTransaction`]s of
//! PostgreSQL, Redis and MySQL connections.
//!
//! A [`DbStitcher`] is fed the same events as the HTTP [`super::Stitcher`], in stream
//! order, and keeps its own state per connection `(pid, conn_id)`. A connection's
//! protocol is decided by the first request-direction payload that starts like one
//! (a PostgreSQL startup packet or `Q`/`P` message, a Redis array of bulk strings, a
//! MySQL `COM_QUERY`; [`crate::protocols::postgres::looks_like_start`],
//! [`crate::protocols::redis::looks_like_start`],
//! [`crate::protocols::mysql::looks_like_query`]) or, MySQL servers speaking first,
//! by an answer-direction payload that is a MySQL handshake
//! ([`crate::protocols::mysql::looks_like_greeting`]). Until then its bytes are
//! skipped and counted, and after a few undecided request payloads
//! ([`MAX_UNDECIDED`]) the connection is left alone (its bytes are counted, not
//! parsed).
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

use tandem_proto::v1::{self, Direction};
use tandem_proto::{Event, EventKind};

use crate::model::{DbSystem, DbTransaction, Side};
use crate::protocols::db::{DbSession, DbStats, Finished, Origin, Segment};
use crate::protocols::mysql::{self, MySqlSession};
use crate::protocols::postgres::{self, PgSession};
use crate::protocols::redis::{self, RedisSession};

use super::{keys_of_pid, opened_ends, ConnLru};

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
    MySql(Box<MySqlSession>),
}

#[derive(Debug)]
struct Conn {
    side: Option<Side>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    proto: Proto,
    gen: u64,
}

/// Per-connection database protocol reassembly; see the module documentation.
#[derive(Debug)]
pub struct DbStitcher {
    max_connections: usize,
    conns: BTreeMap<ConnKey, Conn>,
    lru: ConnLru,
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
            lru: ConnLru::default(),
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
                (conn.side, conn.local, conn.peer) = opened_ends(opened);
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
                            Proto::MySql(s) => s.lose(mono_ns, &mut self.stats, &mut self.scratch),
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
        if let Proto::Unknown { .. } = conn.proto {
            // MySQL: the server speaks first.
            let could_be_answer = conn.side.is_none_or(|s| !is_request(s));
            if could_be_answer && mysql::looks_like_greeting(seg.data, seg.total()) {
                conn.proto = Proto::MySql(Box::new(MySqlSession::new(true)));
                if conn.side.is_none() {
                    conn.side = Some(match direction {
                        Direction::Ingress => Side::Client,
                        _ => Side::Server,
                    });
                }
            }
        }
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
            } else if mysql::looks_like_query(seg.data, total) {
                Some(Proto::MySql(Box::new(MySqlSession::new(false))))
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
                s.feed(request, &seg, stats, scratch);
                if s.encrypted() {
                    conn.proto = Proto::Other;
                }
            }
            Proto::Redis(s) => s.feed(request, &seg, stats, scratch),
            Proto::MySql(s) => {
                s.feed(request, &seg, stats, scratch);
                if s.encrypted() {
                    conn.proto = Proto::Other;
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
            Proto::MySql(_) => DbSystem::Mysql,
            _ => DbSystem::Postgresql,
        };
        emit_into(key, conn, system, &mut self.scratch, offset, out);
    }

    fn close(&mut self, key: ConnKey, mono_ns: u64, offset: i64, out: &mut Vec<DbTransaction>) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.lru.forget(conn.gen);
        let system = match &mut conn.proto {
            Proto::Postgres(s) => {
                s.close(mono_ns, &mut self.stats, &mut self.scratch);
                DbSystem::Postgresql
            }
            Proto::Redis(s) => {
                s.close(mono_ns, &mut self.stats, &mut self.scratch);
                DbSystem::Redis
            }
            Proto::MySql(s) => {
                s.close(mono_ns, &mut self.stats, &mut self.scratch);
                DbSystem::Mysql
            }
            Proto::Unknown { .. } | Proto::Other => return,
        };
        emit_into(key, &conn, system, &mut self.scratch, offset, out);
    }

    fn touch(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.lru.touch(&mut conn.gen, key);
        }
    }

    fn insert(&mut self, key: ConnKey) -> &mut Conn {
        self.stats.evicted_connections += self.lru.evict(&mut self.conns, self.max_connections);
        let gen = self.lru.stamp(key);
        let conn = Conn {
            side: None,
            local: None,
            peer: None,
            proto: Proto::Unknown { seen: 0 },
            gen,
        };
        self.conns.entry(key).or_insert(conn)
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
            namespace: f.namespace,
            start_mono_ns: f.origin.mono_ns,
            end_mono_ns: f.end_mono_ns,
            realtime_offset_ns: offset,
            completion: f.completion,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Completion;
    use tandem_proto::v1::{ConnectionOpened, Role, SocketAddress};

    use crate::stitch::tests::{event, v4};

    /// The process of every connection here.
    const PID: u32 = 5;

    fn addr(port: u32) -> Option<SocketAddress> {
        v4([127, 0, 0, 1], port)
    }

    fn opened(mono_ns: u64, conn_id: u64, role: Role) -> Event {
        event(
            mono_ns,
            EventKind::ConnectionOpened(ConnectionOpened {
                pid: PID,
                tid: PID,
                conn_id,
                local: addr(40000),
                peer: addr(5432),
                role: role as i32,
                preexisting: false,
            }),
        )
    }

    fn data(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8]) -> Event {
        crate::stitch::tests::data(mono_ns, PID, conn_id, dir, bytes)
    }

    fn closed(mono_ns: u64, conn_id: u64) -> Event {
        crate::stitch::tests::closed(mono_ns, PID, conn_id)
    }

    fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn run(events: &[Event]) -> (Vec<DbTransaction>, DbStats) {
        let mut s = DbStitcher::new();
        let mut out = vec![];
        for e in events {
            s.push(e, 0, &mut out);
        }
        (out, s.stats())
    }

    #[test]
    fn postgres_client_connection_from_its_start() {
        let body = b"\x00\x03\x00\x00user\x00postgres\x00\x00";
        let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        let (out, stats) = run(&[
            opened(1, 1, Role::Client),
            data(2, 1, Direction::Egress, &startup),
            data(
                3,
                1,
                Direction::Ingress,
                &[pg_msg(b'R', &[0; 4]), pg_msg(b'Z', b"I")].concat(),
            ),
            data(4, 1, Direction::Egress, &pg_msg(b'Q', b"SELECT 1 FROM t\0")),
            data(
                5,
                1,
                Direction::Ingress,
                &[pg_msg(b'C', b"SELECT 1\0"), pg_msg(b'Z', b"I")].concat(),
            ),
            data(
                6,
                1,
                Direction::Egress,
                &pg_msg(b'Q', b"SELECT pg_sleep(100)\0"),
            ),
            closed(7, 1),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].system, DbSystem::Postgresql);
        assert_eq!(out[0].side, Side::Client);
        assert_eq!(out[0].operation.as_deref(), Some("SELECT"));
        assert_eq!(out[0].collection.as_deref(), Some("t"));
        assert_eq!(
            (out[0].start_mono_ns, out[0].end_mono_ns, out[0].tid),
            (4, 5, 6)
        );
        assert_eq!(out[0].peer, Some("127.0.0.1:5432".parse().expect("addr")));
        assert_eq!(out[1].completion, Completion::ConnectionClosed);
        assert_eq!(stats.pg_startups, 1);
    }

    #[test]
    fn redis_server_seen_mid_stream_without_role() {
        let (out, _) = run(&[
            data(1, 9, Direction::Ingress, b"+OK\r\n"),
            data(2, 9, Direction::Ingress, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            data(3, 9, Direction::Egress, b"$-1\r\n"),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].system, DbSystem::Redis);
        assert_eq!(out[0].side, Side::Server);
        assert_eq!(out[0].query_text.as_deref(), Some("GET k"));
    }

    #[test]
    fn http_and_garbage_are_left_alone() {
        let mut events = vec![opened(1, 1, Role::Client)];
        for i in 0..10 {
            events.push(data(
                2 + i,
                1,
                Direction::Egress,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ));
            events.push(data(
                2 + i,
                1,
                Direction::Ingress,
                b"HTTP/1.1 200 OK\r\n\r\n",
            ));
        }
        let mut s = DbStitcher::new();
        let mut out = vec![];
        for e in &events {
            s.push(e, 0, &mut out);
        }
        assert!(out.is_empty());
        assert!(matches!(
            s.conns.values().next().map(|c| &c.proto),
            Some(Proto::Other)
        ));
    }

    #[test]
    fn connections_are_bounded() {
        let mut s = DbStitcher::with_max_connections(8);
        let mut out = vec![];
        for c in 0..100 {
            s.push(
                &data(c, c, Direction::Egress, b"*1\r\n$4\r\nPING\r\n"),
                0,
                &mut out,
            );
        }
        assert_eq!(s.connections(), 8);
        assert_eq!(s.stats().evicted_connections, 92);
    }

    fn cut_data(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8], total: u64) -> Event {
        crate::stitch::tests::data_cut(mono_ns, PID, conn_id, dir, bytes, total)
    }

    proptest::proptest! {
        /// Any sequence of events, database-like or not, cut or not, on a few
        /// connections: no panic, bounds held, every operation counted once.
        #[test]
        fn arbitrary_event_sequences(
            steps in proptest::collection::vec(
                (
                    0u64..6,
                    0u8..6,
                    proptest::prop_oneof![
                        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                        proptest::strategy::Just(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()),
                        proptest::strategy::Just(b"+OK\r\n".to_vec()),
                        proptest::strategy::Just(b"Q\0\0\0\x0dSELECT 1\0".to_vec()),
                        proptest::strategy::Just(b"Z\0\0\0\x05I".to_vec()),
                        proptest::strategy::Just(b"\0\0\0\x08\x04\xd2\x16\x2f".to_vec()),
                        proptest::strategy::Just(b"N".to_vec()),
                    ],
                    0u64..3000,
                ),
                0..80,
            ),
        ) {
            let mut s = DbStitcher::with_max_connections(4);
            let mut out = vec![];
            for (i, (conn, what, bytes, extra)) in steps.iter().enumerate() {
                let t = i as u64 + 1;
                let e = match what {
                    0 => opened(t, *conn, Role::Client),
                    1 => closed(t, *conn),
                    2 | 3 => cut_data(t, *conn, Direction::Egress, bytes, bytes.len() as u64 + extra),
                    _ => cut_data(t, *conn, Direction::Ingress, bytes, bytes.len() as u64 + extra),
                };
                s.push(&e, 0, &mut out);
                proptest::prop_assert!(s.connections() <= 4);
                let (pending, names, buffered) = s.footprint();
                proptest::prop_assert!(pending <= crate::protocols::db::MAX_PENDING);
                proptest::prop_assert!(names <= 2 * crate::protocols::postgres::MAX_STATEMENTS);
                proptest::prop_assert!(buffered <= 2 * crate::protocols::db::MAX_KEEP);
            }
            for t in out.iter() {
                proptest::prop_assert!(t.start_mono_ns <= t.end_mono_ns);
            }
            proptest::prop_assert_eq!(s.stats().transactions, out.len() as u64);
        }
    }
}
