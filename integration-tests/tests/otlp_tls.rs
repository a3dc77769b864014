//! Issue 14: OTLP over TLS to a real receiver listening with TLS (grpcio's and
//! Python's `ssl`), over gRPC and HTTP/protobuf: with a CA file
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`), with `OTEL_EBPF_INSECURE_SKIP_VERIFY`, with a
//! client certificate (mTLS), and refused when the collector's certificate is not
//! trusted. The loader replays a synthetic capture (any user; no eBPF).

use std::path::Path;
use std::time::Duration;

use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{make_pki, start_loader, synthetic_capture, Pki, Running};

const REQUESTS: u64 = 20;
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

fn https_endpoint(r: &Receiver, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => format!("https://localhost:{}", r.grpc_port),
        Protocol::HttpProtobuf => format!("https://127.0.0.1:{}", r.http_port),
    }
}

/// A loader replaying `REQUESTS` synthetic requests and a processor exporting them
/// with `env` to `endpoint` over `protocol`.
fn replay(
    dir: &Path,
    protocol: Protocol,
    endpoint: String,
    env: &[(&str, String)],
) -> (Running, Running) {
    let capture = synthetic_capture(dir, REQUESTS);
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
    let config = write_config(dir, "routes:\n  patterns:\n    - /users/{id}\n");
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            protocol.env_value().to_string(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ("OTEL_EBPF_OPEN_PORT", "8080".to_string()),
    ];
    all.extend(env.iter().cloned());
    let p = start_exporting_processor(&socket, "otlp-tls", &config, &all);
    (loader, p)
}

fn exports_every_span(protocol: Protocol, pki: &Pki, client_ca: bool, env: &[(&str, String)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start_tls(
        &pki.server_cert,
        &pki.server_key,
        client_ca.then_some(pki.ca.as_path()),
    );
    let (_loader, p) = replay(
        dir.path(),
        protocol,
        https_endpoint(&receiver, protocol),
        env,
    );
    receiver.until(
        "every span over TLS",
        EXPORT_PATIENCE,
        &|| format!("processor stderr:\n{}", p.stderr.text()),
        |r| spans(r).len() as u64 >= REQUESTS,
    );
    receiver.settle(Duration::from_millis(1500));
    assert_eq!(
        receiver.spans().len() as u64,
        REQUESTS,
        "{}",
        receiver.dump()
    );
    let transport = match protocol {
        Protocol::Grpc => "grpc",
        Protocol::HttpProtobuf => "http",
    };
    assert!(receiver.spans().iter().all(|s| s["transport"] == transport));
}

fn pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    (dir, pki)
}

fn ca_env(pki: &Pki) -> Vec<(&'static str, String)> {
    vec![(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        pki.ca.display().to_string(),
    )]
}

#[test]
fn grpc_over_tls_with_a_ca_file() {
    let (_d, pki) = pki();
    exports_every_span(Protocol::Grpc, &pki, false, &ca_env(&pki));
}

#[test]
fn http_protobuf_over_tls_with_a_ca_file() {
    let (_d, pki) = pki();
    exports_every_span(Protocol::HttpProtobuf, &pki, false, &ca_env(&pki));
}

#[test]
fn insecure_skip_verify_trusts_any_certificate() {
    let (_d, pki) = pki();
    let env = [("OTEL_EBPF_INSECURE_SKIP_VERIFY", "true".to_string())];
    exports_every_span(Protocol::Grpc, &pki, false, &env);
    exports_every_span(Protocol::HttpProtobuf, &pki, false, &env);
}

#[test]
fn client_certificates_for_a_collector_that_requires_them() {
    let (_d, pki) = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let mut env = ca_env(&pki);
        // The signal-specific forms win over the generic ones.
        env.push((
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.client_cert.display().to_string(),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            pki.client_key.display().to_string(),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            pki.client_key.display().to_string(),
        ));
        exports_every_span(protocol, &pki, true, &env);
    }
}

/// A collector whose certificate the system's roots do not trust: every export
/// fails with a certificate error, counted and logged; nothing is received.
#[test]
fn an_untrusted_collector_is_refused() {
    let (_d, pki) = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut receiver = Receiver::start_tls(&pki.server_cert, &pki.server_key, None);
        let (_loader, mut p) = replay(
            dir.path(),
            protocol,
            https_endpoint(&receiver, protocol),
            &[("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())],
        );
        let deadline = std::time::Instant::now() + EXPORT_PATIENCE;
        loop {
            let text = p.stderr.text();
            if text.contains("export failed") && text.to_lowercase().contains("certificate") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol:?}: no certificate failure logged:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        receiver.settle(Duration::from_millis(500));
        assert!(receiver.spans().is_empty(), "{}", receiver.dump());
        p.stop();
    }
}

/// `http/json` (the OTLP JSON mapping) over TLS: every span arrives, decoded by the
/// receiver from JSON (hex ids), the metrics too.
#[test]
fn http_json_over_tls() {
    let (_d, pki) = pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start_tls(&pki.server_cert, &pki.server_key, None);
    let mut env = ca_env(&pki);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_string()));
    let (_loader, p) = replay(
        dir.path(),
        Protocol::HttpProtobuf,
        https_endpoint(&receiver, Protocol::HttpProtobuf),
        &env,
    );
    receiver.until(
        "every span and a metric over http/json",
        EXPORT_PATIENCE,
        &|| format!("processor stderr:\n{}", p.stderr.text()),
        |r| {
            spans(r).len() as u64 >= REQUESTS
                && r.iter()
                    .any(|m| m["signal"] == "metrics" && m["transport"] == "http/json")
        },
    );
    receiver.settle(Duration::from_millis(1500));
    let spans = receiver.spans();
    assert_eq!(spans.len() as u64, REQUESTS, "{}", receiver.dump());
    assert!(spans.iter().all(|s| s["transport"] == "http/json"));
    // Ids survived the hex mapping: 32 and 16 hex digits, not all zero.
    for s in &spans {
        let t = s["trace_id"].as_str().unwrap_or("");
        assert!(t.len() == 32 && t.chars().any(|c| c != '0'), "{s}");
        assert_eq!(s["span_id"].as_str().map(str::len), Some(16), "{s}");
    }
}
