//! Issue 4's acceptance: telemetry reaches a real OTLP receiver, exactly.
//!
//! The receiver (`testdata/otlp_receiver.py`) is built on PyPI's `grpcio` and
//! `opentelemetry-proto`: it decodes the processor's exports with the OpenTelemetry
//! project's protobuf definitions, over OTLP/gRPC and OTLP/HTTP protobuf.
//!
//! * Live tests (root: eBPF): a real `python3 -m http.server`, the loader capturing it
//!   with `--source ebpf`, the processor configured like OBI (a YAML file with
//!   `routes.patterns`, `OTEL_*` variables), real requests made by curl.
//! * Replay tests (any user): the loader replays a capture of its synthetic source
//!   (`tandem-loader record --source synthetic`), whose every byte and timestamp is
//!   known, so spans and metrics are asserted to the nanosecond.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{
    free_port, loader_info, require_root_bpf, start_loader, start_python_http_server,
    synthetic_capture, wait_instrumenting, Running, PATIENCE,
};

/// What the processor reports as `telemetry.sdk.version` and the scope's version
/// (the workspace shares one version).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// OBI's Kubernetes guide's route pattern.
const FACTORIAL_CONFIG: &str = "routes:\n  patterns:\n    - /factorial/{num}\n";

const USER_AGENT: &str = "tandem-otlp-test/1";

/// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// How long to wait for exports: batches leave within a second, metrics every second
/// here, and a first gRPC connection may take a moment.
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

/// OBI's default duration buckets (the processor's).
const DURATION_BUCKETS: [f64; 15] = [
    0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Random lower-case hex of `n` digits.
fn random_hex(n: usize) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let mut out = String::new();
    while out.len() < n {
        let word = RandomState::new().hash_one(now_ns());
        out.push_str(&format!("{word:016x}"));
    }
    out.truncate(n);
    out
}

/// A real HTTP server and a loader capturing it with eBPF.
struct Live {
    dir: tempfile::TempDir,
    socket: PathBuf,
    port: u16,
    server: Running,
    loader: Running,
}

impl Live {
    /// Serves `/factorial/5` (`120\n`) and `/factorial/6` (`720\n`); the loader's probes
    /// are attached when this returns.
    fn start() -> Live {
        let dir = tempfile::tempdir().expect("temp dir");
        let www = dir.path().join("www");
        std::fs::create_dir_all(www.join("factorial")).expect("create www");
        std::fs::write(www.join("factorial/5"), "120\n").expect("write /factorial/5");
        std::fs::write(www.join("factorial/6"), "720\n").expect("write /factorial/6");
        let port = free_port();
        let server = start_python_http_server(&www, "127.0.0.1", port);
        let socket = dir.path().join("run").join("loader.sock");
        let loader = start_loader(&socket, &["--source", "ebpf"]);
        loader.stderr.wait_for("ebpf source ready", PATIENCE);
        Live {
            dir,
            socket,
            port,
            server,
            loader,
        }
    }

    /// A processor selecting the server's port with `OTEL_EBPF_OPEN_PORT`, configured
    /// by a YAML file with `routes.patterns: [/factorial/{num}]` and `env`; returned
    /// once the loader instruments the port.
    fn processor(&self, name: &str, env: &[(&str, String)]) -> Running {
        let config = write_config(self.dir.path(), FACTORIAL_CONFIG);
        let mut env = env.to_vec();
        env.push(("OTEL_EBPF_OPEN_PORT", self.port.to_string()));
        let p = start_exporting_processor(&self.socket, name, &config, &env);
        wait_instrumenting(&self.loader, &format!("ports {}", self.port));
        p
    }

    fn get(&self, path: &str, headers: &[&str]) -> CurlRun {
        let ua = format!("User-Agent: {USER_AGENT}");
        let mut all = vec![ua.as_str()];
        all.extend_from_slice(headers);
        let run = curl_get(&format!("http://127.0.0.1:{}{path}", self.port), &all);
        assert_eq!(run.status, 200, "{path}: {run:?}");
        run
    }

    fn server_pid(&self) -> i64 {
        i64::from(self.server.pid())
    }

    /// The resource of the python server's spans and metrics, exactly.
    fn server_resource(&self) -> Value {
        process_resource(self.server.pid())
    }

