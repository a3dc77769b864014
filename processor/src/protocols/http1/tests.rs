use super::*;
use crate::protocols::Task;

fn origin(mono_ns: u64) -> Origin {
    Origin {
        mono_ns,
        task: Task::thread(7),
    }
}

/// Feeds `bytes` (captured) of a syscall of `total` bytes; returns the events.
fn feed(parser: &mut Parser, bytes: &[u8], total: u64, mono_ns: u64) -> Vec<Http1Event> {
    let mut chunk = Chunk::new(bytes, total, origin(mono_ns));
    let mut events = Vec::new();
    while let Some(event) = parser.next(&mut chunk) {
        events.push(event);
    }
    assert!(
        chunk.rest().is_empty() && chunk.unknown == 0,
        "chunk used up"
    );
    events
}

fn feed_all(parser: &mut Parser, bytes: &[u8]) -> Vec<Http1Event> {
    feed(parser, bytes, bytes.len() as u64, 1)
}

fn requests() -> Parser {
    Parser::new(MessageKind::Request, MAX_HEAD_BYTES)
}

fn responses() -> Parser {
    Parser::new(MessageKind::Response, MAX_HEAD_BYTES)
}

const CURL_GET: &[u8] = b"GET /users/42?verbose=1&x=y HTTP/1.1\r\nHost: localhost:18080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

#[test]
fn curl_get_request() {
    let mut p = requests();
    let events = feed_all(&mut p, CURL_GET);
    let [Http1Event::Request {
        request,
        origin: o,
        truncated: false,
    }, Http1Event::End { body_size: 0 }] = events.as_slice()
    else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/users/42");
    assert_eq!(request.query.as_deref(), Some("verbose=1&x=y"));
    assert_eq!(request.version, "1.1");
    assert_eq!(request.header("host"), Some("localhost:18080"));
    assert_eq!(request.header("user-agent"), Some("curl/8.5.0"));
    assert_eq!(request.headers.len(), 3);
    assert_eq!(*o, origin(1));
}

#[test]
fn content_length_body_and_keep_alive() {
    let mut p = requests();
    let stream = b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    let events = feed_all(&mut p, stream);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(&events[0], Http1Event::Request { request, .. } if request.method == "POST"));
    assert_eq!(events[1], Http1Event::End { body_size: 5 });
    assert!(matches!(&events[2], Http1Event::Request { request, .. } if request.path == "/next"));
    assert_eq!(events[3], Http1Event::End { body_size: 0 });
}

#[test]
fn head_split_mid_line_in_single_bytes() {
    let mut p = requests();
    let mut events = Vec::new();
    for (i, b) in CURL_GET.iter().enumerate() {
        events.extend(feed(&mut p, &[*b], 1, i as u64 + 100));
    }
    assert_eq!(events.len(), 2, "{events:?}");
    // The origin is the event with the first byte, not the one completing the head.
    assert!(matches!(&events[0], Http1Event::Request { origin, .. } if origin.mono_ns == 100));
}

#[test]
fn nginx_chunked_response() {
    let mut p = responses();
    let stream = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n7\r\nMozilla\r\n11;ext=1\r\nDeveloper Network\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let events = feed_all(&mut p, stream);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[0], Http1Event::Response { response, .. } if response.status == 200 && response.header("server") == Some("nginx/1.24.0"))
    );
    assert_eq!(events[1], Http1Event::End { body_size: 24 });
    // Split at every position: the same events.
    for split in 1..stream.len() {
        let mut p = responses();
        let mut split_events = feed(&mut p, &stream[..split], split as u64, 1);
        split_events.extend(feed(
            &mut p,
            &stream[split..],
            (stream.len() - split) as u64,
            1,
        ));
        assert_eq!(split_events, events, "split at {split}");
    }
}

#[test]
fn python_http_server_response_ends_at_close() {
    let mut p = responses();
    let head = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-type: text/html; charset=utf-8\r\n\r\n";
    let events = feed_all(&mut p, head);
    assert!(
        matches!(&events[..], [Http1Event::Response { response, .. }] if response.version == "1.0")
    );
    assert!(feed_all(&mut p, b"<html>hello</html>").is_empty());
    assert_eq!(p.close(), CloseOutcome::Ended { body_size: 18 });
}

