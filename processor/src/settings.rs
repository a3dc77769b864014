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
    /// OTLP/HTTP with JSON bodies (the OTLP JSON mapping: hex ids, camelCase).
    HttpJson,
}

/// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`, `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
}

/// How failed exports are retried (OBI's `backoff_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first retry (`backoff_initial_interval`).
    pub initial_interval: Duration,
    /// Longest wait between two attempts (`backoff_max_interval`).
    pub max_interval: Duration,
    /// No attempt starts later than this after the first (`backoff_max_elapsed_time`).
    pub max_elapsed: Duration,
}

impl Default for Backoff {
    /// 100 ms, 1.6 s, 5 s: a failed export is given up within seconds (the
    /// collector's outage costs those spans, not ingestion; metrics are cumulative).
    fn default() -> Self {
        Backoff {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(1600),
            max_elapsed: Duration::from_secs(5),
        }
    }
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
    pub compression: Option<Compression>,
    pub backoff: Backoff,
    /// `https://` endpoints: CA file, client certificate, `insecure_skip_verify`.
    pub tls: crate::export::transport::TlsSettings,
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Most spans in one export request (`max_export_batch_size`).
    pub max_export_batch_size: usize,
    /// Longest a span waits for its request to fill (`batch_timeout`).
    pub batch_timeout: Duration,
    /// tandem's own metrics (`internal_metrics`).
    pub internal_metrics: InternalMetricsSettings,
    /// `otel_traces_export.instrumentations` / `OTEL_EBPF_TRACES_INSTRUMENTATIONS`.
    pub traces_instrumentations: Instrumentations,
    /// `metrics.instrumentations` / `OTEL_EBPF_METRICS_INSTRUMENTATIONS`.
    pub metrics_instrumentations: Instrumentations,
    /// `metrics.features` / `OTEL_EBPF_METRICS_FEATURES`.
    pub metrics_features: MetricsFeatures,
    /// `otel_metrics_export.buckets` (or `prometheus_export.buckets`).
    pub buckets: Buckets,
    /// `discovery.exclude_otel_instrumented_services` (OBI's default `true`): a
    /// process seen exporting OTLP itself gets no spans or metrics from tandem.
    pub exclude_otel_instrumented: bool,
    /// `filter.application` (see `pipeline::filter`).
    pub filter: BTreeMap<String, crate::pipeline::filter::Rule>,
    /// `attributes.select`: which attributes each metric family reports.
    pub attribute_select: AttributeSelect,
    /// `attributes.metric_span_names_limit` (OBI's default 100): most distinct
    /// `span.name` values per service in span metrics, the rest reported as
    /// `AGGREGATED`; 0 is no limit.
    pub metric_span_names_limit: usize,
}

/// OBI's default `attributes.metric_span_names_limit`.
pub const DEFAULT_METRIC_SPAN_NAMES_LIMIT: usize = 100;

/// `attributes.select`: metric name glob → attribute globs to add or remove (OBI's
/// names: Prometheus `http_server_request_duration` or OpenTelemetry
/// `http.server.request.duration`, `_` and `.` alike). Resolved per metric family
/// once, by `pipeline::metrics::select`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributeSelect {
    pub rules: Vec<AttributeRule>,
}

/// One entry of `attributes.select`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributeRule {
    /// Glob over metric names.
    pub metric: String,
    /// Globs over attribute names to report besides the default ones.
    pub include: Vec<String>,
    /// Globs over attribute names not to report (default ones too).
    pub exclude: Vec<String>,
}

