//! The YAML file, with OBI's key names. Unknown keys are errors; keys OBI knows that
//! tandem does not implement yet are accepted and listed in [`IGNORED_KEYS`] (the
//! loader warns about each one present).
//!
//! Fields named `_x` are such accepted-but-ignored keys: they are parsed (any value)
//! and dropped.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;

use super::selector::InstrumentSelector;
use super::values::{
    CompressionName, Endpoint, FileProtocol, GoDuration, KubeEnable, LogLevel, Pids, Ports, Ratio,
    SamplerName, V,
};
use crate::settings::{IgnoreMode, Instrumentations, TracePrinter, Unmatched};

/// Keys OBI documents that tandem accepts and ignores, as dotted paths (`[]` is any
/// element of a list, `<name>` any key of a map). Keep in step with the `_x` fields below (a test checks that
/// every entry parses).
pub const IGNORED_KEYS: &[&str] = &[
    // Top level.
    "ebpf",
    "network",
    "filter.network",
    "name_resolver",
    "shutdown_timeout",
    "enforce_sys_caps",
    "channel_buffer_len",
    "profile_port",
    "log_config",
    "nodejs",
    "javaagent",
    "injector",
    "stats",
    "jvm_runtime_metrics",
    "excluded_linux_system_paths",
    "file_format",
    // In OBI's schema (its Go field names, which OBI's YAML decoder does not read).
    "AutoTargetExe",
    "AutoTargetLanguage",
    "channel_send_timeout",
    "channel_send_timeout_panic",
    "attributes.rename_unresolved_hosts",
    "attributes.rename_unresolved_hosts_incoming",
    "attributes.rename_unresolved_hosts_outgoing",
    "attributes.sensitive_query_params",
    "attributes.metadata_retry",
    "attributes.kubernetes.reconnect_initial_interval",
    "prometheus_export.native_histogram",
    "prometheus_export.exemplar_filter",
    "prometheus_export.extra_span_resource_attributes",
    "otel_metrics_export.exponential_histogram",
    "otel_metrics_export.OTELIntervalMS",
    // metrics: OBI's schema gives it every key of `otel_metrics_export`; tandem acts
    // on `features` and `instrumentations` there.
    "metrics.OTELIntervalMS",
    "metrics.allow_service_graph_self_references",
    "metrics.buckets",
    "metrics.endpoint",
    "metrics.extra_span_resource_attributes",
    "metrics.histogram_aggregation",
    "metrics.insecure_skip_verify",
    "metrics.interval",
    "metrics.otel_sdk_log_level",
    "metrics.protocol",
    "metrics.reporters_cache_len",
    "metrics.ttl",
    // internal_metrics: OBI's schema gives `prometheus` every key of
    // `prometheus_export`; tandem acts on `port` and `path` there.
    "internal_metrics.bpf_metric_scrape_interval",
    "internal_metrics.prometheus.allow_service_graph_self_references",
    "internal_metrics.prometheus.buckets",
    "internal_metrics.prometheus.disable_build_info",
    "internal_metrics.prometheus.extra_resource_attributes",
    "internal_metrics.prometheus.extra_span_resource_attributes",
    "internal_metrics.prometheus.features",
    "internal_metrics.prometheus.instrumentations",
    "internal_metrics.prometheus.service_cache_size",
    "internal_metrics.prometheus.ttl",
    // otel_traces_export
    "otel_traces_export.reporters_cache_len",
    "otel_traces_export.otel_sdk_log_level",
    // otel_metrics_export
    "otel_metrics_export.histogram_aggregation",
    "otel_metrics_export.reporters_cache_len",
    "otel_metrics_export.otel_sdk_log_level",
    "otel_metrics_export.ttl",
    "otel_metrics_export.allow_service_graph_self_references",
    "otel_metrics_export.extra_span_resource_attributes",
    // prometheus_export
    "prometheus_export.disable_build_info",
    "prometheus_export.ttl",
    "prometheus_export.service_cache_size",
    "prometheus_export.allow_service_graph_self_references",
    "prometheus_export.extra_resource_attributes",
    // buckets (the TCP round-trip histogram of the `stats_tcp_rtt` feature)
    "otel_metrics_export.buckets.stat_tcp_rtt_histogram",
    "prometheus_export.buckets.stat_tcp_rtt_histogram",
    // filter: OBI's numeric rules (`<attribute>` is any attribute)
    "filter.application.<attribute>.equals",
    "filter.application.<attribute>.not_equals",
    "filter.application.<attribute>.greater_than",
    "filter.application.<attribute>.greater_equals",
    "filter.application.<attribute>.less_than",
    "filter.application.<attribute>.less_equals",
    // metrics
    // attributes
    "attributes.instance_id",
    // `attributes.select` entries OBI treats specially (not metric names).
    "attributes.select.resource",
    "attributes.select.traces",
    "attributes.host_id",
    "attributes.extra_group_attributes",
    "attributes.kubernetes.drop_external",
    "attributes.kubernetes.disable_informers",
    "attributes.kubernetes.meta_cache_address",
    "attributes.kubernetes.meta_source_labels",
    "attributes.kubernetes.service_name_template",
    // discovery
    "discovery.poll_interval",
    "discovery.skip_go_specific_tracers",
    "discovery.bpf_pid_filter_off",
    "discovery.exclude_otel_instrumented_services_span_metrics",
    "discovery.default_otlp_grpc_port",
    "discovery.min_process_age",
    "discovery.route_harvester_timeout",
    "discovery.disabled_route_harvesters",
    "discovery.route_harvester_advanced",
    "discovery.excluded_linux_system_paths",
    // Documented by OBI's service discovery page, absent from its schema (OBI drops it).
    "discovery.rules",
    "discovery.instrument[].exports",
    "discovery.instrument[].sampler",
    "discovery.instrument[].routes",
    "discovery.instrument[].metrics",
    "discovery.exclude_instrument[].exports",
    "discovery.exclude_instrument[].sampler",
    "discovery.exclude_instrument[].routes",
    "discovery.exclude_instrument[].metrics",
    "discovery.default_exclude_instrument[].exports",
    "discovery.default_exclude_instrument[].sampler",
    "discovery.default_exclude_instrument[].routes",
    "discovery.default_exclude_instrument[].metrics",
];

