//! tandem-processor's configuration, in OBI's terms: an OBI YAML file and OBI /
//! OpenTelemetry environment variables work unchanged.
//!
//! [`Config::load`] reads the file named by `--config` (the caller passes it) or by
//! `OTEL_EBPF_CONFIG_PATH`, substitutes `${VAR}` / `${VAR:-default}` in its text (see
//! [`substitute`]), parses it with OBI's key names, then applies the environment. The
//! result converts into the pipeline's settings ([`RoutesSettings`],
//! [`ExportSettings`]) and the loader [`Selection`].
//!
//! # Precedence
//!
//! For each setting, from strongest to weakest:
//!
//! 1. command-line flags (applied by the caller, not here);
//! 2. the setting's environment variable (`OTEL_EBPF_TRACE_PRINTER` over `trace_printer`);
//! 3. the YAML file;
//! 4. the default ([`Config::default`]).
//!
//! Where one thing has a specific and a generic name, the specific one wins wherever it
//! comes from, as in OBI and the OpenTelemetry specification:
//! `OTEL_EXPORTER_OTLP_TRACES_*` (env) over `otel_traces_export.*` (file) over
//! `OTEL_EXPORTER_OTLP_*` (env) for endpoints; for protocols the signal variable, then
//! the generic variable, then the file's `protocol`, then inference from the port;
//! `OTEL_EBPF_METRICS_INTERVAL` (env) over `otel_metrics_export.interval` (file) over
//! `OTEL_METRIC_EXPORT_INTERVAL` (env); `OTEL_SERVICE_NAME` over `OTEL_EBPF_SERVICE_NAME`
//! over `service_name`. Headers merge key by key: file `headers`, then
//! `OTEL_EXPORTER_OTLP_HEADERS`, then the signal's variable. `docs/configuration.md`
//! has the full table.
//!
//! An environment variable that is set but empty counts as unset (OpenTelemetry rule).
//!
//! # What the file may contain
//!
//! Keys tandem implements are parsed and checked. Keys OBI documents that tandem does
//! not implement yet ([`IGNORED_KEYS`]: `ebpf`, `network`, `filter`, exporter tuning, …)
//! are accepted, and [`Config::warnings`] lists each one present. Anything else is an
//! error naming the file, key and line, as is any bad value (with what is allowed).
//! OBI's deprecated regular-expression selectors (`executable_path`,
//! `OTEL_EBPF_EXECUTABLE_PATH`, `discovery.services`, `exclude_services`,
//! `default_exclude_services`) are refused with directions to the glob selectors:
//! a regular expression cannot be matched by the loader, and ignoring a selector would
//! instrument other processes than the user asked for.
//! OBI environment variables tandem does not read (`obi_env::OBI_ENV_VARS`, from
//! OBI's schema) are accepted too: each one set is listed by [`Config::warnings`].

mod env;
mod error;
mod file;
mod obi_env;
mod otlp;
mod selector;
mod substitute;
mod values;
mod yaml;

#[cfg(test)]
mod attributes_tests;
#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod obi_docs_tests;
#[cfg(test)]
mod obi_schema_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_proto::v1::PortRange;
use tandem_proto::Selection;

pub use env::{vars, Env, ProcessEnv};
pub use error::{ConfigError, FileError};
pub use file::IGNORED_KEYS;
pub use selector::InstrumentSelector;
pub(crate) use values::parse_key_values;
pub use values::{KubeEnable, LogLevel};

use crate::settings::{
    AttributeRule, AttributeSelect, ExportSettings, InternalMetricsSettings, MetricsFeatures,
    RoutesSettings, Sampler, TracePrinter, DEFAULT_METRIC_SPAN_NAMES_LIMIT,
};
use env::setting;
use file::FileConfig;
use otlp::{resolve_signal, Millis, SignalFile, SIGNAL_METRICS, SIGNAL_TRACES};
use values::{GoDuration, ParseValue, Pids, Ports, Ratio, SamplerName, SpanNamesLimit};
use yaml::{present_keys, yaml_error, KeyTree};

/// Default metrics export interval (OBI's, and OpenTelemetry's).
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
/// Default bound of spans waiting for export (OBI's `max_queue_size`).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 16384;
/// Default Prometheus path.
pub const DEFAULT_PROMETHEUS_PATH: &str = "/metrics";
/// Default `routes.max_path_segment_cardinality` (low-cardinality mode).
pub const DEFAULT_MAX_PATH_SEGMENT_CARDINALITY: usize = 10;

