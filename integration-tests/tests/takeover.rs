//! Issue 17, a processor killed (-9) and replaced loses nothing: the loader keeps
//! what the processor did not acknowledge, and the processor acknowledges only
//! what it delivered (`processor/src/resume.rs`). Spans waiting in the killed
//! processor's export queue and requests in flight on its keep-alive connection
//! are rebuilt by its replacement; what it had delivered is not exported twice
//! (beyond the last acknowledgement interval), and a rebuilt span keeps its ids.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

/// An HTTP/1.1 server that keeps connections alive (python's http.server speaks
/// 1.0 by default and closes each).
const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// One keep-alive connection, `n` requests `/req-<i>`, `pause` seconds apart;
/// prints `done <n>` when all were answered.
const CLIENT: &str = r#"
import http.client, sys, time
port, n, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("GET", "/req-%d" % i)
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    if i % 50 == 0:
        print("sent", i, flush=True)
    time.sleep(pause)
print("done", n, flush=True)
"#;

fn str_of<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

#[test]
fn a_processor_killed_and_replaced_loses_no_span() {
    let test = "a_processor_killed_and_replaced_loses_no_span";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(dir.path(), "routes:\n  unmatched: path\n");
    // Spans wait up to 3 s in the export queue: at the kill, the last seconds'
    // spans have not reached the collector.
    let mut env = grpc_export_env(&receiver, port);
    env.push(("OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT", "3s".to_string()));
    let first = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &format!("ports {port}"));
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SERVER, &port.to_string()]);
    let mut server = Running::spawn(cmd, &format!("keep-alive server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    const REQUESTS: usize = 400;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        CLIENT,
        &port.to_string(),
        &REQUESTS.to_string(),
        "0.01",
    ]);
    let mut client = Running::spawn(cmd, "keep-alive client");
    // Killed while the client is mid-way, on its one connection (opened before
    // the replacement existed) and with seconds of spans not yet exported.
    client.stdout.wait_for("sent 150", PATIENCE);
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let killed_at = Instant::now();
    drop(first);
    let second = start_exporting_processor(&socket, test, &config, &env);
    eprintln!(
        "replacement subscribed {:?} after the kill",
        killed_at.elapsed()
    );
    client
        .stdout
        .wait_for(&format!("done {REQUESTS}"), Duration::from_secs(60));
    assert!(client.wait(PATIENCE).success(), "the client failed");
    let server_spans = |r: &[Value]| -> Vec<Value> {
        spans(r)
            .into_iter()
            .filter(|s| s["kind"] == 2 && s["resource"]["process.pid"] == server.pid())
            .cloned()
            .collect()
    };
    let unique = |r: &[Value]| -> BTreeSet<String> {
        server_spans(r)
            .iter()
            .map(|s| str_of(s, "span_id").to_owned())
            .collect()
    };
    receiver.until(
        "a server span for every request",
        Duration::from_secs(30),
        &|| stderr_of(&[("loader", &loader), ("replacement", &second)]),
        |r| unique(r).len() >= REQUESTS,
    );
    receiver.settle(Duration::from_secs(1));
    let all = server_spans(&receiver.records);
    let exe = exe_of(server.pid());
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    // Every request once, by path; a span exported twice has the same ids.
    let mut by_path: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for s in &all {
        assert_eq!(s["resource"]["service.name"], name, "{s}");
        let path = s["attributes"]["url.path"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        by_path
            .entry(path)
            .or_default()
            .insert((str_of(s, "trace_id").into(), str_of(s, "span_id").into()));
    }
    let missing: Vec<usize> = (0..REQUESTS)
        .filter(|i| !by_path.contains_key(&format!("/req-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a server span: {missing:?}\nreplacement:\n{}",
        second.stderr.text()
    );
    for (path, ids) in &by_path {
        assert_eq!(
            ids.len(),
            1,
            "{path} exported with different ids: {ids:?}\nreplacement:\n{}",
            second.stderr.text()
        );
    }
    assert_eq!(by_path.len(), REQUESTS, "{:?}", by_path.keys());
    let duplicates = all.len() - REQUESTS;
    eprintln!(
        "{REQUESTS} requests, {} spans ({duplicates} exported twice, same ids)",
        all.len()
    );
    // Exported again only within the last acknowledgement interval (20 ms, at
    // 100 requests/s: a couple), not the seconds the queue held.
    assert!(duplicates <= 10, "{duplicates} spans exported twice");
    second
        .stderr
        .wait_for("taking over from the previous processor", PATIENCE);
}
