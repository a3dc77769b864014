//! OBI's environment variables that tandem does not read: each one set is warned about
//! once, as an OBI setting tandem ignores (issue 14), like the file's ignored keys.
//!
//! [`OBI_ENV_VARS`] is every `x-env-var` of OBI's configuration schema
//! (`testdata/obi-config-schema.json`, see `testdata/README.md`), sorted; a test checks
//! it against the schema both ways. [`READ`] is those tandem reads (the constants of
//! [`vars`] its configuration reads through `setting`); a test checks that setting
//! each one changes the configuration or is refused. An `OTEL_EBPF_*` variable is
//! also looked for under Beyla's name, `BEYLA_*` with the same suffix, as
//! `env::setting` maps them.

use super::env::{vars, Env};

/// Every environment variable of OBI's configuration schema (its `x-env-var`s).
pub(crate) const OBI_ENV_VARS: &[&str] = &[
    "KUBECONFIG",
    "OTEL_EBPF_ALLOW_SERVICE_GRAPH_SELF_REFERENCES",
    "OTEL_EBPF_BACKOFF_INITIAL_INTERVAL",
    "OTEL_EBPF_BACKOFF_MAX_ELAPSED_TIME",
    "OTEL_EBPF_BACKOFF_MAX_INTERVAL",
    "OTEL_EBPF_BPF_BATCH_LENGTH",
    "OTEL_EBPF_BPF_BATCH_TIMEOUT",
    "OTEL_EBPF_BPF_BUFFER_SIZE_HTTP",
    "OTEL_EBPF_BPF_BUFFER_SIZE_KAFKA",
    "OTEL_EBPF_BPF_BUFFER_SIZE_MYSQL",
    "OTEL_EBPF_BPF_BUFFER_SIZE_POSTGRES",
    "OTEL_EBPF_BPF_CONTEXT_PROPAGATION",
    "OTEL_EBPF_BPF_DEBUG",
    "OTEL_EBPF_BPF_DISABLE_BLACK_BOX_CP",
    "OTEL_EBPF_BPF_DNS_REQUEST_TIMEOUT",
    "OTEL_EBPF_BPF_FS_PATH",
    "OTEL_EBPF_BPF_HIGH_REQUEST_VOLUME",
    "OTEL_EBPF_BPF_HTTP_REQUEST_TIMEOUT",
    "OTEL_EBPF_BPF_LOG_ENRICHER_ASYNC_WRITER_CHANNEL_LEN",
    "OTEL_EBPF_BPF_LOG_ENRICHER_ASYNC_WRITER_WORKERS",
    "OTEL_EBPF_BPF_LOG_ENRICHER_CACHE_SIZE",
    "OTEL_EBPF_BPF_LOG_ENRICHER_CACHE_TTL",
    "OTEL_EBPF_BPF_MAX_TRANSACTION_TIME",
    "OTEL_EBPF_BPF_METRIC_SCRAPE_INTERVAL",
    "OTEL_EBPF_BPF_MONGO_REQUESTS_CACHE_SIZE",
    "OTEL_EBPF_BPF_MYSQL_PREPARED_STATEMENTS_CACHE_SIZE",
    "OTEL_EBPF_BPF_PID_FILTER_OFF",
    "OTEL_EBPF_BPF_POSTGRES_PREPARED_STATEMENTS_CACHE_SIZE",
    "OTEL_EBPF_BPF_REDIS_DB_CACHE_ENABLED",
    "OTEL_EBPF_BPF_REDIS_DB_CACHE_MAX_SIZE",
    "OTEL_EBPF_BPF_TC_BACKEND",
    "OTEL_EBPF_BPF_TRACK_REQUEST_HEADERS",
    "OTEL_EBPF_BPF_WAKEUP_LEN",
    "OTEL_EBPF_CHANNEL_BUFFER_LEN",
    "OTEL_EBPF_CHANNEL_SEND_TIMEOUT",
    "OTEL_EBPF_CHANNEL_SEND_TIMEOUT_PANIC",
    "OTEL_EBPF_COUCHBASE_DB_CACHE_SIZE",
    "OTEL_EBPF_DEFAULT_OTLP_GRPC_PORT",
    "OTEL_EBPF_DISCOVERY_POLL_INTERVAL",
    "OTEL_EBPF_ENFORCE_SYS_CAPS",
    "OTEL_EBPF_EXCLUDE_OTEL_INSTRUMENTED_SERVICES",
    "OTEL_EBPF_EXCLUDE_OTEL_INSTRUMENTED_SERVICES_SPAN_METRICS",
    "OTEL_EBPF_EXECUTABLE_PATH",
    "OTEL_EBPF_EXTRA_SPAN_RESOURCE_ATTRIBUTES",
    "OTEL_EBPF_HEURISTIC_SQL_DETECT",
    "OTEL_EBPF_HOSTNAME",
    "OTEL_EBPF_HOSTNAME_DNS_RESOLUTION",
    "OTEL_EBPF_HOST_ID",
    "OTEL_EBPF_HTTP_AWS_ENABLED",
    "OTEL_EBPF_HTTP_ELASTICSEARCH_ENABLED",
    "OTEL_EBPF_HTTP_GRAPHQL_ENABLED",
    "OTEL_EBPF_HTTP_OPENAI_ENABLED",
    "OTEL_EBPF_HTTP_SQLPP_ENABLED",
    "OTEL_EBPF_HTTP_SQLPP_ENDPOINT_PATTERNS",
    "OTEL_EBPF_INSECURE_SKIP_VERIFY",
    "OTEL_EBPF_INSTRUMENT_CUDA",
    "OTEL_EBPF_INTERNAL_METRICS_EXPORTER",
    "OTEL_EBPF_JAVAAGENT_ATTACH_TIMEOUT",
    "OTEL_EBPF_JAVAAGENT_DEBUG",
    "OTEL_EBPF_JAVAAGENT_DEBUG_INSTRUMENTATION",
    "OTEL_EBPF_JAVAAGENT_ENABLED",
    "OTEL_EBPF_JAVA_ROUTE_HARVEST_DELAY",
    "OTEL_EBPF_KUBE_CLUSTER_NAME",
    "OTEL_EBPF_KUBE_DISABLE_INFORMERS",
    "OTEL_EBPF_KUBE_INFORMERS_RESYNC_PERIOD",
    "OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT",
    "OTEL_EBPF_KUBE_METADATA_ENABLE",
    "OTEL_EBPF_KUBE_META_CACHE_ADDRESS",
    "OTEL_EBPF_KUBE_META_RESTRICT_LOCAL_NODE",
    "OTEL_EBPF_LOG_CONFIG",
    "OTEL_EBPF_LOG_LEVEL",
    "OTEL_EBPF_METRICS_FEATURES",
    "OTEL_EBPF_METRICS_INSTRUMENTATIONS",
    "OTEL_EBPF_METRICS_INTERVAL",
    "OTEL_EBPF_METRICS_REPORT_CACHE_LEN",
    "OTEL_EBPF_METRICS_TTL",
    "OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT",
    "OTEL_EBPF_MIN_PROCESS_AGE",
    "OTEL_EBPF_NAME_RESOLVER_CACHE_LEN",
    "OTEL_EBPF_NAME_RESOLVER_CACHE_TTL",
    "OTEL_EBPF_NAME_RESOLVER_SOURCES",
    "OTEL_EBPF_NETWORK_AGENT_IP",
    "OTEL_EBPF_NETWORK_AGENT_IP_IFACE",
    "OTEL_EBPF_NETWORK_AGENT_IP_TYPE",
    "OTEL_EBPF_NETWORK_CACHE_ACTIVE_TIMEOUT",
    "OTEL_EBPF_NETWORK_CACHE_MAX_FLOWS",
    "OTEL_EBPF_NETWORK_CIDRS",
    "OTEL_EBPF_NETWORK_DEDUPER",
    "OTEL_EBPF_NETWORK_DEDUPER_FC_TTL",
    "OTEL_EBPF_NETWORK_DIRECTION",
    "OTEL_EBPF_NETWORK_DROP_EXTERNAL",
    "OTEL_EBPF_NETWORK_EXCLUDE_INTERFACES",
    "OTEL_EBPF_NETWORK_EXCLUDE_PROTOCOLS",
    "OTEL_EBPF_NETWORK_GEOIP_CACHE_LEN",
    "OTEL_EBPF_NETWORK_GEOIP_CACHE_TTL",
    "OTEL_EBPF_NETWORK_GEOIP_IPINFO_PATH",
    "OTEL_EBPF_NETWORK_GEOIP_MAXMIND_ASN_PATH",
    "OTEL_EBPF_NETWORK_GEOIP_MAXMIND_COUNTRY_PATH",
    "OTEL_EBPF_NETWORK_INTERFACES",
    "OTEL_EBPF_NETWORK_LISTEN_INTERFACES",
    "OTEL_EBPF_NETWORK_LISTEN_POLL_PERIOD",
    "OTEL_EBPF_NETWORK_METRICS",
    "OTEL_EBPF_NETWORK_PRINT_FLOWS",
    "OTEL_EBPF_NETWORK_PROTOCOLS",
    "OTEL_EBPF_NETWORK_REVERSE_DNS_CACHE_LEN",
    "OTEL_EBPF_NETWORK_REVERSE_DNS_CACHE_TTL",
    "OTEL_EBPF_NETWORK_REVERSE_DNS_TYPE",
    "OTEL_EBPF_NETWORK_SAMPLING",
    "OTEL_EBPF_NETWORK_SOURCE",
    "OTEL_EBPF_NODEJS_ENABLED",
    "OTEL_EBPF_OPEN_PORT",
    "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT",
    "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE",
    "OTEL_EBPF_OVERRIDE_BPF_LOOP_ENABLED",
    "OTEL_EBPF_PROFILE_PORT",
    "OTEL_EBPF_PROMETHEUS_ALLOW_SERVICE_GRAPH_SELF_REFERENCES",
    "OTEL_EBPF_PROMETHEUS_DISABLE_BUILD_INFO",
    "OTEL_EBPF_PROMETHEUS_EXTRA_RESOURCE_ATTRIBUTES",
    "OTEL_EBPF_PROMETHEUS_EXTRA_SPAN_RESOURCE_ATTRIBUTES",
    "OTEL_EBPF_PROMETHEUS_FEATURES",
    "OTEL_EBPF_PROMETHEUS_INSTRUMENTATIONS",
    "OTEL_EBPF_PROMETHEUS_PATH",
    "OTEL_EBPF_PROMETHEUS_PORT",
    "OTEL_EBPF_PROMETHEUS_TTL",
    "OTEL_EBPF_PROTOCOL_DEBUG_PRINT",
    "OTEL_EBPF_RENAME_UNRESOLVED_HOSTS",
    "OTEL_EBPF_RENAME_UNRESOLVED_HOSTS_INCOMING",
    "OTEL_EBPF_RENAME_UNRESOLVED_HOSTS_OUTGOING",
    "OTEL_EBPF_ROUTE_HARVESTER_TIMEOUT",
    "OTEL_EBPF_SDK_LOG_LEVEL",
    "OTEL_EBPF_SERVICE_NAMESPACE",
    "OTEL_EBPF_SERVICE_NAME_TEMPLATE",
    "OTEL_EBPF_SHUTDOWN_TIMEOUT",
    "OTEL_EBPF_SKIP_GO_SPECIFIC_TRACERS",
    "OTEL_EBPF_TARGET_PID",
    "OTEL_EBPF_TRACES_INSTRUMENTATIONS",
    "OTEL_EBPF_TRACES_REPORT_CACHE_LEN",
    "OTEL_EBPF_TRACE_PRINTER",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_KAFKA_TOPIC_UUID_CACHE_SIZE",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// The variables of [`OBI_ENV_VARS`] tandem reads.
pub(crate) const READ: &[&str] = &[
    vars::KUBECONFIG,
    vars::BACKOFF_INITIAL_INTERVAL,
    vars::BACKOFF_MAX_ELAPSED_TIME,
    vars::BACKOFF_MAX_INTERVAL,
    vars::EXCLUDE_OTEL_INSTRUMENTED_SERVICES,
    vars::EXECUTABLE_PATH,
    vars::INSECURE_SKIP_VERIFY,
    vars::INTERNAL_METRICS_EXPORTER,
    vars::KUBE_CLUSTER_NAME,
    vars::KUBE_INFORMERS_RESYNC_PERIOD,
    vars::KUBE_INFORMERS_SYNC_TIMEOUT,
    vars::KUBE_METADATA_ENABLE,
    vars::LOG_LEVEL,
    vars::METRICS_FEATURES,
    vars::METRICS_INSTRUMENTATIONS,
    vars::METRICS_INTERVAL,
    vars::METRIC_SPAN_NAMES_LIMIT,
    vars::OPEN_PORT,
    vars::TRACES_BATCH_TIMEOUT,
    vars::TRACES_MAX_QUEUE_SIZE,
    vars::PROMETHEUS_FEATURES,
    vars::PROMETHEUS_INSTRUMENTATIONS,
    vars::PROMETHEUS_PATH,
    vars::PROMETHEUS_PORT,
    vars::SERVICE_NAMESPACE,
    vars::TARGET_PID,
    vars::TRACES_INSTRUMENTATIONS,
    vars::TRACE_PRINTER,
    vars::OTLP_METRICS_ENDPOINT,
    vars::OTLP_PROTOCOL,
    vars::OTLP_TRACES_ENDPOINT,
    vars::SERVICE_NAME,
    vars::TRACES_SAMPLER,
    vars::TRACES_SAMPLER_ARG,
];

/// The value of `name` when set and not blank (an empty variable counts as unset).
fn set(env: &dyn Env, name: &str) -> bool {
    env.get(name).is_some_and(|v| !v.trim().is_empty())
}

/// The OBI variables set in `env` that tandem ignores, each once: its OBI name, else
/// (for an `OTEL_EBPF_*` variable) its Beyla name when only that is set.
pub(crate) fn ignored_vars(env: &dyn Env) -> Vec<String> {
    OBI_ENV_VARS
        .iter()
        .filter(|name| !READ.contains(name))
        .filter_map(|name| {
            if set(env, name) {
                return Some(name.to_string());
            }
            let beyla = format!("BEYLA_{}", name.strip_prefix("OTEL_EBPF_")?);
            set(env, &beyla).then_some(beyla)
        })
        .collect()
}

/// The warning for an ignored variable found by [`ignored_vars`].
pub(crate) fn warning(name: &str) -> String {
    match name.strip_prefix("BEYLA_") {
        Some(rest) => format!(
            "environment variable `{name}` (Beyla's name for OBI's `OTEL_EBPF_{rest}`) is an \
             OBI setting tandem does not implement yet; ignored"
        ),
        None => format!(
            "environment variable `{name}` is an OBI setting tandem does not implement yet; \
             ignored"
        ),
    }
}

/// The warnings for the OBI variables set in `env` that tandem ignores (the
/// configuration keeps the names, [`ignored_vars`], and words them with [`warning`]).
#[cfg(test)]
pub(crate) fn warnings(env: &dyn Env) -> Vec<String> {
    ignored_vars(env).iter().map(|n| warning(n)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    /// Every `x-env-var` of the vendored schema.
    fn schema_vars() -> BTreeSet<String> {
        fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(name)) = m.get("x-env-var") {
                        if name != "-" {
                            out.insert(name.clone());
                        }
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("testdata/obi-config-schema.json"))
                .expect("schema is JSON");
        let mut out = BTreeSet::new();
        walk(&schema, &mut out);
        out
    }

    #[test]
    fn obi_env_vars_are_the_schema_s() {
        let listed: BTreeSet<String> = OBI_ENV_VARS.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            listed.len(),
            OBI_ENV_VARS.len(),
            "a variable is listed twice"
        );
        let schema = schema_vars();
        let not_in_schema: Vec<_> = listed.difference(&schema).collect();
        let not_listed: Vec<_> = schema.difference(&listed).collect();
        assert!(
            not_in_schema.is_empty() && not_listed.is_empty(),
            "OBI_ENV_VARS drifted from the schema: not in the schema {not_in_schema:?}, \
             not listed {not_listed:?}"
        );
        for v in READ {
            assert!(
                OBI_ENV_VARS.contains(v),
                "READ has {v}, not an OBI variable"
            );
        }
    }

    /// Each variable tandem claims to read changes the configuration or is refused.
    #[test]
    fn obi_env_read_vars_are_read() {
        let default = Config::load(None, &[("X", "")]).expect("default");
        for v in READ {
            let env = [(*v, "zz-not-a-value")];
            match Config::load(None, &env) {
                Err(ConfigError::Env { .. }) => {}
                Err(e) => panic!("{v}: {e}"),
                Ok(c) => assert!(c != default, "{v} is set but changes nothing"),
            }
        }
    }

    #[test]
    fn obi_env_ignored_var_warns_once_read_var_does_not() {
        let env = [
            ("OTEL_EBPF_TRACE_PRINTER", "text"),
            ("OTEL_EBPF_BPF_DEBUG", "true"),
            ("OTEL_EBPF_NETWORK_CACHE_MAX_FLOWS", " "),
        ];
        let w = warnings(&env);
        assert_eq!(
            w,
            [
                "environment variable `OTEL_EBPF_BPF_DEBUG` is an OBI setting tandem does not \
              implement yet; ignored"
            ],
        );
        // Through the configuration, once.
        let c =
            Config::from_yaml(Path::new("/c.yml"), "trace_printer: json\n", &env).expect("loads");
        let named: Vec<String> = c
            .warnings()
            .into_iter()
            .filter(|w| w.contains("OTEL_EBPF_"))
            .collect();
        assert_eq!(named, w);
        assert!(Config::load(None, &[("OTEL_EBPF_TRACE_PRINTER", "text")])
            .expect("loads")
            .warnings()
            .is_empty());
    }

    #[test]
    fn obi_env_beyla_alias_warns() {
        let w = warnings(&[("BEYLA_BPF_DEBUG", "true")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`BEYLA_BPF_DEBUG`") && w[0].contains("OTEL_EBPF_BPF_DEBUG"));
        // Both names set: one warning, OBI's name.
        let w = warnings(&[("BEYLA_BPF_DEBUG", "true"), ("OTEL_EBPF_BPF_DEBUG", "true")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`OTEL_EBPF_BPF_DEBUG`"));
        // Beyla's name of a variable tandem reads is read, not warned about.
        assert!(warnings(&[("BEYLA_TRACE_PRINTER", "text")]).is_empty());
        // A variable outside OTEL_EBPF_ has no Beyla name.
        assert!(warnings(&[("BEYLA_KAFKA_TOPIC_UUID_CACHE_SIZE", "1")]).is_empty());
        assert_eq!(
            warnings(&[("OTEL_KAFKA_TOPIC_UUID_CACHE_SIZE", "1")]).len(),
            1
        );
    }
}