#[test]
fn no_body_statuses_and_head() {
    for status in [
        b"100 Continue".as_slice(),
        b"204 No Content",
        b"304 Not Modified",
    ] {
        let mut p = responses();
        let mut bytes = b"HTTP/1.1 ".to_vec();
        bytes.extend_from_slice(status);
        bytes.extend_from_slice(b"\r\nContent-Length: 10\r\n\r\n");
        let events = feed_all(&mut p, &bytes);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1], Http1Event::End { body_size: 0 });
    }
    // A response to HEAD: the caller says there is no body.
    let mut p = responses();
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let mut chunk = Chunk::new(bytes, bytes.len() as u64, origin(1));
    assert!(matches!(
        p.next(&mut chunk),
        Some(Http1Event::Response { .. })
    ));
    p.no_body();
    assert_eq!(p.next(&mut chunk), Some(Http1Event::End { body_size: 0 }));
    assert!(
        matches!(p.next(&mut chunk), Some(Http1Event::Response { response, .. }) if response.status == 404)
    );
    assert_eq!(p.next(&mut chunk), Some(Http1Event::End { body_size: 0 }));
    assert_eq!(p.next(&mut chunk), None);
}

#[test]
fn uncaptured_bytes_inside_a_known_length_body_are_counted() {
    let mut p = requests();
    let mut bytes = b"POST /upload HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec();
    let head_len = bytes.len() as u64;
    bytes.extend_from_slice(&[b'x'; 100]);
    // 5000 body bytes moved, 100 captured.
    let events = feed(&mut p, &bytes, head_len + 5000, 1);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1], Http1Event::End { body_size: 5000 });
    // The next request parses normally.
    let events = feed_all(&mut p, CURL_GET);
    assert_eq!(events.len(), 2);
}

#[test]
fn uncaptured_bytes_inside_a_chunk_are_counted() {
    let mut p = responses();
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nabc";
    // The 0x1000-byte chunk's data is cut; its end, CRLF and the last chunk come
    // in a later write.
    let events = feed(&mut p, head, head.len() as u64 + 0x1000 - 3, 1);
    assert_eq!(events.len(), 1);
    let events = feed_all(&mut p, b"\r\n0\r\n\r\n");
    assert_eq!(events, vec![Http1Event::End { body_size: 0x1000 }]);
}

#[test]
fn uncaptured_chunk_framing_loses_the_body_then_resyncs() {
    let mut p = responses();
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
    let events = feed(&mut p, head, head.len() as u64 + 100, 1);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1], Http1Event::BodyLost { body_size: 5 });
    assert!(p.is_resyncing());
    // Mid-message bytes are skipped; a write starting with a status line resyncs.
    assert!(feed_all(&mut p, b"more\r\n0\r\n\r\n").is_empty());
    let events = feed_all(&mut p, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(events.len(), 2);
}

#[test]
fn headers_cut_by_the_capture_report_what_is_known() {
    let mut p = requests();
    let bytes = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: aaaa";
    let events = feed(&mut p, bytes, 4000, 5);
    let [Http1Event::Request {
        request,
        truncated: true,
        origin: o,
    }] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!(
        (request.path.as_str(), request.query.as_deref()),
        ("/a", Some("b=c"))
    );
    assert_eq!(request.headers, vec![("host".into(), "x".to_owned())]);
    assert_eq!(o.mono_ns, 5);
    assert!(p.is_resyncing());
    // A long target cut in the request line: method and target so far.
    let mut p = requests();
    let events = feed(&mut p, b"GET /very/long/pa", 3000, 5);
    assert!(
        matches!(&events[..], [Http1Event::Request { request, truncated: true, .. }]
        if request.method == "GET" && request.path == "/very/long/pa" && request.version.is_empty())
    );
    // Next request in a later read.
    assert_eq!(feed_all(&mut p, CURL_GET).len(), 2);
}