/// The whole configuration, file and environment applied.
///
/// `Config::default()` is what an empty file and an empty environment give: no
/// selection (every process), trace printer disabled, no OTLP export, sampler
/// `parentbased_always_on`, routes `unmatched: heuristic`, metrics every 60 s,
/// Prometheus off, Kubernetes metadata off.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Which processes to instrument.
    pub discovery: Discovery,
    pub routes: RoutesSettings,
    /// `routes.wildcard_char` (default `*`): replaces id-like path segments.
    pub routes_wildcard_char: char,
    /// `routes.max_path_segment_cardinality` (default 10): for `low-cardinality`.
    pub routes_max_path_segment_cardinality: usize,
    /// Export settings, with `prometheus_export.port` / `.path` (default `/metrics`).
    pub export: ExportSettings,
    /// `metrics.features` (or the deprecated `otel_metrics_export.features`); default
    /// `["application"]`.
    pub metrics_features: Vec<String>,
    /// Features of `metrics_features` (or its variable) tandem accepts but does not
    /// make (`network`, ...), warned about.
    pub metrics_features_ignored: Vec<String>,
    pub kubernetes: Kubernetes,
    /// `log_level` / `OTEL_EBPF_LOG_LEVEL`; `None` leaves the caller's default.
    pub log_level: Option<LogLevel>,
    /// `log_format` / `OTEL_EBPF_LOG_FORMAT` (the `--log-format` flag and
    /// `TANDEM_LOG_FORMAT` win).
    pub log_format: Option<tandem_proto::process::LogFormat>,
    /// `health_check`: where `/healthz` and `/readyz` are served (off by default).
    pub health_check: crate::health::HealthSettings,
    /// Accepted-but-ignored keys present in the file, as dotted paths.
    pub ignored_keys: Vec<String>,
    /// OBI environment variables tandem does not read that were set at load (an
    /// `OTEL_EBPF_*` one under its `BEYLA_*` name when only that was set).
    pub ignored_env: Vec<String>,
}

/// Process selection: OBI's `open_port`, `OTEL_EBPF_AUTO_TARGET_EXE` and `discovery`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Discovery {
    /// `open_port` / `OTEL_EBPF_OPEN_PORT` (the variable replaces the file's value).
    pub open_port: Vec<PortRange>,
    /// `OTEL_EBPF_AUTO_TARGET_EXE` (or `OTEL_GO_AUTO_TARGET_EXE`): executable path glob.
    /// OBI has no YAML key for it (use `discovery.instrument[].exe_path`).
    pub auto_target_exe: Option<String>,
    /// `discovery.instrument`.
    pub instrument: Vec<InstrumentSelector>,
    /// `discovery.exclude_instrument`.
    pub exclude_instrument: Vec<InstrumentSelector>,
    /// `discovery.default_exclude_instrument`; `None` means OBI's default (OBI, Beyla,
    /// Alloy and OpenTelemetry collectors are not instrumented).
    pub default_exclude_instrument: Option<Vec<InstrumentSelector>>,
    /// `target_pids` / `OTEL_EBPF_TARGET_PID` (the variable replaces the file's).
    pub target_pids: Vec<u32>,
}

/// `attributes.kubernetes`, kept for the Kubernetes decoration stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubernetes {
    /// `enable` / `OTEL_EBPF_KUBE_METADATA_ENABLE` (default autodetect, as in OBI).
    pub enable: KubeEnable,
    /// `cluster_name` / `OTEL_EBPF_KUBE_CLUSTER_NAME`.
    pub cluster_name: Option<String>,
    /// `kubeconfig_path` / `KUBECONFIG`.
    pub kubeconfig_path: Option<String>,
    /// `meta_restrict_local_node` (default false).
    pub meta_restrict_local_node: bool,
    /// `informers_sync_timeout` / `OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT` (default
    /// 30 s): after this long without a first complete list, a warning says so (spans
    /// keep flowing, undecorated, meanwhile).
    pub informers_sync_timeout: Duration,
    /// `informers_resync_period` / `OTEL_EBPF_KUBE_INFORMERS_RESYNC_PERIOD` (default
    /// 30 m): every watch is restarted with a full list this often.
    pub informers_resync_period: Duration,
    /// `KUBE_NODE_NAME` (downward API): pods are watched on this node only.
    pub node_name: Option<String>,
    /// `attributes.kubernetes.resource_labels`: resource attribute → pod labels,
    /// merged over OBI's defaults (`crate::kube::meta::resource_labels`).
    pub resource_labels: BTreeMap<String, Vec<String>>,
    /// `KUBE_NAMESPACE` (downward API): the processor's own namespace (logged).
    pub own_namespace: Option<String>,
    /// `KUBERNETES_SERVICE_HOST` is set: running inside a cluster.
    pub in_cluster: bool,
}

