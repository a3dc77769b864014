//! HTTP/2 through the stitcher: detection, streams, roles, degradation, bounds.

use super::*;

use crate::protocols::http2::testutil::{block, data as h2data, frame, headers, settings};
use crate::protocols::http2::PREFACE;
use proptest::prelude::*;
use tandem_proto::v1::{ConnectionOpened, Loss};

use super::tests::{event, run_with, v4 as addr, IN, OFFSET, OUT};

/// The process of every connection here.
const PID: u32 = 7;

fn opened(mono_ns: u64, conn_id: u64, role: Role, preexisting: bool) -> Event {
    event(
        mono_ns,
        EventKind::ConnectionOpened(ConnectionOpened {
            pid: PID,
            tid: PID,
            conn_id,
            local: addr([127, 0, 0, 1], 50051),
            peer: addr([127, 0, 0, 1], 40000),
            role: role as i32,
            preexisting,
        }),
    )
}

fn closed(mono_ns: u64, conn_id: u64) -> Event {
    super::tests::closed(mono_ns, PID, conn_id)
}

fn data_cut(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8], total: u64) -> Event {
    super::tests::data_cut(mono_ns, PID, conn_id, dir, bytes, total)
}

fn data(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8]) -> Event {
    super::tests::data(mono_ns, PID, conn_id, dir, bytes)
}

fn grpc_request(stream: u32, path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":scheme", "http".into()),
        (":path", path.into()),
        (":authority", "localhost:50051".into()),
        ("content-type", "application/grpc".into()),
        ("user-agent", format!("grpc-test/{stream}")),
        ("te", "trailers".into()),
    ]
}

fn hdrs(stream: u32, end: bool, fields: &[(&'static str, String)]) -> Vec<u8> {
    let f: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers(stream, end, &f)
}

/// Client bytes, server bytes of one unary gRPC call on stream 1 ending with
/// `grpc_status`.
fn unary(grpc_status: &str) -> (Vec<u8>, Vec<u8>) {
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    client.extend(hdrs(
        1,
        false,
        &grpc_request(1, "/helloworld.Greeter/SayHello"),
    ));
    client.extend(h2data(1, true, &[0, 0, 0, 0, 3, 10, 1, b'x']));
    let mut server = settings();
    server.extend(headers(
        1,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    ));
    server.extend(h2data(1, false, &[0, 0, 0, 0, 2, 10, 0]));
    server.extend(headers(
        1,
        true,
        &[("grpc-status", grpc_status), ("grpc-message", "nope")],
    ));
    (client, server)
}

#[test]
fn grpc_server_call_with_trailers() {
    let (client, server) = unary("5");
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data(20, 1, OUT, &server),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let t = &out[0];
    assert_eq!(t.side, Side::Server);
    assert_eq!(t.request.method, "POST");
    assert_eq!(t.request.path, "/helloworld.Greeter/SayHello");
    assert_eq!(t.request.version, "2");
    assert_eq!(t.request.header("host"), Some("localhost:50051"));
    assert_eq!(t.request.header("content-type"), Some("application/grpc"));
    assert_eq!(t.request.header("te"), None, "only kept headers");
    assert_eq!(t.request.body_size, 8);
    let r = t.response.as_ref().expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("5"));
    assert_eq!(r.header("grpc-message"), Some("nope"));
    assert_eq!(r.body_size, 7);
    assert_eq!((t.start_mono_ns, t.end_mono_ns), (10, 20));
    assert_eq!(t.completion, Completion::Complete);
    let s = st.stats();
    assert_eq!((s.http2_connections, s.transactions), (1, 1));
    assert_eq!(s.skipped_bytes, 0);
}

#[test]
fn multiplexed_streams_complete_in_their_own_order() {
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    client.extend(hdrs(1, true, &grpc_request(1, "/a.S/One")));
    client.extend(hdrs(3, true, &grpc_request(3, "/a.S/Two")));
    let mut first = settings();
    first.extend(headers(3, false, &[(":status", "200")]));
    first.extend(headers(1, false, &[(":status", "200")]));
    first.extend(h2data(1, false, b"12345"));
    let second = headers(3, true, &[("grpc-status", "0")]);
    let third = headers(1, true, &[("grpc-status", "13")]);
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data(20, 1, OUT, &first),
            data(30, 1, OUT, &second),
            data(40, 1, OUT, &third),
        ],
    );
    let got: Vec<_> = out
        .iter()
        .map(|t| {
            (
                t.request.path.as_str(),
                t.response.as_ref().and_then(|r| r.header("grpc-status")),
                t.end_mono_ns,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("/a.S/Two", Some("0"), 30), ("/a.S/One", Some("13"), 40)]
    );
}

