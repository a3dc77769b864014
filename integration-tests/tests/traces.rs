//! Issue 13: spans linked into traces on evidence, with real processes, the real
//! eBPF loader and a real OTLP receiver; no header injected, no code changed.
//!
//! * `curl → Python ThreadingHTTPServer → (downstream Python service, Redis)`: one
//!   trace per request with the exact parent chain (curl's client span → the
//!   frontend's server span → {its client span → the downstream's server span, its
//!   Redis client span}); the same with PostgreSQL (psycopg2);
//! * two requests served at once by two threads of the frontend: no cross-links;
//! * an async server (tokio, `tandem-test-server --upstream`) making client calls:
//!   its client spans are roots, counted as `runtime`, never given a wrong parent;
//! * service graph and span metrics with exact counts on OTLP and Prometheus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::db::{start_redis, Postgres};
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{
    free_port, require_root_bpf, start_loader, start_test_server, wait_instrumenting,
    wait_listening, Running, PATIENCE,
};

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

/// Debian's interpreter (python3-redis and python3-psycopg2 are installed for it).
const PYTHON: &str = "/usr/bin/python3";

fn service_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/trace_service.py")
}

/// `trace_service.py PORT ARGS...`, once it listens.
fn start_service(port: u16, args: &[String]) -> Running {
    start_service_as(Path::new(PYTHON), port, args)
}

/// A copy of Debian's interpreter named `name` in `dir` (its `service.name` is its
/// executable's name), run with `PYTHONHOME=/usr`.
fn named_python(dir: &Path, name: &str) -> PathBuf {
    let real = std::fs::canonicalize(PYTHON).expect("resolve /usr/bin/python3");
    let copy = dir.join(name);
    std::fs::copy(&real, &copy).expect("copy the interpreter");
    copy
}

fn start_service_as(python: &Path, port: u16, args: &[String]) -> Running {
    let mut cmd = Command::new(python);
    cmd.env("PYTHONHOME", "/usr");
    cmd.arg("-u").arg(service_script()).arg(port.to_string());
    cmd.args(args);
    let mut s = Running::spawn(
        cmd,
        &format!("trace_service.py :{port} ({})", python.display()),
    );
    wait_listening(&mut s, port, PATIENCE);
    s
}

/// A loader (eBPF), a receiver and a processor selecting `ports`, exporting traces
/// (and metrics every second, with `features`) over gRPC.
struct Tracing {
    _loader: Running,
    processor: Running,
    receiver: Receiver,
    prometheus_port: u16,
}

impl Tracing {
    fn start(dir: &Path, ports: &[u16], features: &str) -> Tracing {
        let socket = dir.join("run").join("loader.sock");
        let loader = start_loader(&socket, &["--source", "ebpf"]);
        loader.stderr.wait_for("ebpf source ready", PATIENCE);
        let receiver = Receiver::start();
        let config = write_config(
            dir,
            "routes:\n  patterns:\n    - /front/{name}\n    - /data/{name}\n    - /call/data/{name}\n",
        );
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let prometheus_port = free_port();
        let env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                receiver.endpoint(Protocol::Grpc),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
            ("OTEL_EBPF_OPEN_PORT", ports.join(",")),
            ("OTEL_EBPF_METRICS_FEATURES", features.to_string()),
            ("OTEL_EBPF_PROMETHEUS_PORT", prometheus_port.to_string()),
        ];
        let processor = start_exporting_processor(&socket, "traces", &config, &env);
        wait_instrumenting(&loader, "ports ");
        Tracing {
            _loader: loader,
            processor,
            receiver,
            prometheus_port,
        }
    }

    /// Waits until `done(spans)` holds.
    fn until(&mut self, what: &str, done: impl Fn(&[&Value]) -> bool) {
        let p = &self.processor;
        self.receiver.until(
            what,
            EXPORT_PATIENCE,
            &|| format!("processor stderr:\n{}", p.stderr.text()),
            |r| done(&spans(r)),
        );
    }
}