impl Default for ExportSettings {
    /// Nothing exported, sampler `parentbased_always_on`, metrics every 60 s, a
    /// queue of 4096 spans sent in requests of up to 4096 within 1 s (`config` defaults
    /// the queue to OBI's 16384).
    fn default() -> Self {
        ExportSettings {
            traces: OtlpSignal::default(),
            metrics: OtlpSignal::default(),
            sampler: Sampler::default(),
            trace_printer: TracePrinter::default(),
            prometheus_port: None,
            prometheus_path: String::new(),
            service_name: None,
            service_namespace: None,
            resource_attributes: BTreeMap::new(),
            metrics_interval: Duration::from_secs(60),
            max_queue_size: 4096,
            max_export_batch_size: 4096,
            batch_timeout: Duration::from_secs(1),
            internal_metrics: InternalMetricsSettings::default(),
            traces_instrumentations: Instrumentations::default(),
            metrics_instrumentations: Instrumentations::default(),
            metrics_features: MetricsFeatures::default(),
            buckets: Buckets::default(),
            exclude_otel_instrumented: true,
            filter: BTreeMap::new(),
            attribute_select: AttributeSelect::default(),
            metric_span_names_limit: DEFAULT_METRIC_SPAN_NAMES_LIMIT,
        }
    }
}

/// `internal_metrics.exporter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InternalExporter {
    #[default]
    Disabled,
    Prometheus,
    Otel,
}

/// `internal_metrics` (OBI's names and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalMetricsSettings {
    pub exporter: InternalExporter,
    /// `internal_metrics.prometheus.port`; `None`: the application metrics' port.
    pub prometheus_port: Option<u16>,
    /// `internal_metrics.prometheus.path` (default `/internal/metrics`).
    pub prometheus_path: String,
}

impl Default for InternalMetricsSettings {
    fn default() -> Self {
        InternalMetricsSettings {
            exporter: InternalExporter::Disabled,
            prometheus_port: None,
            prometheus_path: "/internal/metrics".to_string(),
        }
    }
}

/// One of OBI's instrumentation kinds (`otel_traces_export.instrumentations`,
/// `metrics.instrumentations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Instrumentation {
    Http,
    Grpc,
    Sql,
    Redis,
    Kafka,
    Mqtt,
    Nats,
    Amqp,
    Mongo,
    Couchbase,
    Memcached,
    Sunrpc,
    Aerospike,
    Dns,
    Genai,
    Gpu,
}

impl Instrumentation {
    /// Every kind with its OBI name.
    pub const ALL: [(Instrumentation, &'static str); 16] = [
        (Instrumentation::Http, "http"),
        (Instrumentation::Grpc, "grpc"),
        (Instrumentation::Sql, "sql"),
        (Instrumentation::Redis, "redis"),
        (Instrumentation::Kafka, "kafka"),
        (Instrumentation::Mqtt, "mqtt"),
        (Instrumentation::Nats, "nats"),
        (Instrumentation::Amqp, "amqp"),
        (Instrumentation::Mongo, "mongo"),
        (Instrumentation::Couchbase, "couchbase"),
        (Instrumentation::Memcached, "memcached"),
        (Instrumentation::Sunrpc, "sunrpc"),
        (Instrumentation::Aerospike, "aerospike"),
        (Instrumentation::Dns, "dns"),
        (Instrumentation::Genai, "genai"),
        (Instrumentation::Gpu, "gpu"),
    ];

    /// OBI's default set: all but `dns`, `genai` and `gpu`.
    pub const DEFAULT: [Instrumentation; 13] = [
        Instrumentation::Http,
        Instrumentation::Grpc,
        Instrumentation::Sql,
        Instrumentation::Redis,
        Instrumentation::Kafka,
        Instrumentation::Mqtt,
        Instrumentation::Nats,
        Instrumentation::Amqp,
        Instrumentation::Mongo,
        Instrumentation::Couchbase,
        Instrumentation::Memcached,
        Instrumentation::Sunrpc,
        Instrumentation::Aerospike,
    ];

    pub fn name(self) -> &'static str {
        Instrumentation::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("", |(_, n)| n)
    }

    pub fn from_name(name: &str) -> Option<Instrumentation> {
        Instrumentation::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(k, _)| *k)
    }
}

