//! Linking (`stitch/link.rs`): by thread within a process, by both ends of a
//! connection across processes, the runtime rules and the counters.

use super::link::{thread_rule, ThreadRule, Unlinked};
use super::tests::{event, IN, OUT};
use super::*;

use crate::model::{LinkKind, TraceIds};
use tandem_proto::v1::{ConnectionOpened, Data, ProcessStarted, SocketAddress};

fn addr(ip: [u8; 4], port: u32) -> Option<SocketAddress> {
    Some(SocketAddress {
        ip: ip.to_vec().into(),
        port,
    })
}

const LO: [u8; 4] = [127, 0, 0, 1];

/// Builds events with increasing timestamps.
#[derive(Default)]
pub(super) struct Script {
    t: u64,
    events: Vec<Event>,
}

impl Script {
    pub(super) fn push(&mut self, kind: EventKind) -> &mut Self {
        self.t += 1000;
        self.events.push(event(self.t, kind));
        self
    }

    pub(super) fn process(&mut self, pid: u32, exe: &str, container: &str) -> &mut Self {
        self.push(EventKind::ProcessStarted(ProcessStarted {
            pid,
            exe_path: exe.into(),
            cmdline: vec![exe.into()],
            container_id: container.into(),
            ..ProcessStarted::default()
        }))
    }

    /// A connection of `pid` from `local` to `peer` (ports on 127.0.0.1).
    pub(super) fn conn(
        &mut self,
        pid: u32,
        conn: u64,
        role: Role,
        local: u32,
        peer: u32,
    ) -> &mut Self {
        self.push(EventKind::ConnectionOpened(ConnectionOpened {
            pid,
            tid: pid,
            conn_id: conn,
            local: addr(LO, local),
            peer: addr(LO, peer),
            role: role as i32,
            preexisting: false,
        }))
    }

    pub(super) fn data(
        &mut self,
        pid: u32,
        tid: u32,
        conn: u64,
        dir: Direction,
        bytes: &[u8],
    ) -> &mut Self {
        self.go(pid, tid, (0, 0), conn, dir, bytes)
    }

    /// Data of a Go process moved for goroutine `go.0` (created by `go.1`).
    pub(super) fn go(
        &mut self,
        pid: u32,
        tid: u32,
        go: (u64, u64),
        conn: u64,
        dir: Direction,
        bytes: &[u8],
    ) -> &mut Self {
        self.push(EventKind::Data(Data {
            pid,
            tid,
            conn_id: conn,
            direction: dir as i32,
            total_len: bytes.len() as u64,
            payload: bytes.to_vec().into(),
            truncated: false,
            goroutine: go.0,
            goroutine_parent: go.1,
        }))
    }

    pub(super) fn run(&self) -> (Vec<Transaction>, Stitcher) {
        let mut s = Stitcher::new();
        let mut out = Vec::new();
        for e in &self.events {
            s.push(e, 0, &mut out);
        }
        (out, s)
    }
}

impl Script {
    /// As [`Script::run`], with ids derived from `key` and the positions of a
    /// subscription of `epoch` (the events at positions 1, 2, ...), as the engine
    /// feeds them.
    fn run_at(&self, key: u64, epoch: u64) -> Vec<Transaction> {
        let mut s = Stitcher::new();
        s.set_id_key(key);
        let mut out = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            s.set_position(epoch, i as u64 + 1);
            s.push(e, 0, &mut out);
        }
        out
    }
}

#[test]
fn ids_derive_from_the_key_the_epoch_and_the_position() {
    let script = two_tier("/usr/bin/python3.11");
    let spans = |txs: &[Transaction]| -> Vec<(u128, u64, u64, crate::resume::Begin)> {
        txs.iter()
            .map(|t| {
                let i = ids(t);
                (i.trace_id, i.span_id, i.parent_span_id, i.begin)
            })
            .collect()
    };
    let first = spans(&script.run_at(7, 1));
    assert_eq!(first.len(), 4);
    // A processor taking over (same key, same subscription) rebuilds the same ids.
    assert_eq!(spans(&script.run_at(7, 1)), first);
    // After a loader restart positions start again: new epoch, new ids.
    let restarted = spans(&script.run_at(7, 2));
    for (a, b) in first.iter().zip(&restarted) {
        assert_ne!(a.1, b.1, "span ids repeat across epochs");
        assert_eq!(a.3, b.3, "where each began is the same");
    }
    let span_ids: std::collections::BTreeSet<u64> =
        first.iter().chain(&restarted).map(|s| s.1).collect();
    assert_eq!(span_ids.len(), 8);
}