fn str_of<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn pid_of(span: &Value) -> i64 {
    span["resource"]["process.pid"].as_i64().unwrap_or(0)
}

/// The spans of `pid` of `kind` whose `url.path` is `path`.
fn http_spans<'a>(all: &[&'a Value], pid: i64, kind: i64, path: &str) -> Vec<&'a Value> {
    all.iter()
        .copied()
        .filter(|s| s["kind"] == kind && pid_of(s) == pid && attr(s, "url.path") == path)
        .collect()
}

fn one<'a>(found: Vec<&'a Value>, what: &str, all: &[&Value]) -> &'a Value {
    match found.as_slice() {
        [s] => s,
        _ => panic!(
            "want exactly one {what}, found {}:\n{}",
            found.len(),
            all.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Asserts `child`'s parent is `parent`, in its trace.
fn assert_child(child: &Value, parent: &Value, what: &str) {
    assert_eq!(
        str_of(child, "trace_id"),
        str_of(parent, "trace_id"),
        "{what}: not in the parent's trace\nchild {child}\nparent {parent}"
    );
    assert_eq!(
        str_of(child, "parent_span_id"),
        str_of(parent, "span_id"),
        "{what}: wrong parent\nchild {child}\nparent {parent}"
    );
}

/// curl's requests, by path: (pid, status).
fn curl(url: &str) -> i64 {
    let run = curl_get(url, &[]);
    assert_eq!(run.status, 200, "{url}: {run:?}");
    run.pid
}

/// The processor's exit summary's `links` line.
fn links_line(summary: &str) -> String {
    summary
        .lines()
        .find(|l| l.trim_start().starts_with("links"))
        .unwrap_or_else(|| panic!("no links line in:\n{summary}"))
        .trim()
        .to_string()
}

/// Per trace id, the spans in it.
fn traces<'a>(all: &[&'a Value]) -> BTreeMap<String, Vec<&'a Value>> {
    let mut by: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in all {
        by.entry(str_of(s, "trace_id").to_string())
            .or_default()
            .push(s);
    }
    by
}

#[test]
fn python_two_tier_with_redis_is_one_trace_per_request() {
    let test = "python_two_tier_with_redis_is_one_trace_per_request";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (front_port, down_port, redis_port) = (free_port(), free_port(), free_port());
    let _redis = start_redis(redis_port);
    let down = start_service(down_port, &[]);
    let front = start_service(
        front_port,
        &[
            "--downstream".into(),
            down_port.to_string(),
            "--redis".into(),
            redis_port.to_string(),
        ],
    );
    let mut t = Tracing::start(dir.path(), &[front_port, down_port], "application");
    let names = ["alpha", "beta", "gamma"];
    let curls: Vec<i64> = names
        .iter()
        .map(|n| curl(&format!("http://127.0.0.1:{front_port}/front/{n}")))
        .collect();
    let (fp, dp) = (i64::from(front.pid()), i64::from(down.pid()));
    // 5 spans per request: curl, frontend server, frontend HTTP client, downstream
    // server, frontend Redis client.
    t.until("every request's five spans", |all| {
        all.len() >= 5 * names.len()
    });
    t.receiver.settle(Duration::from_millis(1500));
    let all = t.receiver.spans();
    assert_eq!(all.len(), 5 * names.len(), "{}", t.receiver.dump());

    for (n, curl_pid) in names.iter().zip(&curls) {
        let front_path = format!("/front/{n}");
        let data_path = format!("/data/{n}");
        let curl_span = one(
            http_spans(&all, *curl_pid, CLIENT, &front_path),
            "curl client span",
            &all,
        );
        let front_server = one(
            http_spans(&all, fp, SERVER, &front_path),
            "frontend server span",
            &all,
        );
        let front_client = one(
            http_spans(&all, fp, CLIENT, &data_path),
            "frontend client span",
            &all,
        );
        let down_server = one(
            http_spans(&all, dp, SERVER, &data_path),
            "downstream server span",
            &all,
        );
        assert_eq!(
            str_of(curl_span, "parent_span_id"),
            "",
            "curl's is the root"
        );
        assert_child(front_server, curl_span, "frontend server ← curl");
        assert_child(
            front_client,
            front_server,
            "frontend client ← its server span",
        );
        assert_child(down_server, front_client, "downstream ← frontend client");
        let trace = str_of(curl_span, "trace_id");
        let in_trace: Vec<&Value> = all
            .iter()
            .copied()
            .filter(|s| str_of(s, "trace_id") == trace)
            .collect();
        assert_eq!(in_trace.len(), 5, "one trace of 5 spans: {in_trace:#?}");
        let redis: Vec<&Value> = in_trace
            .iter()
            .copied()
            .filter(|s| attr(s, "db.system.name") == "redis")
            .collect();
        let redis = one(redis, "Redis client span in the trace", &all);
        assert_eq!(pid_of(redis), fp);
        assert_eq!(redis["kind"], CLIENT);
        assert_child(redis, front_server, "redis client ← frontend server");
        assert_eq!(str_of(front_server, "name"), "GET /front/{name}");
        assert_eq!(str_of(down_server, "name"), "GET /data/{name}");
    }
    assert_eq!(traces(&all).len(), names.len(), "one trace per request");

    let summary = stop_and_summary(&mut t.processor);
    let links = links_line(&summary);
    assert!(
        links.starts_with(
            "links   server spans 6 by connection, 0 by traceparent, 0 roots; client spans 6 by thread, 0 by goroutine, 0 by traceparent, 3 unlinked ("
        ),
        "{summary}"
    );
}

