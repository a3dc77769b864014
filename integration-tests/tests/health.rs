//! Issue 14: OBI's `health_check` on the real processor binary — `/healthz` answers
//! while the processor runs, `/readyz` only while it is subscribed to its loader
//! (the DaemonSet's probes, `deploy/kubernetes/daemonset.yaml`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_integration_tests::{
    free_port, processor_bin, start_loader, synthetic_capture, Running, PATIENCE,
};

/// The status code and body of `GET path` on 127.0.0.1:`port`, `None` while nothing
/// listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Waits until `GET path` answers `code`.
fn until_status(port: u16, path: &str, code: u16, p: &Running) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((c, body)) = get(port, path) {
            if c == code {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {code}; processor stderr:\n{}",
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn healthz_is_live_and_readyz_follows_the_loader_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("loader.sock");
    let port = free_port();
    // The processor first, with no loader yet: alive, not ready.
    let mut cmd = Command::new(processor_bin());
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--name", "health", "--print", "none"])
        .env("OTEL_EBPF_HEALTH_CHECK_PORT", port.to_string());
    let mut processor = Running::spawn(cmd, "tandem-processor health");
    let live = until_status(port, "/healthz", 200, &processor);
    assert!(live.contains("\"status\":\"ok\""), "{live}");
    assert!(live.contains("\"loader_connected\":false"), "{live}");
    let not_ready = until_status(port, "/readyz", 503, &processor);
    assert!(
        not_ready.contains("not subscribed to the loader"),
        "{not_ready}"
    );

    // A loader comes: ready.
    let capture = synthetic_capture(dir.path(), 10);
    let mut loader = start_loader(&socket, &["--replay", capture.to_str().unwrap()]);
    processor
        .stderr
        .wait_for("connected to loader; subscribed", PATIENCE);
    until_status(port, "/readyz", 200, &processor);
    let live = until_status(port, "/healthz", 200, &processor);
    assert!(live.contains("\"loader_connected\":true"), "{live}");

    // The loader goes: not ready again, still alive.
    loader.stop();
    until_status(port, "/readyz", 503, &processor);
    until_status(port, "/healthz", 200, &processor);
    assert!(processor.stop().success(), "{}", processor.stderr.text());
}
