use super::*;

use crate::model::{Exchange as TxExchange, HttpExchange, HttpRequest, HttpResponse};
use proptest::prelude::*;
use tandem_proto::v1::{
    ConnectionClosed, ConnectionOpened, Data, Loss, ProcessExited, SocketAddress,
};

pub(super) const IN: Direction = Direction::Ingress;
pub(super) const OUT: Direction = Direction::Egress;
pub(super) const OFFSET: i64 = 1_700_000_000_000_000_000;

pub(super) fn event(mono_ns: u64, kind: EventKind) -> Event {
    Event {
        seq: mono_ns,
        mono_ns,
        kind: Some(kind),
    }
}

pub(super) fn v4(a: [u8; 4], port: u32) -> Option<SocketAddress> {
    Some(SocketAddress {
        ip: a.to_vec().into(),
        port,
    })
}

fn opened(mono_ns: u64, pid: u32, conn_id: u64, role: Role) -> Event {
    event(
        mono_ns,
        EventKind::ConnectionOpened(ConnectionOpened {
            pid,
            tid: pid,
            conn_id,
            local: v4([127, 0, 0, 1], 18080),
            peer: v4([10, 0, 0, 2], 51234),
            role: role as i32,
            preexisting: false,
        }),
    )
}

pub(super) fn closed(mono_ns: u64, pid: u32, conn_id: u64) -> Event {
    event(
        mono_ns,
        EventKind::ConnectionClosed(ConnectionClosed {
            pid,
            tid: pid,
            conn_id,
        }),
    )
}

/// A syscall of `total` bytes of which `bytes` were captured.
pub(super) fn data_cut(
    mono_ns: u64,
    pid: u32,
    conn_id: u64,
    dir: Direction,
    bytes: &[u8],
    total: u64,
) -> Event {
    event(
        mono_ns,
        EventKind::Data(Data {
            pid,
            tid: pid + 1,
            conn_id,
            direction: dir as i32,
            total_len: total,
            payload: bytes.to_vec().into(),
            truncated: (bytes.len() as u64) < total,
            ..Data::default()
        }),
    )
}

pub(super) fn data(mono_ns: u64, pid: u32, conn_id: u64, dir: Direction, bytes: &[u8]) -> Event {
    data_cut(mono_ns, pid, conn_id, dir, bytes, bytes.len() as u64)
}

/// An HTTP transaction with its request and response at the top, as the HTTP tests
/// look at them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HttpTransaction {
    pub pid: u32,
    pub tid: u32,
    pub conn_id: u64,
    pub side: Side,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub request: HttpRequest,
    pub response: Option<HttpResponse>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub realtime_offset_ns: i64,
    pub completion: Completion,
}

/// `t` as an [`HttpTransaction`]; panics for other protocols.
pub(super) fn http(t: Transaction) -> HttpTransaction {
    let TxExchange::Http(HttpExchange { request, response }) = t.exchange else {
        panic!("not an HTTP transaction: {t:?}");
    };
    HttpTransaction {
        pid: t.pid,
        tid: t.tid,
        conn_id: t.conn_id,
        side: t.side,
        local: t.local,
        peer: t.peer,
        request,
        response,
        start_mono_ns: t.start_mono_ns,
        end_mono_ns: t.end_mono_ns,
        realtime_offset_ns: t.realtime_offset_ns,
        completion: t.completion,
    }
}

pub(super) fn run_with(stitcher: &mut Stitcher, events: &[Event]) -> Vec<HttpTransaction> {
    let mut out = Vec::new();
    for e in events {
        stitcher.push(e, OFFSET, &mut out);
    }
    out.into_iter().map(http).collect()
}

/// (largest header-block buffer, largest pending queue) over all connections.
pub(super) fn head_and_pending(stitcher: &Stitcher) -> (usize, usize) {
    let f = stitcher.footprint();
    (f.buffered, f.pending)
}

fn run(events: &[Event]) -> (Vec<HttpTransaction>, StitchStats) {
    let mut stitcher = Stitcher::new();
    let out = run_with(&mut stitcher, events);
    (out, stitcher.stats())
}

fn summary(t: &HttpTransaction) -> (String, String, Option<u16>, Completion) {
    (
        t.request.method.to_string(),
        t.request.path.clone(),
        t.response.as_ref().map(|r| r.status),
        t.completion,
    )
}

fn summaries(ts: &[HttpTransaction]) -> Vec<(String, String, Option<u16>, Completion)> {
    ts.iter().map(summary).collect()
}

