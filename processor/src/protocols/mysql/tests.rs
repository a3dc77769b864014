use super::*;
use crate::protocols::db::MAX_PENDING;
use crate::protocols::db_tests::{assert_split_anywhere_same, run, s, sql_key, summary, Feed};
use proptest::prelude::*;

fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(body);
    p
}

fn greeting() -> Vec<u8> {
    let mut b = vec![10];
    b.extend_from_slice(b"10.11.19-MariaDB\0");
    b.extend_from_slice(&[1, 0, 0, 0]);
    b.extend_from_slice(&[b'x'; 30]);
    pkt(0, &b)
}

fn ok(seq: u8) -> Vec<u8> {
    pkt(seq, &[0, 0, 0, 2, 0, 0, 0])
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &[0xFE, 0, 0, status as u8, (status >> 8) as u8])
}

fn query(q: &str) -> Vec<u8> {
    let mut b = vec![COM_QUERY];
    b.extend_from_slice(q.as_bytes());
    pkt(0, &b)
}

fn rows(n: usize) -> Vec<u8> {
    let mut r = pkt(1, &[1]);
    r.extend(pkt(
        2,
        b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
    ));
    r.extend(eof(3, 2));
    for i in 0..n {
        r.extend(pkt(4 + i as u8, b"\x0212"));
    }
    r.extend(eof(4 + n as u8, 2));
    r
}

fn err(seq: u8, code: u16, state: &str, m: &str) -> Vec<u8> {
    let mut b = vec![0xFF, code as u8, (code >> 8) as u8, b'#'];
    b.extend_from_slice(state.as_bytes());
    b.extend_from_slice(m.as_bytes());
    pkt(seq, &b)
}

