//! Issue 15: TLS whose OpenSSL is linked into the executable itself — Node.js
//! (`/usr/bin/node` carries OpenSSL 3 statically: `SSL_read`/`SSL_write` are symbols
//! of the executable, no libssl.so is mapped). The loader finds them through the
//! sandboxed analyser and probes them like a libssl; the server spans have exact
//! attributes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

const NODE: &str = "/usr/bin/node";
const BODY: &str = "hello from node over TLS\n";

const SERVER_JS: &str = r#"
const https = require('https');
const fs = require('fs');
const [port, cert, key] = process.argv.slice(2);
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  if (req.url === '/hello.txt') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(BODY) });
    res.end(BODY);
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
}).listen(Number(port), '127.0.0.1', () => console.log('listening'));
"#;

fn start_node_https(dir: &Path, port: u16) -> Running {
    let (cert, key) = make_certificate(dir);
    let script = dir.join("server.js");
    std::fs::write(&script, SERVER_JS.replace("BODY", &format!("{:?}", BODY)))
        .expect("write server.js");
    let mut cmd = Command::new(NODE);
    cmd.arg(&script).arg(port.to_string()).arg(&cert).arg(&key);
    let mut s = Running::spawn(cmd, &format!("node https server :{port}"));
    wait_listening(&mut s, port, PATIENCE);
    s
}

fn server_spans(records: &[Value], pid: i64) -> Vec<Value> {
    spans(records)
        .into_iter()
        .filter(|s| s["kind"] == 2 && s["resource"]["process.pid"] == pid)
        .cloned()
        .collect()
}

#[test]
fn node_https_server_with_openssl_linked_in_gives_exact_spans() {
    let test = "node_https_server_with_openssl_linked_in_gives_exact_spans";
    if !require_root_bpf(test) {
        return;
    }
    assert!(
        Path::new(NODE).is_file(),
        "{NODE} is installed by scripts/setup.sh"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(dir.path(), "routes:\n  patterns:\n    - /hello.txt\n");
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EBPF_OPEN_PORT", port.to_string()),
    ];
    let exporter = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &format!("ports {port}"));
    let server = start_node_https(dir.path(), port);
    let pid = i64::from(server.pid());
    // The first request selects node (its port); the analysed executable is probed
    // from its first connection on; the requests after it are captured.
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let _ = curl_with(&url("/warm-up"), &["-k"]);
    loader
        .stderr
        .wait_for(&format!("{NODE} (pid {pid})"), PATIENCE);
    let ok = curl_with(
        &url("/hello.txt"),
        &["-k", "-H", "User-Agent: tandem-node-test/1"],
    );
    assert_eq!((ok.status, ok.body.as_str()), (200, BODY));
    let missing = curl_with(&url("/missing"), &["-k"]);
    assert_eq!(missing.status, 404);
    receiver.until(
        "node's server spans",
        Duration::from_secs(30),
        &|| {
            format!(
                "loader:\n{}\nprocessor:\n{}",
                loader.stderr.text(),
                exporter.stderr.text()
            )
        },
        |r| {
            let s = server_spans(r, pid);
            s.iter().any(|s| s["attributes"]["url.path"] == "/missing")
                && s.iter()
                    .any(|s| s["attributes"]["url.path"] == "/hello.txt")
        },
    );
    let all = server_spans(&receiver.records, pid);
    let hello = all
        .iter()
        .find(|s| s["attributes"]["url.path"] == "/hello.txt")
        .expect("hello span");
    let a = &hello["attributes"];
    assert_eq!(hello["name"], "GET /hello.txt", "{hello}");
    assert_eq!(a["http.request.method"], "GET", "{hello}");
    assert_eq!(a["http.route"], "/hello.txt", "{hello}");
    assert_eq!(a["http.response.status_code"], 200, "{hello}");
    assert_eq!(a["http.response.body.size"], BODY.len(), "{hello}");
    assert_eq!(a["server.port"], port, "{hello}");
    assert_eq!(a["network.peer.port"], ok.local_port, "{hello}");
    assert_eq!(a["user_agent.original"], "tandem-node-test/1", "{hello}");
    assert_eq!(hello["resource"]["service.name"], "node", "{hello}");
    let missing_span = all
        .iter()
        .find(|s| s["attributes"]["url.path"] == "/missing")
        .expect("404 span");
    assert_eq!(missing_span["attributes"]["http.response.status_code"], 404);
    // The probes sit on the executable: no libssl.so is mapped by node.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        !maps.contains("libssl.so"),
        "node maps a libssl: the test proves nothing"
    );
    let info = loader_info(&socket);
    assert!(
        info.probes
            .iter()
            .any(|p| p.attached && p.kind == "uprobe_multi" && p.name.contains(NODE)),
        "{:?}",
        info.probes
    );
}