#[test]
fn python_service_calling_postgresql_is_one_trace() {
    let test = "python_service_calling_postgresql_is_one_trace";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::start(dir.path());
    let front_port = free_port();
    let front = start_service(front_port, &["--postgres".into(), pg.port.to_string()]);
    let mut t = Tracing::start(dir.path(), &[front_port], "application");
    let curl_pid = curl(&format!("http://127.0.0.1:{front_port}/front/pg_type"));
    let fp = i64::from(front.pid());
    t.until("the curl, frontend and PostgreSQL spans", |all| {
        all.iter()
            .any(|s| attr(s, "db.system.name") == "postgresql")
            && all.iter().filter(|s| s["kind"] == SERVER).count() >= 1
            && all.len() >= 3
    });
    t.receiver.settle(Duration::from_millis(1500));
    let all = t.receiver.spans();
    let curl_span = one(
        http_spans(&all, curl_pid, CLIENT, "/front/pg_type"),
        "curl client span",
        &all,
    );
    let front_server = one(
        http_spans(&all, fp, SERVER, "/front/pg_type"),
        "frontend server span",
        &all,
    );
    let pg_spans: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| attr(s, "db.system.name") == "postgresql")
        .collect();
    let select = one(
        pg_spans
            .iter()
            .copied()
            .filter(|s| attr(s, "db.operation.name") == "SELECT")
            .collect(),
        "PostgreSQL SELECT span",
        &all,
    );
    assert_child(front_server, curl_span, "frontend ← curl");
    assert_child(select, front_server, "SELECT ← frontend server");
    assert_eq!(pid_of(select), fp);
    assert_eq!(
        attr(select, "db.query.text"),
        "SELECT relname FROM pg_class WHERE relname = ?"
    );
    assert_eq!(attr(select, "db.collection.name"), "pg_class");
    // Every PostgreSQL span the frontend made is in the request's trace.
    for s in &pg_spans {
        assert_child(s, front_server, "a PostgreSQL span of the request");
    }
    assert_eq!(all.len(), 2 + pg_spans.len(), "{}", t.receiver.dump());
}

