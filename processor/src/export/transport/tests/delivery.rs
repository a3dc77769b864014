//! Exact delivery to the Python receiver (grpcio and `http.server` with the
//! opentelemetry-proto messages): every span and data point arrives once, as encoded,
//! over gRPC, HTTP/protobuf and HTTP/JSON, with and without gzip, with the configured headers.

use serde_json::{json, Map, Value};

use super::*;

const CASES: [(OtlpProtocol, Option<Compression>); 6] = [
    (OtlpProtocol::Grpc, None),
    (OtlpProtocol::Grpc, Some(Compression::Gzip)),
    (OtlpProtocol::HttpProtobuf, None),
    (OtlpProtocol::HttpProtobuf, Some(Compression::Gzip)),
    (OtlpProtocol::HttpJson, None),
    (OtlpProtocol::HttpJson, Some(Compression::Gzip)),
];

fn transport_for(r: &Receiver, signal: Signal, case: usize) -> (Transport, &'static str) {
    let (protocol, compression) = CASES[case];
    let (endpoint, label) = match protocol {
        OtlpProtocol::Grpc => (format!("http://127.0.0.1:{}", r.grpc_port), "grpc"),
        OtlpProtocol::HttpProtobuf => (
            format!("http://127.0.0.1:{}{}", r.http_port, signal.http_path()),
            "http",
        ),
        OtlpProtocol::HttpJson => (
            format!("http://127.0.0.1:{}{}", r.http_port, signal.http_path()),
            "http/json",
        ),
    };
    let mut s = settings(endpoint, protocol);
    s.compression = compression;
    s.headers = [
        ("x-tandem-case".to_string(), case.to_string()),
        ("X-Tandem-Token".to_string(), "secret value".to_string()),
    ]
    .into();
    (Transport::new(signal, s).expect("transport"), label)
}

fn attributes(kvs: &[KeyValue]) -> Value {
    let mut m = Map::new();
    for kv in kvs {
        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => json!(s),
            Some(any_value::Value::IntValue(i)) => json!(i),
            other => panic!("unexpected attribute value {other:?}"),
        };
        m.insert(kv.key.clone(), v);
    }
    Value::Object(m)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiver's record for span `i` of `traces_body(first, n)`.
fn expected_span(i: u64, service: &str, label: &str, case: usize) -> Value {
    let sp = test_span(i);
    let mut v = json!({
        "transport": label, "signal": "traces",
        "resource": attributes(&resource(service).expect("resource").attributes),
        "scope": "tandem", "scope_version": "0.1.0",
        "name": sp.name, "kind": sp.kind,
        "trace_id": hex(&sp.trace_id), "span_id": hex(&sp.span_id),
        "parent_span_id": hex(&sp.parent_span_id), "flags": sp.flags, "trace_state": "",
        "status": sp.status.as_ref().expect("status").code, "status_message": "",
        "attributes": attributes(&sp.attributes),
        "start": sp.start_time_unix_nano, "end": sp.end_time_unix_nano,
        "headers": {"x-tandem-case": case.to_string(), "x-tandem-token": "secret value"},
    });
    if label.starts_with("http") {
        let encoding = if CASES[case].1.is_some() { "gzip" } else { "" };
        v["content_encoding"] = json!(encoding);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_arrive_exactly_over_grpc_and_http_with_and_without_gzip() {
    let Some(r) = start_receiver() else { return };
    for (case, how) in CASES.iter().enumerate() {
        let (t, label) = transport_for(&r, Signal::Traces, case);
        let first = 100 * case as u64;
        let done = t
            .export(traces_body(first, 6), 6)
            .await
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(
            done,
            Exported {
                items: 6,
                rejected: 0,
                message: None,
                attempts: 1
            }
        );
        let mut got = r.take(6);
        got.sort_by_key(|v| v["span_id"].as_str().map(String::from));
        let want: Vec<Value> = (first..first + 6)
            .map(|i| {
                let service = if i < first + 3 { "shop-api" } else { "pay-api" };
                expected_span(i, service, label, case)
            })
            .collect();
        assert_eq!(got, want, "case {case} ({how:?})");
        let st = t.stats();
        assert_eq!(
            (
                st.exports_ok,
                st.items_exported,
                st.attempts,
                st.retries,
                st.items_failed
            ),
            (1, 6, 1, 0, 0),
            "{st:?}"
        );
        assert_eq!(st.bytes_sent, traces_body(first, 6).len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_arrive_exactly_over_grpc_and_http_with_and_without_gzip() {
    let Some(r) = start_receiver() else { return };
    for (case, how) in CASES.iter().enumerate() {
        let (t, label) = transport_for(&r, Signal::Metrics, case);
        let done = t
            .export(metrics_body(), 3)
            .await
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!((done.items, done.rejected, done.attempts), (3, 0, 1));
        let mut got = r.take(2);
        got.sort_by_key(|v| v["name"].as_str().map(String::from));
        let res = attributes(&resource("shop-api").expect("resource").attributes);
        let headers = json!({"x-tandem-case": case.to_string(), "x-tandem-token": "secret value"});
        let point = |route: &str, count: u64| {
            json!({"attributes": {"http.route": route}, "count": count,
                   "sum": 0.25 * count as f64, "bounds": [0.1, 0.5],
                   "bucket_counts": [0, count, 0]})
        };
        let mut want = vec![
            json!({"transport": label, "signal": "metrics", "resource": res, "scope": "tandem",
                   "name": "http.server.request.duration", "unit": "s", "kind": "histogram",
                   "temporality": 2, "points": [point("/users/{id}", 3), point("/pay", 1)],
                   "headers": headers}),
            json!({"transport": label, "signal": "metrics", "resource": res, "scope": "tandem",
                   "name": "tandem.connections", "unit": "{connection}", "kind": "gauge",
                   "temporality": 0, "points": [{"attributes": {}, "value": 17}],
                   "headers": headers}),
        ];
        if label.starts_with("http") {
            let encoding = if how.1.is_some() { "gzip" } else { "" };
            for w in &mut want {
                w["content_encoding"] = json!(encoding);
            }
        }
        assert_eq!(got, want, "case {case} ({how:?})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_http_path_is_refused_once_with_a_hint() {
    let Some(r) = start_receiver() else { return };
    let s = settings(
        format!("http://127.0.0.1:{}/v1/nothing", r.http_port),
        OtlpProtocol::HttpProtobuf,
    );
    let t = Transport::new(Signal::Traces, s).expect("transport");
    let e = t.export(traces_body(0, 2), 2).await.expect_err("404");
    assert_eq!(e.attempts(), 1);
    let text = e.to_string();
    assert!(
        text.contains("404") && text.contains("/v1/traces"),
        "{text}"
    );
    let st = t.stats();
    assert_eq!((st.exports_failed, st.items_failed, st.attempts), (1, 2, 1));
}
