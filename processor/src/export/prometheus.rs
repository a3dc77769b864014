//! The Prometheus scrape endpoint: `prometheus_export.port` /
//! `OTEL_EBPF_PROMETHEUS_PORT` and `prometheus_export.path` /
//! `OTEL_EBPF_PROMETHEUS_PATH` (default `/metrics`), as in OBI.
//!
//! **Serving.** It listens on `0.0.0.0:PORT` (every IPv4 interface, as OBI listens
//! on all interfaces; restrict access with a firewall or network policy). `GET` and
//! `HEAD` of the path answer `200` with the text exposition format 0.0.4; another
//! path `404`, another method `405`. One request per connection (`Connection:
//! close`). Bounds: [`MAX_CONNECTIONS`] connections at once (more wait in the
//! listen backlog), a request head of at most [`MAX_REQUEST_BYTES`] (else `431`),
//! [`READ_TIMEOUT`] to send it (else the connection is closed), [`WRITE_TIMEOUT`]
//! to take the answer.
//!
//! **Content.** Each scrape collects the live meters of
//! [`MetricsRegistry::snapshot`] (cumulative, the same values the OTLP push sends)
//! and renders them with [`render`]:
//!
//! * Names as OBI's Prometheus names: the OpenTelemetry name with `.` replaced by
//!   `_` and the unit as a suffix (`s`: `_seconds`, `By`: `_bytes`), e.g.
//!   `http.server.request.duration` -> `http_server_request_duration_seconds`,
//!   `http.server.request.body.size` -> `http_server_request_body_size_bytes`.
//! * Histograms as `NAME_bucket{...,le="B"}` (cumulative counts, ending with
//!   `le="+Inf"`), `NAME_sum`, `NAME_count`.
//! * Labels: the metric's attributes with `.` as `_` (`http_request_method`,
//!   `http_response_status_code`, `http_route`, `server_port`, `server_address`,
//!   `error_type`), plus, from the process's resource, `service_name`,
//!   `service_namespace` (when set), `job` (`namespace/name`, or `name`) and
//!   `instance` (`service.instance.id`), as OBI labels its application metrics.
//! * `target_info` (gauge, value 1): one series per process with `job`, `instance`
//!   and its resource attributes (`host_name`, `process_pid`, `telemetry_sdk_name`,
//!   ...), as OpenTelemetry's Prometheus compatibility rules and OBI do.
//!
//! Series and families are sorted, so a scrape is deterministic. Only histograms are
//! rendered: the registry has no other instrument.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::{Key, Value};
use opentelemetry_sdk::metrics::data::{
    AggregatedMetrics, HistogramDataPoint, MetricData, ResourceMetrics,
};
use opentelemetry_sdk::Resource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pipeline::metrics::MetricsRegistry;

/// The path served when none is configured (OBI's).
pub const DEFAULT_PATH: &str = "/metrics";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, after answering, for the client to close (reading what it still sends).
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An endpoint that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(
        "cannot listen on {addr} for the Prometheus endpoint (prometheus_export.port / \
         OTEL_EBPF_PROMETHEUS_PORT): {source}; choose a free port"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus_export.path / OTEL_EBPF_PROMETHEUS_PATH {path:?} must start with '/' and contain no '?', '#' or spaces")]
    BadPath { path: String },
}

/// The running endpoint; stops when shut down or dropped.
#[derive(Debug)]
pub struct PrometheusEndpoint {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PrometheusEndpoint {
    /// Listens on `0.0.0.0:port` (`port` 0: a free port) and serves `registry` at
    /// `path` (empty: [`DEFAULT_PATH`]) on the current Tokio runtime.
    pub fn start(
        port: u16,
        path: &str,
        registry: Arc<Mutex<MetricsRegistry>>,
    ) -> Result<Self, PrometheusError> {
        let path = if path.is_empty() { DEFAULT_PATH } else { path };
        if !path.starts_with('/') || path.contains(['?', '#', ' ', '\r', '\n', '\t']) {
            return Err(PrometheusError::BadPath {
                path: path.to_string(),
            });
        }
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let bind = |source| PrometheusError::Bind { addr, source };
        let listener = StdTcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let listener = TcpListener::from_std(listener).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(path.to_string()),
            registry,
            stop.clone(),
        ));
        info!(%addr, path, "Prometheus endpoint listening");
        Ok(PrometheusEndpoint {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening; a scrape being answered finishes within its timeouts.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                debug!("Prometheus endpoint task: {e}");
            }
        }
    }
}