#[test]
fn two_threads_serving_at_once_are_not_cross_linked() {
    let test = "two_threads_serving_at_once_are_not_cross_linked";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (front_port, down_port) = (free_port(), free_port());
    // The downstream takes 150 ms per request, so the frontend's threads overlap.
    let down = start_service(down_port, &["--delay-ms".into(), "150".into()]);
    let front = start_service(front_port, &["--downstream".into(), down_port.to_string()]);
    let mut t = Tracing::start(dir.path(), &[front_port, down_port], "application");
    let rounds = 4;
    let mut curls: Vec<(String, i64)> = Vec::new();
    for r in 0..rounds {
        let handles: Vec<_> = ["left", "right"]
            .iter()
            .map(|side| {
                let name = format!("{side}{r}");
                let url = format!("http://127.0.0.1:{front_port}/front/{name}");
                std::thread::spawn(move || (name, curl(&url)))
            })
            .collect();
        for h in handles {
            curls.push(h.join().expect("curl thread"));
        }
    }
    let (fp, dp) = (i64::from(front.pid()), i64::from(down.pid()));
    t.until("every request's four spans", |all| {
        all.len() >= 4 * curls.len()
    });
    t.receiver.settle(Duration::from_millis(1500));
    let all = t.receiver.spans();
    assert_eq!(all.len(), 4 * curls.len(), "{}", t.receiver.dump());
    // The frontend's server spans of one round overlap in time (else this test
    // proves nothing about interleaving).
    let mut overlapped = 0;
    for (name, curl_pid) in &curls {
        let front_path = format!("/front/{name}");
        let data_path = format!("/data/{name}");
        let c = one(
            http_spans(&all, *curl_pid, CLIENT, &front_path),
            "curl span",
            &all,
        );
        let fs = one(
            http_spans(&all, fp, SERVER, &front_path),
            "frontend server",
            &all,
        );
        let fc = one(
            http_spans(&all, fp, CLIENT, &data_path),
            "frontend client",
            &all,
        );
        let ds = one(
            http_spans(&all, dp, SERVER, &data_path),
            "downstream server",
            &all,
        );
        assert_child(fs, c, &format!("{name}: frontend ← curl"));
        assert_child(
            fc,
            fs,
            &format!("{name}: frontend client ← its own request"),
        );
        assert_child(ds, fc, &format!("{name}: downstream ← frontend client"));
        let (start, end) = (fs["start"].as_u64(), fs["end"].as_u64());
        let overlaps = all.iter().any(|o| {
            o["kind"] == SERVER
                && pid_of(o) == fp
                && str_of(o, "span_id") != str_of(fs, "span_id")
                && o["start"].as_u64() < end
                && start < o["end"].as_u64()
        });
        overlapped += usize::from(overlaps);
    }
    assert!(
        overlapped >= curls.len() / 2,
        "the frontend's requests did not overlap ({overlapped} of {})",
        curls.len()
    );
    assert_eq!(traces(&all).len(), curls.len(), "one trace per request");
}