pub(super) fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

pub(super) const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

pub(super) fn ids(t: &Transaction) -> TraceIds {
    t.trace.expect("a stitched transaction has ids")
}

pub(super) fn by_path<'a>(txs: &'a [Transaction], pid: u32, path: &str) -> &'a Transaction {
    txs.iter()
        .find(|t| t.pid == pid && t.http().is_some_and(|h| h.request.path == path))
        .unwrap_or_else(|| panic!("no transaction of pid {pid} for {path} in {txs:#?}"))
}

/// curl (pid 1) → frontend (pid 10, python; its thread 11 serves and calls) →
/// downstream (pid 20, python).
fn two_tier(frontend_exe: &str) -> Script {
    let mut s = Script::default();
    s.process(1, "/usr/bin/curl", "")
        .process(10, frontend_exe, "")
        .process(20, "/usr/bin/python3.11", "")
        // curl connects to the frontend.
        .conn(1, 100, Role::Client, 40000, 8000)
        .conn(10, 200, Role::Server, 8000, 40000)
        .data(1, 1, 100, OUT, &get("/front"))
        .data(10, 11, 200, IN, &get("/front"))
        // The frontend's thread 11 calls the downstream.
        .conn(10, 201, Role::Client, 40001, 9000)
        .conn(20, 300, Role::Server, 9000, 40001)
        .data(10, 11, 201, OUT, &get("/down"))
        .data(20, 21, 300, IN, &get("/down"))
        .data(20, 21, 300, OUT, OK)
        .data(10, 11, 201, IN, OK)
        // The frontend answers curl.
        .data(10, 11, 200, OUT, OK)
        .data(1, 1, 100, IN, OK);
    s
}

#[test]
fn a_two_tier_call_is_one_trace_with_the_exact_chain() {
    let (txs, stitcher) = two_tier("/usr/bin/python3.11").run();
    assert_eq!(txs.len(), 4, "{txs:#?}");
    let curl = ids(by_path(&txs, 1, "/front"));
    let front = ids(by_path(&txs, 10, "/front"));
    let front_client = ids(by_path(&txs, 10, "/down"));
    let down = ids(by_path(&txs, 20, "/down"));

    assert_eq!(curl.parent_span_id, 0);
    assert_eq!(curl.link, LinkKind::Root);
    assert_eq!(
        (front.parent_span_id, front.link),
        (curl.span_id, LinkKind::Connection)
    );
    assert_eq!(
        (front_client.parent_span_id, front_client.link),
        (front.span_id, LinkKind::Thread)
    );
    assert_eq!(
        (down.parent_span_id, down.link),
        (front_client.span_id, LinkKind::Connection)
    );
    for t in [front, front_client, down] {
        assert_eq!(t.trace_id, curl.trace_id);
    }
    let spans = [
        curl.span_id,
        front.span_id,
        front_client.span_id,
        down.span_id,
    ];
    let mut unique = spans.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "span ids are distinct");

    // Each end knows the other's process.
    assert_eq!(
        [
            curl.peer_pid,
            front.peer_pid,
            front_client.peer_pid,
            down.peer_pid
        ],
        [10, 1, 20, 10]
    );

    let st = stitcher.link_stats();
    assert_eq!(st.server_by_connection, 2);
    assert_eq!(st.client_by_thread, 1);
    // curl's own call: a plain client, not serving anything.
    assert_eq!(st.unlinked(Unlinked::NoServerRequest), 1);
    assert_eq!(st.unlinked_total(), 1);
    assert_eq!(stitcher.linker.entries(), 0, "nothing left in flight");
}

#[test]
fn a_runtime_not_serving_on_one_thread_is_not_linked_by_thread() {
    let (txs, stitcher) = two_tier("/usr/local/bin/my-tokio-server").run();
    let front = ids(by_path(&txs, 10, "/front"));
    let front_client = ids(by_path(&txs, 10, "/down"));
    let down = ids(by_path(&txs, 20, "/down"));
    assert_eq!(front_client.link, LinkKind::Root);
    assert_ne!(front_client.trace_id, front.trace_id);
    // Both ends of each connection still link.
    assert_eq!(down.parent_span_id, front_client.span_id);
    assert_eq!(front.link, LinkKind::Connection);
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::Runtime), 1);
}

