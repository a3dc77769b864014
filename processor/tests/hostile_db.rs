//! Hostile database peers: giant length prefixes (a 4 GiB PostgreSQL message, a chain
//! of 16 MiB MySQL packets, Redis bulk strings of 2^31 bytes and more), floods of
//! statements, queries and pipelined commands, endless lines and nesting. Each test
//! asserts that the session stays within its documented bounds (`processor/README.md`,
//! "Bounds": `protocols::db::{MAX_PENDING, MAX_KEEP}`, the statement bounds, the RESP
//! line and depth bounds) — by its own account (`footprint`) and by the heap the
//! test's thread holds ([`common::Meter`]) — and that the abuse is counted (a parse
//! error, an untracked request, an evicted statement) rather than absorbed.

mod common;

use common::*;
use tandem_processor::protocols::db::{
    DbSession, DbStats, Finished, Origin, Segment, MAX_KEEP, MAX_PENDING,
};
use tandem_processor::protocols::mysql::{self, MySqlSession};
use tandem_processor::protocols::postgres::{self, PgSession};
use tandem_processor::protocols::redis::{RedisSession, MAX_LINE_KEEP};
use tandem_processor::stitch::Stitcher;
use tandem_proto::v1::Role;

/// The loader's largest write (`MAX_RW_COUNT`): no syscall moves more.
const MAX_RW: u64 = 0x7fff_f000;

/// Feeds one segment (`request`: the client's), `total` bytes of which `bytes` were
/// captured; returns what finished.
fn feed(
    s: &mut dyn DbSession,
    request: bool,
    bytes: &[u8],
    total: u64,
    stats: &mut DbStats,
) -> Vec<Finished> {
    let origin = Origin {
        mono_ns: 1_000,
        ..Origin::default()
    };
    let mut out = Vec::new();
    s.feed(
        request,
        &Segment::new(bytes, total, origin),
        stats,
        &mut out,
    );
    out
}

fn whole(s: &mut dyn DbSession, request: bool, bytes: &[u8], stats: &mut DbStats) -> usize {
    feed(s, request, bytes, bytes.len() as u64, stats).len()
}

/// (pending, entries, buffered) within the documented bounds.
fn assert_bounded(s: &dyn DbSession, entries: usize) {
    let (pending, kept, buffered) = s.footprint();
    assert!(pending <= MAX_PENDING, "{pending} pending");
    assert!(kept <= entries, "{kept} statements");
    assert!(buffered <= 2 * MAX_KEEP, "{buffered} bytes buffered");
}

fn pg(t: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
    pg(t, body.len() as u32 + 4, body)
}

fn pg_started() -> (PgSession, DbStats) {
    let mut s = PgSession::new(true);
    let mut stats = DbStats::default();
    let body = b"\x00\x03\x00\x00user\x00app\x00\x00";
    let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    whole(&mut s, true, &startup, &mut stats);
    whole(&mut s, false, &pg_msg(b'Z', b"I"), &mut stats);
    (s, stats)
}

#[test]
fn postgres_giant_length_prefixes_are_refused_or_skipped_by_length() {
    let (mut s, mut stats) = pg_started();
    // A 4 GiB length: over the 1 GiB bound, refused; the direction resynchronises on
    // the next write.
    whole(&mut s, true, &pg(b'Q', u32::MAX, b"SELECT 1\0"), &mut stats);
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(s.footprint().0, 0, "not taken for a query");
    whole(&mut s, true, &pg_msg(b'Q', b"SELECT 2\0"), &mut stats);
    assert_eq!(whole(&mut s, false, &pg_msg(b'Z', b"I"), &mut stats), 1);

    // A query just under 1 GiB (1 KiB captured, the rest of the write not), answered
    // by a 1 GiB row in 64 MiB writes: kept to MAX_KEEP, skipped by length, reported
    // once.
    let meter = Meter::start();
    let big = (1u32 << 30) - 1;
    let mut q = pg(b'Q', big, b"SELECT * FROM t WHERE x = '");
    q.resize(1024, b'x');
    feed(&mut s, true, &q, u64::from(big) + 1, &mut stats);
    assert_bounded(&s, 0);
    let mut rows = pg(b'D', big, &[0; 1019]);
    rows.truncate(1024);
    let mut left = u64::from(big) + 1;
    let mut first = true;
    while left > 0 {
        let total = left.min(64 << 20);
        let bytes: &[u8] = if first { &rows } else { &[0; 1024] };
        feed(&mut s, false, bytes, total, &mut stats);
        assert_bounded(&s, 0);
        left -= total;
        first = false;
    }
    assert_eq!(whole(&mut s, false, &pg_msg(b'Z', b"I"), &mut stats), 1);
    assert!(meter.peak() <= 4 * MAX_KEEP, "peak {}", meter.peak());
    assert_eq!(stats.parse_errors, 1);
}