#[test]
fn an_async_server_leaves_its_client_calls_unlinked_and_counted() {
    let test = "an_async_server_leaves_its_client_calls_unlinked_and_counted";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (proxy_port, down_port) = (free_port(), free_port());
    let down = start_service(down_port, &[]);
    let upstream = format!("127.0.0.1:{down_port}");
    let proxy = start_test_server(
        &format!("127.0.0.1:{proxy_port}"),
        proxy_port,
        &["--upstream", &upstream],
    );
    let mut t = Tracing::start(dir.path(), &[proxy_port, down_port], "application");
    let names = ["one", "two", "three"];
    let curls: Vec<i64> = names
        .iter()
        .map(|n| curl(&format!("http://127.0.0.1:{proxy_port}/call/data/{n}")))
        .collect();
    let (pp, dp) = (i64::from(proxy.pid()), i64::from(down.pid()));
    t.until("every request's four spans", |all| {
        all.len() >= 4 * names.len()
    });
    t.receiver.settle(Duration::from_millis(1500));
    let all = t.receiver.spans();
    assert_eq!(all.len(), 4 * names.len(), "{}", t.receiver.dump());
    for (n, curl_pid) in names.iter().zip(&curls) {
        let call_path = format!("/call/data/{n}");
        let data_path = format!("/data/{n}");
        let c = one(
            http_spans(&all, *curl_pid, CLIENT, &call_path),
            "curl span",
            &all,
        );
        let ps = one(
            http_spans(&all, pp, SERVER, &call_path),
            "proxy server",
            &all,
        );
        let pc = one(
            http_spans(&all, pp, CLIENT, &data_path),
            "proxy client",
            &all,
        );
        let ds = one(
            http_spans(&all, dp, SERVER, &data_path),
            "downstream server",
            &all,
        );
        // Both ends of each connection link.
        assert_child(ps, c, "proxy server ← curl");
        assert_child(ds, pc, "downstream ← proxy client");
        // The async server's client call is a root: never a guessed parent.
        assert_eq!(str_of(pc, "parent_span_id"), "", "{pc}");
        assert_ne!(str_of(pc, "trace_id"), str_of(ps, "trace_id"));
    }
    let summary = stop_and_summary(&mut t.processor);
    let links = links_line(&summary);
    assert!(
        links.contains("client spans 0 by thread, 0 by goroutine, 0 by traceparent, 6 unlinked (")
            && links.contains("runtime 3"),
        "{summary}"
    );
}

/// The value of counter `metric` of process `pid` with `attributes`, latest.
fn latest_value(records: &[Value], metric: &str, pid: i64, attributes: &Value) -> f64 {
    latest_point(records, metric, pid, attributes)
        .and_then(|p| p["value"].as_f64())
        .unwrap_or(0.0)
}

/// The Prometheus scrape of `port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the scrape");
    text
}

