use super::*;
use crate::protocols::db::MAX_PENDING;
use crate::protocols::db_tests::{assert_split_anywhere_same, error_code, run, s, Feed};
use proptest::prelude::*;

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    b
}

type Row = (Option<String>, Option<String>, Option<String>, u64, u64);

fn summary(f: &[Finished]) -> Vec<Row> {
    f.iter()
        .map(|f| {
            (
                f.operation.clone(),
                f.query_text.clone(),
                error_code(f),
                f.origin.mono_ns,
                f.end_mono_ns,
            )
        })
        .collect()
}

fn conversation() -> Vec<(bool, Vec<u8>)> {
    vec![
        (true, cmd(&["set", "user:1", "alice"])),
        (false, b"+OK\r\n".to_vec()),
        (true, cmd(&["GET", "user:1"])),
        (false, b"$5\r\nalice\r\n".to_vec()),
        (true, cmd(&["INCR", "user:1"])),
        (false, b"-ERR value is not an integer or out of range\r\n".to_vec()),
        // Pipelined, with nested, null, RESP3 map and push replies.
        (true, [cmd(&["HGETALL", "h"]), cmd(&["GET", "missing"]), cmd(&["LRANGE", "l", "0", "-1"]), b"PING\r\n".to_vec()].concat()),
        (false, b"%1\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n>2\r\n$7\r\nmessage\r\n$1\r\nx\r\n_\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n+PONG\r\n".to_vec()),
        (true, cmd(&["EVAL", "x", "0"])),
        (false, b"!21\r\nSYNTAX invalid syntax\r\n".to_vec()),
    ]
}

#[test]
fn commands_replies_errors_and_pipelining() {
    let mut session = RedisSession::new(true);
    let (out, stats) = run(&mut session, &conversation());
    assert_eq!(
        summary(&out),
        vec![
            (s("SET"), s("SET user:1 ?"), None, 1, 2),
            (s("GET"), s("GET user:1"), None, 3, 4),
            (s("INCR"), s("INCR user:1"), s("ERR"), 5, 6),
            (s("HGETALL"), s("HGETALL h"), None, 7, 8),
            (s("GET"), s("GET missing"), None, 7, 8),
            (s("LRANGE"), s("LRANGE l ? ?"), None, 7, 8),
            (s("PING"), s("PING"), None, 7, 8),
            (s("EVAL"), s("EVAL x ?"), s("SYNTAX"), 9, 10),
        ]
    );
    assert_eq!(
        out[2].error.as_ref().map(|e| e.message.as_str()),
        Some("ERR value is not an integer or out of range")
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

#[test]
fn split_at_every_byte() {
    assert_split_anywhere_same(
        &conversation(),
        || RedisSession::new(true),
        |f| (f.operation.clone(), f.query_text.clone(), error_code(f)),
    );
}

#[test]
fn big_values_are_skipped_by_length() {
    let mut f = Feed::new(RedisSession::new(true));
    let value = "v".repeat(100_000);
    let set = cmd(&["SET", "big", &value]);
    f.request(&set[..1024], set.len() as u64, 1);
    let get = cmd(&["GET", "big"]);
    f.request(&get, get.len() as u64, 2);
    f.response(b"+OK\r\n", 5, 3);
    let reply = format!("$100000\r\n{value}\r\n").into_bytes();
    f.response(&reply[..1024], reply.len() as u64, 4);
    assert_eq!(
        summary(&f.out),
        vec![
            (s("SET"), s("SET big ?"), None, 1, 3),
            (s("GET"), s("GET big"), None, 2, 4)
        ]
    );
    assert_eq!(f.stats.lost_sync, 0);
}

#[test]
fn hidden_pipelined_commands_do_not_shift_pairing() {
    let mut f = Feed::new(RedisSession::new(true));
    // 100 pipelined SETs in one write, only the first 1 KiB captured.
    let mut many = vec![];
    for i in 0..100 {
        many.extend(cmd(&["SET", &format!("k{i}"), "0123456789"]));
    }
    f.request(&many[..1024], many.len() as u64, 1);
    let seen = f.out.len() + f.session.footprint().0;
    assert!(seen > 10 && seen < 100, "{seen}");
    let replies = b"+OK\r\n".repeat(100);
    f.response(&replies, replies.len() as u64, 2);
    assert_eq!(f.out.len(), seen);
    // The next command pairs with its own reply.
    let get = cmd(&["GET", "k1"]);
    f.request(&get, get.len() as u64, 3);
    f.response(b"$1\r\nx\r\n", 7, 4);
    let last = f.out.last().expect("last");
    assert_eq!(
        (last.query_text.as_deref(), last.end_mono_ns),
        (Some("GET k1"), 4)
    );
    assert_eq!(f.stats.unpaired_responses, 0);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 0u64..5000), 0..40),
    ) {
        let mut f = Feed::new(RedisSession::new(false));
        for (i, (req, bytes, extra)) in chunks.iter().enumerate() {
            f.send(*req, bytes, bytes.len() as u64 + extra, i as u64);
            let (pending, _, buffered) = f.session.footprint();
            prop_assert!(pending <= MAX_PENDING);
            prop_assert!(buffered <= 4 * MAX_LINE_KEEP + 8 * 64);
        }
        f.session.close(1_000, &mut f.stats, &mut f.out);
        prop_assert_eq!(f.stats.transactions, f.out.len() as u64);
    }

    #[test]
    fn resp_like_bytes_never_panic(
        parts in proptest::collection::vec(prop_oneof![
            Just(b"*2\r\n".to_vec()), Just(b"$3\r\nGET\r\n".to_vec()), Just(b"+OK\r\n".to_vec()),
            Just(b"-ERR x\r\n".to_vec()), Just(b"%1\r\n".to_vec()), Just(b">1\r\n".to_vec()),
            Just(b"$-1\r\n".to_vec()), Just(b"*-1\r\n".to_vec()), Just(b"\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ], 0..60),
    ) {
        let bytes = parts.concat();
        let mut session = RedisSession::new(true);
        let mut stats = DbStats::default();
        let mut out = vec![];
        let seg = Segment::new(&bytes, bytes.len() as u64, Origin::default());
        session.request(&seg, &mut stats, &mut out);
        session.response(&seg, &mut stats, &mut out);
        session.close(1, &mut stats, &mut out);
        prop_assert_eq!(stats.transactions, out.len() as u64);
    }
}