fn s(
    method: &str,
    path: &str,
    status: Option<u16>,
    c: Completion,
) -> (String, String, Option<u16>, Completion) {
    (method.to_owned(), path.to_owned(), status, c)
}

const CURL_GET: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: localhost:18080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
const NGINX_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\nd\r\n{\"ok\": true}\n\r\n0\r\n\r\n";

fn python_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.0 {status}\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-type: text/html\r\nContent-Length: {}\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn server_keep_alive_with_addresses_and_timing() {
    let events = [
        opened(10, 1, 5, Role::Server),
        data(20, 1, 5, IN, CURL_GET),
        data(30, 1, 5, OUT, &python_response("200 OK", "<html>hi</html>")),
        data(40, 1, 5, IN, b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n"),
        data(50, 1, 5, OUT, NGINX_CHUNKED),
        closed(60, 1, 5),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/index.html", Some(200), Completion::Complete),
            s("GET", "/api", Some(200), Completion::Complete),
        ]
    );
    let t = &ts[0];
    assert_eq!((t.pid, t.tid, t.conn_id, t.side), (1, 2, 5, Side::Server));
    assert_eq!(t.local, "127.0.0.1:18080".parse().ok());
    assert_eq!(t.peer, "10.0.0.2:51234".parse().ok());
    assert_eq!((t.start_mono_ns, t.end_mono_ns), (20, 30));
    assert_eq!(t.realtime_offset_ns, OFFSET);
    assert_eq!(t.response.as_ref().map(|r| r.body_size), Some(15));
    assert_eq!(t.response.as_ref().map(|r| r.version), Some("1.0"));
    assert_eq!((ts[1].start_mono_ns, ts[1].end_mono_ns), (40, 50));
    assert_eq!(ts[1].response.as_ref().map(|r| r.body_size), Some(13));
    assert_eq!(stats.transactions, 2);
    assert_eq!(stats.parse_errors + stats.skipped_bytes, 0);
    assert_eq!(run_with(&mut Stitcher::new(), &[]).len(), 0);
}

#[test]
fn client_role_sends_requests_on_egress() {
    let events = [
        opened(1, 3, 9, Role::Client),
        data(
            2,
            3,
            9,
            OUT,
            b"POST /v1/traces HTTP/1.1\r\nHost: collector\r\nContent-Length: 4\r\n\r\nbody",
        ),
        data(
            3,
            3,
            9,
            IN,
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("POST", "/v1/traces", Some(202), Completion::Complete)]
    );
    assert_eq!(ts[0].side, Side::Client);
    assert_eq!(ts[0].request.body_size, 4);
}

#[test]
fn pipelined_requests_pair_fifo() {
    let reqs = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let events = [
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, reqs),
        data(3, 1, 1, OUT, &resps[..50]),
        data(4, 1, 1, OUT, &resps[50..]),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/a", Some(200), Completion::Complete),
            s("HEAD", "/b", Some(200), Completion::Complete),
            s("POST", "/c", Some(201), Completion::Complete),
        ]
    );
    assert_eq!(ts[0].end_mono_ns, 3);
    assert_eq!(ts[1].response.as_ref().map(|r| r.body_size), Some(0));
    assert_eq!(ts[2].request.body_size, 3);
    assert_eq!(stats.unpaired_responses, 0);
}

#[test]
fn http10_response_delimited_by_close() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, b"GET / HTTP/1.0\r\n\r\n"),
        data(3, 1, 1, OUT, b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nContent-type: text/html\r\n\r\n"),
        data(4, 1, 1, OUT, b"<html>directory listing</html>"),
        closed(9, 1, 1),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("GET", "/", Some(200), Completion::Complete)]
    );
    // The last byte came with the event at 4, not with the close.
    assert_eq!(ts[0].end_mono_ns, 4);
    assert_eq!(ts[0].request.version, "1.0");
    assert_eq!(ts[0].response.as_ref().map(|r| r.body_size), Some(30));
}