#[test]
fn client_side_from_the_preface_direction_without_connection_opened() {
    let (client, server) = unary("0");
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[data(10, 2, OUT, &client), data(20, 2, IN, &server)],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Client);
    assert_eq!(out[0].completion, Completion::Complete);
}

#[test]
fn every_split_of_the_bytes_gives_the_same_transaction() {
    let (client, server) = unary("0");
    let whole = run_with(
        &mut Stitcher::new(),
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data(20, 1, OUT, &server),
        ],
    );
    // From 3 bytes: a first read of `P` or `PR` could as well start `POST`.
    for i in 3..client.len() {
        for j in [1, server.len() / 2, server.len() - 1] {
            let out = run_with(
                &mut Stitcher::new(),
                &[
                    opened(1, 1, Role::Server, false),
                    data(10, 1, IN, &client[..i]),
                    data(10, 1, IN, &client[i..]),
                    data(20, 1, OUT, &server[..j]),
                    data(20, 1, OUT, &server[j..]),
                ],
            );
            assert_eq!(out, whole, "split {i}/{j}");
        }
    }
}

#[test]
fn midstream_connection_is_detected_and_degrades_gracefully() {
    // The processor missed the start: the client's HEADERS refers to dynamic table
    // entries (62, 63) it never saw; :method/:path are static or literal.
    let mut req = vec![0x83, 0xbe, 0xbf];
    req.extend(block(&[(":path", "/x.Y/Z")]));
    let client = frame(0x1, 0x5, 7, &req);
    let server = headers(7, true, &[(":status", "200"), ("grpc-status", "0")]);
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 3, Role::Server, true),
            data(10, 3, IN, &client),
            data(20, 3, OUT, &server),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].request.method, "POST");
    assert_eq!(out[0].request.path, "/x.Y/Z");
    assert_eq!(out[0].request.header("host"), None);
    let s = st.stats();
    assert_eq!(s.http2_midstream_connections, 1);
    assert_eq!(s.hpack_unknown_indices, 2);

    // No role at all: inferred from where :method travels.
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[data(10, 4, OUT, &client), data(20, 4, IN, &server)],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Client);
}

#[test]
fn big_data_frames_cut_by_the_capture_are_skipped_by_length() {
    let (client, _) = unary("0");
    let mut resp = headers(1, false, &[(":status", "200")]);
    let head_len = resp.len();
    resp.extend(h2data(1, false, &vec![9u8; 4000]));
    let trailers = headers(1, true, &[("grpc-status", "0")]);
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            // 1 KiB captured of the write.
            data_cut(20, 1, OUT, &resp[..1024], resp.len() as u64),
            data(30, 1, OUT, &trailers),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].completion, Completion::Complete);
    assert_eq!(out[0].response.as_ref().map(|r| r.body_size), Some(4000));
    assert!(head_len < 1024);
    assert_eq!(st.stats().lost_sync, 0);
}

#[test]
fn lost_response_headers_make_the_stream_truncated() {
    let (client, _) = unary("0");
    let mut resp = h2data(1, false, &[0u8; 2000]);
    resp.extend(headers(1, false, &[(":status", "200")]));
    let trailers = headers(1, true, &[("grpc-status", "0")]);
    let out = run_with(
        &mut Stitcher::new(),
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data_cut(20, 1, OUT, &resp[..1024], resp.len() as u64),
            data(30, 1, OUT, &trailers),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].completion, Completion::Truncated);
    assert_eq!(out[0].request.path, "/helloworld.Greeter/SayHello");
}