    /// The server span's attributes for a GET of `path` by `client`, exactly.
    fn server_attributes(&self, path: &str, client: &CurlRun, body: usize) -> Value {
        json!({
            "client.address": "127.0.0.1",
            "http.request.body.size": 0,
            "http.request.method": "GET",
            "http.response.body.size": body,
            "http.response.status_code": 200,
            "http.route": "/factorial/{num}",
            "network.peer.address": "127.0.0.1",
            "network.peer.port": client.local_port,
            "network.protocol.version": "1.1",
            "server.address": "127.0.0.1",
            "server.port": self.port,
            "url.path": path,
            "user_agent.original": USER_AGENT,
        })
    }

    /// curl's client span's attributes for a GET of `path`, exactly (no route, no
    /// client.address, no user agent on client spans).
    fn client_attributes(&self, path: &str, body: usize) -> Value {
        json!({
            "http.request.body.size": 0,
            "http.request.method": "GET",
            "http.response.body.size": body,
            "http.response.status_code": 200,
            "network.peer.address": "127.0.0.1",
            "network.peer.port": self.port,
            "network.protocol.version": "1.1",
            "server.address": "127.0.0.1",
            "server.port": self.port,
            "url.path": path,
        })
    }

    /// The server metrics' attributes for `/factorial/{num}`.
    fn server_metric_attributes(&self) -> Value {
        json!({
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "http.route": "/factorial/{num}",
            "server.port": self.port,
        })
    }

    /// curl's client metrics' attributes.
    fn client_metric_attributes(&self) -> Value {
        json!({
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "server.address": "127.0.0.1",
            "server.port": self.port,
        })
    }
}

/// The environment exporting everything to `endpoint` with `protocol`, metrics every
/// second.
fn export_env(protocol: Protocol, endpoint: String) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            protocol.env_value().to_string(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
    ]
}

fn logs(p: &Running) -> impl Fn() -> String + '_ {
    move || format!("processor stderr:\n{}", p.stderr.text())
}

/// The resource of curl's spans. The loader announces a client process when it first
/// sees its connection and reads its executable from /proc then; curl may have exited
/// by that time, and the process is then named by the kernel's task name (no
/// executable path). Either way the pid, the host and the name are curl's.
fn assert_curl_resource(resource: &Value, curl: &CurlRun) {
    let host = host_name();
    let mut want = json!({
        "host.name": host,
        "process.pid": curl.pid,
        "service.instance.id": format!("{host}-{}", curl.pid),
        "service.name": "curl",
        "process.executable.name": "curl",
        "telemetry.sdk.name": "tandem",
        "telemetry.sdk.version": VERSION,
    });
    if let Some(exe) = resource["process.executable.path"].as_str() {
        assert!(exe.ends_with("/curl"), "curl's resource: {resource}");
        want["process.executable.path"] = json!(exe);
    }
    assert_eq!(resource, &want, "curl's resource");
}

/// The fields every tandem span shares, checked on `span`.
fn assert_common(span: &Value, protocol: Protocol) {
    assert_eq!(span["transport"], protocol.transport(), "{span}");
    assert_eq!(span["scope"], "tandem", "{span}");
    assert_eq!(span["scope_version"], VERSION, "{span}");
    assert_eq!(span["status"], 0, "UNSET: {span}");
    assert_eq!(span["status_message"], "", "{span}");
    let flags = span["flags"].as_u64().expect("flags");
    assert_eq!(flags & 1, 1, "sampled flag: {span}");
    let trace = span["trace_id"].as_str().expect("trace_id");
    assert_eq!(trace.len(), 32, "{span}");
    assert_ne!(trace, "0".repeat(32), "{span}");
    assert_eq!(
        span["span_id"].as_str().expect("span_id").len(),
        16,
        "{span}"
    );
    assert!(span["start"].as_u64() <= span["end"].as_u64(), "{span}");
}

fn find_span<'a>(records: &'a [Value], kind: i64, path: &str) -> Vec<&'a Value> {
    spans(records)
        .into_iter()
        .filter(|s| s["kind"] == kind && s["attributes"]["url.path"] == path)
        .collect()
}