/// OBI's default `informers_sync_timeout`.
pub const DEFAULT_KUBE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// OBI's default `informers_resync_period`.
pub const DEFAULT_KUBE_RESYNC_PERIOD: Duration = Duration::from_secs(30 * 60);

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            enable: KubeEnable::default(),
            cluster_name: None,
            kubeconfig_path: None,
            meta_restrict_local_node: false,
            informers_sync_timeout: DEFAULT_KUBE_SYNC_TIMEOUT,
            informers_resync_period: DEFAULT_KUBE_RESYNC_PERIOD,
            node_name: None,
            resource_labels: BTreeMap::new(),
            own_namespace: None,
            in_cluster: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            discovery: Discovery::default(),
            routes: RoutesSettings::default(),
            routes_wildcard_char: '*',
            routes_max_path_segment_cardinality: DEFAULT_MAX_PATH_SEGMENT_CARDINALITY,
            export: ExportSettings {
                metrics_interval: DEFAULT_METRICS_INTERVAL,
                max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
                prometheus_path: DEFAULT_PROMETHEUS_PATH.to_string(),
                ..ExportSettings::default()
            },
            metrics_features: vec!["application".to_string()],
            metrics_features_ignored: Vec::new(),
            kubernetes: Kubernetes::default(),
            log_level: None,
            log_format: None,
            health_check: Default::default(),
            ignored_keys: Vec::new(),
            ignored_env: Vec::new(),
        }
    }
}