#[test]
fn threads_interleaving_requests_link_each_to_its_own() {
    let mut s = Script::default();
    s.process(10, "/usr/bin/python3", "")
        .conn(10, 200, Role::Server, 8000, 40000)
        .conn(10, 201, Role::Server, 8000, 40002)
        .conn(10, 300, Role::Client, 40100, 9000)
        .conn(10, 301, Role::Client, 40101, 9000)
        // Thread 11 serves /a on 200, thread 12 serves /b on 201, interleaved.
        .data(10, 11, 200, IN, &get("/a"))
        .data(10, 12, 201, IN, &get("/b"))
        .data(10, 12, 301, OUT, &get("/b-call"))
        .data(10, 11, 300, OUT, &get("/a-call"))
        .data(10, 11, 300, IN, OK)
        .data(10, 12, 301, IN, OK)
        .data(10, 12, 201, OUT, OK)
        .data(10, 11, 200, OUT, OK);
    let (txs, stitcher) = s.run();
    let a = ids(by_path(&txs, 10, "/a"));
    let b = ids(by_path(&txs, 10, "/b"));
    assert_eq!(ids(by_path(&txs, 10, "/a-call")).parent_span_id, a.span_id);
    assert_eq!(ids(by_path(&txs, 10, "/b-call")).parent_span_id, b.span_id);
    assert_ne!(a.trace_id, b.trace_id);
    assert_eq!(stitcher.link_stats().client_by_thread, 2);
    assert_eq!(stitcher.link_stats().multiplexing_processes, 0);
}

#[test]
fn a_thread_serving_two_connections_at_once_stops_thread_linking() {
    let mut s = Script::default();
    s.process(10, "/usr/bin/python3", "")
        .conn(10, 200, Role::Server, 8000, 40000)
        .conn(10, 201, Role::Server, 8000, 40002)
        .conn(10, 300, Role::Client, 40100, 9000)
        // One thread reads two connections' requests: an event loop.
        .data(10, 11, 200, IN, &get("/a"))
        .data(10, 11, 201, IN, &get("/b"))
        .data(10, 11, 300, OUT, &get("/call"))
        .data(10, 11, 300, IN, OK)
        .data(10, 11, 200, OUT, OK)
        .data(10, 11, 201, OUT, OK)
        // Later, one request at a time: still not linked.
        .data(10, 11, 200, IN, &get("/c"))
        .data(10, 11, 300, OUT, &get("/call2"))
        .data(10, 11, 300, IN, OK)
        .data(10, 11, 200, OUT, OK);
    let (txs, stitcher) = s.run();
    assert_eq!(ids(by_path(&txs, 10, "/call")).link, LinkKind::Root);
    assert_eq!(ids(by_path(&txs, 10, "/call2")).link, LinkKind::Root);
    let st = stitcher.link_stats();
    assert_eq!(st.multiplexing_processes, 1);
    assert_eq!(st.unlinked(Unlinked::Multiplexing), 2);
    assert_eq!(st.client_by_thread, 0);
}

#[test]
fn pipelined_requests_on_one_thread_are_ambiguous() {
    let mut s = Script::default();
    s.process(10, "/usr/bin/python3", "")
        .conn(10, 200, Role::Server, 8000, 40000)
        .conn(10, 300, Role::Client, 40100, 9000)
        .data(10, 11, 200, IN, &[get("/a"), get("/b")].concat())
        .data(10, 11, 300, OUT, &get("/call"))
        .data(10, 11, 300, IN, OK)
        .data(10, 11, 200, OUT, &[OK, OK].concat());
    let (txs, stitcher) = s.run();
    assert_eq!(ids(by_path(&txs, 10, "/call")).link, LinkKind::Root);
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::Ambiguous), 1);
}

#[test]
fn loopback_ends_in_different_containers_are_not_linked() {
    let mut s = Script::default();
    s.process(1, "/usr/bin/curl", "aaaa")
        .process(10, "/usr/bin/python3", "bbbb")
        .conn(1, 100, Role::Client, 40000, 8000)
        .conn(10, 200, Role::Server, 8000, 40000)
        .data(1, 1, 100, OUT, &get("/x"))
        .data(10, 11, 200, IN, &get("/x"))
        .data(10, 11, 200, OUT, OK)
        .data(1, 1, 100, IN, OK);
    let (txs, stitcher) = s.run();
    assert_eq!(ids(by_path(&txs, 10, "/x")).link, LinkKind::Root);
    assert_eq!(stitcher.link_stats().server_roots, 1);
    assert_eq!(stitcher.linker.entries(), 0);
}