/// Issue 4, 1: one real request gives exactly a SERVER span (the python server's) and
/// a CLIENT span (curl's), with exact names, attributes and resources.
fn real_request_spans(protocol: Protocol, test: &str) {
    if !require_root_bpf(test) {
        return;
    }
    let live = Live::start();
    let mut receiver = Receiver::start();
    let mut p = live.processor(
        "otlp-spans",
        &export_env(protocol, receiver.endpoint(protocol)),
    );
    let before = now_ns();
    let client = live.get("/factorial/5", &[]);
    let after = now_ns();
    assert_eq!(client.body, "120\n");

    receiver.until(
        "the server and client spans",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| spans(r).len() >= 2,
    );
    // Nothing more comes: one span per side, no duplicates.
    receiver.settle(Duration::from_millis(2500));
    let all = receiver.spans();
    assert_eq!(all.len(), 2, "spans:\n{}", receiver.dump());

    let server = find_span(&receiver.records, SERVER, "/factorial/5");
    let client_span = find_span(&receiver.records, CLIENT, "/factorial/5");
    let (server, client_span) = match (server.as_slice(), client_span.as_slice()) {
        ([s], [c]) => (*s, *c),
        _ => panic!("want one SERVER and one CLIENT span:\n{}", receiver.dump()),
    };

    assert_eq!(server["name"], "GET /factorial/{num}");
    assert_eq!(
        server["attributes"],
        live.server_attributes("/factorial/5", &client, 4)
    );
    assert_eq!(server["resource"], live.server_resource());
    assert_common(server, protocol);

    assert_eq!(client_span["name"], "GET", "client spans carry no route");
    assert_eq!(
        client_span["attributes"],
        live.client_attributes("/factorial/5", 4)
    );
    assert_curl_resource(&client_span["resource"], &client);
    assert_eq!(client_span["parent_span_id"], "", "a root span");
    assert_common(client_span, protocol);
    // curl sent no traceparent, but both ends of the connection were seen: the
    // server span is curl's span's child, in its trace (issue 13).
    assert_eq!(client_span["trace_id"], server["trace_id"], "one trace");
    assert_eq!(server["parent_span_id"], client_span["span_id"]);

    // Wall-clock times: within the request (give or take 50 ms: the loader converts
    // kernel times with a clock offset taken at its start, and the clock may be slewed
    // since), the server's inside the client's (same kernel clock), give or take
    // 1 ms: each data record is stamped when the socket call of its own process
    // finishes, and on loopback the peer's read can return (on the other CPU)
    // before the writer's send call does.
    let t = |s: &Value, k: &str| s[k].as_u64().expect("time");
    let slack = 50_000_000;
    assert!(
        before - slack <= t(client_span, "start") && t(client_span, "end") <= after + slack,
        "client span [{}, {}] outside the request [{before}, {after}]",
        t(client_span, "start"),
        t(client_span, "end")
    );
    let skew = 1_000_000;
    assert!(
        t(client_span, "start") <= t(server, "start") + skew
            && t(server, "end") <= t(client_span, "end") + skew,
        "server span not within the client span:\n{server}\n{client_span}"
    );

    let summary = stop_and_summary(&mut p);
    assert!(
        summary.contains("spans queued 2, exported 2, dropped 0 (queue full), failed 0"),
        "{summary}"
    );
}

#[test]
fn real_request_spans_over_grpc() {
    real_request_spans(Protocol::Grpc, "real_request_spans_over_grpc");
}

#[test]
fn real_request_spans_over_http_protobuf() {
    real_request_spans(
        Protocol::HttpProtobuf,
        "real_request_spans_over_http_protobuf",
    );
}