impl Config {
    /// Loads the configuration: the file at `path` (from `--config`), else the file
    /// named by `OTEL_EBPF_CONFIG_PATH`, else none; then the environment.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => setting(env, vars::CONFIG_PATH).map(PathBuf::from),
        };
        match path {
            None => Config::from_parts(None, FileConfig::default(), Vec::new(), env),
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_yaml(&path, &text, env)
            }
        }
    }

    /// [`Config::load`] with the process environment.
    pub fn load_from_process(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(path, &ProcessEnv)
    }

    /// Loads from YAML text; `path` names it in errors.
    pub fn from_yaml(path: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = substitute::substitute(text, env).map_err(|e| {
            ConfigError::File(FileError {
                file: path.to_path_buf(),
                key: None,
                line: Some(e.line),
                column: Some(e.column),
                message: e.message,
            })
        })?;
        let parsed: FileConfig = yaml_serde::from_str(&text)
            .map_err(|e| ConfigError::File(yaml_error(path, &text, &e)))?;
        // Parsing succeeded, so this does too (a `KeyTree` takes any YAML, repeated keys
        // included); it only serves to find ignored keys.
        let tree: KeyTree = yaml_serde::from_str(&text).unwrap_or_default();
        let ignored = IGNORED_KEYS
            .iter()
            .flat_map(|k| present_keys(&tree, k))
            .collect();
        Config::from_parts(Some(path.to_path_buf()), parsed, ignored, env)
    }

    fn from_parts(
        file: Option<PathBuf>,
        mut f: FileConfig,
        ignored_keys: Vec<String>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let d = Config::default();

        if setting(env, vars::EXECUTABLE_PATH).is_some() {
            return Err(ConfigError::env(
                vars::EXECUTABLE_PATH,
                "OBI's deprecated regular-expression selector is not supported by tandem; \
                 use OTEL_EBPF_AUTO_TARGET_EXE with a glob (e.g. */nginx)",
            ));
        }
        let discovery = Discovery {
            open_port: from_env::<Ports>(env, vars::OPEN_PORT)?
                .or(f.open_port.map(|p| p.0))
                .map(|p| p.0)
                .unwrap_or_default(),
            auto_target_exe: setting(env, vars::AUTO_TARGET_EXE)
                .or_else(|| setting(env, vars::GO_AUTO_TARGET_EXE)),
            instrument: f.discovery.instrument,
            exclude_instrument: f.discovery.exclude_instrument,
            default_exclude_instrument: f.discovery.default_exclude_instrument,
            target_pids: from_env::<Pids>(env, vars::TARGET_PID)?
                .or(f.target_pids.map(|p| p.0))
                .map(|p| p.0)
                .unwrap_or_default(),
        };

        let routes = RoutesSettings {
            patterns: f.routes.patterns,
            ignored_patterns: f.routes.ignored_patterns,
            ignore_mode: f.routes.ignore_mode.map_or(d.routes.ignore_mode, |v| v.0),
            unmatched: f.routes.unmatched.map_or(d.routes.unmatched, |v| v.0),
            ..d.routes
        };

        let sampler_name = from_env::<SamplerName>(env, vars::TRACES_SAMPLER)?
            .or(f.otel_traces_export.sampler.name.take().map(|v| v.0))
            .unwrap_or(SamplerName::ParentBasedAlwaysOn);
        // OpenTelemetry: a ratio sampler without an argument samples everything.
        let ratio = from_env::<Ratio>(env, vars::TRACES_SAMPLER_ARG)?
            .or(f.otel_traces_export.sampler.arg.take().map(|v| v.0))
            .map_or(1.0, |r| r.0);
        let sampler = match sampler_name {
            SamplerName::AlwaysOn => Sampler::AlwaysOn,
            SamplerName::AlwaysOff => Sampler::AlwaysOff,
            SamplerName::TraceIdRatio => Sampler::TraceIdRatio(ratio),
            SamplerName::ParentBasedAlwaysOn => Sampler::ParentBasedAlwaysOn,
            SamplerName::ParentBasedAlwaysOff => Sampler::ParentBasedAlwaysOff,
            SamplerName::ParentBasedTraceIdRatio => Sampler::ParentBasedTraceIdRatio(ratio),
        };

        let t = &mut f.otel_traces_export;
        let traces = resolve_signal(
            &SIGNAL_TRACES,
            SignalFile {
                endpoint: t.endpoint.take().map(|v| v.0),
                protocol: t.protocol.take().and_then(|v| v.0 .0),
                headers: std::mem::take(&mut t.headers),
                compression: t.compression.take().map(|v| v.0),
                backoff: [
                    t.backoff_initial_interval.take().map(|v| v.0),
                    t.backoff_max_interval.take().map(|v| v.0),
                    t.backoff_max_elapsed_time.take().map(|v| v.0),
                ],
                insecure_skip_verify: t.insecure_skip_verify.take(),
            },
            env,
        )?;
        let m = &mut f.otel_metrics_export;
        let metrics = resolve_signal(
            &SIGNAL_METRICS,
            SignalFile {
                endpoint: m.endpoint.take().map(|v| v.0),
                protocol: m.protocol.take().and_then(|v| v.0 .0),
                headers: std::mem::take(&mut m.headers),
                compression: m.compression.take().map(|v| v.0),
                backoff: [None, None, None],
                insecure_skip_verify: m.insecure_skip_verify.take(),
            },
            env,
        )?;

        let metrics_interval = match from_env::<GoDuration>(env, vars::METRICS_INTERVAL)? {
            Some(i) => i.0,
            None => match f.otel_metrics_export.interval {
                Some(i) => i.0 .0,
                None => match from_env::<Millis>(env, vars::METRIC_EXPORT_INTERVAL)? {
                    Some(m) if m.0.is_zero() => {
                        return Err(ConfigError::env(
                            vars::METRIC_EXPORT_INTERVAL,
                            "the metrics interval must be above zero",
                        ))
                    }
                    Some(m) => m.0,
                    None => d.export.metrics_interval,
                },
            },
        };

        let resource_attributes = match setting(env, vars::RESOURCE_ATTRIBUTES) {
            Some(text) => parse_key_values(&text)
                .map_err(|m| ConfigError::env(vars::RESOURCE_ATTRIBUTES, m))?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };

        // `metrics.features`: the variable (or OBI's per-exporter ones), else the file's
        // `metrics.features` (or the per-exporter sections'), else `application`.
        let feature_env = [
            vars::METRICS_FEATURES,
            vars::OTEL_METRICS_FEATURES,
            vars::PROMETHEUS_FEATURES,
        ]
        .into_iter()
        .find_map(|name| setting(env, name).map(|v| (name, v)));
        let file_features = f
            .metrics
            .features
            .clone()
            .map(|v| ("metrics.features", v))
            .or_else(|| {
                f.otel_metrics_export
                    .features
                    .clone()
                    .map(|v| ("otel_metrics_export.features", v))
            })
            .or_else(|| {
                f.prometheus_export
                    .features
                    .clone()
                    .map(|v| ("prometheus_export.features", v))
            });
        let (metrics_features, ignored_features) = match (&feature_env, &file_features) {
            (Some((name, text)), _) => {
                parse_features([text.as_str()]).map_err(|m| ConfigError::env(name, m))?
            }
            (None, Some((key, list))) => parse_features(list.iter().map(String::as_str))
                .map_err(|m| ConfigError::file_key(file.clone(), key, m))?,
            (None, None) => (MetricsFeatures::default(), Vec::new()),
        };
        let metrics_features_ignored = ignored_features;
        let filter: BTreeMap<String, crate::pipeline::filter::Rule> =
            std::mem::take(&mut f.filter.application)
                .into_iter()
                // A rule of OBI's numeric comparisons only: ignored (and warned about).
                .filter(|(_, r)| !r.only_numeric())
                .map(|(k, r)| {
                    (
                        k,
                        crate::pipeline::filter::Rule {
                            matches: r.matches,
                            not_matches: r.not_match,
                        },
                    )
                })
                .collect();
        crate::pipeline::filter::Filter::new(&filter)
            .map_err(|m| ConfigError::file_key(file.clone(), "filter.application", m))?;
        let buckets = resolve_buckets(
            f.otel_metrics_export.buckets.take(),
            f.prometheus_export.buckets.take(),
            file.as_deref(),
        )?;

        let prometheus_port = from_env::<u16>(env, vars::PROMETHEUS_PORT)?
            .or(f.prometheus_export.port.map(|v| v.0))
            .filter(|p| *p != 0);

        // `attributes.select`: checked here (an invalid glob names its key), resolved
        // per metric family when the pipeline starts.
        let attribute_select = AttributeSelect {
            rules: std::mem::take(&mut f.attributes.select)
                .into_iter()
                .map(|(metric, e)| AttributeRule {
                    metric,
                    include: e.include,
                    exclude: e.exclude,
                })
                .collect(),
        };
        crate::pipeline::metrics::select::resolve(&attribute_select).map_err(|e| {
            let key = match e.key {
                Some(k) => format!("attributes.select.{}.{k}", e.metric),
                None => format!("attributes.select.{}", e.metric),
            };
            ConfigError::file_key(file.clone(), &key, e.message)
        })?;
        let metric_span_names_limit =
            from_env::<SpanNamesLimit>(env, vars::METRIC_SPAN_NAMES_LIMIT)?
                .or(f.attributes.metric_span_names_limit.take().map(|v| v.0))
                .map_or(DEFAULT_METRIC_SPAN_NAMES_LIMIT, |l| l.0);

        let export = ExportSettings {
            traces,
            metrics,
            sampler,
            trace_printer: from_env::<TracePrinter>(env, vars::TRACE_PRINTER)?
                .or(f.trace_printer.map(|v| v.0))
                .unwrap_or_default(),
            prometheus_port,
            prometheus_path: setting(env, vars::PROMETHEUS_PATH)
                .or(f.prometheus_export.path)
                .unwrap_or(d.export.prometheus_path),
            service_name: setting(env, vars::SERVICE_NAME)
                .or_else(|| setting(env, vars::EBPF_SERVICE_NAME))
                .or(f.service_name),
            service_namespace: setting(env, vars::SERVICE_NAMESPACE).or(f.service_namespace),
            resource_attributes,
            metrics_interval,
            max_queue_size: from_env::<usize>(env, vars::TRACES_QUEUE_SIZE)?
                .or(from_env::<usize>(env, vars::TRACES_MAX_QUEUE_SIZE)?)
                .or(f.otel_traces_export.max_queue_size.map(|v| v.0))
                .or(f.otel_traces_export.queue_size.map(|v| v.0))
                .unwrap_or(d.export.max_queue_size),
            max_export_batch_size: from_env::<usize>(env, vars::TRACES_MAX_EXPORT_BATCH_SIZE)?
                .or(f.otel_traces_export.max_export_batch_size.map(|v| v.0))
                .or(f.otel_traces_export.batch_max_size.map(|v| v.0))
                .unwrap_or(d.export.max_export_batch_size),
            batch_timeout: from_env::<GoDuration>(env, vars::TRACES_BATCH_TIMEOUT)?
                .or(f.otel_traces_export.batch_timeout.map(|v| v.0))
                .map_or(d.export.batch_timeout, |g| g.0),
            internal_metrics: InternalMetricsSettings {
                exporter: from_env(env, vars::INTERNAL_METRICS_EXPORTER)?
                    .or(f.internal_metrics.exporter.map(|v| v.0))
                    .unwrap_or_default(),
                prometheus_port: from_env::<u16>(env, vars::INTERNAL_METRICS_PROMETHEUS_PORT)?
                    .or(f.internal_metrics.prometheus.port.map(|v| v.0))
                    .filter(|p| *p != 0),
                prometheus_path: setting(env, vars::INTERNAL_METRICS_PROMETHEUS_PATH)
                    .or(f.internal_metrics.prometheus.path)
                    .unwrap_or(d.export.internal_metrics.prometheus_path),
            },
            traces_instrumentations: from_env(env, vars::TRACES_INSTRUMENTATIONS)?
                .or(f.otel_traces_export.instrumentations.map(|v| v.0))
                .unwrap_or_default(),
            // OBI: `metrics.instrumentations`; older files set it per exporter.
            metrics_instrumentations: from_env(env, vars::METRICS_INSTRUMENTATIONS)?
                .or(from_env(env, vars::PROMETHEUS_INSTRUMENTATIONS)?)
                .or(from_env(env, vars::OTEL_METRICS_INSTRUMENTATIONS)?)
                .or(f.metrics.instrumentations.map(|v| v.0))
                .or(f.otel_metrics_export.instrumentations.map(|v| v.0))
                .or(f.prometheus_export.instrumentations.map(|v| v.0))
                .unwrap_or_default(),
            metrics_features,
            buckets,
            filter,
            exclude_otel_instrumented: from_env::<bool>(
                env,
                vars::EXCLUDE_OTEL_INSTRUMENTED_SERVICES,
            )?
            .or(f.discovery.exclude_otel_instrumented_services)
            .unwrap_or(true),
            attribute_select,
            metric_span_names_limit,
        };

        let kubernetes = Kubernetes {
            enable: from_env::<KubeEnable>(env, vars::KUBE_METADATA_ENABLE)?
                .or(f.attributes.kubernetes.enable.map(|v| v.0))
                .unwrap_or_default(),
            cluster_name: setting(env, vars::KUBE_CLUSTER_NAME)
                .or(f.attributes.kubernetes.cluster_name),
            kubeconfig_path: setting(env, vars::KUBECONFIG)
                .or(f.attributes.kubernetes.kubeconfig_path),
            meta_restrict_local_node: f
                .attributes
                .kubernetes
                .meta_restrict_local_node
                .unwrap_or(false),
            informers_sync_timeout: from_env::<GoDuration>(env, vars::KUBE_INFORMERS_SYNC_TIMEOUT)?
                .or(f.attributes.kubernetes.informers_sync_timeout.map(|v| v.0))
                .map_or(DEFAULT_KUBE_SYNC_TIMEOUT, |d| d.0),
            informers_resync_period: from_env::<GoDuration>(
                env,
                vars::KUBE_INFORMERS_RESYNC_PERIOD,
            )?
            .or(f.attributes.kubernetes.informers_resync_period.map(|v| v.0))
            .map_or(DEFAULT_KUBE_RESYNC_PERIOD, |d| d.0),
            node_name: setting(env, vars::KUBE_NODE_NAME),
            resource_labels: f
                .attributes
                .kubernetes
                .resource_labels
                .take()
                .unwrap_or_default(),
            own_namespace: setting(env, vars::KUBE_NAMESPACE),
            in_cluster: setting(env, vars::KUBERNETES_SERVICE_HOST).is_some(),
        };

        Ok(Config {
            file,
            discovery,
            routes,
            routes_wildcard_char: f
                .routes
                .wildcard_char
                .map_or(d.routes_wildcard_char, |v| v.0),
            routes_max_path_segment_cardinality: f
                .routes
                .max_path_segment_cardinality
                .map_or(d.routes_max_path_segment_cardinality, |v| v.0),
            export,
            metrics_features: file_features.map(|(_, v)| v).unwrap_or(d.metrics_features),
            metrics_features_ignored,
            kubernetes,
            log_level: from_env::<LogLevel>(env, vars::LOG_LEVEL)?.or(f.log_level.map(|v| v.0)),
            log_format: from_env::<tandem_proto::process::LogFormat>(env, vars::LOG_FORMAT)?
                .or(f.log_format.map(|v| v.0)),
            health_check: crate::health::HealthSettings {
                port: from_env::<u16>(env, vars::HEALTH_CHECK_PORT)?
                    .or(f.health_check.port.map(|v| v.0))
                    .unwrap_or(0),
                listen_address: from_env::<std::net::IpAddr>(
                    env,
                    vars::HEALTH_CHECK_LISTEN_ADDRESS,
                )?
                .or(f.health_check.listen_address.map(|v| v.0))
                .unwrap_or(crate::health::DEFAULT_LISTEN_ADDRESS),
                unix_socket_path: setting(env, vars::HEALTH_CHECK_UNIX_SOCKET_PATH)
                    .or(f.health_check.unix_socket_path),
            },
            ignored_keys,
            ignored_env: obi_env::ignored_vars(env),
        })
    }

    /// The loader selection: the union of `open_port`, `OTEL_EBPF_AUTO_TARGET_EXE` and
    /// the ports, `exe_path` globs and `target_pids` of every `discovery.instrument`
    /// entry. It is a superset of what OBI instruments: a selection is an OR of
    /// criteria while an OBI entry ANDs its own, and Kubernetes, container and language
    /// criteria cannot be expressed at all — an entry with only those makes the
    /// selection empty (every process). Exact per-entry filtering and exclusions are
    /// the processor's job (later issue). See [`Config::warnings`].
    pub fn selection(&self) -> Selection {
        let d = &self.discovery;
        if d.instrument.iter().any(|e| !e.has_loader_criteria()) {
            return Selection::default();
        }
        let mut s = Selection {
            ports: d.open_port.clone(),
            exe_globs: d.auto_target_exe.iter().cloned().collect(),
            pids: d.target_pids.clone(),
            ..Selection::default()
        };
        for e in &d.instrument {
            for r in &e.open_ports {
                if !s.ports.contains(r) {
                    s.ports.push(*r);
                }
            }
            if let Some(g) = &e.exe_path {
                if !s.exe_globs.contains(g) {
                    s.exe_globs.push(g.clone());
                }
            }
            for p in &e.target_pids {
                if !s.pids.contains(p) {
                    s.pids.push(*p);
                }
            }
        }
        s
    }

    /// [`Config::selection`] of the entries without `k8s_*` criteria (those are
    /// resolved to container ids by the Kubernetes discovery, `crate::kube`).
    pub fn selection_without_kubernetes_entries(&self) -> Selection {
        let mut c = self.clone();
        c.discovery
            .instrument
            .retain(|e| !e.has_kubernetes_criteria());
        if c.discovery.instrument.is_empty()
            && c.discovery.open_port.is_empty()
            && c.discovery.auto_target_exe.is_none()
        {
            return Selection::default();
        }
        c.selection()
    }

    /// Things the user should know, one line each: ignored keys present in the file,
    /// OBI environment variables set that tandem ignores, and `discovery.instrument` entries the loader selection cannot express.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings_for(self.kubernetes.enable != KubeEnable::False)
    }

    /// [`Config::warnings`]; with `kubernetes_discovery` (Kubernetes metadata on),
    /// entries with `k8s_*` criteria are resolved to container ids, so they are not
    /// reported as selecting every process.
    pub fn warnings_for(&self, kubernetes_discovery: bool) -> Vec<String> {
        let file = self
            .file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut out: Vec<String> = self
            .ignored_keys
            .iter()
            .map(|k| {
                format!("{file}: `{k}` is an OBI setting tandem does not implement yet; ignored")
            })
            .collect();
        out.extend(self.ignored_env.iter().map(|v| obi_env::warning(v)));
        for feature in &self.metrics_features_ignored {
            out.push(format!(
                "metrics feature `{feature}` is an OBI feature tandem does not implement yet; \
                 ignored"
            ));
        }
        for (i, e) in self.discovery.instrument.iter().enumerate() {
            let kube = e.has_kubernetes_criteria() || e.container_name.is_some();
            if kube && !kubernetes_discovery {
                out.push(format!(
                    "{file}: discovery.instrument[{i}] has Kubernetes criteria but Kubernetes \
                     metadata is off: it matches no process"
                ));
            } else if !e.has_loader_criteria() && !kube {
                out.push(format!(
                    "{file}: discovery.instrument[{i}] has no open_ports, exe_path or target_pids, \
                     which the loader cannot select on: the loader reports every process and \
                     the processor selects"
                ));
            }
            if let Some(l) = &e.languages {
                let known = globset::Glob::new(l)
                    .map(|g| g.compile_matcher())
                    .is_ok_and(|g| crate::select::LANGUAGES.iter().any(|name| g.is_match(name)));
                if !known {
                    out.push(format!(
                        "{file}: discovery.instrument[{i}].languages `{l}` matches none of the \
                         languages tandem recognises ({}): this entry matches no process",
                        crate::select::LANGUAGES.join(", ")
                    ));
                }
            }
        }
        out
    }
}

