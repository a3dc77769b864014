//! The database sessions through the stitcher: detection, roles, bounds.

use super::*;
use crate::model::{Completion, DbOperation, DbSystem, Exchange};
use tandem_proto::v1::{ConnectionOpened, Role, SocketAddress};

use crate::stitch::tests::{event, v4};

/// A database operation with its connection fields, as these tests look at it.
#[derive(Debug, Clone, PartialEq)]
struct DbTransaction {
    tid: u32,
    side: Side,
    peer: Option<SocketAddr>,
    system: DbSystem,
    operation: Option<String>,
    collection: Option<String>,
    query_text: Option<String>,
    start_mono_ns: u64,
    end_mono_ns: u64,
    completion: Completion,
}

/// The database operations of `out` (other protocols' transactions left out).
fn db_only(out: Vec<Transaction>) -> Vec<DbTransaction> {
    out.into_iter()
        .filter_map(|t| match t.exchange {
            Exchange::Db(DbOperation {
                system,
                operation,
                collection,
                query_text,
                ..
            }) => Some(DbTransaction {
                tid: t.tid,
                side: t.side,
                peer: t.peer,
                system,
                operation,
                collection,
                query_text,
                start_mono_ns: t.start_mono_ns,
                end_mono_ns: t.end_mono_ns,
                completion: t.completion,
            }),
            Exchange::Http(_) => None,
        })
        .collect()
}

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

fn run(events: &[Event]) -> (Vec<DbTransaction>, StitchStats) {
    let mut s = Stitcher::new();
    let mut out = vec![];
    for e in events {
        s.push(e, 0, &mut out);
    }
    (db_only(out), s.stats())
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
    let mut s = Stitcher::new();
    let mut out = vec![];
    for e in &events {
        s.push(e, 0, &mut out);
    }
    assert!(db_only(out).is_empty());
    // The connection is HTTP/1's.
    assert_eq!(s.connections_by_protocol(), vec![("http1", 1)]);
}

#[test]
fn connections_are_bounded() {
    let mut s = Stitcher::with_limits(Limits {
        max_connections: 8,
        ..Limits::default()
    });
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
        let mut s = Stitcher::with_limits(Limits { max_connections: 4, ..Limits::default() });
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
            let f = s.footprint();
            let (pending, names, buffered) = (f.pending, f.entries, f.buffered);
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
