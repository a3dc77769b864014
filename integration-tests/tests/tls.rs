//! TLS plaintext capture (issue 7): a python `ssl` HTTPS server (OpenSSL's libssl
//! through `_ssl`) with a certificate made by `openssl req` at test time, and curl
//! (libcurl -> libssl) as the client. The loader's uprobe_multi links on `SSL_read`,
//! `SSL_write` and their `_ex` variants must deliver the plaintext HTTP of both sides
//! as ordinary data events of the right connections (addresses, role), never the
//! TLS records, so the processor parses HTTP and exports spans as for plain HTTP.
//!
//! Root tests (eBPF); one runs the loader as uid 65534 with exactly the model's
//! capabilities (no CAP_SYS_ADMIN, which perf-event uprobes would need).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

const SERVER_SCRIPT: &str = r#"
import http.server, ssl, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = sys.argv[5] if len(sys.argv) > 5 else "HTTP/1.0"
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)
httpd = http.server.HTTPServer(("127.0.0.1", port), Handler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

const BODY: &str = "hello over TLS from tandem's test\n";

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or_default()
}

fn pid_of(e: &Value) -> i64 {
    e["pid"].as_i64().unwrap_or(-1)
}

fn payload(e: &Value) -> &str {
    e["payload"].as_str().unwrap_or_default()
}