/// OBI metrics features (its export data page) that [`MetricsFeatures`] does not
/// know: accepted, and warned about as not made, like its `NOT_IMPLEMENTED`.
const OTHER_OBI_FEATURES: [&str; 8] = [
    "application_runtime",
    "application_jvm",
    "network_flow_packets",
    "stats",
    "stats_tcp_rtt",
    "stats_tcp_failed_connections",
    "stats_tcp_retransmits",
    "stats_tcp_io",
];

/// What OBI's `*` / `all` feature stands for: every feature of its schema's list.
const ALL_OBI_FEATURES: [&str; 9] = [
    "application",
    "application_host",
    "application_service_graph",
    "application_span",
    "application_span_otel",
    "application_span_sizes",
    "ebpf",
    "network",
    "network_inter_zone",
];

/// [`MetricsFeatures::parse_list`], with [`OTHER_OBI_FEATURES`] accepted and returned
/// among the features to warn about, and OBI's `*` / `all` as [`ALL_OBI_FEATURES`].
fn parse_features<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<(MetricsFeatures, Vec<String>), String> {
    let mut other = Vec::new();
    let known: Vec<&str> = items
        .into_iter()
        .flat_map(|i| i.split(','))
        .map(str::trim)
        .flat_map(|item| match item.to_ascii_lowercase().as_str() {
            "*" | "all" => ALL_OBI_FEATURES.to_vec(),
            _ => vec![item],
        })
        .filter(|item| {
            let name = item.to_ascii_lowercase();
            let is_other = OTHER_OBI_FEATURES.contains(&name.as_str());
            if is_other {
                other.push(name);
            }
            !is_other
        })
        .collect();
    let (features, mut ignored) = MetricsFeatures::parse_list(known)?;
    ignored.extend(other);
    Ok((features, ignored))
}

