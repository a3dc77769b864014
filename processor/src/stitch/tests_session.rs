//! Every protocol's session through the common [`Session`] trait, made by its
//! detector from the registry: the same conversation split at every byte gives the
//! same transactions; a loss reports what was waiting as truncated; a close reports
//! it as closed. One table of conversations, one set of checks.

use super::link::Linker;
use super::*;

use crate::model::{Exchange, Transaction};
use crate::protocols::http2::testutil::{data as h2data, headers, settings};
use crate::protocols::http2::PREFACE;
use crate::protocols::{Origin, Segment, Task};

use tandem_proto::v1::Direction::{Egress, Ingress};

/// One step of a conversation seen from a CLIENT process: its direction and bytes.
type Step = (Direction, Vec<u8>);

/// A protocol's sample conversation: the client's requests (EGRESS) and the
/// server's answers (INGRESS), with how many transactions it holds, and the index
/// of a step after which one request is left waiting (for the loss and close
/// checks).
struct Conversation {
    name: &'static str,
    steps: Vec<Step>,
    transactions: usize,
    waiting_after: usize,
}

fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn mysql_pkt(seq: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(body);
    p
}

fn conversations() -> Vec<Conversation> {
    let http1 = Conversation {
        name: "http1",
        steps: vec![
            (Egress, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            (
                Ingress,
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            ),
            (
                Egress,
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz".to_vec(),
            ),
            (
                Ingress,
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            (Egress, b"GET /c HTTP/1.1\r\n\r\n".to_vec()),
        ],
        transactions: 2,
        waiting_after: 4,
    };
    let mut preface = PREFACE.to_vec();
    preface.extend(settings());
    preface.extend(headers(
        1,
        true,
        &[(":method", "GET"), (":path", "/a"), (":scheme", "http")],
    ));
    let mut answer = settings();
    answer.extend(headers(1, false, &[(":status", "200")]));
    answer.extend(h2data(1, true, b"hello"));
    let http2 = Conversation {
        name: "http2",
        steps: vec![
            (Egress, preface),
            (Ingress, answer),
            (
                Egress,
                headers(
                    3,
                    true,
                    &[(":method", "GET"), (":path", "/b"), (":scheme", "http")],
                ),
            ),
        ],
        transactions: 1,
        waiting_after: 2,
    };
    let startup_body = b"\x00\x03\x00\x00user\x00postgres\x00database\x00shop\x00\x00";
    let mut startup = (startup_body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend_from_slice(startup_body);
    let pg_answer = |tag: &[u8]| [pg_msg(b'C', tag), pg_msg(b'Z', b"I")].concat();
    let postgres = Conversation {
        name: "postgresql",
        steps: vec![
            (Egress, startup),
            (
                Ingress,
                [pg_msg(b'R', &[0; 4]), pg_msg(b'Z', b"I")].concat(),
            ),
            (Egress, pg_msg(b'Q', b"SELECT a FROM t\0")),
            (Ingress, pg_answer(b"SELECT 1\0")),
            (Egress, pg_msg(b'Q', b"DELETE FROM t WHERE a = 1\0")),
            (Ingress, pg_answer(b"DELETE 1\0")),
            (Egress, pg_msg(b'Q', b"SELECT pg_sleep(9)\0")),
        ],
        transactions: 2,
        waiting_after: 6,
    };
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"10.11.19-MariaDB\0");
    greeting.extend_from_slice(&[1, 0, 0, 0]);
    greeting.extend_from_slice(&[b'x'; 30]);
    let ok = |seq| mysql_pkt(seq, &[0, 0, 0, 2, 0, 0, 0]);
    let query = |q: &str| {
        let mut b = vec![3];
        b.extend_from_slice(q.as_bytes());
        mysql_pkt(0, &b)
    };
    let mysql = Conversation {
        name: "mysql",
        steps: vec![
            (Ingress, mysql_pkt(0, &greeting)),
            (Egress, mysql_pkt(1, &[0; 40])),
            (Ingress, ok(2)),
            (Egress, query("UPDATE t SET a = 2")),
            (Ingress, ok(1)),
            (Egress, query("DELETE FROM t")),
            (Ingress, ok(1)),
            (Egress, query("UPDATE t SET a = 3")),
        ],
        transactions: 2,
        waiting_after: 7,
    };
    let redis = Conversation {
        name: "redis",
        steps: vec![
            (
                Egress,
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n".to_vec(),
            ),
            (Ingress, b"+OK\r\n".to_vec()),
            (Egress, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()),
            (Ingress, b"$1\r\nv\r\n".to_vec()),
            (Egress, b"*2\r\n$3\r\nGET\r\n$1\r\nz\r\n".to_vec()),
        ],
        transactions: 2,
        waiting_after: 4,
    };
    vec![http1, http2, postgres, mysql, redis]
}

/// A client connection's metadata.
fn client_meta() -> ConnMeta {
    ConnMeta {
        pid: 9,
        conn_id: 1,
        side: Some(Side::Client),
        local: Some("127.0.0.1:40000".parse().expect("addr")),
        peer: Some("127.0.0.1:9000".parse().expect("addr")),
        preexisting: false,
        requests_seen: 0,
    }
}

/// The session the registry's detectors (or the fallback) make for `first`.
fn session_for(first: &Step, limits: &Limits) -> Box<dyn Session> {
    let meta = client_meta();
    let probe = Probe {
        payload: &first.1,
        total: first.1.len() as u64,
        direction: first.0,
        side: meta.side,
        fresh: true,
        preexisting: false,
        requests_seen: 0,
        attempts: 0,
        current: None,
        limits,
    };
    match REGISTRY.iter().find_map(|p| p.detect(&probe)) {
        Some(d) => d.session,
        None => REGISTRY
            .iter()
            .find_map(|p| p.fallback(&meta, limits))
            .expect("a session"),
    }
}

/// What the checks compare: protocol part and completion (no times, no tids).
fn key(t: &Transaction) -> (String, Completion) {
    let what = match &t.exchange {
        Exchange::Http(h) => format!(
            "{} {} {:?} {} {:?}",
            h.request.method,
            h.request.path,
            h.response.as_ref().map(|r| (r.status, r.body_size)),
            h.request.body_size,
            t.side
        ),
        Exchange::Db(op) => format!(
            "{:?} {:?} {:?} {:?}",
            op.system, op.operation, op.query_text, t.side
        ),
    };
    (what, t.completion)
}

/// Feeds `steps` (each cut into `pieces`) to a session made by detection; then
/// `end`: close, lose, or nothing.
fn run(steps: &[Step], cut: Option<(usize, usize)>, end: End) -> (Vec<Transaction>, &'static str) {
    let limits = Limits::default();
    let mut session = session_for(&steps[0], &limits);
    let mut meta = client_meta();
    let mut stats = StitchStats::default();
    let mut out = Vec::new();
    let mut linker = Linker::default();
    let mut t = 0u64;
    for (i, (dir, bytes)) in steps.iter().enumerate() {
        let pieces: Vec<&[u8]> = match cut {
            Some((step, at)) if step == i => vec![&bytes[..at], &bytes[at..]],
            _ => vec![&bytes[..]],
        };
        for piece in pieces {
            t += 10;
            let seg = Segment::new(
                piece,
                piece.len() as u64,
                Origin {
                    mono_ns: t,
                    task: Task::thread(9),
                },
            );
            let mut ctx = Ctx {
                meta: &mut meta,
                out: &mut out,
                stats: &mut stats,
                linker: &mut linker,
                realtime_offset_ns: 0,
            };
            session.feed(&seg, *dir, &mut ctx);
        }
    }
    let mut ctx = Ctx {
        meta: &mut meta,
        out: &mut out,
        stats: &mut stats,
        linker: &mut linker,
        realtime_offset_ns: 0,
    };
    match end {
        End::Close => session.close(t + 10, &mut ctx),
        End::Lose => session.lose(t + 10, &mut ctx),
        End::Nothing => {}
    }
    assert_eq!(
        stats.transactions,
        out.len() as u64,
        "every transaction counted once"
    );
    (out, session.name())
}

#[derive(Clone, Copy)]
enum End {
    Close,
    Lose,
    Nothing,
}

#[test]
fn every_session_is_made_by_its_detector() {
    for c in conversations() {
        let (out, name) = run(&c.steps, None, End::Nothing);
        assert_eq!(name, c.name);
        assert_eq!(out.len(), c.transactions, "{}: {out:#?}", c.name);
        assert!(
            out.iter().all(|t| t.completion == Completion::Complete),
            "{}: {out:#?}",
            c.name
        );
    }
}

#[test]
fn split_at_every_byte_gives_the_same_transactions() {
    for c in conversations() {
        let want: Vec<_> = run(&c.steps, None, End::Close).0.iter().map(key).collect();
        for (i, (_, bytes)) in c.steps.iter().enumerate() {
            for at in 1..bytes.len() {
                // The first step decides the protocol: cut it and the detector sees
                // its first piece, which must still be recognised (HTTP/2's preface
                // from 3 bytes, the fallback for HTTP/1), so only later steps are cut
                // for the database protocols, whose detectors need a whole message.
                if i == 0 && !matches!(c.name, "http1" | "http2") {
                    continue;
                }
                if i == 0 && c.name == "http2" && at < 3 {
                    continue;
                }
                let got: Vec<_> = run(&c.steps, Some((i, at)), End::Close)
                    .0
                    .iter()
                    .map(key)
                    .collect();
                assert_eq!(got, want, "{}: step {i} cut at {at}", c.name);
            }
        }
    }
}

#[test]
fn a_loss_reports_what_was_waiting_as_truncated() {
    for c in conversations() {
        let (out, _) = run(&c.steps[..=c.waiting_after], None, End::Lose);
        assert_eq!(out.len(), c.transactions + 1, "{}: {out:#?}", c.name);
        let last = out.last().expect("one");
        assert_eq!(
            last.completion,
            Completion::Truncated,
            "{}: {last:#?}",
            c.name
        );
        assert!(out[..c.transactions]
            .iter()
            .all(|t| t.completion == Completion::Complete));
    }
}

#[test]
fn a_close_reports_what_was_waiting_as_closed() {
    for c in conversations() {
        let (out, _) = run(&c.steps[..=c.waiting_after], None, End::Close);
        assert_eq!(out.len(), c.transactions + 1, "{}: {out:#?}", c.name);
        let last = out.last().expect("one");
        assert_eq!(
            last.completion,
            Completion::ConnectionClosed,
            "{}: {last:#?}",
            c.name
        );
    }
}

#[test]
fn footprints_are_empty_after_a_close() {
    let limits = Limits::default();
    for c in conversations() {
        let mut session = session_for(&c.steps[0], &limits);
        let (mut meta, mut stats, mut out) = (client_meta(), StitchStats::default(), Vec::new());
        let mut linker = Linker::default();
        let mut ctx = Ctx {
            meta: &mut meta,
            out: &mut out,
            stats: &mut stats,
            linker: &mut linker,
            realtime_offset_ns: 0,
        };
        for (i, (dir, bytes)) in c.steps.iter().enumerate() {
            let seg = Segment::new(
                bytes,
                bytes.len() as u64,
                Origin {
                    mono_ns: i as u64,
                    task: Task::thread(1),
                },
            );
            session.feed(&seg, *dir, &mut ctx);
        }
        assert!(session.footprint().pending >= 1, "{}: one waits", c.name);
        session.close(100, &mut ctx);
        assert_eq!(session.footprint().pending, 0, "{}", c.name);
    }
}
