//! The pipeline against a real OTLP receiver (`integration-tests/testdata/otlp_receiver.py`: Python
//! `grpcio` + `opentelemetry-proto`, installed by `scripts/setup.sh`), over gRPC and
//! over HTTP/protobuf: exact span names, attributes, resources and metrics must
//! arrive. Skipped (with a printed reason) only when `python3` itself is missing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::Side;
use crate::pipeline::metrics::DURATION_BUCKETS;
use crate::pipeline::span::tests::tx;
use crate::pipeline::Pipeline;
use crate::settings::{
    ExportSettings, OtlpProtocol, OtlpSignal, RoutesSettings, Sampler, TracePrinter,
};

struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    grpc_port: u16,
    http_port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the receiver; `None` when python3 is not installed.
fn start_receiver() -> Option<Receiver> {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, opentelemetry.proto"])
        .output();
    match probe {
        Err(e) => {
            println!("SKIP OTLP receiver tests: python3 is not available ({e})");
            return None;
        }
        Ok(out) if !out.status.success() => panic!(
            "python3 lacks grpcio/opentelemetry-proto (run scripts/setup.sh, or \
             pip install grpcio opentelemetry-proto): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
    // One receiver serves the processor's tests and the end-to-end tests.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration-tests/testdata/otlp_receiver.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let stdout = child.stdout.take().expect("stdout piped");
    let stdin = child.stdin.take();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let ready = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("receiver printed READY");
    let ports: Vec<u16> = ready
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected first line {ready:?}"))
        .split(' ')
        .map(|p| p.parse().expect("port"))
        .collect();
    Some(Receiver {
        child,
        stdin,
        lines,
        grpc_port: ports[0],
        http_port: ports[1],
    })
}

impl Receiver {
    /// Received records until `done` holds for them (or the time is up: panics).
    fn collect_until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = vec![];
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(serde_json::from_str(&line).expect("json line")),
                Err(_) => panic!("timed out; received so far: {got:#?}"),
            }
        }
        if let Some(mut stdin) = self.stdin.as_ref() {
            let _ = stdin.flush();
        }
        got
    }
}