#[test]
fn responses_without_body() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, b"HEAD /big HTTP/1.1\r\n\r\n"),
        data(3, 1, 1, OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"),
        data(4, 1, 1, IN, b"DELETE /x HTTP/1.1\r\n\r\n"),
        data(5, 1, 1, OUT, b"HTTP/1.1 204 No Content\r\n\r\n"),
        data(6, 1, 1, IN, b"GET /c HTTP/1.1\r\nIf-None-Match: \"e\"\r\n\r\n"),
        data(7, 1, 1, OUT, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"e\"\r\n\r\n"),
        data(8, 1, 1, IN, b"GET /d HTTP/1.1\r\n\r\n"),
        data(9, 1, 1, OUT, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("HEAD", "/big", Some(200), Completion::Complete),
            s("DELETE", "/x", Some(204), Completion::Complete),
            s("GET", "/c", Some(304), Completion::Complete),
            s("GET", "/d", Some(200), Completion::Complete),
        ]
    );
    assert!(ts
        .iter()
        .take(3)
        .all(|t| t.response.as_ref().map(|r| r.body_size) == Some(0)));
    assert_eq!(
        ts.iter().map(|t| t.end_mono_ns).collect::<Vec<_>>(),
        vec![3, 5, 7, 9]
    );
}

#[test]
fn expect_100_continue() {
    let events = [
        opened(1, 1, 1, Role::Client),
        data(2, 1, 1, OUT, b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"),
        data(3, 1, 1, IN, b"HTTP/1.1 100 Continue\r\n\r\n"),
        data(4, 1, 1, OUT, b"0123456789"),
        data(5, 1, 1, IN, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("PUT", "/upload", Some(201), Completion::Complete)]
    );
    assert_eq!(ts[0].request.body_size, 10);
    assert_eq!(ts[0].request.header("expect"), Some("100-continue"));
    assert_eq!((ts[0].start_mono_ns, ts[0].end_mono_ns), (2, 5));
}

#[test]
fn request_split_across_reads_mid_line() {
    let mut events = vec![opened(1, 1, 1, Role::Server)];
    for (i, piece) in CURL_GET.chunks(7).enumerate() {
        events.push(data(100 + i as u64, 1, 1, IN, piece));
    }
    events.push(data(500, 1, 1, OUT, NGINX_CHUNKED));
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("GET", "/index.html", Some(200), Completion::Complete)]
    );
    assert_eq!(ts[0].start_mono_ns, 100);
    assert_eq!(ts[0].request.header("accept"), Some("*/*"));
}

#[test]
fn uncaptured_body_bytes_count() {
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    let mut captured = head.to_vec();
    captured.resize(1024, b'z');
    let events = [
        opened(1, 1, 1, Role::Server),
        // 1024 of 100000+head bytes captured, then the rest in one more read.
        data_cut(2, 1, 1, IN, &captured, 60_000),
        data_cut(
            3,
            1,
            1,
            IN,
            &[b'z'; 1024],
            100_000 + head.len() as u64 - 60_000,
        ),
        data_cut(
            4,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n",
            50_042,
        ),
        data(5, 1, 1, IN, CURL_GET),
        data(6, 1, 1, OUT, NGINX_CHUNKED),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("POST", "/upload", Some(200), Completion::Complete),
            s("GET", "/index.html", Some(200), Completion::Complete),
        ]
    );
    assert_eq!(ts[0].request.body_size, 100_000);
    assert_eq!(ts[0].response.as_ref().map(|r| r.body_size), Some(50_000));
    assert_eq!(stats.lost_sync, 0);
}

#[test]
fn headers_cut_by_capture_are_reported_truncated_then_resync() {
    let head = b"GET /search?q=tandem HTTP/1.1\r\nHost: x\r\nCookie: ";
    let events = [
        opened(1, 1, 1, Role::Server),
        data_cut(2, 1, 1, IN, head, 3000),
        data(
            3,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        data(4, 1, 1, IN, CURL_GET),
        data_cut(5, 1, 1, OUT, b"HTTP/1.1 200 OK\r\nX-Big: aaaa", 5000),
        data(6, 1, 1, IN, b"GET /third HTTP/1.1\r\n\r\n"),
        data(
            7,
            1,
            1,
            OUT,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/search", Some(200), Completion::Truncated),
            s("GET", "/index.html", Some(200), Completion::Truncated),
            s("GET", "/third", Some(404), Completion::Complete),
        ]
    );
    assert_eq!(ts[0].request.query.as_deref(), Some("q=tandem"));
    assert_eq!(ts[0].request.header("host"), Some("x"));
    assert_eq!(ts[1].end_mono_ns, 5);
    assert_eq!(stats.truncated, 2);
    assert_eq!(stats.lost_sync, 2);
}

#[test]
fn chunked_framing_cut_by_capture_is_truncated() {
    let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n".to_vec();
    body.extend_from_slice(b"0123");
    let events = [
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, CURL_GET),
        data_cut(3, 1, 1, OUT, &body, body.len() as u64 + 500),
        data(4, 1, 1, IN, CURL_GET),
        data(5, 1, 1, OUT, NGINX_CHUNKED),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/index.html", Some(200), Completion::Truncated),
            s("GET", "/index.html", Some(200), Completion::Complete),
        ]
    );
    assert_eq!(ts[0].response.as_ref().map(|r| r.body_size), Some(16));
}

