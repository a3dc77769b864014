use super::testutil::*;
use super::*;
use proptest::prelude::*;

fn feed_all(r: &mut FrameReader, chunks: &[&[u8]]) -> Vec<H2Event> {
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c, c.len() as u64, &mut out);
    }
    out
}

fn request_bytes() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(settings());
    b.extend(headers(
        1,
        false,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/helloworld.Greeter/SayHello"),
            (":authority", "127.0.0.1:50051"),
            ("content-type", "application/grpc"),
        ],
    ));
    b.extend(data(1, true, &[0, 0, 0, 0, 5, 10, 3, b'b', b'o', b'b']));
    // A second stream reusing the dynamic table: indexed references (62..).
    let mut second = vec![0x83, 0xbf, 0xbe]; // :method POST, then two dynamic entries
    second.extend(block(&[(":path", "/p2")]));
    b.extend(frame(0x1, 0x4, 3, &second));
    b.extend(data(3, true, b"xyz"));
    b
}

#[test]
fn request_frames_decode() {
    let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
    let bytes = request_bytes();
    let events = feed_all(&mut r, &[&bytes]);
    assert_eq!(events.len(), 4, "{events:?}");
    match &events[0] {
        H2Event::Headers {
            stream: 1,
            headers,
            end_stream: false,
            error: None,
            ..
        } => {
            assert_eq!(headers[0], (":method".into(), "POST".into()));
            assert_eq!(
                headers[2],
                (":path".into(), "/helloworld.Greeter/SayHello".into())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[1],
        H2Event::Data {
            stream: 1,
            len: 10,
            end_stream: true
        }
    );
    match &events[2] {
        H2Event::Headers {
            stream: 3, headers, ..
        } => assert_eq!(
            headers,
            &vec![
                (":method".to_string(), "POST".to_string()),
                (":authority".to_string(), "127.0.0.1:50051".to_string()),
                ("content-type".to_string(), "application/grpc".to_string()),
                (":path".to_string(), "/p2".to_string()),
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn split_at_every_boundary_gives_the_same_events() {
    let bytes = request_bytes();
    let whole = feed_all(&mut FrameReader::new(MAX_HEADER_BLOCK, true), &[&bytes]);
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            if j > i + 40 && j < bytes.len() - 40 {
                continue; // every single split, and double splits near the ends
            }
            let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
            let events = feed_all(&mut r, &[&bytes[..i], &bytes[i..j], &bytes[j..]]);
            assert_eq!(events, whole, "split at {i}/{j}");
        }
    }
}

#[test]
fn data_larger_than_the_capture_is_skipped_by_length() {
    let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
    let big = data(5, true, &vec![7u8; 5000]);
    let mut out = Vec::new();
    // Only the first 1024 bytes captured of the 5009-byte write.
    r.feed(&big[..1024], big.len() as u64, &mut out);
    assert_eq!(
        out,
        vec![H2Event::Data {
            stream: 5,
            len: 5000,
            end_stream: true
        }]
    );
    // Still in sync: the next write parses.
    out.clear();
    let next = headers(7, true, &[(":status", "200")]);
    r.feed(&next, next.len() as u64, &mut out);
    assert!(
        matches!(&out[..], [H2Event::Headers { stream: 7, .. }]),
        "{out:?}"
    );
}

#[test]
fn uncaptured_header_block_loses_sync_then_recovers() {
    let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
    let mut write = data(1, false, &[1u8; 100]);
    write.extend(headers(1, true, &[("grpc-status", "0")]));
    let mut out = Vec::new();
    // The capture ends inside the HEADERS frame's header.
    r.feed(&write[..112], write.len() as u64, &mut out);
    assert_eq!(
        out[0],
        H2Event::Data {
            stream: 1,
            len: 100,
            end_stream: false
        }
    );
    assert_eq!(out[1], H2Event::LostSync { stream: None });
    // Garbage is skipped while out of sync; a frame start resynchronises.
    out.clear();
    assert_eq!(r.feed(b"\xff\xff\xff\xffnot frames", 14, &mut out), 14);
    assert!(out.is_empty());
    let next = headers(3, true, &[(":status", "204")]);
    r.feed(&next, next.len() as u64, &mut out);
    assert!(
        matches!(&out[..], [H2Event::Headers { stream: 3, .. }]),
        "{out:?}"
    );
}

#[test]
fn continuation_and_padding() {
    let full = block(&[(":status", "200"), ("grpc-status", "5"), ("x", "y")]);
    let (a, b) = full.split_at(7);
    // HEADERS with padding (3 bytes) and priority, then CONTINUATION.
    let mut p = vec![3u8];
    p.extend([0, 0, 0, 1, 16]);
    p.extend_from_slice(a);
    p.extend([0, 0, 0]);
    let mut bytes = frame(0x1, 0x8 | 0x20 | 0x1, 9, &p);
    bytes.extend(frame(0x9, 0x4, 9, b));
    let events = feed_all(&mut FrameReader::new(MAX_HEADER_BLOCK, true), &[&bytes]);
    match &events[..] {
        [H2Event::Headers {
            stream: 9,
            headers,
            end_stream: true,
            error: None,
            ..
        }] => assert_eq!(headers.len(), 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_block_is_skipped_and_reader_stays_in_sync() {
    let mut r = FrameReader::new(64, true);
    let mut bytes = headers(1, false, &[("big", &"v".repeat(200))]);
    bytes.extend(data(1, true, b"abc"));
    let events = feed_all(&mut r, &[&bytes]);
    assert_eq!(
        events,
        vec![
            H2Event::Oversized { stream: 1 },
            H2Event::Data {
                stream: 1,
                len: 3,
                end_stream: true
            }
        ]
    );
    assert!(r.buffered() <= 1024 + 64 + 9);
}

#[test]
fn frame_detection() {
    assert!(looks_like_frames(PREFACE, 24));
    assert!(looks_like_frames(&PREFACE[..10], 1000));
    let mut two = settings();
    two.extend(headers(1, true, &[(":status", "200")]));
    assert!(looks_like_frames(&two, two.len() as u64));
    // Chain must end at the write's end when all was captured.
    assert!(!looks_like_frames(
        &two[..two.len() - 1],
        two.len() as u64 - 1
    ));
    // Captured prefix of a longer write.
    assert!(looks_like_frames(&two[..12], two.len() as u64));
    for not in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
        b"*1\r\n$4\r\nPING\r\n",
        b"",
    ] {
        assert!(!looks_like_frames(not, not.len() as u64), "{not:?}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..200), 0u64..3000), 1..30),
        start_synced in any::<bool>(),
    ) {
        let mut r = FrameReader::new(512, start_synced);
        let mut out = Vec::new();
        for (bytes, extra) in &chunks {
            r.feed(bytes, bytes.len() as u64 + extra, &mut out);
            prop_assert!(r.buffered() <= 2 * 1024 + 512 + 9);
            prop_assert!(r.table_size() <= hpack::MAX_TABLE_SIZE);
        }
    }

    #[test]
    fn valid_frames_split_anywhere_give_the_same_events(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)
    ) {
        let bytes = request_bytes();
        let whole = feed_all(&mut FrameReader::new(MAX_HEADER_BLOCK, true), &[&bytes]);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let pieces: Vec<&[u8]> = at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
        let events = feed_all(&mut FrameReader::new(MAX_HEADER_BLOCK, true), &pieces);
        prop_assert_eq!(events, whole);
    }
}

#[test]
fn after_a_loss_old_table_entries_are_skipped_not_misread() {
    let mut r = FrameReader::new(MAX_HEADER_BLOCK, true);
    let mut out = Vec::new();
    // Block 1 inserts `a: 1` (index 62).
    let first = headers(1, true, &[("a", "1")]);
    r.feed(&first, first.len() as u64, &mut out);
    // A write whose second frame (inserting `b: 2`) was not captured.
    let mut write = data(1, false, &[0u8; 10]);
    write.extend(headers(3, true, &[("b", "2")]));
    r.feed(&write[..19], write.len() as u64, &mut out);
    assert!(out.contains(&H2Event::LostSync { stream: None }), "{out:?}");
    out.clear();
    // The encoder now has [b, a]: 63 is `a`. It must not resolve to something else.
    let next = frame(0x1, 0x5, 5, &[0xbf, 0x82]);
    r.feed(&next, next.len() as u64, &mut out);
    match &out[..] {
        [H2Event::Headers { headers, hpack, .. }] => {
            assert_eq!(headers, &vec![(":method".to_string(), "GET".to_string())]);
            assert_eq!(hpack.unknown_indices, 1);
        }
        other => panic!("{other:?}"),
    }
}
