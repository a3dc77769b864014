//! Where environment variables come from, and their names.
//!
//! Configuration never calls `std::env` directly: it reads through [`Env`], so tests pass
//! a map and the binary passes [`ProcessEnv`].

use std::collections::{BTreeMap, HashMap};

/// A source of environment variables.
pub trait Env {
    /// The raw value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment. Values that are not UTF-8 are converted lossily.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

/// A setting's value from the environment: trimmed, and `None` when unset or empty
/// (the OpenTelemetry rule: an empty variable counts as unset).
/// An `OTEL_EBPF_*` variable that is unset falls back to Beyla's name for it
/// (`BEYLA_*`, the same suffix: Beyla's variables became OBI's by that rename).
pub(crate) fn setting(env: &dyn Env, name: &str) -> Option<String> {
    let get = |n: &str| {
        env.get(n)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    get(name).or_else(|| {
        name.strip_prefix("OTEL_EBPF_")
            .and_then(|rest| get(&format!("BEYLA_{rest}")))
    })
}

/// Environment variable names, OBI's and OpenTelemetry's.
pub mod vars {
    /// Path of the YAML file when `--config` is not given.
    pub const CONFIG_PATH: &str = "OTEL_EBPF_CONFIG_PATH";
    /// Ports to select (`80,443,8000-8999`); replaces YAML `open_port`.
    pub const OPEN_PORT: &str = "OTEL_EBPF_OPEN_PORT";
    /// Executable glob to select (`*/nginx`).
    pub const AUTO_TARGET_EXE: &str = "OTEL_EBPF_AUTO_TARGET_EXE";
    /// opentelemetry-go-instrumentation's name for [`AUTO_TARGET_EXE`], used when that is unset.
    pub const GO_AUTO_TARGET_EXE: &str = "OTEL_GO_AUTO_TARGET_EXE";
    /// OBI's deprecated regular-expression selector; refused (see the module doc).
    pub const EXECUTABLE_PATH: &str = "OTEL_EBPF_EXECUTABLE_PATH";
    pub const TRACE_PRINTER: &str = "OTEL_EBPF_TRACE_PRINTER";
    pub const TRACES_INSTRUMENTATIONS: &str = "OTEL_EBPF_TRACES_INSTRUMENTATIONS";
    pub const METRICS_INSTRUMENTATIONS: &str = "OTEL_EBPF_METRICS_INSTRUMENTATIONS";
    /// OBI's per-exporter names, read when [`METRICS_INSTRUMENTATIONS`] is unset.
    pub const PROMETHEUS_INSTRUMENTATIONS: &str = "OTEL_EBPF_PROMETHEUS_INSTRUMENTATIONS";
    pub const OTEL_METRICS_INSTRUMENTATIONS: &str = "OTEL_EBPF_OTEL_METRICS_INSTRUMENTATIONS";
    /// `metrics.features`; OBI's per-exporter names are read when it is unset.
    pub const METRICS_FEATURES: &str = "OTEL_EBPF_METRICS_FEATURES";
    pub const OTEL_METRICS_FEATURES: &str = "OTEL_EBPF_OTEL_METRICS_FEATURES";
    pub const PROMETHEUS_FEATURES: &str = "OTEL_EBPF_PROMETHEUS_FEATURES";
    pub const LOG_LEVEL: &str = "OTEL_EBPF_LOG_LEVEL";
    /// `text` or `json` (`log_format`).
    pub const LOG_FORMAT: &str = "OTEL_EBPF_LOG_FORMAT";
    /// Process ids to instrument, comma-separated (`target_pids`).
    pub const TARGET_PID: &str = "OTEL_EBPF_TARGET_PID";
    pub const EXCLUDE_OTEL_INSTRUMENTED_SERVICES: &str =
        "OTEL_EBPF_EXCLUDE_OTEL_INSTRUMENTED_SERVICES";
    /// Current OBI's name of the trace queue bound (`otel_traces_export.queue_size`).
    pub const TRACES_QUEUE_SIZE: &str = "OTEL_EBPF_OTLP_TRACES_QUEUE_SIZE";
    pub const PROMETHEUS_PORT: &str = "OTEL_EBPF_PROMETHEUS_PORT";
    pub const PROMETHEUS_PATH: &str = "OTEL_EBPF_PROMETHEUS_PATH";
    /// `attributes.metric_span_names_limit` (`BEYLA_METRIC_SPAN_NAMES_LIMIT` too).
    pub const METRIC_SPAN_NAMES_LIMIT: &str = "OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT";
    pub const KUBE_METADATA_ENABLE: &str = "OTEL_EBPF_KUBE_METADATA_ENABLE";
    pub const KUBE_CLUSTER_NAME: &str = "OTEL_EBPF_KUBE_CLUSTER_NAME";
    pub const KUBECONFIG: &str = "KUBECONFIG";
    pub const KUBE_INFORMERS_SYNC_TIMEOUT: &str = "OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT";
    pub const KUBE_INFORMERS_RESYNC_PERIOD: &str = "OTEL_EBPF_KUBE_INFORMERS_RESYNC_PERIOD";
    /// This node's name (downward API `spec.nodeName`): pods are watched on it only.
    pub const KUBE_NODE_NAME: &str = "KUBE_NODE_NAME";
    /// The processor's own namespace (downward API `metadata.namespace`).
    pub const KUBE_NAMESPACE: &str = "KUBE_NAMESPACE";
    /// Set by Kubernetes in every container: `autodetect` turns decoration on.
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// OBI's name for [`SERVICE_NAME`], used when that is unset.
    pub const EBPF_SERVICE_NAME: &str = "OTEL_EBPF_SERVICE_NAME";
    pub const SERVICE_NAMESPACE: &str = "OTEL_EBPF_SERVICE_NAMESPACE";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    pub const OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub const OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    pub const OTLP_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
    pub const OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    /// TLS: the PEM file of the certificates to trust (instead of the system's roots).
    pub const OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
    pub const OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
    pub const OTLP_METRICS_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE";
    /// TLS client authentication: the client's PEM certificate chain and key.
    pub const OTLP_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
    pub const OTLP_TRACES_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE";
    pub const OTLP_METRICS_CLIENT_CERTIFICATE: &str =
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE";
    pub const OTLP_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
    pub const OTLP_TRACES_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY";
    pub const OTLP_METRICS_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY";
    /// OBI's: do not verify the collector's certificate (both signals).
    pub const INSECURE_SKIP_VERIFY: &str = "OTEL_EBPF_INSECURE_SKIP_VERIFY";
    pub const OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    pub const OTLP_METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
    pub const OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    pub const OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
    pub const OTLP_METRICS_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
    /// Metrics export interval in milliseconds (OpenTelemetry).
    pub const METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
    /// Metrics export interval as a duration (`30s`); OBI's, wins over [`METRIC_EXPORT_INTERVAL`].
    pub const METRICS_INTERVAL: &str = "OTEL_EBPF_METRICS_INTERVAL";
    pub const TRACES_MAX_QUEUE_SIZE: &str = "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE";
    pub const TRACES_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_EBPF_OTLP_TRACES_MAX_EXPORT_BATCH_SIZE";
    pub const TRACES_BATCH_TIMEOUT: &str = "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT";
    pub const BACKOFF_INITIAL_INTERVAL: &str = "OTEL_EBPF_BACKOFF_INITIAL_INTERVAL";
    pub const BACKOFF_MAX_INTERVAL: &str = "OTEL_EBPF_BACKOFF_MAX_INTERVAL";
    pub const BACKOFF_MAX_ELAPSED_TIME: &str = "OTEL_EBPF_BACKOFF_MAX_ELAPSED_TIME";
    pub const OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
    pub const OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
    pub const OTLP_METRICS_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION";
    pub const INTERNAL_METRICS_EXPORTER: &str = "OTEL_EBPF_INTERNAL_METRICS_EXPORTER";
    pub const INTERNAL_METRICS_PROMETHEUS_PORT: &str = "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT";
    pub const INTERNAL_METRICS_PROMETHEUS_PATH: &str = "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PATH";
    pub const HEALTH_CHECK_PORT: &str = "OTEL_EBPF_HEALTH_CHECK_PORT";
    pub const HEALTH_CHECK_LISTEN_ADDRESS: &str = "OTEL_EBPF_HEALTH_CHECK_LISTEN_ADDRESS";
    pub const HEALTH_CHECK_UNIX_SOCKET_PATH: &str = "OTEL_EBPF_HEALTH_CHECK_UNIX_SOCKET_PATH";
}