/// The environment variable `name` parsed, or `None` when unset or empty.
pub(crate) fn from_env<T: ParseValue>(env: &dyn Env, name: &str) -> Result<Option<T>, ConfigError> {
    setting(env, name)
        .map(|v| T::parse_value(&v).map_err(|m| ConfigError::env(name, m)))
        .transpose()
}

/// `otel_metrics_export.buckets`, else `prometheus_export.buckets`, each list else
/// OBI's default; every list must be ascending, finite, non-empty. The lists live
/// for the whole run (leaked once).
fn resolve_buckets(
    otel: Option<file::BucketsSection>,
    prometheus: Option<file::BucketsSection>,
    file: Option<&Path>,
) -> Result<crate::settings::Buckets, ConfigError> {
    let d = crate::settings::Buckets::default();
    let (section, b) = match (otel, prometheus) {
        (Some(b), _) => ("otel_metrics_export.buckets", b),
        (None, Some(b)) => ("prometheus_export.buckets", b),
        (None, None) => return Ok(d),
    };
    let list = |name: &str, v: &Option<Vec<f64>>, default: &'static [f64]| {
        let Some(v) = v else {
            return Ok(default);
        };
        let key = format!("{section}.{name}");
        if v.is_empty() {
            return Err(ConfigError::file_key(
                file.map(Path::to_path_buf),
                &key,
                "an empty list (give at least one boundary, or leave the key out for OBI's default)",
            ));
        }
        if v.iter().any(|x| !x.is_finite()) || v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::file_key(
                file.map(Path::to_path_buf),
                &key,
                format!("{v:?}: boundaries must be finite numbers in ascending order"),
            ));
        }
        Ok(&*Box::leak(v.clone().into_boxed_slice()))
    };
    Ok(crate::settings::Buckets {
        duration: list("duration_histogram", &b.duration_histogram, d.duration)?,
        request_size: list(
            "request_size_histogram",
            &b.request_size_histogram,
            d.request_size,
        )?,
        response_size: list(
            "response_size_histogram",
            &b.response_size_histogram,
            d.response_size,
        )?,
    })
}