impl Drop for PrometheusEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    path: Arc<String>,
    registry: Arc<Mutex<MetricsRegistry>>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let path = path.clone();
                let registry = registry.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &path, registry).await {
                        debug!(%peer, "Prometheus scrape connection: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!("Prometheus endpoint cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    debug!("Prometheus endpoint stopped");
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Malformed,
    TooLarge,
}

/// Reads one request head (bounded in size and time) and answers it.
async fn answer(
    mut stream: TcpStream,
    path: &str,
    registry: Arc<Mutex<MetricsRegistry>>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let request = match head {
        Head::Complete(bytes) => parse(&bytes, path),
        Head::TooLarge => Request::TooLarge,
    };
    let (status, extra, body, head_only) = match request {
        Request::Metrics { head_only } => {
            let text = tokio::task::spawn_blocking(move || {
                let collected = match registry.lock() {
                    Ok(r) => r.snapshot(),
                    Err(_) => Vec::new(),
                };
                render(&collected)
            })
            .await
            .map_err(std::io::Error::other)?;
            ("200 OK", "", text, head_only)
        }
        Request::NotFound => (
            "404 Not Found",
            "",
            format!("not found; metrics are at {path}\n"),
            false,
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Request::Malformed => ("400 Bad Request", "", "bad request\n".to_string(), false),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        if status.starts_with("200") {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        },
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client too slow to take the answer",
            ))
        }
    }
    // Lingering close: closing with unread request bytes would reset the connection
    // and could destroy the answer before the client read it (a refused request
    // whose head was too large).
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// The bytes up to the end of the request head; `None` if the client went away first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf[searched_from..], b"\r\n\r\n") {
            buf.truncate(searched_from + end);
            return Ok(Some(Head::Complete(buf)));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Some(Head::TooLarge));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(head: &[u8], path: &str) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Malformed;
    }
    let target_path = target.split(['?', '#']).next().unwrap_or_default();
    if target_path != path {
        return Request::NotFound;
    }
    match method {
        "GET" => Request::Metrics { head_only: false },
        "HEAD" => Request::Metrics { head_only: true },
        _ => Request::BadMethod,
    }
}

/// One series of a family: sorted labels, then the lines.
type Series = (String, String);

#[derive(Default)]
struct Family {
    help: String,
    kind: &'static str,
    series: Vec<Series>,
}

/// Renders collected metrics in the Prometheus text exposition format 0.0.4 (see the
/// module documentation for names and labels).
pub fn render(collected: &[ResourceMetrics]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for rm in collected {
        let resource = resource_labels(rm.resource());
        let mut has_series = false;
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let name = metric_name(m.name(), m.unit());
                let mut series = Vec::new();
                match m.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            series.push(histogram(&name, &resource, p, |v| number(*v)));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            series.push(histogram(&name, &resource, p, |v| v.to_string()));
                        }
                    }
                    AggregatedMetrics::I64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            series.push(histogram(&name, &resource, p, |v| v.to_string()));
                        }
                    }
                    _ => debug!(metric = m.name(), "not a histogram: not rendered"),
                }
                if series.is_empty() {
                    continue;
                }
                has_series = true;
                let family = families.entry(name).or_default();
                family.help = m.description().to_string();
                family.kind = "histogram";
                family.series.extend(series);
            }
        }
        if has_series {
            let labels = target_info_labels(rm.resource());
            let family = families.entry("target_info".to_string()).or_default();
            family.help = "Target metadata".to_string();
            family.kind = "gauge";
            family
                .series
                .push((labels.clone(), format!("target_info{labels} 1\n")));
        }
    }
    let mut out = String::new();
    for (name, mut family) in families {
        family.series.sort();
        family.series.dedup_by(|a, b| a.0 == b.0);
        if !family.help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        }
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for (_, lines) in family.series {
            out.push_str(&lines);
        }
    }
    out
}