#[test]
fn close_mid_response_and_before_response() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(
            2,
            1,
            1,
            IN,
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        ),
        data(
            3,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        data(
            4,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\npartial",
        ),
        closed(9, 1, 1),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/a", Some(200), Completion::Complete),
            s("GET", "/b", Some(200), Completion::ConnectionClosed),
            s("GET", "/c", None, Completion::ConnectionClosed),
        ]
    );
    assert_eq!(ts[1].response.as_ref().map(|r| r.body_size), Some(7));
    assert_eq!((ts[1].end_mono_ns, ts[2].end_mono_ns), (9, 9));
    assert_eq!(stats.connection_closed, 2);
}

#[test]
fn close_mid_request_body_keeps_what_was_received() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(
            2,
            1,
            1,
            IN,
            b"POST /slow HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
        closed(3, 1, 1),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("POST", "/slow", None, Completion::ConnectionClosed)]
    );
    assert_eq!(ts[0].request.body_size, 10);
    assert_eq!((ts[0].start_mono_ns, ts[0].end_mono_ns), (2, 3));
}

#[test]
fn process_exit_flushes_its_connections_only() {
    let events = [
        opened(1, 1, 1, Role::Server),
        opened(1, 1, 2, Role::Server),
        opened(1, 2, 1, Role::Server),
        data(2, 1, 1, IN, b"GET /one HTTP/1.1\r\n\r\n"),
        data(2, 1, 2, IN, b"GET /two HTTP/1.1\r\n\r\n"),
        data(2, 2, 1, IN, b"GET /other HTTP/1.1\r\n\r\n"),
        event(
            5,
            EventKind::ProcessExited(ProcessExited {
                pid: 1,
                exit_code: 0,
            }),
        ),
    ];
    let mut stitcher = Stitcher::new();
    let ts = run_with(&mut stitcher, &events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/one", None, Completion::ConnectionClosed),
            s("GET", "/two", None, Completion::ConnectionClosed),
        ]
    );
    assert_eq!(stitcher.connections(), 1);
}

