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

/// A loader (eBPF) and an exporting processor selecting `port`, with `route`.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    socket: std::path::PathBuf,
    loader: Running,
    receiver: Receiver,
    exporter: Running,
}

impl Setup {
    fn start(test: &str, route: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let socket = dir.path().join("loader.sock");
        let loader = start_unprivileged_ebpf_loader(&loader_caps(), dir.path(), &socket, &[]);
        let receiver = Receiver::start();
        let config = write_config(
            dir.path(),
            &format!("routes:\n  patterns:\n    - {route}\n"),
        );
        let env = grpc_export_env(&receiver, port);
        let exporter = start_exporting_processor(&socket, test, &config, &env);
        wait_instrumenting(&loader, &format!("ports {port}"));
        Setup {
            dir,
            port,
            socket,
            loader,
            receiver,
            exporter,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until the server spans of `pid` satisfy `done`.
    fn until(&mut self, what: &str, pid: i64, done: impl Fn(&[Value]) -> bool) {
        let (loader, exporter) = (&self.loader, &self.exporter);
        self.receiver.until(
            what,
            Duration::from_secs(30),
            &|| stderr_of(&[("loader", loader), ("processor", exporter)]),
            |r| done(&server_spans(r, pid)),
        );
    }
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
    let mut t = Setup::start(test, "/hello.txt");
    let (port, loader) = (t.port, &t.loader);
    let server = start_node_https(t.dir.path(), port);
    let pid = i64::from(server.pid());
    // The first request selects node (its port); the analysed executable is probed
    // from its first connection on; the requests after it are captured.
    let url = |path: &str| t.url(path);
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
    t.until("node's server spans", pid, |s| {
        s.iter().any(|s| s["attributes"]["url.path"] == "/missing")
            && s.iter()
                .any(|s| s["attributes"]["url.path"] == "/hello.txt")
    });
    let all = server_spans(&t.receiver.records, pid);
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
    let info = loader_info(&t.socket);
    assert!(
        info.probes
            .iter()
            .any(|p| p.attached && p.kind == "uprobe_multi" && p.name.contains(NODE)),
        "{:?}",
        info.probes
    );
}

/// Issue 15: the seeds' example — a Go net/http server on HTTPS (Go 1.19 from
/// Debian; crypto/tls is in the binary, no OpenSSL): uprobes at the entry and every
/// RET of `crypto/tls.(*Conn).Read`/`Write` (found by the sandboxed analyser, from
/// `.symtab`, or `.gopclntab` when stripped) give server spans with exact
/// attributes, over HTTP/1.1 and HTTP/2 (ALPN h2).
fn go_https(test: &str, ldflags: &str) {
    if !require_root_bpf(test) {
        return;
    }
    let mut t = Setup::start(test, "/hello");
    let bin = golang::build(t.dir.path(), golang::HTTPS_SERVER, "goblog", ldflags);
    let (port, loader) = (t.port, &t.loader);
    let (cert, key) = make_certificate(t.dir.path());
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string()).arg(&cert).arg(&key);
    let mut server = Running::spawn(cmd, &format!("go https server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    let pid = i64::from(server.pid());
    let url = |path: &str| t.url(path);
    let _ = curl_with(&url("/warm-up"), &["-k", "--http1.1"]);
    loader
        .stderr
        .wait_for("Go crypto/tls uprobes attached", PATIENCE);
    let h1 = curl_with(
        &url("/hello"),
        &["-k", "--http1.1", "-H", "User-Agent: tandem-go-test/1"],
    );
    assert_eq!((h1.status, h1.body.as_str()), (200, golang::HELLO_BODY));
    let h2 = curl_with(
        &url("/hello"),
        &["-k", "--http2", "-H", "User-Agent: tandem-go-test/2"],
    );
    assert_eq!(h2.status, 200);
    let missing = curl_with(&url("/missing"), &["-k", "--http1.1"]);
    assert_eq!(missing.status, 404);
    t.until("the Go server's spans", pid, |s| {
        s.iter().any(|s| s["attributes"]["url.path"] == "/missing")
            && s.iter()
                .filter(|s| s["attributes"]["url.path"] == "/hello")
                .count()
                >= 2
    });
    let all = server_spans(&t.receiver.records, pid);
    for (agent, version) in [("tandem-go-test/1", "1.1"), ("tandem-go-test/2", "2")] {
        let s = all
            .iter()
            .find(|s| s["attributes"]["user_agent.original"] == agent)
            .unwrap_or_else(|| panic!("the {agent} span: {}", t.receiver.dump()));
        let a = &s["attributes"];
        assert_eq!(s["name"], "GET /hello", "{s}");
        assert_eq!(a["http.request.method"], "GET", "{s}");
        assert_eq!(a["url.path"], "/hello", "{s}");
        assert_eq!(a["http.route"], "/hello", "{s}");
        assert_eq!(a["http.response.status_code"], 200, "{s}");
        assert_eq!(a["network.protocol.version"], version, "{s}");
        assert_eq!(a["server.port"], port, "{s}");
        assert_eq!(s["resource"]["service.name"], "goblog", "{s}");
    }
    let m = all
        .iter()
        .find(|s| s["attributes"]["url.path"] == "/missing")
        .expect("404 span");
    assert_eq!(m["attributes"]["http.response.status_code"], 404, "{m}");
    let info = loader_info(&t.socket);
    assert!(
        info.probes
            .iter()
            .any(|p| p.attached && p.name.ends_with(":crypto/tls")),
        "{:?}",
        info.probes
    );
}

#[test]
fn go_https_server_gives_exact_spans() {
    go_https("go_https_server_gives_exact_spans", "");
}

#[test]
fn stripped_go_https_server_gives_exact_spans() {
    go_https("stripped_go_https_server_gives_exact_spans", "-s -w");
}
