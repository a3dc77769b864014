use super::render::label_text;
use super::*;
use crate::model::Side;
use crate::pipeline::resource::{ProcessMap, ResourceSettings};
use crate::pipeline::span::tests::tx;

/// One process (pid 42, `/usr/bin/shop`, namespace `store`) with one server GET
/// routed to `/users/{id}`: 0.25 s, request body 12 B, response body 34 B.
fn small_registry() -> MetricsRegistry {
    let mut procs = ProcessMap::new(ResourceSettings {
        service_namespace: Some("store".into()),
        host_name: "box".into(),
        ..Default::default()
    });
    procs.on_started(&tandem_proto::v1::ProcessStarted {
        pid: 42,
        exe_path: "/usr/bin/shop".into(),
        ..Default::default()
    });
    let mut reg = MetricsRegistry::default();
    reg.record(
        &procs.get(42),
        &tx(Side::Server, "GET", "/users/1", Some(200)),
        Some(&"/users/{id}".into()),
    );
    reg
}

/// The labels of every series of [`small_registry`].
const L: &str = "http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/users/{id}\",instance=\"box-42\",job=\"store/shop\",server_port=\"8080\",service_name=\"shop\",service_namespace=\"store\"";

#[test]
fn renders_a_small_registry_exactly() {
    let expected = concat!(
        "# HELP http_server_request_body_size_bytes Size of HTTP server request bodies.\n",
        "# TYPE http_server_request_body_size_bytes histogram\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"0\"} 0\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"32\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"64\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"128\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"256\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"512\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"1024\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"2048\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"4096\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"8192\"} 1\n",
        "http_server_request_body_size_bytes_bucket{{L},le=\"+Inf\"} 1\n",
        "http_server_request_body_size_bytes_sum{{L}} 12\n",
        "http_server_request_body_size_bytes_count{{L}} 1\n",
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n",
        "# TYPE http_server_request_duration_seconds histogram\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.005\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.01\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.025\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.05\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.075\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.1\"} 0\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.25\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.5\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"0.75\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"1\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"2.5\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"5\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"7.5\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"10\"} 1\n",
        "http_server_request_duration_seconds_bucket{{L},le=\"+Inf\"} 1\n",
        "http_server_request_duration_seconds_sum{{L}} 0.25\n",
        "http_server_request_duration_seconds_count{{L}} 1\n",
        "# HELP http_server_response_body_size_bytes Size of HTTP server response bodies.\n",
        "# TYPE http_server_response_body_size_bytes histogram\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"0\"} 0\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"32\"} 0\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"64\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"128\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"256\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"512\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"1024\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"2048\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"4096\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"8192\"} 1\n",
        "http_server_response_body_size_bytes_bucket{{L},le=\"+Inf\"} 1\n",
        "http_server_response_body_size_bytes_sum{{L}} 34\n",
        "http_server_response_body_size_bytes_count{{L}} 1\n",
        "# HELP target_info Target metadata\n",
        "# TYPE target_info gauge\n",
        "target_info{host_name=\"box\",instance=\"box-42\",job=\"store/shop\",process_executable_name=\"shop\",process_executable_path=\"/usr/bin/shop\",process_pid=\"42\",service_name=\"shop\",service_namespace=\"store\",telemetry_sdk_name=\"tandem\",telemetry_sdk_version=\"{V}\"} 1\n",
    )
    .replace("{L}", L)
    .replace("{V}", env!("CARGO_PKG_VERSION"));
    let text = render(&small_registry().snapshot());
    assert_eq!(text, expected, "got:\n{text}");
}

#[test]
fn names_labels_and_escaping() {
    assert_eq!(
        metric_name("http.server.request.duration", "s"),
        "http_server_request_duration_seconds"
    );
    assert_eq!(
        metric_name("http.client.response.body.size", "By"),
        "http_client_response_body_size_bytes"
    );
    assert_eq!(metric_name("a.count", "{request}"), "a_count");
    assert_eq!(metric_name("x_seconds", "s"), "x_seconds");
    assert_eq!(
        label_name("http.response.status_code"),
        "http_response_status_code"
    );
    assert_eq!(label_name("9lives"), "_9lives");
    assert_eq!(
        label_text(&[("r".into(), "a\"b\\c\nd".into())], Some("+Inf")),
        r#"{r="a\"b\\c\nd",le="+Inf"}"#
    );
    assert_eq!(render(&[]), "");
}