#[test]
fn garbage_is_counted_and_dropped() {
    let mut events = vec![opened(1, 1, 1, Role::Server)];
    let tls = [
        0x16u8, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    events.push(data(2, 1, 1, IN, &tls));
    events.push(data(3, 1, 1, OUT, &[0x16, 0x03, 0x03, 0x00, 0x7a]));
    for i in 0..100u64 {
        events.push(data(4 + i, 1, 1, IN, &[b'A'; 1000]));
    }
    let mut stitcher = Stitcher::new();
    let ts = run_with(&mut stitcher, &events);
    assert!(ts.is_empty());
    let stats = stitcher.stats();
    assert!(stats.parse_errors >= 2, "{stats:?}");
    assert_eq!(stats.skipped_bytes, 11 + 5 + 100_000);
    assert_eq!(head_and_pending(&stitcher), (0, 0));
    // A later request on the connection is parsed again.
    let ts = run_with(
        &mut stitcher,
        &[
            data(200, 1, 1, IN, CURL_GET),
            data(201, 1, 1, OUT, NGINX_CHUNKED),
        ],
    );
    assert_eq!(ts.len(), 1);
}

#[test]
fn unknown_connection_infers_the_role() {
    let events = [
        // Joined mid-connection: the tail of an earlier response, then a request.
        data(1, 1, 7, OUT, b"ld</html>"),
        data(2, 1, 7, IN, CURL_GET),
        data(3, 1, 7, OUT, NGINX_CHUNKED),
        // A client connection.
        data(4, 1, 8, IN, b"tail"),
        data(5, 1, 8, OUT, b"GET /x HTTP/1.1\r\n\r\n"),
        data(6, 1, 8, IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/index.html", Some(200), Completion::Complete),
            s("GET", "/x", Some(200), Completion::Complete),
        ]
    );
    assert_eq!((ts[0].side, ts[1].side), (Side::Server, Side::Client));
    assert_eq!((ts[0].local, ts[0].peer), (None, None));
    assert_eq!(stats.skipped_bytes, 9 + 4);
}

#[test]
fn preexisting_connection_waits_for_a_message_start() {
    let mut open = opened(1, 1, 1, Role::Server);
    if let Some(EventKind::ConnectionOpened(o)) = open.kind.as_mut() {
        o.preexisting = true;
    }
    let events = [
        open,
        data(2, 1, 1, IN, b"more body bytes"),
        data(
            3,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        data(4, 1, 1, IN, CURL_GET),
        data(5, 1, 1, OUT, NGINX_CHUNKED),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("GET", "/index.html", Some(200), Completion::Complete)]
    );
    assert_eq!(stats.unpaired_responses, 1);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn connection_bound_evicts_least_recently_active() {
    let mut stitcher = Stitcher::with_limits(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let events = [
        data(1, 1, 1, IN, b"GET /1 HTTP/1.1\r\n\r\n"),
        data(2, 1, 2, IN, b"GET /2 HTTP/1.1\r\n\r\n"),
        data(3, 1, 1, IN, b"GET /1b HTTP/1.1\r\n\r\n"),
        data(4, 1, 3, IN, b"GET /3 HTTP/1.1\r\n\r\n"),
        closed(5, 1, 1),
        closed(5, 1, 2),
        closed(5, 1, 3),
    ];
    let ts = run_with(&mut stitcher, &events);
    // Connection 2 was the least recently active.
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/1", None, Completion::ConnectionClosed),
            s("GET", "/1b", None, Completion::ConnectionClosed),
            s("GET", "/3", None, Completion::ConnectionClosed),
        ]
    );
    assert_eq!(stitcher.stats().evicted_connections, 1);
}

#[test]
fn pending_bound_keeps_pairing_right() {
    let mut stitcher = Stitcher::with_limits(Limits {
        max_pending: 2,
        ..Limits::default()
    });
    let mut events = vec![opened(1, 1, 1, Role::Server)];
    events.push(data(
        2,
        1,
        1,
        IN,
        b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\n\r\n",
    ));
    for (i, status) in [201, 202, 203, 204].iter().enumerate() {
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        events.push(data(3 + i as u64, 1, 1, OUT, resp.as_bytes()));
    }
    events.push(data(9, 1, 1, IN, b"GET /5 HTTP/1.1\r\n\r\n"));
    events.push(data(
        10,
        1,
        1,
        OUT,
        b"HTTP/1.1 205 X\r\nContent-Length: 0\r\n\r\n",
    ));
    let ts = run_with(&mut stitcher, &events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/1", Some(201), Completion::Complete),
            s("GET", "/2", Some(202), Completion::Complete),
            s("GET", "/5", Some(205), Completion::Complete),
        ]
    );
    assert_eq!(stitcher.stats().untracked_requests, 2);
}

#[test]
fn oversized_head_is_counted() {
    let mut stitcher = Stitcher::with_limits(Limits {
        max_head_bytes: 512,
        ..Limits::default()
    });
    let mut events = vec![
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, b"GET / HTTP/1.1\r\n"),
    ];
    for i in 0..50 {
        events.push(data(3 + i, 1, 1, IN, b"X-Filler: 0123456789abcdef\r\n"));
    }
    let ts = run_with(&mut stitcher, &events);
    assert!(ts.is_empty());
    assert_eq!(stitcher.stats().oversized_heads, 1);
    assert!(head_and_pending(&stitcher).0 <= 512);
}