#[test]
fn keep_alive_requests_link_one_by_one() {
    let mut s = Script::default();
    s.process(1, "/usr/bin/curl", "")
        .process(10, "/usr/bin/python3", "")
        .conn(1, 100, Role::Client, 40000, 8000)
        .conn(10, 200, Role::Server, 8000, 40000);
    for p in ["/1", "/2", "/3"] {
        s.data(1, 1, 100, OUT, &get(p))
            .data(10, 11, 200, IN, &get(p))
            .data(10, 11, 200, OUT, OK)
            .data(1, 1, 100, IN, OK);
    }
    let (txs, _) = s.run();
    for p in ["/1", "/2", "/3"] {
        let client = ids(by_path(&txs, 1, p));
        let server = ids(by_path(&txs, 10, p));
        assert_eq!(server.parent_span_id, client.span_id, "{p}");
        assert_eq!(server.trace_id, client.trace_id, "{p}");
    }
}

#[test]
fn a_traceparent_wins_over_the_connection() {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = format!("GET /t HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n");
    let mut s = Script::default();
    s.process(1, "/usr/bin/curl", "")
        .process(10, "/usr/bin/python3", "")
        .conn(1, 100, Role::Client, 40000, 8000)
        .conn(10, 200, Role::Server, 8000, 40000)
        .data(1, 1, 100, OUT, req.as_bytes())
        .data(10, 11, 200, IN, req.as_bytes())
        .data(10, 11, 200, OUT, OK)
        .data(1, 1, 100, IN, OK);
    let (txs, stitcher) = s.run();
    let server = ids(by_path(&txs, 10, "/t"));
    let client = ids(by_path(&txs, 1, "/t"));
    for t in [server, client] {
        assert_eq!(t.link, LinkKind::TraceParent);
        assert_eq!(t.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(t.parent_span_id, 0xb7ad6b7169203331);
        assert_eq!(t.remote_sampled, Some(true));
    }
    let st = stitcher.link_stats();
    assert_eq!((st.server_by_traceparent, st.client_by_traceparent), (1, 1));
}

#[test]
fn a_database_call_links_to_its_threads_server_request() {
    let mut s = Script::default();
    s.process(10, "/usr/bin/python3", "")
        .conn(10, 200, Role::Server, 8000, 40000)
        .conn(10, 300, Role::Client, 40100, 6379)
        .data(10, 11, 200, IN, &get("/r"))
        .data(10, 11, 300, OUT, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        .data(10, 11, 300, IN, b"$1\r\nv\r\n")
        .data(10, 11, 200, OUT, OK);
    let (txs, _) = s.run();
    let server = ids(by_path(&txs, 10, "/r"));
    let redis = txs
        .iter()
        .find(|t| t.db().is_some())
        .map(ids)
        .expect("a redis transaction");
    assert_eq!(
        (redis.parent_span_id, redis.link),
        (server.span_id, LinkKind::Thread)
    );
    assert_eq!(redis.trace_id, server.trace_id);
}

#[test]
fn runtimes() {
    let rule = |exe: &str, args: &[&str]| {
        let cmdline: Vec<String> = std::iter::once(exe)
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        thread_rule(exe, &cmdline)
    };
    assert_eq!(rule("/usr/bin/python3.11", &["app.py"]), ThreadRule::Linked);
    assert_eq!(rule("/usr/bin/ruby", &["puma"]), ThreadRule::Linked);
    assert_eq!(rule("/usr/sbin/php-fpm8.2", &[]), ThreadRule::Linked);
    assert_eq!(rule("/usr/sbin/apache2", &[]), ThreadRule::Linked);
    for (exe, args) in [
        ("/usr/bin/python3", &["-m", "uvicorn", "app:app"][..]),
        ("/usr/bin/python3", &["gunicorn", "-k", "gevent"][..]),
        ("/usr/bin/node", &["server.js"][..]),
        ("/usr/sbin/nginx", &[][..]),
        ("/usr/bin/java", &["-jar", "app.jar"][..]),
        ("/srv/goblog", &[][..]),
    ] {
        assert_eq!(
            rule(exe, args),
            ThreadRule::NotThreadPerRequest,
            "{exe} {args:?}"
        );
    }
}

#[test]
fn an_unknown_process_is_not_linked_by_thread() {
    let mut s = Script::default();
    s.conn(10, 200, Role::Server, 8000, 40000)
        .conn(10, 300, Role::Client, 40100, 9000)
        .data(10, 11, 200, IN, &get("/a"))
        .data(10, 11, 300, OUT, &get("/call"))
        .data(10, 11, 300, IN, OK)
        .data(10, 11, 200, OUT, OK);
    let (txs, stitcher) = s.run();
    assert_eq!(ids(by_path(&txs, 10, "/call")).link, LinkKind::Root);
    assert_eq!(stitcher.link_stats().unlinked(Unlinked::UnknownProcess), 1);
}

/// On loopback the server's read can be stamped (and seen) just before the client's
/// send: the server span is still linked when the client's event follows closely.
#[test]
fn a_client_event_seen_just_after_its_server_still_links() {
    let run = |gap_ns: u64, server_calls_first: bool| {
        let mut s = Script::default();
        s.process(1, "/usr/bin/curl", "")
            .process(10, "/usr/bin/python3", "")
            .conn(1, 100, Role::Client, 40000, 8000)
            .conn(10, 200, Role::Server, 8000, 40000)
            .conn(10, 300, Role::Client, 40100, 9000)
            .data(10, 11, 200, IN, &get("/x"));
        if server_calls_first {
            s.data(10, 11, 300, OUT, &get("/call"));
        }
        s.t += gap_ns;
        s.data(1, 1, 100, OUT, &get("/x"));
        if !server_calls_first {
            s.data(10, 11, 300, OUT, &get("/call"));
        }
        s.data(10, 11, 300, IN, OK)
            .data(10, 11, 200, OUT, OK)
            .data(1, 1, 100, IN, OK);
        s.run()
    };
    let (txs, stitcher) = run(500_000, false);
    let client = ids(by_path(&txs, 1, "/x"));
    let server = ids(by_path(&txs, 10, "/x"));
    let call = ids(by_path(&txs, 10, "/call"));
    assert_eq!(
        (server.parent_span_id, server.link),
        (client.span_id, LinkKind::Connection)
    );
    assert_eq!((server.trace_id, server.peer_pid), (client.trace_id, 1));
    assert_eq!(client.peer_pid, 10);
    assert_eq!(
        (call.parent_span_id, call.trace_id),
        (server.span_id, client.trace_id)
    );
    let st = stitcher.link_stats();
    assert_eq!(
        (st.server_by_connection, st.server_roots, st.late_clients),
        (1, 0, 1)
    );
    assert_eq!(stitcher.linker.entries(), 0);

    // Too late (beyond LATE_CLIENT_NS): not linked.
    let (txs, _) = run(5_000_000, false);
    assert_eq!(ids(by_path(&txs, 10, "/x")).link, LinkKind::Root);
    // The server already linked a call of its own (its trace id was copied): not
    // linked, never a trace split in two.
    let (txs, stitcher) = run(1_000, true);
    let server = ids(by_path(&txs, 10, "/x"));
    assert_eq!(server.link, LinkKind::Root);
    assert_eq!(ids(by_path(&txs, 10, "/call")).trace_id, server.trace_id);
    assert_eq!(stitcher.link_stats().late_clients, 0);
}

/// gRPC over HTTP/2: both ends of a connection, each stream linked to its own.
#[test]
fn http2_streams_link_to_their_own_client_stream() {
    use crate::protocols::http2::testutil::{headers, settings};
    use crate::protocols::http2::PREFACE;
    let req = |stream: u32, path: &str| {
        headers(
            stream,
            true,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost:50051"),
                ("content-type", "application/grpc"),
            ],
        )
    };
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    client.extend(req(1, "/a.S/One"));
    client.extend(req(3, "/a.S/Two"));
    let mut answers = settings();
    answers.extend(headers(
        3,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    ));
    answers.extend(headers(3, true, &[("grpc-status", "0")]));
    answers.extend(headers(
        1,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    ));
    answers.extend(headers(1, true, &[("grpc-status", "0")]));
    let mut s = Script::default();
    s.process(1, "/usr/bin/grpc-client", "")
        .process(10, "/usr/bin/grpc-server", "")
        .conn(1, 100, Role::Client, 40000, 50051)
        .conn(10, 200, Role::Server, 50051, 40000)
        .data(1, 2, 100, OUT, &client)
        .data(10, 11, 200, IN, &client)
        .data(10, 12, 200, OUT, &answers)
        .data(1, 2, 100, IN, &answers);
    let (txs, stitcher) = s.run();
    assert_eq!(txs.len(), 4, "{txs:#?}");
    for path in ["/a.S/One", "/a.S/Two"] {
        let client = ids(by_path(&txs, 1, path));
        let server = ids(by_path(&txs, 10, path));
        assert_eq!(
            (server.parent_span_id, server.trace_id, server.link),
            (client.span_id, client.trace_id, LinkKind::Connection),
            "{path}"
        );
    }
    assert_eq!(stitcher.link_stats().server_by_connection, 2);
    assert_eq!(stitcher.linker.entries(), 0);
}