/// Issue 4, 2: N requests give `http.server.request.duration` count N for the route
/// (and each curl's client histogram count 1), and the count stays N.
#[test]
fn metrics_count_every_request() {
    let test = "metrics_count_every_request";
    if !require_root_bpf(test) {
        return;
    }
    const N: u64 = 5;
    let live = Live::start();
    let mut receiver = Receiver::start();
    let p = live.processor(
        "otlp-metrics",
        &export_env(Protocol::Grpc, receiver.endpoint(Protocol::Grpc)),
    );
    let clients: Vec<CurlRun> = (0..N)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/factorial/5"
            } else {
                "/factorial/6"
            };
            live.get(path, &[])
        })
        .collect();

    let server_pid = live.server_pid();
    let attrs = live.server_metric_attributes();
    let duration = "http.server.request.duration";
    receiver.until(
        "the server duration histogram to count every request",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| latest_count(r, duration, server_pid, &attrs) >= N,
    );
    // Two more export intervals: the cumulative count stays N.
    receiver.settle(Duration::from_millis(2500));
    let records = &receiver.records;
    let point = latest_point(records, duration, server_pid, &attrs).expect("a point");
    assert_eq!(point["count"], N, "{point}");
    assert_eq!(
        point["bounds"],
        json!(DURATION_BUCKETS),
        "semantic-convention buckets"
    );
    let buckets: u64 = point["bucket_counts"]
        .as_array()
        .expect("bucket_counts")
        .iter()
        .map(|c| c.as_u64().expect("bucket count"))
        .sum();
    assert_eq!(buckets, N, "{point}");
    let sum = point["sum"].as_f64().expect("sum");
    assert!(
        sum > 0.0 && sum < N as f64,
        "sum {sum} s for {N} local requests"
    );

    // The metric itself: unit, kind, cumulative, the server's resource, one data point
    // (the path never becomes an attribute: /factorial/5 and /6 share the route).
    let metric = records
        .iter()
        .rev()
        .find(|r| r["name"] == duration && r["resource"]["process.pid"] == server_pid)
        .expect("the duration metric");
    assert_eq!(metric["unit"], "s");
    assert_eq!(metric["kind"], "histogram");
    assert_eq!(metric["temporality"], 2, "CUMULATIVE");
    assert_eq!(metric["scope"], "tandem");
    assert_eq!(metric["resource"], live.server_resource());
    assert_eq!(
        metric["points"].as_array().map(Vec::len),
        Some(1),
        "{metric}"
    );
    let body = latest_point(
        records,
        "http.server.response.body.size",
        server_pid,
        &attrs,
    )
    .expect("response body size");
    assert_eq!(body["count"], N);
    assert_eq!(body["sum"], 4.0 * N as f64, "each body is 4 bytes");

    // Each curl is a process of its own: one request each.
    let client_attrs = live.client_metric_attributes();
    for c in &clients {
        assert_eq!(
            latest_count(
                records,
                "http.client.request.duration",
                c.pid,
                &client_attrs
            ),
            1,
            "curl pid {}:\n{}",
            c.pid,
            receiver.dump()
        );
    }
}

/// Issue 4, 3: a request carrying `traceparent` joins that trace: same trace id, the
/// header's span id as parent (server and client spans alike).
#[test]
fn traceparent_joins_the_trace() {
    let test = "traceparent_joins_the_trace";
    if !require_root_bpf(test) {
        return;
    }
    let live = Live::start();
    let mut receiver = Receiver::start();
    let _p = live.processor(
        "otlp-traceparent",
        &export_env(Protocol::Grpc, receiver.endpoint(Protocol::Grpc)),
    );
    let trace_id = random_hex(32);
    let parent_id = random_hex(16);
    let header = format!("traceparent: 00-{trace_id}-{parent_id}-01");
    let client = live.get("/factorial/6", &[&header]);

    receiver.until(
        "the server and client spans",
        EXPORT_PATIENCE,
        &logs(&_p),
        |r| spans(r).len() >= 2,
    );
    let records = &receiver.records;
    let (server, client_span) = match (
        find_span(records, SERVER, "/factorial/6").as_slice(),
        find_span(records, CLIENT, "/factorial/6").as_slice(),
    ) {
        ([s], [c]) => (*s, *c),
        _ => panic!("want one SERVER and one CLIENT span:\n{}", receiver.dump()),
    };
    for span in [server, client_span] {
        assert_eq!(span["trace_id"], trace_id.as_str(), "{span}");
        assert_eq!(span["parent_span_id"], parent_id.as_str(), "{span}");
        assert_ne!(span["span_id"], parent_id.as_str(), "{span}");
        assert_common(span, Protocol::Grpc);
    }
    assert_ne!(server["span_id"], client_span["span_id"]);
    assert_eq!(server["name"], "GET /factorial/{num}");
    assert_eq!(
        server["attributes"],
        live.server_attributes("/factorial/6", &client, 4)
    );
    assert_eq!(client_span["name"], "GET");
}