#[test]
fn loss_reports_pending_as_truncated_and_resyncs() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(2, 1, 1, IN, b"GET /a HTTP/1.1\r\n\r\n"),
        data(
            3,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
        ),
        event(
            4,
            EventKind::Loss(Loss {
                count: 3,
                location: 1,
                reason: "ring buffer full".to_owned(),
            }),
        ),
        data(5, 1, 1, OUT, b"rest of the body"),
        data(6, 1, 1, IN, b"GET /b HTTP/1.1\r\n\r\n"),
        data(
            7,
            1,
            1,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![
            s("GET", "/a", Some(200), Completion::Truncated),
            s("GET", "/b", Some(200), Completion::Complete),
        ]
    );
    assert_eq!(ts[0].response.as_ref().map(|r| r.body_size), Some(3));
    assert_eq!(ts[0].end_mono_ns, 4);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn upgrade_stops_parsing() {
    let events = [
        opened(1, 1, 1, Role::Server),
        data(
            2,
            1,
            1,
            IN,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ),
        data(
            3,
            1,
            1,
            OUT,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        ),
        data(4, 1, 1, IN, b"\x81\x85abcdefghi"),
        closed(5, 1, 1),
    ];
    let (ts, stats) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("GET", "/ws", Some(101), Completion::Complete)]
    );
    assert_eq!(stats.upgraded_connections, 1);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn ipv6_addresses_and_reopened_key() {
    let mut open = opened(1, 1, 1, Role::Server);
    if let Some(EventKind::ConnectionOpened(o)) = open.kind.as_mut() {
        o.local = Some(SocketAddress {
            ip: std::net::Ipv6Addr::LOCALHOST.octets().to_vec().into(),
            port: 443,
        });
        o.peer = Some(SocketAddress {
            ip: vec![1, 2, 3].into(),
            port: 1,
        });
    }
    let events = [
        open,
        data(2, 1, 1, IN, b"GET /x HTTP/1.1\r\n\r\n"),
        // The same key opened again: the old connection is over.
        opened(3, 1, 1, Role::Server),
    ];
    let (ts, _) = run(&events);
    assert_eq!(
        summaries(&ts),
        vec![s("GET", "/x", None, Completion::ConnectionClosed)]
    );
    assert_eq!(ts[0].local, "[::1]:443".parse().ok());
    assert_eq!(ts[0].peer, None);
}

// ---- properties ----

/// Pieces that make random streams look enough like HTTP to reach deep states.
const PIECES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.0\r\n",
    b"POST /p?q HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 101 Switch\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"X: y\r\n",
    b"\r\n",
    b"5\r\nhello\r\n",
    b"ffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b" folded\r\n",
];

#[derive(Debug, Clone)]
enum Op {
    Open(u32, u64, i32, bool),
    Close(u32, u64),
    Exit(u32),
    Data(u32, u64, i32, Vec<u8>, u64),
    Loss,
}

fn bytes_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(PIECES).prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 0..40),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let pid = 0u32..3;
    let conn = 0u64..5;
    prop_oneof![
        (pid.clone(), conn.clone(), 0i32..4, any::<bool>())
            .prop_map(|(p, c, r, pre)| Op::Open(p, c, r, pre)),
        (pid.clone(), conn.clone()).prop_map(|(p, c)| Op::Close(p, c)),
        pid.clone().prop_map(Op::Exit),
        Just(Op::Loss),
        (
            pid.clone(),
            conn.clone(),
            0i32..4,
            bytes_strategy(),
            prop_oneof![Just(0u64), 0u64..3000]
        )
            .prop_map(|(p, c, d, b, extra)| Op::Data(p, c, d, b, extra)),
        (pid, conn, 0i32..4, bytes_strategy()).prop_map(|(p, c, d, b)| Op::Data(p, c, d, b, 0)),
    ]
}

fn op_event(mono_ns: u64, op: &Op) -> Event {
    match op {
        Op::Open(pid, conn, role, pre) => {
            let mut e = opened(mono_ns, *pid, *conn, Role::Unspecified);
            if let Some(EventKind::ConnectionOpened(o)) = e.kind.as_mut() {
                o.role = *role;
                o.preexisting = *pre;
            }
            e
        }
        Op::Close(pid, conn) => closed(mono_ns, *pid, *conn),
        Op::Exit(pid) => event(
            mono_ns,
            EventKind::ProcessExited(ProcessExited {
                pid: *pid,
                exit_code: 0,
            }),
        ),
        Op::Data(pid, conn, dir, bytes, extra) => {
            let mut e = data_cut(mono_ns, *pid, *conn, IN, bytes, bytes.len() as u64 + extra);
            if let Some(EventKind::Data(d)) = e.kind.as_mut() {
                d.direction = *dir;
            }
            e
        }
        Op::Loss => event(
            mono_ns,
            EventKind::Loss(Loss {
                count: 1,
                location: 1,
                reason: String::new(),
            }),
        ),
    }
}

/// One request and its response, with what the stitcher should report.
#[derive(Debug, Clone)]
struct Exchange {
    method: &'static str,
    path: String,
    request_body: Vec<u8>,
    request_chunked: bool,
    expect_continue: bool,
    status: u16,
    response_body: Vec<u8>,
    response_chunked: bool,
}