fn dump(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The HTTPS server, listening on `port`, serving `/hello.txt`.
fn start_https_server(dir: &Path, port: u16, lib_dir: Option<&Path>) -> Running {
    let (cert, key) = make_certificate(dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("create www");
    std::fs::write(www.join("hello.txt"), BODY).expect("write hello.txt");
    let script = dir.join("https_server.py");
    std::fs::write(&script, SERVER_SCRIPT).expect("write the server script");
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(&script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(&www);
    if let Some(lib) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    let mut server = Running::spawn(cmd, &format!("python3 https server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    server
}

/// Starts the loader as root, or as uid 65534 with exactly `caps`.
fn start_loader_as(caps: Option<&[&str]>, dir: &Path, socket: &Path) -> Running {
    let Some(caps) = caps else {
        return start_ebpf_loader(socket, &[]);
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777 the socket's parent directory");
    let mut cmd = as_nobody(caps, &loader_bin());
    cmd.arg("--socket").arg(socket).args(["--allow-uid", "0"]);
    let loader = Running::spawn(cmd, "tandem-loader (uid 65534)");
    loader.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    // Attached and dropped to the run-time set: whatever is probed from now on (a
    // library found when a subscriber selects a process) is probed without the
    // capabilities that loading needed.
    loader.stderr.wait_for("ebpf source ready", PATIENCE);
    wait_ebpf_ready(&loader);
    let status = std::fs::read_to_string(format!("/proc/{}/status", loader.pid()))
        .expect("read the loader's /proc status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("Uid:"), "65534", "{status}");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff hex");
    const SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(eff & SYS_ADMIN, 0, "no CAP_SYS_ADMIN: {eff:#x}");
    // Started with exactly `caps` (the bounding set keeps them: the loader cannot
    // change it without SETPCAP); after attaching it keeps only a subset of them.
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).expect("CapBnd hex");
    assert_eq!(
        bounding.count_ones() as usize,
        caps.len(),
        "exactly {caps:?}: {bounding:#x}"
    );
    assert_eq!(eff & !bounding, 0, "effective within {caps:?}: {eff:#x}");
    // Exactly what the capability model says the features keep at run time.
    let features = [
        "syscall_capture",
        "sock_tracepoints",
        "process_discovery",
        "tls_uprobes",
    ];
    let kept = tandem_security::runtime_capabilities(
        features
            .iter()
            .map(|id| tandem_security::feature(id).expect("a feature of the model")),
    );
    let kept_bits = kept
        .iter()
        .fold(0u64, |bits, c| bits | 1u64 << (c.to_caps().index() as u64));
    assert_eq!(eff, kept_bits, "the run-time set {kept:?}: {eff:#x}");
    loader
}

/// Connection events of `pid`, grouped by connection id in arrival order.
fn connections(events: &[Value], pid: i64) -> Vec<Vec<Value>> {
    let mut ids: Vec<u64> = Vec::new();
    let mut out: Vec<Vec<Value>> = Vec::new();
    for e in events {
        if !matches!(kind(e), "connection_opened" | "data" | "connection_closed")
            || pid_of(e) != pid
        {
            continue;
        }
        let id = e["conn_id"].as_u64().expect("conn_id");
        match ids.iter().position(|i| *i == id) {
            Some(i) => out[i].push(e.clone()),
            None => {
                ids.push(id);
                out.push(vec![e.clone()]);
            }
        }
    }
    out
}

/// The bytes of a connection in one direction, concatenated.
fn stream(conn: &[Value], direction: &str) -> String {
    conn.iter()
        .filter(|e| kind(e) == "data" && e["direction"] == direction)
        .map(payload)
        .collect()
}

/// Asserts one side of the exchange: one connection, opened with `role` and the
/// right addresses, carrying the plaintext request and response (and nothing that
/// looks like a TLS record).
fn assert_side(events: &[Value], pid: i64, role: &str, port: u16) {
    let conns = connections(events, pid);
    assert_eq!(
        conns.len(),
        1,
        "one connection of pid {pid}:\n{}",
        dump(events)
    );
    let conn = &conns[0];
    let opened = &conn[0];
    assert_eq!(kind(opened), "connection_opened", "{}", dump(conn));
    assert_eq!(opened["role"], role, "{opened}");
    let server_addr = format!("127.0.0.1:{port}");
    let (request_dir, response_dir, server_field) = if role == "server" {
        ("ingress", "egress", "local")
    } else {
        ("egress", "ingress", "peer")
    };
    assert_eq!(opened[server_field], server_addr.as_str(), "{opened}");
    for e in conn.iter().filter(|e| kind(e) == "data") {
        let first = payload(e).as_bytes().first().copied().unwrap_or(0);
        assert!(
            !(0x14..=0x17).contains(&first),
            "a TLS record was delivered as data: {e}"
        );
    }
    let request = stream(conn, request_dir);
    assert!(
        request.starts_with("GET /hello.txt HTTP/1.1\r\n"),
        "plaintext request of the {role}: {request:?}\n{}",
        dump(conn)
    );
    let response = stream(conn, response_dir);
    assert!(
        response.starts_with("HTTP/1.0 200 OK\r\n") && response.ends_with(BODY),
        "plaintext response of the {role}: {response:?}\n{}",
        dump(conn)
    );
}

/// `curl -k` (the certificate is self-signed) of `url`: (pid, local port, body).
fn curl_https(url: &str) -> (i64, u16, String) {
    let run = tandem_integration_tests::otlp::curl_with(
        url,
        &["-k", "-H", "User-Agent: tandem-tls-test/1"],
    );
    assert_eq!(run.status, 200, "{}", run.body);
    (run.pid, run.local_port, run.body)
}

/// Runs curl against the HTTPS server and checks the raw events of both sides, and
/// (`spans`) the spans a second, exporting processor sends to an OTLP receiver.
/// The host's libssl.so.3, copied into `dir`: a library file the loader cannot have
/// probed at start-up, found only in the maps of the process that loads it.
fn private_libssl_copy(dir: &Path) -> PathBuf {
    let host = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libssl.so.3 (scripts/setup.sh installs it with curl)");
    let lib = dir.join("private-lib");
    std::fs::create_dir_all(&lib).expect("lib dir");
    std::fs::copy(host, lib.join("libssl.so.3")).expect("copy libssl");
    lib
}

/// With `private_libssl`, the server loads its own copy of libssl, which the loader
/// finds and probes only when a subscriber selects the server: after start-up, so
/// with only the capabilities it keeps at run time.
fn https_exchange(test: &str, caps: Option<&[&str]>, spans: bool, private_libssl: bool) {
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let lib_dir = private_libssl.then(|| private_libssl_copy(dir.path()));
    let server = start_https_server(dir.path(), port, lib_dir.as_deref());
    let server_pid = i64::from(server.pid());

    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let socket = run.join("loader.sock");
    let loader = start_loader_as(caps, &run, &socket);
    let p = start_subscribed_processor(&socket, test, &["--open-port", &port.to_string()]);
    let mut otlp = None;
    if spans {
        let receiver = Receiver::start();
        let config = write_config(dir.path(), "routes:\n  patterns:\n    - /hello.txt\n");
        let env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                receiver.endpoint(Protocol::Grpc),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                Protocol::Grpc.env_value().to_string(),
            ),
            ("OTEL_EBPF_OPEN_PORT", port.to_string()),
        ];
        let exporter = start_exporting_processor(&socket, &format!("{test}-otlp"), &config, &env);
        otlp = Some((receiver, exporter));
    }
    wait_instrumenting(&loader, &format!("ports {port}"));

    // The host's libssl (which curl and python use) is probed with uprobe_multi.
    let info = loader_info(&socket);
    let tls: Vec<_> = info
        .probes
        .iter()
        .filter(|p| p.kind == "uprobe_multi")
        .collect();
    assert!(
        tls.iter()
            .any(|p| p.attached && p.name.contains("libssl.so")),
        "an attached uprobe_multi probe on libssl: {tls:?}\nloader stderr:\n{}",
        loader.stderr.text()
    );
    if let Some(lib) = &lib_dir {
        let lib = lib.to_string_lossy();
        assert!(
            tls.iter()
                .any(|p| p.attached && p.name.contains(lib.as_ref())),
            "an attached uprobe_multi probe on the private copy in {lib}: {tls:?}\nloader stderr:\n{}",
            loader.stderr.text()
        );
    }

    let (curl_pid, curl_port, body) = curl_https(&format!("https://127.0.0.1:{port}/hello.txt"));
    assert_eq!(body, BODY);

    let mut log = EventLog::new(&p);
    log.until("both sides' plaintext responses", PATIENCE, |events| {
        let done = |pid: i64, dir: &str| {
            connections(events, pid)
                .first()
                .is_some_and(|c| stream(c, dir).ends_with(BODY))
        };
        done(server_pid, "egress") && done(curl_pid, "ingress")
    });
    log.settle(Duration::from_millis(500));
    assert_side(&log.events, server_pid, "server", port);
    assert_side(&log.events, curl_pid, "client", port);
    let server_conn = &connections(&log.events, server_pid)[0];
    assert_eq!(
        server_conn[0]["peer"],
        format!("127.0.0.1:{curl_port}").as_str(),
        "{}",
        server_conn[0]
    );

    if let Some((mut receiver, exporter)) = otlp {
        receiver.until(
            "the HTTPS server and client spans",
            Duration::from_secs(30),
            &|| format!("exporting processor stderr:\n{}", exporter.stderr.text()),
            |r| spans_of(r, port).len() >= 2,
        );
        let all = spans_of(&receiver.records, port);
        let server_span = all
            .iter()
            .find(|s| s["kind"] == 2)
            .unwrap_or_else(|| panic!("a SERVER span:\n{}", receiver.dump()));
        let client_span = all
            .iter()
            .find(|s| s["kind"] == 3)
            .unwrap_or_else(|| panic!("a CLIENT span:\n{}", receiver.dump()));
        for s in [server_span, client_span] {
            let a = &s["attributes"];
            assert_eq!(a["http.request.method"], "GET", "{s}");
            assert_eq!(a["url.path"], "/hello.txt", "{s}");
            assert_eq!(a["http.response.status_code"], 200, "{s}");
            assert_eq!(a["http.response.body.size"], BODY.len(), "{s}");
            assert_eq!(a["server.port"], port, "{s}");
        }
        assert_eq!(server_span["name"], "GET /hello.txt", "{server_span}");
        assert_eq!(
            server_span["attributes"]["user_agent.original"],
            "tandem-tls-test/1"
        );
        assert_eq!(
            server_span["attributes"]["network.peer.port"], curl_port,
            "{server_span}"
        );
        assert_eq!(
            server_span["resource"]["process.pid"], server_pid,
            "{server_span}"
        );
        assert_eq!(
            client_span["resource"]["process.pid"], curl_pid,
            "{client_span}"
        );
    }
    drop(server);
}

/// Spans of requests to `port` (server or client side).
fn spans_of(records: &[Value], port: u16) -> Vec<Value> {
    spans(records)
        .into_iter()
        .filter(|s| s["attributes"]["server.port"] == port)
        .cloned()
        .collect()
}

#[test]
fn https_plaintext_of_curl_and_a_python_server_becomes_spans() {
    https_exchange(
        "https_plaintext_of_curl_and_a_python_server_becomes_spans",
        None,
        true,
        false,
    );
}

#[test]
fn https_plaintext_with_exactly_the_modelled_capabilities_and_no_sys_admin() {
    https_exchange(
        "https_plaintext_with_exactly_the_modelled_capabilities_and_no_sys_admin",
        Some(&loader_caps()),
        false,
        true,
    );
}

/// HTTP/1.1 keep-alive: curl sends two requests over one TLS connection; each side
/// has exactly one connection carrying both plaintext exchanges in order.
#[test]
fn https_keep_alive_requests_share_one_tls_connection() {
    let test = "https_keep_alive_requests_share_one_tls_connection";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (cert, key) = make_certificate(dir.path());
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("create www");
    std::fs::write(www.join("hello.txt"), BODY).expect("write hello.txt");
    let script = dir.path().join("https_server.py");
    std::fs::write(&script, SERVER_SCRIPT).expect("write the server script");
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(&script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(&www)
        .arg("HTTP/1.1");
    let mut server = Running::spawn(cmd, "python3 https server (HTTP/1.1)");
    wait_listening(&mut server, port, PATIENCE);
    let server_pid = i64::from(server.pid());

    let socket = dir.path().join("run").join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let p = start_subscribed_processor(&socket, test, &["--open-port", &port.to_string()]);
    wait_instrumenting(&loader, &format!("ports {port}"));

    let base = format!("https://127.0.0.1:{port}");
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20"])
        .arg(format!("{base}/hello.txt?first"))
        .arg(format!("{base}/hello.txt?second"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{BODY}{BODY}")
    );

    let mut log = EventLog::new(&p);
    log.until("the server's two responses", PATIENCE, |events| {
        connections(events, server_pid)
            .first()
            .is_some_and(|c| stream(c, "egress").matches(BODY).count() == 2)
    });
    log.settle(Duration::from_millis(500));
    let conns = connections(&log.events, server_pid);
    assert_eq!(conns.len(), 1, "one TLS connection:\n{}", dump(&log.events));
    let requests = stream(&conns[0], "ingress");
    let first = requests.find("GET /hello.txt?first HTTP/1.1\r\n");
    let second = requests.find("GET /hello.txt?second HTTP/1.1\r\n");
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a == 0 && b > a),
        "both requests, in order: {requests:?}"
    );
    let responses = stream(&conns[0], "egress");
    assert_eq!(
        responses.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{responses:?}"
    );
    for e in conns[0].iter().filter(|e| kind(e) == "data") {
        let first = payload(e).as_bytes().first().copied().unwrap_or(0);
        assert!(!(0x14..=0x17).contains(&first), "a TLS record as data: {e}");
    }
    drop(server);
}