type Ignored = Option<IgnoredAny>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub trace_printer: Option<V<TracePrinter>>,
    pub otel_traces_export: TracesSection,
    pub otel_metrics_export: MetricsSection,
    pub prometheus_export: PrometheusSection,
    pub metrics: MetricsCommonSection,
    pub routes: RoutesSection,
    pub discovery: DiscoverySection,
    pub open_port: Option<V<Ports>>,
    #[serde(
        rename = "executable_path",
        deserialize_with = "super::selector::refuse_executable_path"
    )]
    _executable_path: Ignored,
    pub attributes: AttributesSection,
    pub log_level: Option<V<LogLevel>>,
    pub log_format: Option<V<tandem_proto::process::LogFormat>>,
    /// Process ids to instrument (OBI's `target_pids`).
    pub target_pids: Option<V<Pids>>,
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    #[serde(rename = "ebpf")]
    _ebpf: Ignored,
    #[serde(rename = "network")]
    _network: Ignored,
    pub filter: FilterSection,
    #[serde(rename = "name_resolver")]
    _name_resolver: Ignored,
    pub internal_metrics: InternalMetricsSection,
    #[serde(rename = "shutdown_timeout")]
    _shutdown_timeout: Ignored,
    #[serde(rename = "enforce_sys_caps")]
    _enforce_sys_caps: Ignored,
    #[serde(rename = "channel_buffer_len")]
    _channel_buffer_len: Ignored,
    #[serde(rename = "profile_port")]
    _profile_port: Ignored,
    #[serde(rename = "log_config")]
    _log_config: Ignored,
    #[serde(rename = "nodejs")]
    _nodejs: Ignored,
    #[serde(rename = "javaagent")]
    _javaagent: Ignored,
    #[serde(rename = "injector")]
    _injector: Ignored,
    #[serde(rename = "stats")]
    _stats: Ignored,
    pub health_check: HealthCheckSection,
    #[serde(rename = "jvm_runtime_metrics")]
    _jvm_runtime_metrics: Ignored,
    #[serde(rename = "excluded_linux_system_paths")]
    _excluded_linux_system_paths: Ignored,
    #[serde(rename = "file_format")]
    _file_format: Ignored,
    #[serde(rename = "AutoTargetExe")]
    _auto_target_exe: Ignored,
    #[serde(rename = "AutoTargetLanguage")]
    _auto_target_language: Ignored,
    #[serde(rename = "channel_send_timeout")]
    _channel_send_timeout: Ignored,
    #[serde(rename = "channel_send_timeout_panic")]
    _channel_send_timeout_panic: Ignored,
}