#[test]
fn postgres_statement_and_query_floods_stay_bounded_and_are_counted() {
    let (mut s, mut stats) = pg_started();
    let meter = Meter::start();
    for i in 0..10_000 {
        let mut parse = format!("statement_{i}\0SELECT {i} FROM t\0").into_bytes();
        parse.extend_from_slice(&[0, 0]);
        let mut bind = format!("portal_{i}\0statement_{i}\0").into_bytes();
        bind.extend_from_slice(&[0; 6]);
        let bytes = [pg_msg(b'P', &parse), pg_msg(b'B', &bind), pg_msg(b'S', b"")].concat();
        whole(&mut s, true, &bytes, &mut stats);
        whole(&mut s, false, &pg_msg(b'Z', b"I"), &mut stats);
        assert_bounded(&s, 2 * postgres::MAX_STATEMENTS);
    }
    assert!(stats.evicted_statements >= 2 * (10_000 - postgres::MAX_STATEMENTS as u64));
    let statements_heap = meter.live();
    // Every statement and portal name and query text bounded.
    let per_entry = postgres::MAX_NAME + postgres::MAX_STORED_QUERY + 256;
    assert!(statements_heap <= 2 * postgres::MAX_STATEMENTS * per_entry);

    // 10,000 queries that are never answered.
    for i in 0..10_000 {
        whole(
            &mut s,
            true,
            &pg_msg(b'Q', format!("SELECT {i}\0").as_bytes()),
            &mut stats,
        );
        assert_bounded(&s, 2 * postgres::MAX_STATEMENTS);
    }
    assert_eq!(s.footprint().0, MAX_PENDING);
    assert_eq!(stats.untracked_requests, 10_000 - MAX_PENDING as u64);
}

fn my_packet(seq: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut p = len.to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(body);
    p
}

fn my(seq: u8, body: &[u8]) -> Vec<u8> {
    my_packet(seq, body.len() as u32, body)
}

#[test]
fn mysql_chain_of_maximal_packets_is_skipped_by_length() {
    let mut s = MySqlSession::new(false);
    let mut stats = DbStats::default();
    let meter = Meter::start();
    // A 4 GiB COM_QUERY: 256 packets of 16 MiB - 1 (the largest length, "continues"),
    // 1 KiB of each captured.
    for seq in 0..=255u8 {
        let mut p = my_packet(seq, 0xFF_FFFF, b"\x03SELECT '");
        p.resize(1024, b'x');
        feed(&mut s, true, &p, 4 + 0xFF_FFFF, &mut stats);
        assert_bounded(&s, mysql::MAX_STATEMENTS);
    }
    whole(&mut s, true, &my(0, b"\x03SELECT 1"), &mut stats);
    whole(&mut s, false, &my(1, &[0, 0, 0, 2, 0, 0, 0]), &mut stats);
    assert_bounded(&s, mysql::MAX_STATEMENTS);
    assert!(meter.peak() <= 8 * MAX_KEEP, "peak {}", meter.peak());
}

#[test]
fn mysql_prepare_and_query_floods_stay_bounded_and_are_counted() {
    let mut s = MySqlSession::new(false);
    let mut stats = DbStats::default();
    for id in 0..10_000u32 {
        let q = format!("\x16SELECT a FROM t WHERE id = ? -- {id}");
        whole(&mut s, true, &my(0, q.as_bytes()), &mut stats);
        let mut ok = vec![0];
        ok.extend_from_slice(&id.to_le_bytes());
        ok.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0]);
        whole(&mut s, false, &my(1, &ok), &mut stats);
        assert_bounded(&s, mysql::MAX_STATEMENTS);
    }
    assert_eq!(s.footprint().1, mysql::MAX_STATEMENTS);
    assert_eq!(
        stats.evicted_statements,
        10_000 - mysql::MAX_STATEMENTS as u64
    );
    let mut s = MySqlSession::new(false);
    let mut stats = DbStats::default();
    // Pipelined without answers (MySQL clients wait, a hostile one need not).
    for i in 0..10_000 {
        whole(
            &mut s,
            true,
            &my(0, format!("\x03SELECT {i}").as_bytes()),
            &mut stats,
        );
        assert_bounded(&s, 0);
    }
    assert_eq!(s.footprint().0, MAX_PENDING);
    assert_eq!(stats.untracked_requests, 10_000 - MAX_PENDING as u64);
}