/// The lines of one histogram data point.
fn histogram<T: Copy>(
    name: &str,
    resource: &[(String, String)],
    p: &HistogramDataPoint<T>,
    fmt: impl Fn(&T) -> String,
) -> Series {
    let mut labels: Vec<(String, String)> = p
        .attributes()
        .map(|kv| (label_name(kv.key.as_str()), value_text(&kv.value)))
        .collect();
    for (k, v) in resource {
        if !labels.iter().any(|(n, _)| n == k) {
            labels.push((k.clone(), v.clone()));
        }
    }
    labels.sort();
    let base = label_text(&labels, None);
    let mut lines = String::new();
    let counts: Vec<u64> = p.bucket_counts().collect();
    let mut cumulative = 0u64;
    for (i, bound) in p.bounds().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        let le = number(bound);
        let _ = writeln!(
            lines,
            "{name}_bucket{} {cumulative}",
            label_text(&labels, Some(&le))
        );
    }
    let _ = writeln!(
        lines,
        "{name}_bucket{} {}",
        label_text(&labels, Some("+Inf")),
        p.count()
    );
    let _ = writeln!(lines, "{name}_sum{base} {}", fmt(&p.sum()));
    let _ = writeln!(lines, "{name}_count{base} {}", p.count());
    (base, lines)
}

/// `service_name`, `service_namespace`, `job`, `instance` of a process.
fn resource_labels(resource: &Resource) -> Vec<(String, String)> {
    let get = |k: &'static str| {
        resource
            .get(&Key::from_static_str(k))
            .map(|v| v.as_str().into_owned())
            .filter(|v| !v.is_empty())
    };
    let name = get("service.name").unwrap_or_else(|| "unknown_service".to_string());
    let namespace = get("service.namespace");
    let mut labels = vec![("service_name".to_string(), name.clone())];
    let job = match &namespace {
        Some(ns) => {
            labels.push(("service_namespace".to_string(), ns.clone()));
            format!("{ns}/{name}")
        }
        None => name,
    };
    labels.push(("job".to_string(), job));
    if let Some(instance) = get("service.instance.id") {
        labels.push(("instance".to_string(), instance));
    }
    labels
}

/// `target_info` labels: `job`, `instance` and every other resource attribute.
fn target_info_labels(resource: &Resource) -> String {
    let mut labels: BTreeMap<String, String> = resource_labels(resource).into_iter().collect();
    for (k, v) in resource.iter() {
        if k.as_str() == "service.instance.id" {
            continue;
        }
        labels
            .entry(label_name(k.as_str()))
            .or_insert_with(|| value_text(v));
    }
    let labels: Vec<(String, String)> = labels.into_iter().collect();
    label_text(&labels, None)
}

/// `{a="1",b="2"}` (with `le` last when given); empty for no labels.
fn label_text(labels: &[(String, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    let le = le.map(|le| ("le", le));
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(le)
    {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_value(v));
    }
    out.push('}');
    out
}

/// The Prometheus name of an OpenTelemetry metric: `.` and other invalid characters
/// as `_`, plus the unit's suffix.
pub fn metric_name(name: &str, unit: &str) -> String {
    let mut out = sanitize(name, true);
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "" | "1" => "",
        u if u.starts_with('{') => "",
        u => return format!("{out}_{}", sanitize(u, false)),
    };
    if !suffix.is_empty() && !out.ends_with(&format!("_{suffix}")) {
        out.push('_');
        out.push_str(suffix);
    }
    out
}

/// A label name from an attribute key.
pub fn label_name(key: &str) -> String {
    sanitize(key, false)
}

fn sanitize(text: &str, colons: bool) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn value_text(v: &Value) -> String {
    v.as_str().into_owned()
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus reads it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
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
            Some("/users/{id}"),
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
            "http_server_request_body_size_bytes_bucket{{L},le=\"128\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"512\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"2048\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"8192\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"32768\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"131072\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"524288\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"2097152\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"8388608\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"33554432\"} 1\n",
            "http_server_request_body_size_bytes_bucket{{L},le=\"+Inf\"} 1\n",
            "http_server_request_body_size_bytes_sum{{L}} 12\n",
            "http_server_request_body_size_bytes_count{{L}} 1\n",
            "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n",
            "# TYPE http_server_request_duration_seconds histogram\n",
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
            "http_server_response_body_size_bytes_bucket{{L},le=\"128\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"512\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"2048\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"8192\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"32768\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"131072\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"524288\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"2097152\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"8388608\"} 1\n",
            "http_server_response_body_size_bytes_bucket{{L},le=\"33554432\"} 1\n",
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
}
