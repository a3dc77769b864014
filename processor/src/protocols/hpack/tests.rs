//! RFC 7541 Appendix C examples, and robustness.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn decode_ok(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let info = d.decode(&hex(block), &mut out).expect("decodes");
    assert_eq!(info, Decoded::default());
    out
}

#[test]
fn c2_integers() {
    // C.1.1 10 in a 5-bit prefix; C.1.2 1337 in a 5-bit prefix; C.1.3 42 at 8 bits.
    let mut pos = 0;
    assert_eq!(integer(&[0x0a], &mut pos, 5), Ok(10));
    let mut pos = 0;
    assert_eq!(integer(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
    assert_eq!(pos, 3);
    let mut pos = 0;
    assert_eq!(integer(&[0x2a], &mut pos, 8), Ok(42));
    let mut pos = 0;
    assert_eq!(
        integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, 5),
        Err(HpackError::IntegerOverflow)
    );
    let mut pos = 0;
    assert_eq!(
        integer(&[0x1f, 0x9a], &mut pos, 5),
        Err(HpackError::Truncated)
    );
}

#[test]
fn c2_single_representations() {
    // C.2.1 literal with indexing.
    let mut d = Decoder::new();
    let out = decode_ok(
        &mut d,
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
    );
    assert_eq!(out, pairs(&[("custom-key", "custom-header")]));
    assert_eq!(d.table_size(), 55);
    // C.2.2 literal without indexing.
    let mut d = Decoder::new();
    let out = decode_ok(&mut d, "040c 2f73 616d 706c 652f 7061 7468");
    assert_eq!(out, pairs(&[(":path", "/sample/path")]));
    assert_eq!(d.table_size(), 0);
    // C.2.3 never indexed.
    let mut d = Decoder::new();
    let out = decode_ok(&mut d, "1008 7061 7373 776f 7264 0673 6563 7265 74");
    assert_eq!(out, pairs(&[("password", "secret")]));
    assert_eq!(d.table_size(), 0);
    // C.2.4 indexed.
    let mut d = Decoder::new();
    assert_eq!(decode_ok(&mut d, "82"), pairs(&[(":method", "GET")]));
}

#[test]
fn c3_requests_without_huffman() {
    let mut d = Decoder::new();
    let out = decode_ok(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
    assert_eq!(
        out,
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com")
        ])
    );
    assert_eq!(d.table_size(), 57);
    let out = decode_ok(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865");
    assert_eq!(
        out,
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache")
        ])
    );
    assert_eq!(d.table_size(), 110);
    let out = decode_ok(
        &mut d,
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    );
    assert_eq!(
        out,
        pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value")
        ])
    );
    assert_eq!(d.table_size(), 164);
    assert_eq!(
        d.entries(),
        pairs(&[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com")
        ])
    );
}

#[test]
fn c4_requests_with_huffman() {
    let mut d = Decoder::new();
    let out = decode_ok(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
    assert_eq!(
        out.last(),
        Some(&(":authority".into(), "www.example.com".into()))
    );
    assert_eq!(d.table_size(), 57);
    let out = decode_ok(&mut d, "8286 84be 5886 a8eb 1064 9cbf");
    assert_eq!(
        out.last(),
        Some(&("cache-control".into(), "no-cache".into()))
    );
    assert_eq!(d.table_size(), 110);
    let out = decode_ok(
        &mut d,
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    );
    assert_eq!(
        out,
        pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value")
        ])
    );
    assert_eq!(d.table_size(), 164);
}

#[test]
fn c5_responses_with_eviction() {
    // The encoder's table is 256 bytes: announced here by a size update.
    let mut d = Decoder::new();
    let mut out = Vec::new();
    d.decode(&[0x3f, 0xe1, 0x01], &mut out)
        .expect("size update 256");
    assert!(out.is_empty());
    let out = decode_ok(
        &mut d,
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230
         3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65
         7861 6d70 6c65 2e63 6f6d",
    );
    assert_eq!(
        out,
        pairs(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com")
        ])
    );
    assert_eq!(d.table_size(), 222);
    let out = decode_ok(&mut d, "4803 3330 37c1 c0bf");
    assert_eq!(
        out,
        pairs(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com")
        ])
    );
    assert_eq!(d.table_size(), 222);
    let out = decode_ok(
        &mut d,
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220
         474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157
         454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076
         6572 7369 6f6e 3d31",
    );
    assert_eq!(
        out,
        pairs(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            (
                "set-cookie",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
            )
        ])
    );
    assert_eq!(d.table_size(), 215);
}

#[test]
fn unknown_dynamic_index_is_skipped_and_counted() {
    // A decoder that missed C.3.1 (joined mid-stream) decodes C.3.2.
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let info = d
        .decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865"), &mut out)
        .expect("decodes");
    assert_eq!(info.unknown_indices, 1);
    assert_eq!(
        out,
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("cache-control", "no-cache")
        ])
    );
    // cache-control was inserted: index 62 refers to it now.
    out.clear();
    d.decode(&[0xbe], &mut out).expect("decodes");
    assert_eq!(out, pairs(&[("cache-control", "no-cache")]));
}

#[test]
fn truncated_block_keeps_what_came_before() {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let block = hex("8286 8441 0f77 7777 2e65");
    assert_eq!(d.decode(&block, &mut out), Err(HpackError::Truncated));
    assert_eq!(out.len(), 3);
}

proptest! {
    #[test]
    fn arbitrary_blocks_never_panic_and_table_stays_bounded(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)
    ) {
        let mut d = Decoder::new();
        for b in &blocks {
            let mut out = Vec::new();
            let _ = d.decode(b, &mut out);
            prop_assert!(d.table_size() <= MAX_TABLE_SIZE);
            prop_assert!(out.len() <= MAX_FIELDS);
            prop_assert!(out.iter().all(|(n, v)| n.len() <= MAX_FIELD_LEN && v.len() <= MAX_FIELD_LEN));
        }
    }
}

#[test]
fn references_to_a_large_entry_do_not_expand_without_bound() {
    let mut d = Decoder::new();
    // Literal with indexing, new name "x", a 3000-byte value; then 1000 references.
    let mut block = vec![0x40, 0x01, b'x', 0x7f];
    let mut n = 3000u32 - 127;
    while n >= 128 {
        block.push(u8::try_from(n % 128).expect("byte") | 0x80);
        n /= 128;
    }
    block.push(u8::try_from(n).expect("byte"));
    block.extend(std::iter::repeat_n(b'v', 3000));
    block.extend(std::iter::repeat_n(0xbe, 1000));
    let mut out = Vec::new();
    let info = d.decode(&block, &mut out).expect("decodes");
    assert_eq!(out.len(), MAX_FIELDS);
    assert_eq!(info.dropped_fields, 1001 - 128);
    assert_eq!(out[0].1.len(), MAX_FIELD_LEN);
}
