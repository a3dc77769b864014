//! The transport against real peers: the Python OTLP receiver (grpcio +
//! opentelemetry-proto) for exact delivery, small scripted hyper servers for retries
//! and concurrency, and rotel for throughput (ignored: run by hand, see
//! `throughput.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use serde_json::Value;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use super::*;

mod concurrency;
mod delivery;
mod retry;
pub(crate) mod servers;
mod throughput;

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

pub fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("host.name", s("testhost")),
            kv("process.pid", any_value::Value::IntValue(4242)),
        ],
        ..Default::default()
    })
}

/// Span `i` of a trace: a server span with the usual HTTP attributes.
pub fn test_span(i: u64) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&0x4bf9_2f35_77b3_4da6u64.to_be_bytes());
    trace_id[8..].copy_from_slice(&i.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (0x1000 + i).to_be_bytes().to_vec(),
        parent_span_id: if i.is_multiple_of(2) {
            vec![]
        } else {
            7u64.to_be_bytes().to_vec()
        },
        flags: 0x101,
        name: format!("GET /users/{{id}} #{i}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + i * 1000,
        end_time_unix_nano: 1_700_000_000_250_000_000 + i * 1000,
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("url.path", s(&format!("/users/{i}"))),
            kv("http.route", s("/users/{id}")),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            kv("server.address", s("shop.example")),
            kv("server.port", any_value::Value::IntValue(8080)),
            kv("client.address", s("10.0.0.2")),
            kv("network.protocol.version", s("1.1")),
            kv(
                "user_agent.original",
                s(
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                   Chrome/126.0.0.0 Safari/537.36",
                ),
            ),
            kv("http.request.body.size", any_value::Value::IntValue(12)),
            kv("http.response.body.size", any_value::Value::IntValue(3400)),
        ],
        status: Some(Status {
            code: if i.is_multiple_of(3) {
                status::StatusCode::Error as i32
            } else {
                0
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// `spans` spans numbered from `first`, split over two resources.
pub fn traces_body(first: u64, spans: u64) -> Bytes {
    let scope = |service: &str, range: std::ops::Range<u64>| ResourceSpans {
        resource: resource(service),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "tandem".into(),
                version: "0.1.0".into(),
                ..Default::default()
            }),
            spans: range.map(test_span).collect(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    };
    let half = first + spans / 2;
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            scope("shop-api", first..half),
            scope("pay-api", half..first + spans),
        ],
    };
    req.encode_to_vec().into()
}

/// A histogram with two points and a gauge with one: 3 data points.
pub fn metrics_body() -> Bytes {
    let point = |route: &str, count: u64| HistogramDataPoint {
        attributes: vec![kv("http.route", s(route))],
        start_time_unix_nano: 1_700_000_000_000_000_000,
        time_unix_nano: 1_700_000_060_000_000_000,
        count,
        sum: Some(0.25 * count as f64),
        bucket_counts: vec![0, count, 0],
        explicit_bounds: vec![0.1, 0.5],
        ..Default::default()
    };
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("shop-api"),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tandem".into(),
                    ..Default::default()
                }),
                metrics: vec![
                    Metric {
                        name: "http.server.request.duration".into(),
                        unit: "s".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![point("/users/{id}", 3), point("/pay", 1)],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "tandem.connections".into(),
                        unit: "{connection}".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 1_700_000_060_000_000_000,
                                value: Some(number_data_point::Value::AsInt(17)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    req.encode_to_vec().into()
}

/// Settings for tests: fast retries, short timeout.
pub fn settings(endpoint: String, protocol: OtlpProtocol) -> TransportSettings {
    TransportSettings {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(10),
        },
        ..TransportSettings::new(endpoint, protocol)
    }
}

/// The Python receiver, killed on drop.
pub struct Receiver {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the receiver; `None` (printing SKIP) when python3 is not installed.
pub fn start_receiver() -> Option<Receiver> {
    match Command::new("python3")
        .args(["-c", "import grpc, opentelemetry.proto"])
        .output()
    {
        Err(e) => {
            println!("SKIP OTLP transport receiver tests: python3 is not available ({e})");
            return None;
        }
        Ok(out) => assert!(
            out.status.success(),
            "python3 lacks grpcio/opentelemetry-proto (run scripts/setup.sh, or pip install \
             grpcio opentelemetry-proto): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration-tests/testdata/otlp_receiver.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let stdout = child.stdout.take().expect("stdout piped");
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
        lines,
        grpc_port: ports[0],
        http_port: ports[1],
    })
}

impl Receiver {
    /// The next `n` records (panics after 30 s), then checks nothing more comes
    /// within 300 ms.
    pub fn take(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = vec![];
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(serde_json::from_str(&line).expect("json line")),
                Err(_) => panic!("timed out; received so far: {got:#?}"),
            }
        }
        if let Ok(extra) = self.lines.recv_timeout(Duration::from_millis(300)) {
            panic!("more records than sent: {extra}");
        }
        got
    }
}
