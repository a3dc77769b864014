//! Settings the pipeline stages take. `config` fills them from OBI-style YAML and
//! environment variables; the stages never read the environment themselves.

use std::collections::BTreeMap;
use std::time::Duration;

/// `routes:` (OBI names and meanings).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutesSettings {
    /// `routes.patterns`: `/users/{id}` or `/users/:id`.
    pub patterns: Vec<String>,
    /// `routes.ignored_patterns`.
    pub ignored_patterns: Vec<String>,
    pub ignore_mode: IgnoreMode,
    pub unmatched: Unmatched,
    /// Most distinct `http.route` values produced by `heuristic`/`path` before the
    /// rest are reported as `/**` (tandem's bound; OBI leaves it open).
    pub max_routes: usize,
}

/// `routes.ignore_mode`: which signals ignored routes are removed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreMode {
    /// Neither traces nor metrics (OBI `all`, the default).
    All,
    Traces,
    Metrics,
}

/// `routes.unmatched`: the route of a path matching no pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// `http.route` = the path with ids replaced by `*` (OBI default `heuristic`).
    Heuristic,
    /// `http.route` = the whole path.
    Path,
    /// `http.route` = `/**`.
    Wildcard,
    /// No `http.route`.
    Unset,
    /// OBI `low-cardinality`: like heuristic, bounded harder.
    LowCardinality,
}

impl Default for RoutesSettings {
    fn default() -> Self {
        RoutesSettings {
            patterns: Vec::new(),
            ignored_patterns: Vec::new(),
            ignore_mode: IgnoreMode::All,
            unmatched: Unmatched::Heuristic,
            max_routes: 1000,
        }
    }
}

/// `otel_traces_export.sampler` / `OTEL_TRACES_SAMPLER(_ARG)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    #[default]
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// One OTLP signal's destination (traces or metrics). `None` endpoint: not exported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OtlpSignal {
    /// Full URL as the OTel SDK expects it: for HTTP the signal path
    /// (`/v1/traces`, `/v1/metrics`) is already appended when it came from the
    /// generic `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

/// `trace_printer` / `OTEL_EBPF_TRACE_PRINTER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TracePrinter {
    #[default]
    Disabled,
    Text,
    Json,
    JsonIndent,
    Counter,
}

/// Everything export needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExportSettings {
    pub traces: OtlpSignal,
    pub metrics: OtlpSignal,
    pub sampler: Sampler,
    pub trace_printer: TracePrinter,
    /// `prometheus_export.port` / `OTEL_EBPF_PROMETHEUS_PORT`: the scrape endpoint's
    /// port on every interface; `None` means no endpoint. `Some(0)` (never given by
    /// `config`, where 0 means off) binds a free port, for tests.
    pub prometheus_port: Option<u16>,
    /// `prometheus_export.path` / `OTEL_EBPF_PROMETHEUS_PATH` (`config` defaults it to
    /// `/metrics`; empty means `/metrics` too).
    pub prometheus_path: String,
    /// `OTEL_SERVICE_NAME` / `service_name`: overrides the executable name.
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Metrics export interval (`otel_metrics_export.interval`, default 60 s;
    /// `OTEL_METRIC_EXPORT_INTERVAL` in ms).
    pub metrics_interval: Duration,
    /// Most spans waiting for export before new ones are dropped (counted).
    pub max_queue_size: usize,
}