fn chunked_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(7) {
        out.extend_from_slice(format!("{:x};e=1\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
    out
}

impl Exchange {
    fn has_request_body(&self) -> bool {
        matches!(self.method, "POST" | "PUT")
    }

    fn response_has_body(&self) -> bool {
        self.method != "HEAD" && !matches!(self.status, 204 | 304)
    }

    /// (head, body) of the request.
    fn request(&self) -> (Vec<u8>, Vec<u8>) {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8.5.0\r\n",
            self.method, self.path
        );
        let mut body = Vec::new();
        if self.has_request_body() {
            if self.request_chunked {
                head.push_str("Transfer-Encoding: chunked\r\n");
                body = chunked_body(&self.request_body);
            } else {
                head.push_str(&format!("Content-Length: {}\r\n", self.request_body.len()));
                body = self.request_body.clone();
            }
            if self.expect_continue {
                head.push_str("Expect: 100-continue\r\n");
            }
        }
        head.push_str("\r\n");
        (head.into_bytes(), body)
    }

    fn response(&self, close_delimited: bool) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.1 {} Something\r\nServer: nginx\r\n", self.status).into_bytes();
        if !self.response_has_body() {
            if self.method == "HEAD" {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n", self.response_body.len()).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
        } else if close_delimited {
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&self.response_body);
        } else if self.response_chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(&chunked_body(&self.response_body));
        } else {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", self.response_body.len()).as_bytes(),
            );
            out.extend_from_slice(&self.response_body);
        }
        out
    }

    fn expected(&self) -> (String, String, u64, u16, u64) {
        let request_body = if self.has_request_body() {
            self.request_body.len()
        } else {
            0
        };
        let response_body = if self.response_has_body() {
            self.response_body.len()
        } else {
            0
        };
        (
            self.method.to_owned(),
            self.path.clone(),
            request_body as u64,
            self.status,
            response_body as u64,
        )
    }
}

fn exchange_strategy(chunked: bool) -> impl Strategy<Value = Exchange> {
    (
        prop::sample::select(&["GET", "POST", "PUT", "HEAD", "DELETE"][..]),
        "/[a-z0-9]{0,12}",
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(&[200u16, 201, 204, 301, 304, 404, 500][..]),
        prop::collection::vec(any::<u8>(), 0..600),
        any::<bool>(),
    )
        .prop_map(move |(method, path, rb, rc, ec, status, sb, sc)| Exchange {
            method,
            path,
            request_body: rb,
            request_chunked: rc && chunked,
            expect_continue: ec,
            status,
            response_body: sb,
            response_chunked: sc && chunked,
        })
}

/// The byte segments of a connection in the order they are sent, each with its
/// direction relative to the request stream (true: requests).
fn segments(
    exchanges: &[Exchange],
    pipelined: bool,
    close_delimited_last: bool,
) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    let last = exchanges.len().saturating_sub(1);
    if pipelined {
        for ex in exchanges {
            let (head, body) = ex.request();
            out.push((true, [head, body].concat()));
        }
        for (i, ex) in exchanges.iter().enumerate() {
            out.push((false, ex.response(close_delimited_last && i == last)));
        }
        return out;
    }
    for (i, ex) in exchanges.iter().enumerate() {
        let (head, body) = ex.request();
        if ex.expect_continue && ex.has_request_body() {
            out.push((true, head));
            out.push((false, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()));
            out.push((true, body));
        } else {
            out.push((true, [head, body].concat()));
        }
        out.push((false, ex.response(close_delimited_last && i == last)));
    }
    out
}

/// Events for the segments: each cut in pieces of `sizes` (cycled; empty: whole),
/// each piece captured up to `capture` bytes.
fn connection_events(
    segments: &[(bool, Vec<u8>)],
    side: Side,
    announce: bool,
    sizes: &[usize],
    capture: usize,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut mono = 1;
    if announce {
        let role = if side == Side::Server {
            Role::Server
        } else {
            Role::Client
        };
        events.push(opened(mono, 4, 2, role));
    }
    let mut size = sizes.iter().cycle();
    // A connection of unknown role is recognised by a read or write that starts
    // with a method and a space: keep the first request's head whole then.
    let mut keep_whole = !announce;
    for (is_request, bytes) in segments {
        let dir = match (side, is_request) {
            (Side::Server, true) | (Side::Client, false) => IN,
            _ => OUT,
        };
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let n = if sizes.is_empty() || std::mem::take(&mut keep_whole) {
                rest.len()
            } else {
                (*size.next().unwrap_or(&1)).clamp(1, rest.len())
            };
            let (piece, tail) = rest.split_at(n);
            mono += 1;
            events.push(data_cut(
                mono,
                4,
                2,
                dir,
                &piece[..piece.len().min(capture)],
                piece.len() as u64,
            ));
            rest = tail;
        }
    }
    mono += 1;
    events.push(closed(mono, 4, 2));
    events
}

