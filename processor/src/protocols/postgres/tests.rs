use super::*;
use crate::protocols::db::MAX_PENDING;
use crate::protocols::db_tests::{assert_split_anywhere_same, run, s, sql_key, summary, Feed};
use proptest::prelude::*;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup() -> Vec<u8> {
    let body = b"\x00\x03\x00\x00user\x00postgres\x00\x00";
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

fn ssl_request() -> Vec<u8> {
    let mut m = 8u32.to_be_bytes().to_vec();
    m.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    m
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut b = vec![];
    for p in parts {
        b.extend_from_slice(p.as_bytes());
        b.push(0);
    }
    b
}

fn query(q: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[q]))
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstrs(&[tag]))
}

fn error(code: &str, m: &str) -> Vec<u8> {
    let mut b = b"SERROR\0C".to_vec();
    b.extend_from_slice(&cstrs(&[code]));
    b.push(b'M');
    b.extend_from_slice(&cstrs(&[m]));
    b.push(0);
    msg(b'E', &b)
}

fn extended(stmt: &str, q: &str) -> Vec<u8> {
    let mut parse = cstrs(&[stmt, q]);
    parse.extend_from_slice(&[0, 0]);
    let mut bind = cstrs(&["", stmt]);
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut exec = cstrs(&[""]);
    exec.extend_from_slice(&[0, 0, 0, 0]);
    [
        msg(b'P', &parse),
        msg(b'B', &bind),
        msg(b'D', b"P\0"),
        msg(b'E', &exec),
        msg(b'S', b""),
    ]
    .concat()
}

fn conversation() -> Vec<(bool, Vec<u8>)> {
    let rows = msg(b'D', &[0u8; 40]);
    vec![
        (true, ssl_request()),
        (false, b"N".to_vec()),
        (true, startup()),
        (
            false,
            [
                msg(b'R', &[0, 0, 0, 0]),
                msg(b'S', &cstrs(&["a", "b"])),
                ready(),
            ]
            .concat(),
        ),
        (true, query("SELECT name FROM users WHERE id = 42")),
        (
            false,
            [
                msg(b'T', &[0; 20]),
                rows.clone(),
                rows,
                complete("SELECT 2"),
                ready(),
            ]
            .concat(),
        ),
        (true, query("SELECT * FROM nope")),
        (
            false,
            [error("42P01", "relation \"nope\" does not exist"), ready()].concat(),
        ),
        (
            true,
            extended(
                "",
                "UPDATE accounts SET balance = balance + $1 WHERE aid = $2",
            ),
        ),
        (
            false,
            [
                msg(b'1', b""),
                msg(b'2', b""),
                complete("UPDATE 1"),
                ready(),
            ]
            .concat(),
        ),
        (true, extended("s1", "INSERT INTO history (a) VALUES ($1)")),
        (
            false,
            [
                msg(b'1', b""),
                msg(b'2', b""),
                complete("INSERT 0 1"),
                ready(),
            ]
            .concat(),
        ),
        // Prepared: Bind/Execute/Sync only, by name.
        (true, {
            let mut bind = cstrs(&["", "s1"]);
            bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            [msg(b'B', &bind), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat()
        }),
        (
            false,
            [msg(b'2', b""), complete("INSERT 0 1"), ready()].concat(),
        ),
    ]
}

#[test]
fn simple_extended_prepared_and_errors() {
    let mut session = PgSession::new(true);
    let (out, stats) = run(&mut session, &conversation());
    assert_eq!(
        summary(&out),
        vec![
            (
                s("SELECT"),
                s("users"),
                s("SELECT name FROM users WHERE id = ?"),
                None,
                5,
                6
            ),
            (
                s("SELECT"),
                s("nope"),
                s("SELECT * FROM nope"),
                s("42P01"),
                7,
                8
            ),
            (
                s("UPDATE"),
                s("accounts"),
                s("UPDATE accounts SET balance = balance + $1 WHERE aid = $2"),
                None,
                9,
                10
            ),
            (
                s("INSERT"),
                s("history"),
                s("INSERT INTO history (a) VALUES ($1)"),
                None,
                11,
                12
            ),
            (
                s("INSERT"),
                s("history"),
                s("INSERT INTO history (a) VALUES ($1)"),
                None,
                13,
                14
            ),
        ]
    );
    assert_eq!(
        out[1].error.as_ref().map(|e| e.message.as_str()),
        Some("relation \"nope\" does not exist")
    );
    assert!(out.iter().all(|f| f.completion == Completion::Complete));
    // No `database` in the startup packet: PostgreSQL uses the user's name.
    assert!(out
        .iter()
        .all(|f| f.namespace.as_deref() == Some("postgres")));
    assert_eq!(
        (stats.pg_startups, stats.pg_ssl_requests, stats.transactions),
        (1, 1, 5)
    );
    assert_eq!(
        (
            stats.parse_errors,
            stats.lost_sync,
            stats.unpaired_responses
        ),
        (0, 0, 0)
    );
}

/// Every byte split of both directions gives the same operations.
#[test]
fn split_at_every_byte() {
    assert_split_anywhere_same(&conversation(), || PgSession::new(true), sql_key);
}

#[test]
fn pipelined_queries_pair_in_order() {
    let mut session = PgSession::new(false);
    let steps = vec![
        (true, [query("SELECT 1"), query("DELETE FROM t")].concat()),
        (
            false,
            [complete("SELECT 1"), ready(), error("23503", "fk"), ready()].concat(),
        ),
    ];
    let (out, _) = run(&mut session, &steps);
    assert_eq!(
        summary(&out),
        vec![
            (s("SELECT"), None, s("SELECT ?"), None, 1, 2),
            (s("DELETE"), s("t"), s("DELETE FROM t"), s("23503"), 1, 2),
        ]
    );
}

#[test]
fn ssl_accepted_stops_reading() {
    let mut session = PgSession::new(true);
    let (out, stats) = run(
        &mut session,
        &[
            (true, ssl_request()),
            (false, b"S".to_vec()),
            (true, b"\x16\x03\x01garbage".to_vec()),
        ],
    );
    assert!(out.is_empty());
    assert!(session.encrypted());
    assert_eq!(stats.encrypted_connections, 1);
}

#[test]
fn uncaptured_rows_finish_at_next_request() {
    let mut f = Feed::new(PgSession::new(false));
    let q = query("SELECT * FROM big");
    f.request(&q, q.len() as u64, 1);
    // 64 KiB of rows, C and Z in one write: only the first 1 KiB captured.
    let mut resp = msg(b'T', &[0; 10]);
    for _ in 0..200 {
        resp.extend(msg(b'D', &[7; 300]));
    }
    resp.extend(complete("SELECT 200"));
    resp.extend(ready());
    f.response(&resp[..1024], resp.len() as u64, 2);
    assert!(f.out.is_empty());
    let q2 = query("SELECT 2");
    f.request(&q2, q2.len() as u64, 3);
    assert_eq!(f.out.len(), 1);
    assert_eq!(
        (f.out[0].end_mono_ns, f.out[0].completion),
        (2, Completion::Truncated)
    );
    assert_eq!(f.stats.lost_sync, 1);
    // The next 8 KiB write of the same answer starts inside a row ("1234...").
    let mut tail = b"1234".to_vec();
    tail.extend(msg(b'D', &[b'9'; 300]));
    f.response(&tail, 8192, 3);
    assert_eq!(f.out.len(), 1);
    // The second query's answer still pairs.
    let r = [complete("SELECT 1"), ready()].concat();
    f.response(&r, r.len() as u64, 4);
    assert_eq!(f.out.len(), 2);
    assert_eq!(f.out[1].operation.as_deref(), Some("SELECT"));
    assert_eq!(f.out[1].completion, Completion::Complete);
}

#[test]
fn long_query_truncated_by_capture_is_skipped_by_length() {
    let mut f = Feed::new(PgSession::new(false));
    let long = format!(
        "SELECT * FROM wide WHERE x IN ({})",
        "1,".repeat(2000) + "1"
    );
    let q = query(&long);
    f.request(&q[..1024], q.len() as u64, 1);
    let r = [complete("SELECT 0"), ready()].concat();
    f.response(&r, r.len() as u64, 2);
    assert_eq!(f.out.len(), 1);
    assert_eq!(f.out[0].collection.as_deref(), Some("wide"));
    assert_eq!(f.stats.lost_sync, 0);
}

#[test]
fn closed_before_answer() {
    let mut session = PgSession::new(false);
    let (mut out, mut stats) = run(&mut session, &[(true, query("SELECT pg_sleep(10)"))]);
    session.close(50, &mut stats, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].completion, out[0].end_mono_ns),
        (Completion::ConnectionClosed, 50)
    );
}