/// `metrics.features: application_span, application_service_graph`: the edges
/// curl → frontend → downstream with exact counts, on OTLP and on Prometheus.
#[test]
fn service_graph_edges_have_exact_counts_on_otlp_and_prometheus() {
    let test = "service_graph_edges_have_exact_counts_on_otlp_and_prometheus";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (front_port, down_port) = (free_port(), free_port());
    let down = start_service_as(&named_python(dir.path(), "downstream"), down_port, &[]);
    let front = start_service_as(
        &named_python(dir.path(), "frontend"),
        front_port,
        &["--downstream".into(), down_port.to_string()],
    );
    let mut t = Tracing::start(
        dir.path(),
        &[front_port, down_port],
        "application_span,application_service_graph",
    );
    let n: u32 = 3;
    for i in 0..n {
        curl(&format!("http://127.0.0.1:{front_port}/front/g{i}"));
    }
    let (fp, dp) = (i64::from(front.pid()), i64::from(down.pid()));
    let edge = |client: &str, server: &str| serde_json::json!({"client": client, "server": server, "source": "tandem"});
    let fd = edge("frontend", "downstream");
    let p = &t.processor;
    t.receiver.until(
        "the service graph's counts",
        EXPORT_PATIENCE,
        &|| format!("processor stderr:\n{}", p.stderr.text()),
        |r| {
            latest_value(r, "traces_service_graph_request_total", fp, &fd) >= f64::from(n)
                && latest_value(r, "traces_service_graph_request_total", dp, &fd) >= f64::from(n)
        },
    );
    // Let every count settle, then read them exactly.
    t.receiver.settle(Duration::from_millis(2500));
    let r = &t.receiver.records;
    let n64 = u64::from(n);
    // frontend → downstream, seen by the frontend (client spans) and the downstream.
    assert_eq!(
        latest_value(r, "traces_service_graph_request_total", fp, &fd),
        f64::from(n)
    );
    assert_eq!(
        latest_value(r, "traces_service_graph_request_total", dp, &fd),
        f64::from(n)
    );
    assert_eq!(
        latest_count(r, "traces_service_graph_request_client", fp, &fd),
        n64
    );
    assert_eq!(
        latest_count(r, "traces_service_graph_request_server", dp, &fd),
        n64
    );
    assert_eq!(
        latest_value(r, "traces_service_graph_request_failed_total", fp, &fd),
        0.0
    );
    // curl → frontend, seen by the frontend: the client is curl's service (curl may
    // have exited before the loader read its executable: `unknown_service`).
    let from_curl: f64 = ["curl", "unknown_service"]
        .iter()
        .map(|c| {
            latest_value(
                r,
                "traces_service_graph_request_total",
                fp,
                &edge(c, "frontend"),
            )
        })
        .sum();
    assert_eq!(from_curl, f64::from(n), "{}", t.receiver.dump());
    // No edge names a raw address: every peer was traced and linked.
    assert!(
        r.iter()
            .filter(
                |m| m["signal"] == "metrics" && m["name"] == "traces_service_graph_request_total"
            )
            .flat_map(|m| m["points"].as_array().cloned().unwrap_or_default())
            .all(|pt| pt["attributes"]["client"] != "127.0.0.1"
                && pt["attributes"]["server"] != "127.0.0.1"),
        "{}",
        t.receiver.dump()
    );
    // Span metrics: the frontend's server and client spans.
    let span_metric = |name: &str, kind: &str| {
        serde_json::json!({
            "service.name": "frontend",
            "span.name": name,
            "span.kind": kind,
            "status.code": "STATUS_CODE_UNSET",
            "source": "tandem",
        })
    };
    let calls = |name: &str, kind: &str| {
        latest_value(
            r,
            "traces_spanmetrics_calls_total",
            fp,
            &span_metric(name, kind),
        )
    };
    assert_eq!(calls("GET /front/{name}", "SPAN_KIND_SERVER"), f64::from(n));
    assert_eq!(calls("GET", "SPAN_KIND_CLIENT"), f64::from(n));
    assert_eq!(
        latest_count(
            r,
            "traces_spanmetrics_latency",
            fp,
            &span_metric("GET /front/{name}", "SPAN_KIND_SERVER")
        ),
        n64
    );

    // Prometheus: the same counts under OBI's names.
    let text = scrape(t.prometheus_port);
    let host = host_name();
    for (pid, job) in [(fp, "frontend"), (dp, "downstream")] {
        let line = format!(
            "traces_service_graph_request_total{{client=\"frontend\",instance=\"{host}-{pid}\",job=\"{job}\",server=\"downstream\",service_name=\"{job}\",source=\"tandem\"}} {n}"
        );
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    let client_count = format!(
        "traces_service_graph_request_client_seconds_count{{client=\"frontend\",instance=\"{host}-{fp}\",job=\"frontend\",server=\"downstream\",service_name=\"frontend\",source=\"tandem\"}} {n}"
    );
    assert!(
        text.lines().any(|l| l == client_count),
        "no `{client_count}` in\n{text}"
    );
    assert!(
        !text.contains("http_server_request_duration_seconds"),
        "`application` is not among the features: no RED metrics"
    );
}

/// Issue 14: Node.js answers `Transfer-Encoding: chunked` by default, writing the
/// head, each chunk's size line, data and CRLF as iovecs of one `writev`: every
/// iovec is captured as its own record, so the decoded body sizes are exact.
#[test]
fn node_chunked_bodies_are_counted_decoded() {
    let test = "node_chunked_bodies_are_counted_decoded";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let script = dir.path().join("chunked.js");
    std::fs::write(
        &script,
        format!(
            "require('http').createServer((req, res) => {{\n\
             if (req.url === '/err') {{ res.statusCode = 503; res.write('oo'); res.end('ps'); return; }}\n\
             res.write('a'.repeat(3000)); res.end('xyz');\n\
             }}).listen({port}, '127.0.0.1');\n"
        ),
    )
    .expect("write the server");
    let mut cmd = Command::new("node");
    cmd.arg(&script);
    let mut node = Running::spawn(cmd, "node chunked.js");
    wait_listening(&mut node, port, PATIENCE);
    let mut t = Tracing::start(dir.path(), &[port], "application");
    for path in ["/big", "/err"] {
        let run = curl_get(&format!("http://127.0.0.1:{port}{path}"), &[]);
        assert!(run.status == 200 || run.status == 503, "{run:?}");
    }
    let np = i64::from(node.pid());
    t.until("node's two server spans", |all| {
        all.iter()
            .filter(|s| s["kind"] == SERVER && pid_of(s) == np)
            .count()
            >= 2
    });
    let all = t.receiver.spans();
    let size = |path: &str| {
        let s = one(http_spans(&all, np, SERVER, path), "node server span", &all);
        attr(s, "http.response.body.size").as_i64()
    };
    assert_eq!(size("/big"), Some(3003));
    assert_eq!(size("/err"), Some(4));
}

/// Issue 14: a process's own `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (its
/// environment, forwarded by the loader) name its spans, as its SDK would.
#[test]
fn a_process_is_named_by_its_own_otel_variables() {
    let test = "a_process_is_named_by_its_own_otel_variables";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut t = Tracing::start(dir.path(), &[port], "application");
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-u")
        .arg(service_script())
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", "checkout")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.namespace=shop,deployment.environment=prod",
        );
    let mut svc = Running::spawn(cmd, "trace_service.py (OTEL_SERVICE_NAME=checkout)");
    wait_listening(&mut svc, port, PATIENCE);
    curl(&format!("http://127.0.0.1:{port}/data/x"));
    let sp = i64::from(svc.pid());
    t.until("the service's server span", |all| {
        all.iter().any(|s| s["kind"] == SERVER && pid_of(s) == sp)
    });
    let all = t.receiver.spans();
    let s = one(http_spans(&all, sp, SERVER, "/data/x"), "server span", &all);
    assert_eq!(s["resource"]["service.name"], "checkout", "{s}");
    assert_eq!(s["resource"]["service.namespace"], "shop", "{s}");
    assert_eq!(s["resource"]["deployment.environment"], "prod", "{s}");
}

