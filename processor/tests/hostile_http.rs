//! Hostile HTTP peers: HPACK table-size abuse, header floods, oversized header
//! blocks, endless chunked bodies. Each test sends what a selected process could
//! send and asserts that the processor stays within its documented bounds
//! (`processor/README.md`, "Bounds": the constants of `protocols::http1`,
//! `protocols::http2`, `protocols::hpack`, `stitch`) — by the sessions' own account
//! (`footprint`) and by the heap the test's thread holds ([`common::Meter`]) — and
//! that the abuse is reported (an error, a counter), not absorbed by growing.

mod common;

use common::*;
use tandem_processor::model::{MAX_HEADERS, MAX_HEADER_VALUE};
use tandem_processor::protocols::hpack::{
    Decoder, HpackError, MAX_FIELDS, MAX_FIELD_LEN, MAX_TABLE_SIZE,
};
use tandem_processor::protocols::http1::{
    Chunk, Http1Event, MessageKind, Origin, ParseError, Parser, MAX_HEAD_BYTES,
};
use tandem_processor::protocols::http2::{FrameReader, H2Event, MAX_HEADER_BLOCK, PREFACE};
use tandem_processor::stitch::{Stitcher, MAX_STREAMS};
use tandem_proto::v1::Role;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The heap one HPACK table may hold (`protocols::hpack`, "Bounds"): its strings
/// (RFC 7541 sizes count raw bytes; invalid UTF-8 is kept as U+FFFD, three bytes for
/// one) and its entries (at most one per 32 bytes of table, under 64 bytes each).
const TABLE_HEAP: usize = 3 * MAX_TABLE_SIZE + (MAX_TABLE_SIZE / 32) * 64;

/// An HPACK integer with a `prefix`-bit prefix, after the flag bits `first`.
fn int(out: &mut Vec<u8>, first: u8, prefix: u8, v: u64) {
    let max = (1u64 << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal with incremental indexing and a new name.
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x40];
    int(&mut b, 0, 7, name.len() as u64);
    b.extend_from_slice(name);
    int(&mut b, 0, 7, value.len() as u64);
    b.extend_from_slice(value);
    b
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn feed(parser: &mut Parser, bytes: &[u8], total: u64) -> Vec<Http1Event> {
    let mut chunk = Chunk::new(bytes, total, Origin::default());
    std::iter::from_fn(|| parser.next(&mut chunk)).collect()
}

#[test]
fn hpack_table_size_updates_over_the_bound_are_clamped_and_counted() {
    let mut d = Decoder::new();
    let mut block = Vec::new();
    int(&mut block, 0x20, 5, u64::from(u32::MAX));
    int(&mut block, 0x20, 5, 1 << 30);
    let info = d.decode(&block, &mut Vec::new()).expect("decodes");
    assert_eq!(info.clamped_sizes, 2);
    let mut over = Vec::new();
    int(&mut over, 0x20, 5, 1 << 32);
    assert_eq!(
        d.decode(&over, &mut Vec::new()),
        Err(HpackError::IntegerOverflow)
    );

    // 2 MB of inserts into the announced 4 GiB table: the bound holds it.
    let meter = Meter::start();
    for i in 0..2000 {
        let mut out = Vec::new();
        d.decode(
            &literal(format!("x-{i}").as_bytes(), &[b'v'; 1000]),
            &mut out,
        )
        .expect("decodes");
        assert_eq!(out.len(), 1);
        assert!(d.table_size() <= MAX_TABLE_SIZE);
    }
    assert!(
        d.table_size() > MAX_TABLE_SIZE - 1100,
        "the bound, not the encoder, limits it"
    );
    assert!(meter.live() <= TABLE_HEAP, "table heap {}", meter.live());

    // The worst cases for the heap: many empty entries, values of invalid UTF-8.
    for value in [&b""[..], &[0xff; 500][..]] {
        let mut d = Decoder::new();
        let meter = Meter::start();
        d.decode(&block, &mut Vec::new()).expect("size updates");
        for _ in 0..5000 {
            d.decode(&literal(b"", value), &mut Vec::new())
                .expect("decodes");
        }
        assert!(d.table_size() <= MAX_TABLE_SIZE);
        assert!(meter.live() <= TABLE_HEAP, "table heap {}", meter.live());
    }
}

#[test]
fn hpack_huge_literal_lengths_stop_the_block_without_allocating() {
    let mut d = Decoder::new();
    for huffman in [0, 0x80] {
        for len in [1u64 << 31, u64::from(u32::MAX)] {
            let mut block = vec![0x82, 0x40];
            int(&mut block, huffman, 7, len);
            block.extend_from_slice(b"only a few bytes follow");
            let meter = Meter::start();
            let mut out = Vec::new();
            assert_eq!(d.decode(&block, &mut out), Err(HpackError::Truncated));
            // What came before is kept; nothing of the announced length was allocated.
            assert_eq!(out.len(), 1);
            assert!(meter.peak() < 1024, "peak {}", meter.peak());
        }
    }
    let mut block = vec![0x00];
    int(&mut block, 0, 7, 1 << 33);
    assert_eq!(
        d.decode(&block, &mut Vec::new()),
        Err(HpackError::IntegerOverflow)
    );
}

/// A client announcing (and its server accepting) a 4 GiB HPACK table, then filling
/// it with 500 header blocks of 15 KiB of new entries: every request is still
/// reported, the tables stay at their bound and the heap does not grow.
#[test]
fn settings_header_table_size_huge_then_table_abuse_stays_bounded() {
    let mut st = Stitcher::new();
    let huge_table = [0, 1, 0xff, 0xff, 0xff, 0xff];
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &huge_table));
    push_all(
        &mut st,
        [
            opened(1, 1, Role::Server),
            data(2, 1, IN, &client),
            data(3, 1, OUT, &frame(SETTINGS, 0, 0, &huge_table)),
        ],
    );
    let meter = Meter::start();
    let (mut reported, mut live_at_100) = (0, 0);
    for i in 0..500u32 {
        let mut block = Vec::new();
        int(&mut block, 0x20, 5, u64::from(u32::MAX));
        block.extend_from_slice(&[0x82, 0x86, 0x84]);
        for j in 0..15 {
            block.extend(literal(format!("x-{i}-{j}").as_bytes(), &[b'v'; 1000]));
        }
        assert!(block.len() <= MAX_HEADER_BLOCK);
        let stream = 2 * i + 1;
        let t = 10 + 2 * u64::from(i);
        reported += push_all(
            &mut st,
            [
                data(
                    t,
                    1,
                    IN,
                    &frame(HEADERS, END_HEADERS | END_STREAM, stream, &block),
                ),
                data(
                    t + 1,
                    1,
                    OUT,
                    &frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x88]),
                ),
            ],
        );
        let f = st.footprint();
        assert!(f.entries <= 2 * MAX_TABLE_SIZE, "tables {}", f.entries);
        assert!(f.pending <= MAX_STREAMS);
        assert!(
            f.buffered <= 2 * (2 * MAX_HEADER_BLOCK + 2048),
            "buffered {}",
            f.buffered
        );
        if i == 100 {
            live_at_100 = meter.live();
        }
    }
    assert_eq!(reported, 500, "every request reported");
    assert!(
        meter.live() <= 2 * TABLE_HEAP + 4 * MAX_HEADER_BLOCK,
        "heap {}",
        meter.live()
    );
    assert!(
        meter.live() <= live_at_100 + 16 * 1024,
        "grew from {live_at_100} to {}",
        meter.live()
    );
}