/// `otel_traces_export`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TracesSection {
    pub endpoint: Option<V<Endpoint>>,
    /// OBI's empty string: none given.
    pub protocol: Option<V<FileProtocol>>,
    /// tandem extension (OBI reads headers from the environment only).
    pub headers: BTreeMap<String, String>,
    pub sampler: SamplerSection,
    pub max_queue_size: Option<V<usize>>,
    /// Newer OBI's name for `max_queue_size`.
    pub queue_size: Option<V<usize>>,
    /// OBI's instrumentation switches.
    pub instrumentations: Option<V<Instrumentations>>,
    /// Do not verify the collector's TLS certificate.
    pub insecure_skip_verify: Option<bool>,
    pub max_export_batch_size: Option<V<usize>>,
    /// Newer OBI's name for `max_export_batch_size`.
    pub batch_max_size: Option<V<usize>>,
    pub batch_timeout: Option<V<GoDuration>>,
    pub backoff_initial_interval: Option<V<GoDuration>>,
    pub backoff_max_interval: Option<V<GoDuration>>,
    pub backoff_max_elapsed_time: Option<V<GoDuration>>,
    #[serde(rename = "reporters_cache_len")]
    _reporters_cache_len: Ignored,
    #[serde(rename = "otel_sdk_log_level")]
    _otel_sdk_log_level: Ignored,
    pub compression: Option<V<CompressionName>>,
}

/// `otel_traces_export.sampler`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SamplerSection {
    pub name: Option<V<SamplerName>>,
    /// A string in OBI (`"0.01"`); a bare number works too.
    pub arg: Option<V<Ratio>>,
}

/// `otel_metrics_export`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetricsSection {
    pub endpoint: Option<V<Endpoint>>,
    /// OBI's empty string: none given.
    pub protocol: Option<V<FileProtocol>>,
    /// tandem extension (OBI reads headers from the environment only).
    pub headers: BTreeMap<String, String>,
    pub interval: Option<V<GoDuration>>,
    /// Deprecated in OBI for `metrics.features`.
    pub features: Option<Vec<String>>,
    /// Do not verify the collector's TLS certificate.
    pub insecure_skip_verify: Option<bool>,
    /// Histogram boundaries.
    pub buckets: Option<BucketsSection>,
    #[serde(rename = "histogram_aggregation")]
    _histogram_aggregation: Ignored,
    #[serde(rename = "exponential_histogram")]
    _exponential_histogram: Ignored,
    #[serde(rename = "OTELIntervalMS")]
    _otel_interval_ms: Ignored,
    #[serde(rename = "reporters_cache_len")]
    _reporters_cache_len: Ignored,
    #[serde(rename = "otel_sdk_log_level")]
    _otel_sdk_log_level: Ignored,
    /// OBI's instrumentation switches.
    pub instrumentations: Option<V<Instrumentations>>,
    #[serde(rename = "ttl")]
    _ttl: Ignored,
    #[serde(rename = "allow_service_graph_self_references")]
    _allow_service_graph_self_references: Ignored,
    #[serde(rename = "extra_span_resource_attributes")]
    _extra_span_resource_attributes: Ignored,
    pub compression: Option<V<CompressionName>>,
}