#[test]
fn close_reset_and_loss() {
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    for s in [1u32, 3, 5] {
        client.extend(hdrs(s, true, &grpc_request(s, "/a.S/M")));
    }
    let mut server = headers(5, false, &[(":status", "200")]);
    server.extend(frame(0x3, 0, 3, &8u32.to_be_bytes()));
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data(20, 1, OUT, &server),
            closed(30, 1),
        ],
    );
    let got: Vec<_> = out
        .iter()
        .map(|t| (t.completion, t.response.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Completion::ConnectionClosed, false), // 3 reset before a response
            (Completion::ConnectionClosed, false), // 1 at close
            (Completion::ConnectionClosed, true),  // 5 at close, response started
        ]
    );
    assert_eq!(st.stats().http2_reset_streams, 1);

    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            event(15, EventKind::Loss(Loss::default())),
        ],
    );
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|t| t.completion == Completion::Truncated));
}

#[test]
fn open_streams_are_bounded() {
    let mut client = PREFACE.to_vec();
    for i in 0..400u32 {
        client.extend(hdrs(2 * i + 1, true, &grpc_request(i, "/a.S/M")));
    }
    // A response to the newest stream still pairs; one to an evicted stream is
    // skipped.
    let mut server = headers(799, true, &[(":status", "200"), ("grpc-status", "0")]);
    // (543: the last evicted, i = 271.)
    server.extend(headers(
        543,
        true,
        &[(":status", "200"), ("grpc-status", "0")],
    ));
    let mut st = Stitcher::new();
    let out = run_with(
        &mut st,
        &[
            opened(1, 1, Role::Server, false),
            data(10, 1, IN, &client),
            data(20, 1, OUT, &server),
        ],
    );
    assert_eq!(st.connections(), 1);
    let streams = st.footprint().pending;
    assert_eq!(streams, http2::MAX_STREAMS - 1);
    let evicted = 400 - http2::MAX_STREAMS;
    assert_eq!(st.stats().evicted_streams, evicted as u64);
    assert_eq!(out.len(), evicted + 1);
    assert!(out[..evicted]
        .iter()
        .all(|t| t.completion == Completion::Truncated && t.response.is_none()));
    assert_eq!(out[evicted].completion, Completion::Complete);
    assert_eq!(st.stats().unpaired_responses, 0);
}

proptest! {
    #[test]
    fn arbitrary_events_never_panic_and_memory_stays_bounded(
        events in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..120), 0u64..2000, any::<bool>()),
            1..40),
    ) {
        let mut st = Stitcher::new();
        let mut out = Vec::new();
        // Start as HTTP/2 so the bytes reach the HTTP/2 readers.
        st.push(&opened(1, 1, Role::Server, false), OFFSET, &mut out);
        st.push(&data(2, 1, IN, PREFACE), OFFSET, &mut out);
        for (i, (ingress, bytes, extra, frames)) in events.iter().enumerate() {
            let mut payload = bytes.clone();
            if *frames {
                // Plausible frames with random payloads reach deeper states.
                let ty = bytes.first().copied().unwrap_or(0) % 10;
                payload = frame(ty, bytes.get(1).copied().unwrap_or(4) & 0x2d, 1, bytes);
            }
            let dir = if *ingress { IN } else { OUT };
            let e = data_cut(10 + i as u64, 1, dir, &payload, payload.len() as u64 + extra);
            st.push(&e, OFFSET, &mut out);
            // The largest of every session's footprint (one connection here).
            let f = st.footprint();
            let (buffered, table, streams) = (f.buffered, f.entries, f.pending);
            prop_assert!(buffered <= 2 * (2 * 1024 + http1_parser::MAX_HEAD_BYTES + 9));
            prop_assert!(table <= 2 * crate::protocols::hpack::MAX_TABLE_SIZE);
            prop_assert!(streams <= http2::MAX_STREAMS);
        }
    }
}