/// Histogram bucket boundaries (OBI's `buckets`), ascending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets {
    /// Every duration histogram, in seconds.
    pub duration: &'static [f64],
    pub request_size: &'static [f64],
    pub response_size: &'static [f64],
}

impl Default for Buckets {
    /// OBI's defaults.
    fn default() -> Self {
        use crate::pipeline::metrics::{BODY_SIZE_BUCKETS, DURATION_BUCKETS};
        Buckets {
            duration: &DURATION_BUCKETS,
            request_size: &BODY_SIZE_BUCKETS,
            response_size: &BODY_SIZE_BUCKETS,
        }
    }
}

/// OBI's `metrics.features`: which groups of metrics are made. Default:
/// `application`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsFeatures {
    /// `application`: the RED metrics (`http.server.request.duration`, ...).
    pub application: bool,
    /// `application_span`: `traces_spanmetrics_*` (calls, latency, sizes).
    pub span: bool,
    /// `application_service_graph`: `traces_service_graph_*`.
    pub service_graph: bool,
}

impl Default for MetricsFeatures {
    fn default() -> Self {
        MetricsFeatures {
            application: true,
            span: false,
            service_graph: false,
        }
    }
}

impl MetricsFeatures {
    /// OBI's feature names tandem accepts without making their metrics (logged once
    /// as ignored).
    pub const NOT_IMPLEMENTED: [&'static str; 7] = [
        "network",
        "network_inter_zone",
        "application_process",
        "application_host",
        "application_span_otel",
        "application_span_sizes",
        "ebpf",
    ];

    /// Parses OBI's list (names separated by commas, spaces allowed). Unknown names
    /// are errors; known ones tandem does not make are returned to be warned about.
    pub fn parse_list<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<(Self, Vec<String>), String> {
        let mut f = MetricsFeatures {
            application: false,
            span: false,
            service_graph: false,
        };
        let mut ignored = Vec::new();
        for item in items
            .into_iter()
            .flat_map(|i| i.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match item.to_ascii_lowercase().as_str() {
                "application" => f.application = true,
                "application_span" => f.span = true,
                "application_service_graph" => f.service_graph = true,
                other if Self::NOT_IMPLEMENTED.contains(&other) => ignored.push(other.to_string()),
                _ => {
                    return Err(format!(
                        "unknown metrics feature `{item}`; expected any of application, \
                         application_span, application_service_graph, {}",
                        Self::NOT_IMPLEMENTED.join(", ")
                    ))
                }
            }
        }
        Ok((f, ignored))
    }

    /// Whether any metric at all is made.
    pub fn any(self) -> bool {
        self.application || self.span || self.service_graph
    }
}

/// Which instrumentations produce a signal (traces or metrics). Default: OBI's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrumentations(std::collections::BTreeSet<Instrumentation>);

impl Default for Instrumentations {
    fn default() -> Self {
        Instrumentations(Instrumentation::DEFAULT.into_iter().collect())
    }
}

impl Instrumentations {
    /// Every kind (`*`).
    pub fn all() -> Self {
        Instrumentations(Instrumentation::ALL.iter().map(|(k, _)| *k).collect())
    }

    pub fn none() -> Self {
        Instrumentations(std::collections::BTreeSet::new())
    }

    pub fn is_enabled(&self, kind: Instrumentation) -> bool {
        self.0.contains(&kind)
    }

    /// Parses OBI's list: names separated by commas (spaces allowed), `*` for all;
    /// an empty list enables nothing. Unknown names are errors.
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let mut set = std::collections::BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return Ok(Instrumentations::all());
            }
            match Instrumentation::from_name(item) {
                Some(k) => {
                    set.insert(k);
                }
                None => {
                    let names: Vec<&str> = Instrumentation::ALL.iter().map(|(_, n)| *n).collect();
                    return Err(format!(
                        "unknown instrumentation `{item}`; expected `*` or any of {}",
                        names.join(", ")
                    ));
                }
            }
        }
        Ok(Instrumentations(set))
    }
}