#[test]
fn redis_giant_bulk_lengths_are_skipped_by_length() {
    let mut s = RedisSession::new(true);
    let mut stats = DbStats::default();
    // SET k <2^31 bytes>: 1 KiB captured, the rest in the loader's largest writes.
    let mut cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483648\r\n".to_vec();
    let header = cmd.len() as u64;
    cmd.resize(1024, b'v');
    let meter = Meter::start();
    let mut left = header + (1 << 31) + 2;
    let mut first = true;
    while left > 0 {
        let total = left.min(MAX_RW);
        feed(
            &mut s,
            true,
            if first { &cmd } else { &[] },
            total,
            &mut stats,
        );
        left -= total;
        first = false;
        assert_bounded(&s, 0);
    }
    assert_eq!(whole(&mut s, false, b"+OK\r\n", &mut stats), 1);
    // Lengths the reader cannot skip to the end of: bounded while they last, then
    // given up at the loss of events that follows.
    for len in ["9223372036854775807", "4294967296"] {
        let reply = format!("${len}\r\nvvvv");
        whole(&mut s, true, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", &mut stats);
        feed(&mut s, false, reply.as_bytes(), MAX_RW, &mut stats);
        assert_bounded(&s, 0);
        let mut out = Vec::new();
        s.lose(2_000, &mut stats, &mut out);
        assert_eq!(out.len(), 1, "reported truncated");
    }
    assert!(meter.peak() <= 4 * MAX_LINE_KEEP, "peak {}", meter.peak());
    // A length that is not a number: an error.
    let errors = stats.parse_errors;
    let mut s = RedisSession::new(true);
    whole(
        &mut s,
        true,
        b"*1\r\n$99999999999999999999\r\nx\r\n",
        &mut stats,
    );
    assert_eq!(stats.parse_errors, errors + 1);
}

#[test]
fn redis_endless_lines_nesting_and_pipelines_stay_bounded() {
    let mut s = RedisSession::new(true);
    let mut stats = DbStats::default();
    let nesting = b"*1\r\n".repeat(10_000);
    let meter = Meter::start();
    // A line without end, 1 MiB in 1 KiB reads: given up at 64 KiB.
    whole(&mut s, true, b"*1\r\n$", &mut stats);
    for _ in 0..1024 {
        whole(&mut s, true, &[b'9'; 1024], &mut stats);
        assert_bounded(&s, 0);
    }
    assert_eq!(stats.parse_errors, 1);
    // Nesting 10,000 deep, in one write: refused past 32 levels.
    let mut s = RedisSession::new(true);
    whole(&mut s, false, &nesting, &mut stats);
    assert_eq!(stats.parse_errors, 2);
    assert_bounded(&s, 0);
    // An aggregate announcing 2^31 elements, then a few: waits, bounded.
    whole(&mut s, false, b"*2147483648\r\n:1\r\n:2\r\n", &mut stats);
    assert_bounded(&s, 0);
    assert!(meter.peak() <= 8 * MAX_LINE_KEEP, "peak {}", meter.peak());

    // 10,000 pipelined commands, no reply.
    let mut s = RedisSession::new(true);
    let mut stats = DbStats::default();
    let pipeline = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(10_000);
    whole(&mut s, true, &pipeline, &mut stats);
    assert_eq!(s.footprint().0, MAX_PENDING);
    assert_eq!(stats.untracked_requests, 10_000 - MAX_PENDING as u64);
}

/// The same floods through the stitcher (detection, the session, the connection
/// table): its footprint stays within the databases' bounds.
#[test]
fn database_floods_through_the_stitcher_stay_bounded() {
    let mut st = Stitcher::new();
    let mut events = vec![opened(1, 1, Role::Server), opened(1, 2, Role::Server)];
    let body = b"\x00\x03\x00\x00user\x00app\x00\x00";
    let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    events.push(data(2, 1, IN, &startup));
    events.push(data(3, 1, OUT, &pg_msg(b'Z', b"I")));
    for i in 0..2_000u64 {
        events.push(data(10 + i, 1, IN, &pg_msg(b'Q', b"SELECT 1\0")));
        events.push(data(10 + i, 2, IN, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"));
    }
    push_all(&mut st, events);
    let f = st.footprint();
    assert_eq!(f.pending, MAX_PENDING);
    assert!(f.buffered <= 2 * MAX_KEEP);
    assert_eq!(
        st.stats().untracked_requests,
        2 * (2_000 - MAX_PENDING as u64)
    );
}
