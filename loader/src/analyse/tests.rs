//! The parent's side of the analyser: the program-header reader and the checks on
//! the child's answer. (The child itself runs in `integration-tests/tests/analyser.rs`,
//! which has the loader binary to re-execute.)

use super::*;

fn host_libssl() -> std::path::PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/lib/x86_64-linux-gnu",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flat_map(|d| d.flatten())
    .map(|e| e.path())
    .find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so."))
            && p.is_file()
    })
    .expect("libssl.so.* is installed (scripts/setup.sh installs curl, which needs it)")
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().expect("temp file");
    std::io::Write::write_all(&mut f, bytes).expect("write");
    f
}

#[test]
fn executable_segments_of_a_real_library() {
    let f = File::open(host_libssl()).unwrap();
    let len = f.metadata().unwrap().len();
    let ranges = exec_ranges(&f).expect("ELF");
    assert!(!ranges.is_empty());
    assert!(ranges.iter().all(|(off, l)| off + l <= len), "{ranges:?}");
}

#[test]
fn garbage_and_truncated_files_are_errors() {
    assert!(exec_ranges(&file_with(b"")).is_err());
    assert!(exec_ranges(&file_with(
        b"not an elf at all, but long enough to hold a header of sixty-four bytes"
    ))
    .is_err());
    // A real header whose program headers are cut off.
    let data = std::fs::read(host_libssl()).unwrap();
    let e = exec_ranges(&file_with(&data[..80])).unwrap_err();
    assert!(e.contains("truncated") || e.contains("implausible"), "{e}");
    // A header claiming absurd program headers.
    let mut bad = data[..4096].to_vec();
    bad[56] = 0xff;
    bad[57] = 0xff;
    assert!(exec_ranges(&file_with(&bad))
        .unwrap_err()
        .contains("implausible"));
}

#[test]
fn the_childs_answer_is_checked() {
    let ranges = [(0x1000, 0x1000)]; // file bytes 4096..8192
    let wanted = ["SSL_read", "SSL_write"];
    let ok = parse_answer(
        "sym SSL_read 4096\nsym SSL_write 8191\nsym SSL_read 5000\n",
        &wanted,
        &ranges,
    )
    .expect("valid");
    assert_eq!(
        ok,
        [
            ("SSL_read".to_string(), 4096),
            ("SSL_write".to_string(), 8191)
        ]
    );
    for (bad, why) in [
        ("sym SSL_read 8192\n", "outside"),
        ("sym SSL_read 100\n", "outside"),
        ("sym system 4096\n", "unasked"),
        ("sym SSL_read\n", "malformed"),
        ("sym SSL_read x\n", "bad offset"),
        ("hello\n", "malformed"),
    ] {
        let e = parse_answer(bad, &wanted, &ranges).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    assert_eq!(parse_answer("", &wanted, &ranges).unwrap(), vec![]);
}