fn conversation() -> Vec<(bool, Vec<u8>)> {
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT a FROM t WHERE id = ?");
    let mut execute = vec![COM_STMT_EXECUTE];
    execute.extend_from_slice(&[7, 0, 0, 0, 0, 1, 0, 0, 0]);
    vec![
        (false, greeting()),
        (
            true,
            pkt(
                1,
                &[
                    0x0d, 0xa2, 0x0a, 0x00, 0, 0, 0, 1, 33, 0, 0, 0, b'r', b'o', b'o', b't', 0,
                ],
            ),
        ),
        (false, ok(2)),
        (true, query("INSERT INTO t VALUES (1, 'x')")),
        (false, ok(1)),
        (true, query("SELECT a FROM t")),
        (false, rows(3)),
        (true, query("SELECT * FROM nope")),
        (
            false,
            err(1, 1146, "42S02", "Table 'test.nope' doesn't exist"),
        ),
        (true, pkt(0, &prepare)),
        (
            false,
            [
                pkt(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
                pkt(2, b"\x03def"),
                eof(3, 2),
                pkt(4, b"\x03def"),
                eof(5, 2),
            ]
            .concat(),
        ),
        (true, pkt(0, &execute)),
        (false, rows(1)),
        (true, pkt(0, &[COM_QUIT])),
    ]
}

#[test]
fn queries_errors_prepared() {
    let mut session = MySqlSession::new(true);
    let (out, stats) = run(&mut session, &conversation());
    assert_eq!(
        summary(&out),
        vec![
            (
                s("INSERT"),
                s("t"),
                s("INSERT INTO t VALUES (?, ?)"),
                None,
                4,
                5
            ),
            (s("SELECT"), s("t"), s("SELECT a FROM t"), None, 6, 7),
            (
                s("SELECT"),
                s("nope"),
                s("SELECT * FROM nope"),
                s("1146"),
                8,
                9
            ),
            (
                s("SELECT"),
                s("t"),
                s("SELECT a FROM t WHERE id = ?"),
                None,
                10,
                11
            ),
            (
                s("SELECT"),
                s("t"),
                s("SELECT a FROM t WHERE id = ?"),
                None,
                12,
                13
            ),
        ]
    );
    assert_eq!(
        out[2].error.as_ref().map(|e| e.message.as_str()),
        Some("Table 'test.nope' doesn't exist")
    );
    assert!(out.iter().all(|f| f.completion == Completion::Complete));
    assert_eq!((stats.lost_sync, stats.unpaired_responses), (0, 0));
}

#[test]
fn split_at_every_byte() {
    assert_split_anywhere_same(&conversation(), || MySqlSession::new(true), sql_key);
}

#[test]
fn uncaptured_rows_end_at_next_command() {
    let mut f = Feed::new(MySqlSession::new(false));
    let q = query("SELECT a FROM big");
    f.request(&q, q.len() as u64, 1);
    let r = rows(200);
    f.response(&r[..300], r.len() as u64, 2);
    assert!(f.out.is_empty());
    let q2 = query("SELECT 1");
    f.request(&q2, q2.len() as u64, 3);
    assert_eq!(f.out.len(), 1);
    assert_eq!(
        (f.out[0].end_mono_ns, f.out[0].completion),
        (2, Completion::Truncated)
    );
    f.response(&ok(1), 11, 4);
    assert_eq!(f.out.len(), 2);
    assert_eq!(
        (f.out[1].end_mono_ns, f.out[1].completion),
        (4, Completion::Complete)
    );
}

#[test]
fn ssl_request_stops_reading() {
    let mut session = MySqlSession::new(true);
    let mut ssl = vec![0x0d, 0xaa, 0x0f, 0x00];
    ssl.extend_from_slice(&[0; 28]);
    let (out, stats) = run(
        &mut session,
        &[
            (false, greeting()),
            (true, pkt(1, &ssl)),
            (true, b"\x16\x03\x01xx".to_vec()),
        ],
    );
    assert!(out.is_empty());
    assert!(session.encrypted());
    assert_eq!(stats.encrypted_connections, 1);
}

#[test]
fn a_continuation_packet_in_the_command_phase_is_not_an_ssl_request() {
    // The second packet of a command longer than 16 MiB has sequence 1; 32 bytes of
    // it whose first four look like capabilities with CLIENT_SSL must not make the
    // connection look encrypted (which would hide its later commands).
    let mut session = MySqlSession::new(true);
    let mut tail = vec![0x0d, 0xaa, 0x0f, 0x00];
    tail.extend_from_slice(&[b'x'; 28]);
    let (out, stats) = run(
        &mut session,
        &[
            (false, greeting()),
            (true, pkt(1, b"\x0d\xa2\x00\x00response")),
            (false, ok(2)),
            (true, query("SELECT 1")),
            (false, ok(1)),
            (true, pkt(1, &tail)),
            (true, query("SELECT 2")),
            (false, ok(1)),
        ],
    );
    assert!(!session.encrypted());
    assert_eq!(stats.encrypted_connections, 0);
    assert_eq!(out.len(), 2, "{out:?}");
}

#[test]
fn detection() {
    let g = greeting();
    assert!(looks_like_greeting(&g, g.len() as u64));
    let q = query("SELECT 1");
    assert!(looks_like_query(&q, q.len() as u64));
    assert!(!looks_like_greeting(b"GET / HTTP/1.1\r\n\r\n", 18));
    assert!(!looks_like_query(b"*1\r\n$4\r\nPING\r\n", 14));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 0u64..5000), 0..40),
        fresh in any::<bool>(),
    ) {
        let mut f = Feed::new(MySqlSession::new(fresh));
        for (i, (req, bytes, extra)) in chunks.iter().enumerate() {
            f.send(*req, bytes, bytes.len() as u64 + extra, i as u64);
            let (pending, names, buffered) = f.session.footprint();
            prop_assert!(pending <= MAX_PENDING);
            prop_assert!(names <= MAX_STATEMENTS);
            prop_assert!(buffered <= 2 * MAX_KEEP);
        }
        f.session.close(1_000, &mut f.stats, &mut f.out);
        prop_assert_eq!(f.stats.transactions, f.out.len() as u64);
    }
}

#[test]
fn database_from_handshake_and_init_db() {
    let caps: u32 = CLIENT_CONNECT_WITH_DB | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH_LENENC;
    let mut hs = caps.to_le_bytes().to_vec();
    hs.extend_from_slice(&[0, 0, 0, 1, 33]);
    hs.extend_from_slice(&[0; 23]);
    hs.extend_from_slice(b"root\0");
    hs.push(20);
    hs.extend_from_slice(&[7; 20]);
    hs.extend_from_slice(b"shop\0mysql_native_password\0");
    let mut init = vec![COM_INIT_DB];
    init.extend_from_slice(b"other");
    let steps = vec![
        (false, greeting()),
        (true, pkt(1, &hs)),
        (false, ok(2)),
        (true, query("SELECT 1")),
        (false, ok(1)),
        (true, pkt(0, &init)),
        (false, ok(1)),
        (true, query("SELECT 2")),
        (false, ok(1)),
    ];
    let (out, _) = run(&mut MySqlSession::new(true), &steps);
    let ns: Vec<_> = out.iter().map(|f| f.namespace.as_deref()).collect();
    assert_eq!(ns, [Some("shop"), Some("other")]);
}