/// Issue 4, 4: `traceidratio` with ratio 0 exports no span, while the metrics still
/// count every request.
#[test]
fn ratio_zero_exports_no_spans_but_counts_every_request() {
    let test = "ratio_zero_exports_no_spans_but_counts_every_request";
    if !require_root_bpf(test) {
        return;
    }
    const N: u64 = 4;
    let live = Live::start();
    let mut receiver = Receiver::start();
    let mut env = export_env(Protocol::Grpc, receiver.endpoint(Protocol::Grpc));
    env.push(("OTEL_TRACES_SAMPLER", "traceidratio".into()));
    env.push(("OTEL_TRACES_SAMPLER_ARG", "0".into()));
    let mut p = live.processor("otlp-ratio0", &env);
    let clients: Vec<CurlRun> = (0..N).map(|_| live.get("/factorial/5", &[])).collect();

    let server_pid = live.server_pid();
    let attrs = live.server_metric_attributes();
    let client_attrs = live.client_metric_attributes();
    receiver.until(
        "metrics counting every request",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| {
            latest_count(r, "http.server.request.duration", server_pid, &attrs) >= N
                && clients.iter().all(|c| {
                    latest_count(r, "http.client.request.duration", c.pid, &client_attrs) == 1
                })
        },
    );
    // Spans would have left within a second of their request; give them three.
    receiver.settle(Duration::from_secs(3));
    assert_eq!(
        latest_count(
            &receiver.records,
            "http.server.request.duration",
            server_pid,
            &attrs
        ),
        N
    );
    assert!(
        receiver.spans().is_empty(),
        "spans exported despite ratio 0:\n{}",
        receiver.dump()
    );
    let summary = stop_and_summary(&mut p);
    let transactions = 2 * N; // server and client side of each request
    assert!(
        summary.contains(&format!("spans 0 sampled, {transactions} not sampled")),
        "{summary}"
    );
    assert!(summary.contains("spans queued 0,"), "{summary}");
}