/// Sends `request` to `addr` with a plain TCP client; returns the whole answer.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(request).expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    answer
}

async fn scrape(addr: SocketAddr, request: impl Into<Vec<u8>>) -> String {
    let request = request.into();
    tokio::task::spawn_blocking(move || http(addr, &request))
        .await
        .expect("client task")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of the one line starting with `prefix`.
fn value(text: &str, prefix: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "{prefix} in:\n{text}");
    lines[0].rsplit(' ').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_serves_its_metrics_to_a_scraper() {
    use crate::export::printer::Printer;
    use crate::pipeline::Pipeline;
    use crate::settings::{ExportSettings, RoutesSettings, TracePrinter};

    let export = ExportSettings {
        prometheus_port: Some(0),
        prometheus_path: "/metrics".into(),
        ..Default::default()
    };
    let routes = RoutesSettings {
        patterns: vec!["/users/{id}".into()],
        ..Default::default()
    };
    let mut p = Pipeline::with_printer(
        &routes,
        &export,
        "box".into(),
        Printer::stdout(TracePrinter::Disabled),
    )
    .expect("pipeline");
    let port = p.prometheus_addr().expect("endpoint").port();
    assert_ne!(port, 0);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    p.on_process(&tandem_proto::v1::ProcessStarted {
        pid: 42,
        exe_path: "/usr/bin/shop".into(),
        ..Default::default()
    });
    for path in ["/users/1", "/users/2", "/users/3"] {
        p.on_transaction(&tx(Side::Server, "GET", path, Some(200)));
    }
    p.on_transaction(&tx(Side::Client, "POST", "/pay", Some(503)));

    let answer = scrape(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
        "{answer}"
    );
    let text = body(&answer);
    let len = format!("Content-Length: {}\r\n", text.len());
    assert!(answer.contains(&len), "{answer}");
    let server = "http_server_request_duration_seconds_count{http_request_method=\"GET\",\
                  http_response_status_code=\"200\",http_route=\"/users/{id}\",\
                  instance=\"box-42\",job=\"shop\",server_port=\"8080\",\
                  service_name=\"shop\"}";
    assert_eq!(value(text, server), "3");
    assert_eq!(
        value(text, "http_server_request_duration_seconds_sum{"),
        "0.75"
    );
    let client_buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_client_request_duration_seconds_bucket{"))
        .filter(|l| l.contains("error_type=\"503\"") && l.contains("le=\"0.25\""))
        .collect();
    assert_eq!(client_buckets.len(), 1, "{text}");
    assert!(client_buckets[0].ends_with(" 1"), "{text}");
    assert_eq!(
        value(text, "http_client_request_duration_seconds_count{"),
        "1"
    );
    assert!(text.contains("target_info{host_name=\"box\""), "{text}");

    // More traffic shows in the next scrape (cumulative).
    p.on_transaction(&tx(Side::Server, "GET", "/users/4", Some(200)));
    let text = scrape(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(value(body(&text), server), "4");

    let head = scrape(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body(&head), "");
    let other = scrape(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    let post = scrape(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
    let junk = scrape(addr, b"hello\r\n\r\n").await;
    assert!(junk.starts_with("HTTP/1.1 400 "), "{junk}");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let big = scrape(addr, huge).await;
    assert!(big.starts_with("HTTP/1.1 431 "), "{big}");

    p.shutdown().await;
    let refused = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(addr))
        .await
        .expect("client task");
    assert!(refused.is_err(), "still listening after shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn port_in_use_is_an_error_naming_it() {
    let taken = StdTcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let registry = Arc::new(Mutex::new(MetricsRegistry::default()));
    let err =
        PrometheusEndpoint::start(port, "/metrics", registry.clone()).expect_err("port in use");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    let err = PrometheusEndpoint::start(0, "metrics", registry).expect_err("bad path");
    assert!(matches!(err, PrometheusError::BadPath { .. }), "{err}");
}