#[test]
fn http1_header_flood_keeps_max_headers_and_values_cut() {
    let mut head = b"GET /flood HTTP/1.1\r\n".to_vec();
    for i in 0..1200 {
        head.extend(format!("x{i}: v\r\n").into_bytes());
    }
    head.extend(b"x-giant: ");
    head.extend(std::iter::repeat_n(b'g', 4000));
    head.extend(b"\r\n\r\n");
    assert!(head.len() < MAX_HEAD_BYTES);
    let mut p = Parser::new(MessageKind::Request, MAX_HEAD_BYTES);
    let events = feed(&mut p, &head, head.len() as u64);
    let [Http1Event::Request { request, .. }, Http1Event::End { .. }] = events.as_slice() else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(request.headers.len(), MAX_HEADERS);
    assert!(request
        .headers
        .iter()
        .all(|(_, v)| v.len() <= MAX_HEADER_VALUE));
}

/// A header block that never ends, 1 MiB of header lines in 1 KiB reads: given up
/// at the bound (an error, counted), then skipped; the buffer never exceeds it.
#[test]
fn http1_endless_header_block_is_given_up_at_the_bound() {
    let mut p = Parser::new(MessageKind::Request, MAX_HEAD_BYTES);
    let meter = Meter::start();
    let mut errors = 0;
    let mut read = b"GET / HTTP/1.1\r\nX-First: ".to_vec();
    for i in 0..1024 {
        read.resize(1024, b'h');
        if let Some(last) = read.last_mut() {
            *last = b'\n';
        }
        for e in feed(&mut p, &read, 1024) {
            assert_eq!(e, Http1Event::Error(ParseError::HeadTooLong), "read {i}");
            errors += 1;
        }
        assert!(p.buffered() <= MAX_HEAD_BYTES);
        read = b"X-More: ".to_vec();
    }
    assert_eq!(errors, 1);
    assert!(
        meter.peak() <= 2 * MAX_HEAD_BYTES + 4096,
        "peak {}",
        meter.peak()
    );

    // Through the stitcher: counted as an oversized head.
    let mut st = Stitcher::new();
    let mut events = vec![
        opened(1, 1, Role::Server),
        data(2, 1, IN, b"GET / HTTP/1.1\r\n"),
    ];
    for i in 0..100 {
        events.push(data(
            3 + i,
            1,
            IN,
            &[b"X-More: ".as_slice(), &[b'h'; 1000], b"\r\n"].concat(),
        ));
    }
    push_all(&mut st, events);
    assert_eq!(st.stats().oversized_heads, 1);
    assert!(st.footprint().buffered <= MAX_HEAD_BYTES);
}