/// The largest `total_failed=N` the processor logged with `message`.
fn logged_failures(p: &Running, message: &str) -> u64 {
    p.stderr
        .text()
        .lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("total_failed="))
                .and_then(|n| n.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

fn wait_logged_failures(p: &Running, message: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + EXPORT_PATIENCE;
    while logged_failures(p, message) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "the processor did not log {at_least} failures with {message:?}; stderr:\n{}",
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 4, 5: with the collector down the processor keeps running and subscribed,
/// counts and logs the failed exports; once a collector listens on that port, later
/// requests are exported (and the cumulative metrics include the outage's requests).
fn collector_down_then_up(protocol: Protocol, test: &str) {
    if !require_root_bpf(test) {
        return;
    }
    const DURING_OUTAGE: u64 = 2;
    let live = Live::start();
    let (grpc_port, http_port) = (free_port(), free_port());
    let name = "otlp-collector-down";
    let mut p = live.processor(
        name,
        &export_env(protocol, endpoint(protocol, grpc_port, http_port)),
    );
    for _ in 0..DURING_OUTAGE {
        live.get("/factorial/5", &[]);
    }
    // Server and client span of each request fail (after the exporter's retries).
    wait_logged_failures(&p, "span export failed", 2 * DURING_OUTAGE);
    wait_logged_failures(&p, "metrics export failed", 1);
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "the processor exited with the collector down; stderr:\n{}",
        p.stderr.text()
    );
    let info = loader_info(&live.socket);
    let sub = info
        .subscribers
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no subscription {name}: {info:?}"));
    assert!(sub.connected, "still subscribed: {sub:?}");
    assert_eq!(sub.dropped, 0, "{sub:?}");

    let mut receiver = Receiver::start_on(grpc_port, http_port);
    let client = live.get("/factorial/6", &[]);
    receiver.until(
        "the spans of the request made after the collector started",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| {
            !find_span(r, SERVER, "/factorial/6").is_empty()
                && !find_span(r, CLIENT, "/factorial/6").is_empty()
        },
    );
    let server_pid = live.server_pid();
    let attrs = live.server_metric_attributes();
    let all_requests = DURING_OUTAGE + 1;
    receiver.until(
        "metrics counting the requests made during the outage too",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| latest_count(r, "http.server.request.duration", server_pid, &attrs) >= all_requests,
    );
    receiver.settle(Duration::from_millis(1500));
    let records = &receiver.records;
    assert_eq!(
        latest_count(records, "http.server.request.duration", server_pid, &attrs),
        all_requests
    );
    let server = find_span(records, SERVER, "/factorial/6");
    assert_eq!(server.len(), 1, "{}", receiver.dump());
    assert_eq!(server[0]["name"], "GET /factorial/{num}");
    assert_eq!(
        server[0]["attributes"],
        live.server_attributes("/factorial/6", &client, 4)
    );
    assert_common(server[0], protocol);
    // What failed is counted, not retried forever nor exported late.
    assert!(
        find_span(records, SERVER, "/factorial/5").is_empty(),
        "{}",
        receiver.dump()
    );
    assert_eq!(receiver.spans().len(), 2, "{}", receiver.dump());

    let summary = stop_and_summary(&mut p);
    let want = format!(
        "spans queued {}, exported 2, dropped 0 (queue full), failed {}, abandoned 0",
        2 * DURING_OUTAGE + 2,
        2 * DURING_OUTAGE
    );
    assert!(summary.contains(&want), "want {want} in:\n{summary}");
    assert!(
        p.stderr.text().contains("spans lost in export"),
        "{}",
        p.stderr.text()
    );
}

#[test]
fn collector_down_then_up_over_grpc() {
    collector_down_then_up(Protocol::Grpc, "collector_down_then_up_over_grpc");
}

#[test]
fn collector_down_then_up_over_http_protobuf() {
    collector_down_then_up(
        Protocol::HttpProtobuf,
        "collector_down_then_up_over_http_protobuf",
    );
}

// ---------------------------------------------------------------------------------
// Replay of the synthetic source: no privilege needed, every byte known.

/// The synthetic demo server (loader/src/source/synthetic.rs).
const DEMO_PID: i64 = 4242;
const DEMO_EXE: &str = "/usr/local/bin/demo-server";
const DEMO_REQUESTS: u64 = 20;

/// What the synthetic exchange `i` must become: (path, span name, route, status).
fn demo_expected(i: u64) -> (String, String, &'static str, u16) {
    match i % 4 {
        0 => (
            format!("/users/{}", i % 97),
            "GET /users/{id}".into(),
            "/users/{id}",
            200,
        ),
        1 => ("/health".into(), "GET /health".into(), "/health", 200),
        2 => (
            // The query string is never reported.
            format!("/orders/{}/items", i % 31),
            "GET /orders/{id}/items".into(),
            "/orders/{id}/items",
            200,
        ),
        _ => ("/missing".into(), "GET /missing".into(), "/missing", 404),
    }
}

/// The span attributes of synthetic exchange `i`, exactly.
fn demo_attributes(i: u64) -> Value {
    let (path, _, route, status) = demo_expected(i);
    json!({
        "client.address": "127.0.0.1",
        "http.request.body.size": 0,
        "http.request.method": "GET",
        "http.response.body.size": format!("{{\"request\":{i}}}").len(),
        "http.response.status_code": status,
        "http.route": route,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": 40_000 + i,
        "network.protocol.version": "1.1",
        "server.address": "localhost",
        "server.port": 8080,
        "url.path": path,
        "user_agent.original": "curl/8.5.0",
    })
}

/// The resource of the synthetic demo server, exactly.
fn demo_resource() -> Value {
    let host = host_name();
    json!({
        "host.name": host,
        "process.executable.name": "demo-server",
        "process.executable.path": DEMO_EXE,
        "process.pid": DEMO_PID,
        "service.instance.id": format!("{host}-{DEMO_PID}"),
        "service.name": "demo-server",
        "telemetry.sdk.name": "tandem",
        "telemetry.sdk.version": VERSION,
    })
}

/// A loader replaying a capture of `DEMO_REQUESTS` synthetic exchanges once a
/// processor subscribed, and that processor, exporting with `env` (plus
/// `OTEL_EBPF_OPEN_PORT=8080` and the demo's route patterns).
fn replay_to(dir: &Path, env: Vec<(&str, String)>) -> (Running, Running) {
    let capture = synthetic_capture(dir, DEMO_REQUESTS);
    let socket = dir.join("run").join("loader.sock");
    let loader = start_loader(
        &socket,
        &[
            "--replay",
            capture.to_str().expect("utf-8 path"),
            "--wait-subscribers",
            "1",
        ],
    );
    let config = write_config(
        dir,
        "routes:\n  patterns:\n    - /users/{id}\n    - /orders/{id}/items\n",
    );
    let mut env = env;
    env.push(("OTEL_EBPF_OPEN_PORT", "8080".into()));
    let p = start_exporting_processor(&socket, "otlp-replay", &config, &env);
    (loader, p)
}

fn replay_exports_exact_spans_and_metrics(protocol: Protocol) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start();
    let (_loader, mut p) = replay_to(
        dir.path(),
        export_env(protocol, receiver.endpoint(protocol)),
    );

    receiver.until(
        "a span per synthetic request",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| spans(r).len() as u64 >= DEMO_REQUESTS,
    );
    let resource = demo_resource();
    let metric_attrs = |route: &str, status: u16| {
        json!({
            "http.request.method": "GET",
            "http.response.status_code": status,
            "http.route": route,
            "server.port": 8080,
        })
    };
    let per_route = DEMO_REQUESTS / 4;
    receiver.until(
        "the duration histograms to count every request",
        EXPORT_PATIENCE,
        &logs(&p),
        |r| {
            (0..4).all(|i| {
                let (_, _, route, status) = demo_expected(i);
                latest_count(
                    r,
                    "http.server.request.duration",
                    DEMO_PID,
                    &metric_attrs(route, status),
                ) >= per_route
            })
        },
    );
    receiver.settle(Duration::from_millis(1500));

    let all = receiver.spans();
    assert_eq!(
        all.len() as u64,
        DEMO_REQUESTS,
        "one span per request:\n{}",
        receiver.dump()
    );
    let mut by_index: Vec<Option<&Value>> = vec![None; DEMO_REQUESTS as usize];
    for s in &all {
        // The synthetic client of exchange i uses port 40000 + i.
        let i = s["attributes"]["network.peer.port"]
            .as_u64()
            .and_then(|p| p.checked_sub(40_000))
            .unwrap_or_else(|| panic!("unexpected peer port: {s}"));
        assert!(
            by_index[i as usize].replace(s).is_none(),
            "two spans for exchange {i}"
        );
    }
    let spans: Vec<&Value> = by_index.into_iter().map(|s| s.expect("span")).collect();
    let start0 = spans[0]["start"].as_u64().expect("start");
    let mut trace_ids = std::collections::BTreeSet::new();
    for (i, s) in spans.iter().enumerate() {
        let i = i as u64;
        let (_, name, _, _) = demo_expected(i);
        assert_eq!(s["name"], name.as_str(), "{s}");
        assert_eq!(s["kind"], SERVER, "{s}");
        assert_eq!(s["attributes"], demo_attributes(i), "exchange {i}");
        assert_eq!(s["resource"], resource, "exchange {i}");
        assert_eq!(s["parent_span_id"], "", "{s}");
        assert_common(s, protocol);
        // The request's first byte at +20 µs, the response's last at +850 µs, the
        // exchanges 1 ms apart: converted with the capture's clock offset, exactly.
        let start = s["start"].as_u64().expect("start");
        assert_eq!(
            s["end"].as_u64().expect("end") - start,
            830_000,
            "exchange {i}"
        );
        assert_eq!(start - start0, i * 1_000_000, "exchange {i}");
        trace_ids.insert(s["trace_id"].as_str().expect("trace id").to_string());
    }
    assert_eq!(
        trace_ids.len() as u64,
        DEMO_REQUESTS,
        "a new trace per request"
    );

    let records = &receiver.records;
    for i in 0..4 {
        let (_, _, route, status) = demo_expected(i);
        let attrs = metric_attrs(route, status);
        let point = latest_point(records, "http.server.request.duration", DEMO_PID, &attrs)
            .unwrap_or_else(|| panic!("no duration for {route}:\n{}", receiver.dump()));
        assert_eq!(point["count"], per_route, "{route}: {point}");
        let sum = point["sum"].as_f64().expect("sum");
        let want = per_route as f64 * 0.000_83;
        assert!((sum - want).abs() < 1e-9, "{route}: sum {sum}, want {want}");
        // (0, 0.005]: the bucket after OBI's 0 boundary.
        let mut first_bucket_only = vec![0u64; DURATION_BUCKETS.len() + 1];
        first_bucket_only[1] = per_route;
        assert_eq!(point["bucket_counts"], json!(first_bucket_only), "{route}");
    }
    let metric = records
        .iter()
        .rev()
        .find(|r| r["name"] == "http.server.request.duration")
        .expect("duration metric");
    assert_eq!(metric["resource"], resource);
    assert_eq!(
        metric["points"].as_array().map(Vec::len),
        Some(4),
        "one point per (route, status): {metric}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["name"] == "http.client.request.duration"),
        "the demo server makes no client calls"
    );
    let summary = stop_and_summary(&mut p);
    assert!(
        summary.contains(&format!(
            "spans queued {DEMO_REQUESTS}, exported {DEMO_REQUESTS}, dropped 0 (queue full), failed 0"
        )),
        "{summary}"
    );
}