fn signal(endpoint: String, protocol: OtlpProtocol) -> OtlpSignal {
    OtlpSignal {
        endpoint: Some(endpoint),
        protocol: Some(protocol),
        headers: [("x-tandem-test".to_string(), "1".to_string())].into(),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

async fn run_case(traces: OtlpSignal, metrics: OtlpSignal, r: &Receiver, transport: &str) {
    let routes = RoutesSettings {
        patterns: vec!["/users/{id}".into()],
        ignored_patterns: vec!["/health".into()],
        ..Default::default()
    };
    let export = ExportSettings {
        traces,
        metrics,
        sampler: Sampler::ParentBasedAlwaysOn,
        trace_printer: TracePrinter::Disabled,
        resource_attributes: [("deployment.environment.name".into(), "test".into())].into(),
        metrics_interval: Duration::from_secs(3600),
        max_queue_size: 100,
        ..Default::default()
    };
    let mut p = Pipeline::new(&routes, &export, "testhost".into()).expect("pipeline");
    p.on_process(&tandem_proto::v1::ProcessStarted {
        pid: 4242,
        exe_path: "/usr/bin/shop-api".into(),
        ..Default::default()
    });
    let mut server = tx(Side::Server, "GET", "/users/42", Some(200));
    server.pid = 4242;
    crate::pipeline::span::tests::http_mut(&mut server)
        .request
        .headers
        .push((
            "traceparent".into(),
            format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        ));
    let mut client = tx(Side::Client, "POST", "/pay", Some(503));
    client.pid = 4242;
    let mut health = tx(Side::Server, "GET", "/health", Some(200));
    health.pid = 4242;
    p.on_transaction(&server);
    p.on_transaction(&client);
    p.on_transaction(&health);
    let stats = p.shutdown().await;
    assert_eq!(stats.span_export.exported, 2, "{stats:?}");
    assert_eq!(stats.ignored_traces, 1);

    let got = r.collect_until(|got| {
        let spans = got.iter().filter(|v| v["signal"] == "traces").count();
        let durations = got
            .iter()
            .filter(|v| {
                v["name"] == "http.server.request.duration"
                    || v["name"] == "http.client.request.duration"
            })
            .count();
        spans >= 2 && durations >= 2
    });
    assert!(got.iter().all(|v| v["transport"] == transport), "{got:#?}");

    let span = |name: &str| {
        got.iter()
            .find(|v| v["signal"] == "traces" && v["name"] == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {got:#?}"))
    };
    let s = span("GET /users/{id}");
    assert_eq!(s["kind"], 2, "SERVER");
    assert_eq!(s["status"], 0, "UNSET");
    assert_eq!(s["scope"], "tandem");
    assert_eq!(s["trace_id"], PARENT_TRACE);
    assert_eq!(s["parent_span_id"], PARENT_SPAN);
    let a = &s["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/users/42");
    assert_eq!(a["http.route"], "/users/{id}");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["server.address"], "shop.example");
    assert_eq!(a["server.port"], 8080);
    assert_eq!(a["client.address"], "10.0.0.2");
    assert_eq!(a["network.protocol.version"], "1.1");
    assert_eq!(a["http.request.body.size"], 12);
    assert_eq!(a["http.response.body.size"], 34);
    assert_eq!(
        s["end"].as_u64().expect("end") - s["start"].as_u64().expect("start"),
        250_000_000
    );
    let res = &s["resource"];
    assert_eq!(res["service.name"], "shop-api");
    assert_eq!(res["service.instance.id"], "testhost-4242");
    assert_eq!(res["host.name"], "testhost");
    assert_eq!(res["process.pid"], 4242);
    assert_eq!(res["process.executable.path"], "/usr/bin/shop-api");
    assert_eq!(res["telemetry.sdk.name"], "tandem");
    assert_eq!(res["deployment.environment.name"], "test");

    let c = span("POST");
    assert_eq!(c["kind"], 3, "CLIENT");
    assert_eq!(c["status"], 2, "ERROR");
    assert_eq!(c["attributes"]["error.type"], "503");
    assert_eq!(c["parent_span_id"], "");

    assert!(
        !got.iter().any(|v| v.to_string().contains("/health")),
        "ignored path exported: {got:#?}"
    );

    let metric = |name: &str| {
        got.iter()
            .find(|v| v["signal"] == "metrics" && v["name"] == name)
            .unwrap_or_else(|| panic!("no metric {name:?} in {got:#?}"))
    };
    let m = metric("http.server.request.duration");
    assert_eq!(m["unit"], "s");
    assert_eq!(m["resource"]["service.name"], "shop-api");
    let points = m["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "{m:#?}");
    assert_eq!(points[0]["count"], 1);
    assert_eq!(points[0]["attributes"]["http.route"], "/users/{id}");
    assert_eq!(points[0]["attributes"]["http.response.status_code"], 200);
    assert!(points[0]["attributes"].get("url.path").is_none());
    let bounds: Vec<f64> = points[0]["bounds"]
        .as_array()
        .expect("bounds")
        .iter()
        .map(|b| b.as_f64().expect("f64"))
        .collect();
    assert_eq!(bounds, DURATION_BUCKETS.to_vec());
    let m = metric("http.client.request.duration");
    assert_eq!(m["points"][0]["attributes"]["error.type"], "503");
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_and_metrics_arrive_over_grpc() {
    let Some(r) = start_receiver() else { return };
    let endpoint = format!("http://127.0.0.1:{}", r.grpc_port);
    run_case(
        signal(endpoint.clone(), OtlpProtocol::Grpc),
        signal(endpoint, OtlpProtocol::Grpc),
        &r,
        "grpc",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_and_metrics_arrive_over_http_protobuf() {
    let Some(r) = start_receiver() else { return };
    let base = format!("http://127.0.0.1:{}", r.http_port);
    run_case(
        signal(format!("{base}/v1/traces"), OtlpProtocol::HttpProtobuf),
        signal(format!("{base}/v1/metrics"), OtlpProtocol::HttpProtobuf),
        &r,
        "http",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_down_never_blocks_ingestion() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    let export = ExportSettings {
        traces: signal(format!("http://127.0.0.1:{port}"), OtlpProtocol::Grpc),
        sampler: Sampler::AlwaysOn,
        max_queue_size: 50,
        metrics_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let mut p = Pipeline::new(&RoutesSettings::default(), &export, "h".into()).expect("pipeline");
    let started = Instant::now();
    for i in 0..20_000 {
        p.on_transaction(&tx(Side::Server, "GET", &format!("/items/{i}"), Some(200)));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ingestion slowed down: {:?}",
        started.elapsed()
    );
    let stats = p.shutdown().await;
    let e = stats.span_export;
    assert!(e.dropped_queue_full > 19_000, "{e:?}");
    assert_eq!(e.exported, 0, "{e:?}");
    assert_eq!(e.queued + e.dropped_queue_full, 20_000, "{e:?}");
    assert_eq!(e.failed + e.abandoned, e.queued, "{e:?}");
}