/// `internal_metrics` (tandem's own metrics).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct InternalMetricsSection {
    pub exporter: Option<V<crate::settings::InternalExporter>>,
    pub prometheus: InternalPrometheusSection,
    #[serde(rename = "bpf_metric_scrape_interval")]
    _bpf_metric_scrape_interval: Ignored,
}

/// `health_check` (OBI's health endpoint).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HealthCheckSection {
    pub port: Option<V<u16>>,
    pub listen_address: Option<V<std::net::IpAddr>>,
    pub unix_socket_path: Option<String>,
}

/// `internal_metrics.prometheus`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct InternalPrometheusSection {
    pub port: Option<V<u16>>,
    pub path: Option<String>,
    #[serde(rename = "allow_service_graph_self_references")]
    _allow_service_graph_self_references: Ignored,
    #[serde(rename = "buckets")]
    _buckets: Ignored,
    #[serde(rename = "disable_build_info")]
    _disable_build_info: Ignored,
    #[serde(rename = "extra_resource_attributes")]
    _extra_resource_attributes: Ignored,
    #[serde(rename = "extra_span_resource_attributes")]
    _extra_span_resource_attributes: Ignored,
    #[serde(rename = "features")]
    _features: Ignored,
    #[serde(rename = "instrumentations")]
    _instrumentations: Ignored,
    #[serde(rename = "service_cache_size")]
    _service_cache_size: Ignored,
    #[serde(rename = "ttl")]
    _ttl: Ignored,
}

/// `metrics` (OBI's section common to OTLP and Prometheus metrics).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetricsCommonSection {
    pub features: Option<Vec<String>>,
    /// OBI's instrumentation switches.
    pub instrumentations: Option<V<Instrumentations>>,
    #[serde(rename = "OTELIntervalMS")]
    _otel_interval_ms: Ignored,
    #[serde(rename = "allow_service_graph_self_references")]
    _allow_service_graph_self_references: Ignored,
    #[serde(rename = "buckets")]
    _buckets: Ignored,
    #[serde(rename = "endpoint")]
    _endpoint: Ignored,
    #[serde(rename = "extra_span_resource_attributes")]
    _extra_span_resource_attributes: Ignored,
    #[serde(rename = "histogram_aggregation")]
    _histogram_aggregation: Ignored,
    #[serde(rename = "insecure_skip_verify")]
    _insecure_skip_verify: Ignored,
    #[serde(rename = "interval")]
    _interval: Ignored,
    #[serde(rename = "otel_sdk_log_level")]
    _otel_sdk_log_level: Ignored,
    #[serde(rename = "protocol")]
    _protocol: Ignored,
    #[serde(rename = "reporters_cache_len")]
    _reporters_cache_len: Ignored,
    #[serde(rename = "ttl")]
    _ttl: Ignored,
}

/// `prometheus_export`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PrometheusSection {
    pub port: Option<V<u16>>,
    pub path: Option<String>,
    #[serde(rename = "disable_build_info")]
    _disable_build_info: Ignored,
    /// OBI's older per-exporter `metrics.features`.
    pub features: Option<Vec<String>>,
    /// OBI's instrumentation switches.
    pub instrumentations: Option<V<Instrumentations>>,
    /// Histogram boundaries (used when `otel_metrics_export.buckets` is not given).
    pub buckets: Option<BucketsSection>,
    #[serde(rename = "ttl")]
    _ttl: Ignored,
    #[serde(rename = "service_cache_size")]
    _service_cache_size: Ignored,
    #[serde(rename = "allow_service_graph_self_references")]
    _allow_service_graph_self_references: Ignored,
    #[serde(rename = "extra_resource_attributes")]
    _extra_resource_attributes: Ignored,
    #[serde(rename = "native_histogram")]
    _native_histogram: Ignored,
    #[serde(rename = "exemplar_filter")]
    _exemplar_filter: Ignored,
    #[serde(rename = "extra_span_resource_attributes")]
    _extra_span_resource_attributes: Ignored,
}