#[test]
fn replay_exports_exact_spans_and_metrics_over_grpc() {
    replay_exports_exact_spans_and_metrics(Protocol::Grpc);
}

#[test]
fn replay_exports_exact_spans_and_metrics_over_http_protobuf() {
    replay_exports_exact_spans_and_metrics(Protocol::HttpProtobuf);
}

/// The same replayed traffic through `rotel`, an OpenTelemetry collector this project
/// did not write: it receives every span, with the exact names, attributes, resource
/// and times.
fn replay_reaches_rotel(protocol: Protocol) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rotel = Rotel::start();
    let (_loader, mut p) = replay_to(dir.path(), export_env(protocol, rotel.endpoint(protocol)));
    let deadline = std::time::Instant::now() + EXPORT_PATIENCE;
    while (rotel.spans().len() as u64) < DEMO_REQUESTS {
        assert!(
            std::time::Instant::now() < deadline,
            "rotel logged {} of {DEMO_REQUESTS} spans; rotel stdout:\n{}\nrotel stderr:\n{}\nprocessor stderr:\n{}",
            rotel.spans().len(),
            rotel.process.stdout.text(),
            rotel.process.stderr.text(),
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = stop_and_summary(&mut p);
    assert!(
        summary.contains(&format!(
            "spans queued {DEMO_REQUESTS}, exported {DEMO_REQUESTS}, dropped 0 (queue full), failed 0"
        )),
        "{summary}"
    );
    let spans = rotel.spans();
    assert_eq!(spans.len() as u64, DEMO_REQUESTS, "{spans:#?}");
    let resource = demo_resource();
    for s in &spans {
        let i = s.attributes["network.peer.port"]
            .as_u64()
            .and_then(|p| p.checked_sub(40_000))
            .unwrap_or_else(|| panic!("unexpected peer port: {s:?}"));
        let (_, name, _, _) = demo_expected(i);
        assert_eq!(s.name, name, "{s:?}");
        assert_eq!(s.kind, "SPAN_KIND_SERVER", "{s:?}");
        assert_eq!(s.status, "STATUS_CODE_UNSET", "{s:?}");
        assert_eq!(s.scope, format!("tandem {VERSION}"), "{s:?}");
        assert_eq!(
            Value::Object(s.attributes.clone()),
            demo_attributes(i),
            "{s:?}"
        );
        assert_eq!(Value::Object(s.resource.clone()), resource, "{s:?}");
        assert_eq!(s.parent_id, "", "{s:?}");
        assert_eq!(s.trace_id.len(), 32, "{s:?}");
        assert_eq!(s.span_id.len(), 16, "{s:?}");
        assert_eq!(s.end - s.start, 830_000, "{s:?}");
    }
    let mut ports: Vec<u64> = spans
        .iter()
        .map(|s| s.attributes["network.peer.port"].as_u64().unwrap_or(0))
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (40_000..40_000 + DEMO_REQUESTS).collect::<Vec<_>>());
}

#[test]
fn replay_reaches_rotel_over_grpc() {
    replay_reaches_rotel(Protocol::Grpc);
}

#[test]
fn replay_reaches_rotel_over_http_protobuf() {
    replay_reaches_rotel(Protocol::HttpProtobuf);
}