fn head_len(message: &[u8]) -> usize {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 4)
}

fn without_timing(mut ts: Vec<HttpTransaction>) -> Vec<HttpTransaction> {
    for t in &mut ts {
        assert!(t.start_mono_ns <= t.end_mono_ns, "{t:?}");
        t.start_mono_ns = 0;
        t.end_mono_ns = 0;
        t.tid = 0;
    }
    ts
}

fn check_expected(ts: &[HttpTransaction], exchanges: &[Exchange]) -> Result<(), TestCaseError> {
    let got: Vec<_> = ts
        .iter()
        .map(|t| {
            (
                t.request.method.to_string(),
                t.request.path.clone(),
                t.request.body_size,
                t.response.as_ref().map_or(0, |r| r.status),
                t.response.as_ref().map_or(0, |r| r.body_size),
            )
        })
        .collect();
    let want: Vec<_> = exchanges.iter().map(Exchange::expected).collect();
    prop_assert_eq!(got, want);
    prop_assert!(ts.iter().all(|t| t.completion == Completion::Complete));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary chunks in arbitrary directions on arbitrary connections: no panic,
    /// and the bounds hold after every event.
    #[test]
    fn arbitrary_events_stay_bounded(ops in prop::collection::vec(op_strategy(), 0..60)) {
        let limits = Limits { max_connections: 3, max_pending: 2, max_head_bytes: 64 };
        let mut stitcher = Stitcher::with_limits(limits);
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            stitcher.push(&op_event(i as u64, op), 0, &mut out);
            prop_assert!(stitcher.connections() <= 3);
            prop_assert!(stitcher.table.consistent());
            let (head, pending) = head_and_pending(&stitcher);
            prop_assert!(head <= 64, "head buffer {}", head);
            prop_assert!(pending <= 2, "pending {}", pending);
        }
        let out: Vec<HttpTransaction> = out.into_iter().map(http).collect();
        for t in &out {
            prop_assert!(t.start_mono_ns <= t.end_mono_ns);
            prop_assert!(t.request.headers.len() <= crate::model::MAX_HEADERS);
        }
        prop_assert_eq!(stitcher.stats().transactions, out.len() as u64);
    }

    /// A valid conversation cut at arbitrary points gives the same transactions as
    /// whole, and they are the ones sent.
    #[test]
    fn splitting_does_not_change_transactions(
        exchanges in prop::collection::vec(exchange_strategy(true), 1..6),
        pipelined in any::<bool>(),
        close_delimited_last in any::<bool>(),
        server in any::<bool>(),
        announce in any::<bool>(),
        sizes in prop::collection::vec(1usize..64, 1..20),
    ) {
        let side = if server { Side::Server } else { Side::Client };
        let segs = segments(&exchanges, pipelined, close_delimited_last);
        let whole = run(&connection_events(&segs, side, announce, &[], usize::MAX)).0;
        let split = run(&connection_events(&segs, side, announce, &sizes, usize::MAX)).0;
        check_expected(&whole, &exchanges)?;
        prop_assert_eq!(without_timing(whole), without_timing(split));
    }

    /// Captures cut inside bodies of known length change nothing: the uncaptured
    /// bytes are counted.
    #[test]
    fn uncaptured_body_bytes_change_nothing(
        exchanges in prop::collection::vec(exchange_strategy(false), 1..6),
        pipelined in any::<bool>(),
        server in any::<bool>(),
        spare in 0usize..200,
    ) {
        let side = if server { Side::Server } else { Side::Client };
        let segs = segments(&exchanges, pipelined, false);
        // Every head fits in the capture; bodies may not.
        let capture = exchanges
            .iter()
            .map(|ex| ex.request().0.len().max(head_len(&ex.response(false))))
            .max()
            .unwrap_or(0)
            + spare;
        let ts = run(&connection_events(&segs, side, true, &[], capture)).0;
        check_expected(&ts, &exchanges)?;
    }
}