#[test]
fn http2_header_flood_keeps_max_fields_and_continuation_floods_are_skipped() {
    let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
    let mut out = Vec::new();
    // 16,000 one-byte references in one block.
    r.feed(
        &frame(HEADERS, END_HEADERS, 1, &[0x82; 16_000]),
        16_009,
        &mut out,
    );
    let [H2Event::Headers { headers, hpack, .. }] = out.as_slice() else {
        panic!("unexpected {out:?}");
    };
    assert_eq!(headers.len(), MAX_FIELDS);
    assert_eq!(hpack.dropped_fields as usize, 16_000 - MAX_FIELDS);
    assert!(headers
        .iter()
        .all(|(n, v)| n.len() <= MAX_FIELD_LEN && v.len() <= MAX_FIELD_LEN));

    // A header block that never ends: 10 MiB of CONTINUATION frames.
    out.clear();
    let meter = Meter::start();
    let piece = [0x82; 1024];
    r.feed(&frame(HEADERS, 0, 3, &piece), 1033, &mut out);
    for _ in 0..10_240 {
        r.feed(&frame(CONTINUATION, 0, 3, &piece), 1033, &mut out);
        assert!(
            r.buffered() <= 4 * MAX_HEADER_BLOCK + 2048,
            "buffered {}",
            r.buffered()
        );
    }
    r.feed(&frame(CONTINUATION, END_HEADERS, 3, &piece), 1033, &mut out);
    assert_eq!(out, [H2Event::Oversized { stream: 3 }]);
    assert!(
        meter.peak() <= 4 * MAX_HEADER_BLOCK + 8192,
        "peak {}",
        meter.peak()
    );
    // The reader is still in step: the next block decodes.
    out.clear();
    r.feed(&frame(HEADERS, END_HEADERS, 5, &[0x82, 0x84]), 11, &mut out);
    assert!(matches!(out.as_slice(), [H2Event::Headers { headers, .. }] if headers.len() == 2));
}

fn chunked_response() -> Parser {
    let mut p = Parser::new(MessageKind::Response, MAX_HEAD_BYTES);
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let events = feed(&mut p, head, head.len() as u64);
    assert!(matches!(events.as_slice(), [Http1Event::Response { .. }]));
    p
}

/// 20 MiB of 1 KiB chunks, then 1 GiB of 1 MiB chunks of which only the first KiB of
/// each write was captured: counted, never kept; the parser is still in the body.
#[test]
fn endless_chunked_body_is_counted_not_kept() {
    let mut p = chunked_response();
    let chunk = [b"400\r\n".as_slice(), &[b'c'; 1024], b"\r\n"].concat();
    let head = b"100000\r\n";
    let write = [head.as_slice(), &[b'c'; 1024]].concat();
    let meter = Meter::start();
    for _ in 0..20_480 {
        assert_eq!(feed(&mut p, &chunk, chunk.len() as u64), []);
        assert_eq!(p.buffered(), 0);
    }
    for _ in 0..1024 {
        // The rest of the chunk's data was not captured: skipped by its length.
        assert_eq!(feed(&mut p, &write, (head.len() + 1_048_576) as u64), []);
        assert_eq!(feed(&mut p, b"\r\n", 2), []);
    }
    assert_eq!(p.body_size(), 20_480 * 1024 + 1024 * 1_048_576);
    assert_eq!(meter.peak(), 0, "nothing allocated");
    assert_eq!(feed(&mut p, b"0\r\n\r\n", 5).len(), 1);
}

#[test]
fn chunk_framing_abuse_is_an_error_not_a_buffer() {
    let abuse: [&[u8]; 4] = [
        &[b'f'; 100],                                     // chunk size over 16 hex digits
        &[b"1;".as_slice(), &[b'e'; 10_000]].concat(),    // endless chunk extension
        &[b"0\r\n".as_slice(), &[b't'; 10_000]].concat(), // endless trailer line
        b"1\r\nxy",                                       // no CRLF after the data
    ];
    for bytes in abuse {
        let mut p = chunked_response();
        let events = feed(&mut p, bytes, bytes.len() as u64);
        assert_eq!(
            events,
            [Http1Event::Error(ParseError::Chunked)],
            "{:?}",
            &bytes[..8.min(bytes.len())]
        );
        assert_eq!(p.buffered(), 0);
    }
    // The largest chunk size, its data uncaptured, the loader's largest writes: counted.
    let mut p = chunked_response();
    assert_eq!(feed(&mut p, b"ffffffffffffffff\r\n", 0x7fff_f000), []);
    for _ in 0..1000 {
        assert_eq!(feed(&mut p, b"", 0x7fff_f000), []);
    }
    assert_eq!(p.body_size(), 0x7fff_f000 - 18 + 1000 * 0x7fff_f000);
}