/// Issue 14: `exclude_otel_instrumented_services` (OBI's default): once a process is
/// seen exporting OTLP itself (its SDK), tandem leaves it alone.
#[test]
fn a_process_exporting_otlp_itself_is_left_alone() {
    let test = "a_process_exporting_otlp_itself_is_left_alone";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut t = Tracing::start(dir.path(), &[port], "application");
    let otlp = format!("http://127.0.0.1:{}/v1/traces", t.receiver.http_port);
    let svc = start_service(port, &["--otlp-traces".into(), otlp]);
    let sp = i64::from(svc.pid());
    curl(&format!("http://127.0.0.1:{port}/data/before"));
    curl(&format!("http://127.0.0.1:{port}/export"));
    curl(&format!("http://127.0.0.1:{port}/data/after"));
    // The curl client span of /data/after is the last thing tandem exports.
    t.until("curl's span of /data/after", |all| {
        all.iter()
            .any(|s| s["kind"] == CLIENT && attr(s, "url.path") == "/data/after")
    });
    t.receiver.settle(Duration::from_millis(1500));
    let all = t.receiver.spans();
    let from_tandem: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| s["resource"]["telemetry.sdk.name"] == "tandem" && pid_of(s) == sp)
        .collect();
    let paths: Vec<&str> = from_tandem
        .iter()
        .map(|s| attr(s, "url.path").as_str().unwrap_or(""))
        .collect();
    assert_eq!(paths, ["/data/before"], "{}", t.receiver.dump());
    let summary = stop_and_summary(&mut t.processor);
    assert!(
        summary.contains("3 of 1 OpenTelemetry-instrumented processes left alone"),
        "{summary}"
    );
}