/// `buckets` (of `otel_metrics_export` or `prometheus_export`): OBI's histogram
/// boundaries; an absent list keeps the default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BucketsSection {
    pub duration_histogram: Option<Vec<f64>>,
    pub request_size_histogram: Option<Vec<f64>>,
    pub response_size_histogram: Option<Vec<f64>>,
    #[serde(rename = "stat_tcp_rtt_histogram")]
    _stat_tcp_rtt_histogram: Ignored,
}

/// `filter`: OBI's attribute filters.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FilterSection {
    /// Attribute → rule, for application spans and metrics.
    pub application: BTreeMap<String, FilterRule>,
    #[serde(rename = "network")]
    _network: Ignored,
}

/// One attribute's filter rule: globs, and OBI's numeric comparisons (accepted and
/// ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FilterRule {
    #[serde(rename = "match")]
    pub matches: Option<String>,
    pub not_match: Option<String>,
    #[serde(rename = "equals")]
    _equals: Ignored,
    #[serde(rename = "not_equals")]
    _not_equals: Ignored,
    #[serde(rename = "greater_than")]
    _greater_than: Ignored,
    #[serde(rename = "greater_equals")]
    _greater_equals: Ignored,
    #[serde(rename = "less_than")]
    _less_than: Ignored,
    #[serde(rename = "less_equals")]
    _less_equals: Ignored,
}

impl FilterRule {
    /// Whether the rule has only numeric comparisons (ignored): nothing to apply.
    pub fn only_numeric(&self) -> bool {
        self.matches.is_none()
            && self.not_match.is_none()
            && [
                &self._equals,
                &self._not_equals,
                &self._greater_than,
                &self._greater_equals,
                &self._less_than,
                &self._less_equals,
            ]
            .iter()
            .any(|c| c.is_some())
    }
}

/// `routes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RoutesSection {
    pub patterns: Vec<String>,
    pub ignored_patterns: Vec<String>,
    pub ignore_mode: Option<V<IgnoreMode>>,
    pub unmatched: Option<V<Unmatched>>,
    pub wildcard_char: Option<V<char>>,
    pub max_path_segment_cardinality: Option<V<usize>>,
}

/// `attributes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AttributesSection {
    pub kubernetes: KubernetesSection,
    #[serde(rename = "instance_id")]
    _instance_id: Ignored,
    /// Metric name glob → attribute globs (`resource` and `traces` ignored).
    #[serde(deserialize_with = "select")]
    pub select: Vec<(String, SelectEntry)>,
    #[serde(rename = "host_id")]
    _host_id: Ignored,
    #[serde(rename = "extra_group_attributes")]
    _extra_group_attributes: Ignored,
    /// Span names per service in span metrics; 0 or negative: no limit.
    pub metric_span_names_limit: Option<V<super::values::SpanNamesLimit>>,
    #[serde(rename = "rename_unresolved_hosts")]
    _rename_unresolved_hosts: Ignored,
    #[serde(rename = "rename_unresolved_hosts_incoming")]
    _rename_unresolved_hosts_incoming: Ignored,
    #[serde(rename = "rename_unresolved_hosts_outgoing")]
    _rename_unresolved_hosts_outgoing: Ignored,
    #[serde(rename = "sensitive_query_params")]
    _sensitive_query_params: Ignored,
    #[serde(rename = "metadata_retry")]
    _metadata_retry: Ignored,
}

/// One entry of `attributes.select`: attribute globs.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SelectEntry {
    #[serde(deserialize_with = "super::selector::globs")]
    pub include: Vec<String>,
    #[serde(deserialize_with = "super::selector::globs")]
    pub exclude: Vec<String>,
}