#[test]
fn a_long_statement_name_cut_inside_a_character_is_found_again() {
    // 60 three-byte characters: cut to MAX_NAME bytes, the cut falls inside one.
    let name = "€".repeat(60);
    assert!(!name.is_char_boundary(MAX_NAME));
    let mut names = Names::default();
    let mut stats = DbStats::default();
    names.insert(name.clone(), Some("SELECT 1".into()), &mut stats);
    assert_eq!(names.get(&name).as_deref(), Some("SELECT 1"));
    names.remove(&name);
    assert_eq!(names.len(), 0);
}

#[test]
fn statements_are_bounded() {
    let mut session = PgSession::new(false);
    let mut steps = vec![];
    for i in 0..(MAX_STATEMENTS + 50) {
        steps.push((true, extended(&format!("s{i}"), "SELECT 1")));
    }
    let (_, stats) = run(&mut session, &steps);
    let (pending, names, _) = session.footprint();
    assert!(names <= 2 * MAX_STATEMENTS);
    assert!(pending <= MAX_PENDING);
    assert_eq!(stats.evicted_statements, 50);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 0u64..5000), 0..40),
        fresh in any::<bool>(),
    ) {
        let mut f = Feed::new(PgSession::new(fresh));
        for (i, (req, bytes, extra)) in chunks.iter().enumerate() {
            f.send(*req, bytes, bytes.len() as u64 + extra, i as u64);
            let (pending, names, buffered) = f.session.footprint();
            prop_assert!(pending <= MAX_PENDING);
            prop_assert!(names <= 2 * MAX_STATEMENTS);
            prop_assert!(buffered <= 2 * MAX_KEEP);
        }
        f.session.close(1_000, &mut f.stats, &mut f.out);
        prop_assert_eq!(f.stats.transactions, f.out.len() as u64);
    }
}

#[test]
fn startup_database_parameter() {
    assert_eq!(
        startup_database(b"\x00\x03\x00\x00user\x00bob\x00database\x00shop\x00\x00").as_deref(),
        Some("shop")
    );
    assert_eq!(
        startup_database(b"\x00\x03\x00\x00user\x00bob\x00\x00").as_deref(),
        Some("bob")
    );
    assert_eq!(startup_database(b"\x00\x03\x00\x00user"), None);
}
