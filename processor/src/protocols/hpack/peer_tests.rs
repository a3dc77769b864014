//! The decoder against other implementations' encoders: the http2jp hpack-test-case
//! stories vendored in `testdata/hpack-test-case` (see its README for the source,
//! commit, licence and which stories).
//!
//! Each story is decoded as one direction of a connection would be: one decoder,
//! its dynamic table carried from case to case, every case's header list compared
//! exactly (names, values, order). `header_table_size` is the
//! `SETTINGS_HEADER_TABLE_SIZE` the decoder's side acknowledged before the case; a
//! passive observer does not enforce it (it decodes what the encoder's size updates
//! announce, up to [`MAX_TABLE_SIZE`]), but the table must never hold more than it.

use std::path::{Path, PathBuf};

use super::*;

/// The stories in testdata (the README lists them), their cases and header fields.
const STORIES: usize = 27;
const CASES: usize = 271;
const FIELDS: usize = 2727;

fn hex(s: &str) -> Vec<u8> {
    let s = s.as_bytes();
    s.chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(text, 16).expect("hex digit pair")
        })
        .collect()
}

fn stories() -> Vec<PathBuf> {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocols/hpack/testdata/hpack-test-case");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).expect("testdata/hpack-test-case") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).expect("encoder directory") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "json") {
                files.push(f);
            }
        }
    }
    files.sort();
    files
}

/// One case's expected header list: `[{name: value}, ...]`, in order.
fn expected(case: &serde_json::Value) -> Vec<(String, String)> {
    case["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .flat_map(|h| {
            h.as_object()
                .expect("one header")
                .iter()
                .map(|(n, v)| (n.clone(), v.as_str().expect("value").to_string()))
        })
        .collect()
}

/// Decodes every case of `path` in order; returns the number of cases and fields.
fn check_story(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).expect("story");
    let story: serde_json::Value = serde_json::from_str(&text).expect("story JSON");
    let name = path.display();
    let mut d = Decoder::new();
    let mut setting = DEFAULT_TABLE_SIZE;
    let mut fields = 0;
    let cases = story["cases"].as_array().expect("cases");
    for (i, case) in cases.iter().enumerate() {
        if let Some(size) = case["header_table_size"].as_u64() {
            setting = usize::try_from(size).expect("table size");
        }
        let want = expected(case);
        let mut got = Vec::new();
        let wire = hex(case["wire"].as_str().expect("wire"));
        let info = d
            .decode(&wire, &mut got)
            .unwrap_or_else(|e| panic!("{name} case {i}: {e}"));
        assert_eq!(info, Decoded::default(), "{name} case {i}");
        assert_eq!(got, want, "{name} case {i}");
        assert!(
            d.table_size() <= setting.min(MAX_TABLE_SIZE),
            "{name} case {i}: table {} over the setting {setting}",
            d.table_size()
        );
        fields += got.len();
    }
    (cases.len(), fields)
}

#[test]
fn http2jp_hpack_test_case_stories_decode_exactly() {
    let files = stories();
    assert_eq!(files.len(), STORIES, "stories in testdata: {files:?}");
    let (mut cases, mut fields) = (0, 0);
    for f in &files {
        let (c, n) = check_story(f);
        cases += c;
        fields += n;
    }
    // Every case was read (none skipped by a malformed story).
    assert_eq!((cases, fields), (CASES, FIELDS));
}