/// `attributes.select`: a map of metric name globs to [`SelectEntry`], in file
/// order; OBI's special entries `resource` and `traces` take any value (ignored,
/// warned about through [`IGNORED_KEYS`]).
fn select<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, SelectEntry)>, D::Error> {
    struct Select;
    impl<'de> de::Visitor<'de> for Select {
        type Value = Vec<(String, SelectEntry)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of metric names to `include` / `exclude` lists")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == "resource" || key == "traces" {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    let entry = map.next_value::<Option<SelectEntry>>()?;
                    out.push((key, entry.unwrap_or_default()));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(Select)
}

/// `attributes.kubernetes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KubernetesSection {
    pub enable: Option<V<KubeEnable>>,
    pub cluster_name: Option<String>,
    pub kubeconfig_path: Option<String>,
    pub meta_restrict_local_node: Option<bool>,
    pub informers_sync_timeout: Option<V<GoDuration>>,
    pub informers_resync_period: Option<V<GoDuration>>,
    #[serde(rename = "drop_external")]
    _drop_external: Ignored,
    #[serde(rename = "reconnect_initial_interval")]
    _reconnect_initial_interval: Ignored,
    #[serde(rename = "disable_informers")]
    _disable_informers: Ignored,
    #[serde(rename = "meta_cache_address")]
    _meta_cache_address: Ignored,
    #[serde(rename = "meta_source_labels")]
    _meta_source_labels: Ignored,
    /// Resource attribute → the pod labels giving it.
    pub resource_labels: Option<BTreeMap<String, Vec<String>>>,
    #[serde(rename = "service_name_template")]
    _service_name_template: Ignored,
}

/// `discovery`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DiscoverySection {
    #[serde(deserialize_with = "super::selector::instrument")]
    pub instrument: Vec<InstrumentSelector>,
    #[serde(deserialize_with = "super::selector::exclude_instrument")]
    pub exclude_instrument: Vec<InstrumentSelector>,
    /// `None`: OBI's default (OBI itself, Beyla, Alloy, collectors are excluded).
    #[serde(deserialize_with = "super::selector::default_exclude_instrument")]
    pub default_exclude_instrument: Option<Vec<InstrumentSelector>>,
    #[serde(
        rename = "services",
        deserialize_with = "super::selector::refuse_services"
    )]
    _services: Ignored,
    #[serde(
        rename = "exclude_services",
        deserialize_with = "super::selector::refuse_exclude_services"
    )]
    _exclude_services: Ignored,
    #[serde(
        rename = "default_exclude_services",
        deserialize_with = "super::selector::refuse_default_exclude_services"
    )]
    _default_exclude_services: Ignored,
    #[serde(rename = "poll_interval")]
    _poll_interval: Ignored,
    #[serde(rename = "skip_go_specific_tracers")]
    _skip_go_specific_tracers: Ignored,
    #[serde(rename = "bpf_pid_filter_off")]
    _bpf_pid_filter_off: Ignored,
    /// OBI's default `true`: processes exporting OTLP themselves are left alone.
    pub exclude_otel_instrumented_services: Option<bool>,
    #[serde(rename = "exclude_otel_instrumented_services_span_metrics")]
    _exclude_otel_instrumented_services_span_metrics: Ignored,
    #[serde(rename = "default_otlp_grpc_port")]
    _default_otlp_grpc_port: Ignored,
    #[serde(rename = "min_process_age")]
    _min_process_age: Ignored,
    #[serde(rename = "route_harvester_timeout")]
    _route_harvester_timeout: Ignored,
    #[serde(rename = "disabled_route_harvesters")]
    _disabled_route_harvesters: Ignored,
    #[serde(rename = "route_harvester_advanced")]
    _route_harvester_advanced: Ignored,
    #[serde(rename = "rules")]
    _rules: Ignored,
    #[serde(rename = "excluded_linux_system_paths")]
    _excluded_linux_system_paths: Ignored,
}

/// Marks a message raised for a whole field (after its value was read, when the
/// parser's path is back at the parent): `\u{1}field\u{1}message`. The loader moves
/// the field into the key.
pub(crate) const FIELD_MARK: char = '\u{1}';