#[test]
fn garbage_is_rejected_fast_and_counted() {
    let mut p = requests();
    // A TLS ClientHello.
    let tls = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut chunk = Chunk::new(&tls, 517, origin(1));
    assert_eq!(
        p.next(&mut chunk),
        Some(Http1Event::Error(ParseError::StartLine))
    );
    assert_eq!(p.next(&mut chunk), None);
    assert_eq!(chunk.skipped(), 517);
    assert_eq!(p.buffered(), 0);
    // Lower-case words are no method.
    let mut p = requests();
    assert_eq!(
        feed_all(&mut p, b"hello world\n"),
        vec![Http1Event::Error(ParseError::StartLine)]
    );
    // A request line of another version.
    let mut p = requests();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(
        feed_all(&mut p, preface),
        vec![Http1Event::Error(ParseError::StartLine)]
    );
    // A header line without colon.
    let mut p = responses();
    let events = feed_all(&mut p, b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n");
    assert_eq!(events, vec![Http1Event::Error(ParseError::HeaderLine)]);
    // Conflicting lengths.
    let mut p = responses();
    let events = feed_all(
        &mut p,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(events, vec![Http1Event::Error(ParseError::ContentLength)]);
}

#[test]
fn oversized_head_is_given_up_within_the_bound() {
    let mut p = Parser::new(MessageKind::Request, 256);
    let mut events = feed_all(&mut p, b"GET / HTTP/1.1\r\n");
    for _ in 0..20 {
        events.extend(feed_all(&mut p, b"X-Filler: 0123456789\r\n"));
        assert!(p.buffered() <= 256);
    }
    assert_eq!(events, vec![Http1Event::Error(ParseError::HeadTooLong)]);
}

#[test]
fn header_bounds() {
    let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..MAX_HEADERS + 10 {
        bytes.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"X-Long: ");
    bytes.extend_from_slice(&[b'a'; MAX_HEADER_VALUE * 2]);
    // Framing honoured past MAX_HEADERS.
    bytes.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    let mut p = requests();
    let events = feed_all(&mut p, &bytes);
    let Http1Event::Request { request, .. } = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(request.headers.len(), MAX_HEADERS);
    assert_eq!(events[1], Http1Event::End { body_size: 2 });

    let mut bytes = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    bytes.extend_from_slice("é".repeat(MAX_HEADER_VALUE).as_bytes());
    bytes.extend_from_slice(b"\r\n\r\n");
    let events = feed_all(&mut requests(), &bytes);
    let Http1Event::Request { request, .. } = &events[0] else {
        panic!("{events:?}");
    };
    let value = request.header("x-long").unwrap_or_default();
    assert!(value.len() <= MAX_HEADER_VALUE && value.len() > MAX_HEADER_VALUE - 2);
}

#[test]
fn unknown_bytes_at_a_message_start_lose_sync() {
    let mut p = responses();
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut chunk = Chunk::new(bytes, bytes.len() as u64 + 50, origin(1));
    let mut events = Vec::new();
    while let Some(e) = p.next(&mut chunk) {
        events.push(e);
    }
    assert_eq!(events.len(), 2);
    assert_eq!(chunk.lost_sync(), 1);
    assert_eq!(chunk.skipped(), 50);
    assert!(p.is_resyncing());
}

#[test]
fn close_outcomes() {
    let mut p = responses();
    feed_all(&mut p, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(
        p.close(),
        CloseOutcome::Cut {
            head_seen: true,
            body_size: 3
        }
    );
    feed_all(&mut p, b"HTTP/1.1 200");
    assert_eq!(
        p.close(),
        CloseOutcome::Cut {
            head_seen: false,
            body_size: 0
        }
    );
    assert_eq!(p.close(), CloseOutcome::Between);
}

#[test]
fn starts() {
    assert_eq!(check_start(MessageKind::Request, b"GET /"), Start::Valid);
    assert_eq!(check_start(MessageKind::Request, b"GE"), Start::Incomplete);
    assert_eq!(check_start(MessageKind::Request, b"get /"), Start::Invalid);
    assert_eq!(
        check_start(MessageKind::Response, b"HTTP/1.1 200"),
        Start::Valid
    );
    assert_eq!(
        check_start(MessageKind::Response, b"HTTP/1."),
        Start::Incomplete
    );
    assert_eq!(
        check_start(MessageKind::Response, b"HTTP/2 200"),
        Start::Invalid
    );
    assert!(looks_like_start(MessageKind::Request, CURL_GET));
    assert!(!looks_like_start(MessageKind::Request, b"GET nonsense\r\n"));
    assert!(looks_like_start(
        MessageKind::Response,
        b"HTTP/1.0 404 File not found\r\n"
    ));
}

#[test]
fn split_lines_is_split_at_newlines() {
    for text in [
        &b""[..],
        b"a",
        b"\n",
        b"a\nb",
        b"a\r\nb\r\n",
        b"\n\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let want: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let got: Vec<&[u8]> = super::split_lines(text).collect();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(text));
    }
}

#[test]
fn tchars_are_rfc_9110s() {
    let want = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    for b in 0..=255u8 {
        assert_eq!(super::is_tchar(b), want(b), "{b}");
    }
}
