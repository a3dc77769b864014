//! Loading as a whole: the file, the environment, their precedence, the errors.
//! (Single values and `${VAR}` substitution are tested next to their code.)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::settings::{IgnoreMode, OtlpProtocol, OtlpSignal, Unmatched};

const FILE: &str = "/config/obi-config.yml";
const NO_ENV: [(&str, &str); 0] = [];

/// OBI's Kubernetes guide ConfigMap (`obi-config.yml`), unchanged.
const OBI_CONFIGMAP: &str = "\
trace_printer: text
otel_traces_export:
  endpoint: http://otelcol:4317
  sampler:
    name: parentbased_traceidratio
    arg: \"0.01\"
routes:
  patterns:
    - /factorial/{num}
";

fn load<E: Env>(yaml: &str, env: &E) -> Result<Config, ConfigError> {
    Config::from_yaml(Path::new(FILE), yaml, env)
}

fn ok<E: Env>(yaml: &str, env: &E) -> Config {
    load(yaml, env).unwrap_or_else(|e| panic!("{e}"))
}

fn file_error<E: Env>(yaml: &str, env: &E) -> FileError {
    match load(yaml, env) {
        Err(ConfigError::File(e)) => e,
        other => panic!("expected a file error, got {other:?}"),
    }
}

fn env_error<E: Env>(yaml: &str, env: &E) -> (String, String) {
    match load(yaml, env) {
        Err(ConfigError::Env { var, message }) => (var, message),
        other => panic!("expected an environment error, got {other:?}"),
    }
}

fn testdata(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/config/testdata")
        .join(name)
}

// --- OBI's example configuration -------------------------------------------------

#[test]
fn obi_configmap_loads_unchanged() {
    let c = ok(OBI_CONFIGMAP, &NO_ENV);
    assert_eq!(c.export.trace_printer, TracePrinter::Text);
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://otelcol:4317")
    );
    assert_eq!(c.export.traces.protocol, Some(OtlpProtocol::Grpc));
    assert_eq!(c.export.sampler, Sampler::ParentBasedTraceIdRatio(0.01));
    assert_eq!(c.routes.patterns, vec!["/factorial/{num}".to_string()]);
    // What the ConfigMap does not say keeps OBI's defaults.
    assert_eq!(c.routes.unmatched, Unmatched::Heuristic);
    assert_eq!(c.export.metrics, OtlpSignal::default());
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn obi_configmap_file_loads_through_otel_ebpf_config_path() {
    let path = testdata("obi-configmap.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, OBI_CONFIGMAP, "the test file is the ConfigMap's text");
    let path_text = path.to_string_lossy().into_owned();
    let env = [(vars::CONFIG_PATH, path_text.as_str())];
    let c = Config::load(None, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.file.as_deref(), Some(path.as_path()));
    assert_eq!(c.export.sampler, Sampler::ParentBasedTraceIdRatio(0.01));
    assert_eq!(c.export.traces.protocol, Some(OtlpProtocol::Grpc));
}

#[test]
fn config_flag_path_wins_over_otel_ebpf_config_path() {
    let path = testdata("obi-configmap.yml");
    let env = [(vars::CONFIG_PATH, "/nonexistent/obi.yml")];
    let c = Config::load(Some(&path), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.export.trace_printer, TracePrinter::Text);
}

#[test]
fn no_file_and_no_environment_is_the_documented_default() {
    let c = Config::load(None, &NO_ENV).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c, Config::default());
    assert!(c.selection().is_empty());
    assert_eq!(c.export.sampler, Sampler::ParentBasedAlwaysOn);
    assert_eq!(c.export.trace_printer, TracePrinter::Disabled);
    assert_eq!(c.export.metrics_interval, Duration::from_secs(60));
    assert_eq!(c.export.max_queue_size, 16384, "OBI's default");
    assert_eq!(c.export.prometheus_port, None);
    assert_eq!(c.export.prometheus_path, "/metrics");
    assert_eq!(c.kubernetes.enable, KubeEnable::Autodetect, "OBI's default");
    assert_eq!(c.routes, RoutesSettings::default());
    assert_eq!(c.routes_wildcard_char, '*');
}

#[test]
fn an_empty_or_comment_only_file_is_the_default() {
    for text in ["", "# nothing\n", "---\n"] {
        let c = ok(text, &NO_ENV);
        assert_eq!(c.export, Config::default().export, "{text:?}");
    }
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let e = Config::load(Some(Path::new("/nonexistent/tandem.yml")), &NO_ENV)
        .expect_err("missing file");
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/tandem.yml"), "{e}");
}

#[test]
fn a_full_obi_file_loads() {
    let yaml = "\
log_level: DEBUG
service_name: checkout
service_namespace: shop
open_port: 8080
trace_printer: json_indent
otel_traces_export:
  endpoint: https://collector.example.com/otlp
  protocol: http/protobuf
  headers:
    x-tenant: a
  max_queue_size: 100
  sampler:
    name: traceidratio
    arg: 0.25
otel_metrics_export:
  endpoint: http://otelcol:4318
  interval: 15s
  features: [application, network]
prometheus_export:
  port: 9400
  path: /prom
routes:
  patterns: ['/users/{id}']
  ignored_patterns: [/metrics, /health]
  ignore_mode: traces
  unmatched: low-cardinality
  wildcard_char: '#'
  max_path_segment_cardinality: 20
discovery:
  instrument:
    - open_ports: 443
    - exe_path: '*/nginx'
      k8s_namespace: web
    - open_ports: \"8000-8999,9090\"
      target_pids: [42]
      k8s_pod_labels:
        app.kubernetes.io/name: checkout
  exclude_instrument:
    - k8s_namespace: kube-system
attributes:
  kubernetes:
    enable: true
    cluster_name: prod
    meta_restrict_local_node: true
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(c.log_level, Some(LogLevel::Debug));
    assert_eq!(c.export.service_name.as_deref(), Some("checkout"));
    assert_eq!(c.export.service_namespace.as_deref(), Some("shop"));
    assert_eq!(c.export.trace_printer, TracePrinter::JsonIndent);
    let t = &c.export.traces;
    assert_eq!(
        t.endpoint.as_deref(),
        Some("https://collector.example.com/otlp")
    );
    assert_eq!(t.protocol, Some(OtlpProtocol::HttpProtobuf));
    assert_eq!(t.headers.get("x-tenant").map(String::as_str), Some("a"));
    assert_eq!(c.export.max_queue_size, 100);
    assert_eq!(c.export.sampler, Sampler::TraceIdRatio(0.25));
    let m = &c.export.metrics;
    assert_eq!(m.endpoint.as_deref(), Some("http://otelcol:4318"));
    assert_eq!(m.protocol, Some(OtlpProtocol::HttpProtobuf));
    assert_eq!(c.export.metrics_interval, Duration::from_secs(15));
    assert_eq!(c.metrics_features, vec!["application", "network"]);
    assert_eq!(c.export.prometheus_port, Some(9400));
    assert_eq!(c.export.prometheus_path, "/prom");
    assert_eq!(c.routes.patterns, vec!["/users/{id}"]);
    assert_eq!(c.routes.ignored_patterns, vec!["/metrics", "/health"]);
    assert_eq!(c.routes.ignore_mode, IgnoreMode::Traces);
    assert_eq!(c.routes.unmatched, Unmatched::LowCardinality);
    assert_eq!(c.routes_wildcard_char, '#');
    assert_eq!(c.routes_max_path_segment_cardinality, 20);
    let d = &c.discovery;
    assert_eq!(d.instrument.len(), 3);
    assert_eq!(d.instrument[1].exe_path.as_deref(), Some("*/nginx"));
    assert_eq!(d.instrument[1].k8s_namespace.as_deref(), Some("web"));
    assert_eq!(
        d.instrument[2].k8s_pod_labels.get("app.kubernetes.io/name"),
        Some(&"checkout".to_string())
    );
    assert_eq!(
        d.exclude_instrument[0].k8s_namespace.as_deref(),
        Some("kube-system")
    );
    assert_eq!(c.kubernetes.enable, KubeEnable::True);
    assert_eq!(c.kubernetes.cluster_name.as_deref(), Some("prod"));
    assert!(c.kubernetes.meta_restrict_local_node);

    let s = c.selection();
    assert_eq!(
        tandem_proto::selection::format_port_ranges(&s.ports),
        "8080,443,8000-8999,9090"
    );
    assert_eq!(s.exe_globs, vec!["*/nginx"]);
    assert_eq!(s.pids, vec![42]);
    // `network` is OBI's and accepted, with one warning naming it.
    assert_eq!(
        c.warnings(),
        vec!["metrics feature `network` is an OBI feature tandem does not implement yet; ignored"]
    );
    assert_eq!(
        c.export.metrics_features,
        crate::settings::MetricsFeatures::default()
    );
}

#[test]
fn metrics_features_from_the_variable_and_the_file() {
    use crate::settings::MetricsFeatures;
    let c = ok(
        "metrics:\n  features: [application_span]\n",
        &[(
            "OTEL_EBPF_METRICS_FEATURES",
            "application, application_service_graph",
        )],
    );
    assert_eq!(
        c.export.metrics_features,
        MetricsFeatures {
            application: true,
            span: false,
            service_graph: true
        }
    );
    let c = ok(
        "prometheus_export:\n  features: [application_span]\n",
        &[("OTEL_EBPF_METRICS_FEATURES", "")],
    );
    assert!(c.export.metrics_features.span && !c.export.metrics_features.application);
    let e = file_error("metrics:\n  features: [network, bogus]\n", &[("X", "")]);
    assert_eq!(e.key.as_deref(), Some("metrics.features"));
    assert!(e.message.contains("unknown metrics feature `bogus`"), "{e}");
    assert!(e.message.contains("application_service_graph"), "{e}");
}

#[test]
fn every_metrics_feature_obi_documents_is_accepted_and_warned_about() {
    use crate::settings::MetricsFeatures;
    // OBI's export data page: `metrics: {features: [application_jvm]}`.
    let c = ok("metrics:\n  features: [application_jvm]\n", &NO_ENV);
    assert!(
        !c.export.metrics_features.any(),
        "OBI makes only JVM metrics"
    );
    assert_eq!(c.metrics_features_ignored, vec!["application_jvm"]);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("metrics feature `application_jvm`")),
        "{:?}",
        c.warnings()
    );
    let c = ok(
        "metrics:\n  features: [application, Stats_TCP_RTT, application_runtime]\n",
        &[(
            "OTEL_EBPF_METRICS_FEATURES",
            "application_span,network_flow_packets, stats",
        )],
    );
    assert_eq!(
        c.export.metrics_features,
        MetricsFeatures {
            application: false,
            span: true,
            service_graph: false
        }
    );
    assert_eq!(
        c.metrics_features_ignored,
        vec!["network_flow_packets", "stats"]
    );
    let c = ok(
        "metrics:\n  features: [application, Stats_TCP_RTT, application_runtime]\n",
        &NO_ENV,
    );
    assert!(c.export.metrics_features.application);
    assert_eq!(
        c.metrics_features_ignored,
        vec!["stats_tcp_rtt", "application_runtime"]
    );
    for feature in [
        "stats_tcp_failed_connections",
        "stats_tcp_retransmits",
        "stats_tcp_io",
    ] {
        let c = ok(&format!("metrics:\n  features: [{feature}]\n"), &NO_ENV);
        assert_eq!(c.metrics_features_ignored, vec![feature]);
    }
    let e = file_error("metrics:\n  features: [stats_tcp_bogus]\n", &NO_ENV);
    assert!(e.message.contains("unknown metrics feature"), "{e}");
}

// --- errors in the file --------------------------------------------------------

#[test]
fn bad_sampler_name_names_file_key_line_and_allowed_values() {
    let yaml = OBI_CONFIGMAP.replace("parentbased_traceidratio", "sometimes");
    let e = file_error(&yaml, &NO_ENV);
    assert_eq!(e.file, Path::new(FILE));
    assert_eq!(e.key.as_deref(), Some("otel_traces_export.sampler.name"));
    assert_eq!(e.line, Some(5));
    assert!(e.column.is_some());
    assert!(
        e.message.contains(
            "expected one of always_on, always_off, traceidratio, parentbased_always_on, \
             parentbased_always_off, parentbased_traceidratio"
        ),
        "{}",
        e.message
    );
    let text = ConfigError::File(e).to_string();
    assert!(
        text.starts_with(
            "configuration file /config/obi-config.yml, line 5 column 11, \
             key otel_traces_export.sampler.name: unknown value `sometimes`"
        ),
        "{text}"
    );
}

#[test]
fn unknown_nested_key_is_an_error_with_its_path_and_line() {
    let yaml = OBI_CONFIGMAP.replace("  sampler:", "  samplr:");
    let e = file_error(&yaml, &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("otel_traces_export.samplr"));
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("unknown key `samplr`"), "{}", e.message);
    assert!(
        e.message.contains("`sampler`"),
        "lists the known keys: {}",
        e.message
    );
}

#[test]
fn unknown_top_level_key_is_an_error_on_its_own_line() {
    let yaml = format!("{OBI_CONFIGMAP}tracing_printer: json\n");
    let e = file_error(&yaml, &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("tracing_printer"));
    assert_eq!(e.line, Some(10));
    assert!(
        e.message.contains("unknown key `tracing_printer`"),
        "{}",
        e.message
    );
}

#[test]
fn unknown_key_in_a_list_item_is_named_with_its_index() {
    let yaml = "discovery:\n  instrument:\n    - open_ports: 80\n    - open_port: 81\n";
    let e = file_error(yaml, &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("discovery.instrument[1].open_port"));
    assert_eq!(e.line, Some(4));
}

#[test]
fn bad_values_name_their_key_and_what_is_allowed() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "discovery:\n  instrument:\n    - open_ports: 80\n    - open_ports: 80-http\n",
            "discovery.instrument[1].open_ports",
            4,
            "expected 1-65535 or START-END",
        ),
        (
            "otel_traces_export:\n  sampler:\n    name: traceidratio\n    arg: lots\n",
            "otel_traces_export.sampler.arg",
            4,
            "between 0 and 1",
        ),
        (
            "otel_traces_export:\n  endpoint: otelcol:4317\n",
            "otel_traces_export.endpoint",
            2,
            "not an OTLP endpoint URL",
        ),
        (
            "otel_metrics_export:\n  protocol: debug\n",
            "otel_metrics_export.protocol",
            2,
            "expected one of grpc, http/protobuf, http/json",
        ),
        (
            "otel_metrics_export:\n  interval: 5\n",
            "otel_metrics_export.interval",
            2,
            "with a unit",
        ),
        (
            "routes:\n  unmatched: smart\n",
            "routes.unmatched",
            2,
            "expected one of heuristic, path, wildcard, unset, low-cardinality",
        ),
        (
            "routes:\n  ignore_mode: none\n",
            "routes.ignore_mode",
            2,
            "expected one of all, traces, metrics",
        ),
        (
            "trace_printer: yes_please\n",
            "trace_printer",
            1,
            "expected one of disabled, counter, text, json, json_indent",
        ),
        (
            "prometheus_export:\n  port: 70000\n",
            "prometheus_export.port",
            2,
            "not a port number",
        ),
        (
            "attributes:\n  kubernetes:\n    enable: maybe\n",
            "attributes.kubernetes.enable",
            3,
            "expected one of true, false, autodetect",
        ),
        (
            "log_level: verbose\n",
            "log_level",
            1,
            "expected one of debug, info, warn, error",
        ),
        (
            "routes:\n  wildcard_char: '**'\n",
            "routes.wildcard_char",
            2,
            "single character",
        ),
    ];
    for (yaml, key, line, allowed) in cases {
        let e = file_error(yaml, &NO_ENV);
        assert_eq!(e.key.as_deref(), Some(*key), "{yaml}");
        assert_eq!(e.line, Some(*line), "{yaml}: {}", e.message);
        assert!(e.message.contains(allowed), "{yaml}: {}", e.message);
    }
}

#[test]
fn wrong_shapes_are_errors_with_the_key() {
    let e = file_error("otel_traces_export:\n  - endpoint: x\n", &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("otel_traces_export"));
    assert!(e.message.contains("invalid type"), "{}", e.message);
    let e = file_error("routes:\n  patterns: /one\n", &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("routes.patterns"));
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let e = file_error("routes:\n  patterns: [/a\nlog_level: info\n", &NO_ENV);
    assert!(e.line.is_some(), "{e:?}");
    assert!(ConfigError::File(e).to_string().contains(FILE));
}

#[test]
fn an_instrument_entry_without_criteria_is_an_error() {
    let e = file_error(
        "discovery:\n  instrument:\n    - open_ports: 80\n    - name: lonely\n",
        &NO_ENV,
    );
    assert_eq!(e.key.as_deref(), Some("discovery.instrument[1]"));
    assert_eq!(e.line, Some(4), "the line of the entry");
    let e = file_error(
        "discovery:\n  exclude_instrument:\n  - name: a\n\n    # c\n  - k8s_namespace: b\n",
        &NO_ENV,
    );
    assert_eq!(e.key.as_deref(), Some("discovery.exclude_instrument[0]"));
    assert_eq!(e.line, Some(3));
    assert!(
        e.message.contains("no selection criterion"),
        "{}",
        e.message
    );
}

#[test]
fn regex_selectors_are_refused_with_directions() {
    for (yaml, key) in [
        (
            "log_level: info\nexecutable_path: nginx$\n",
            "executable_path",
        ),
        (
            "discovery:\n  services:\n    - exe_path: nginx\n",
            "discovery.services",
        ),
        (
            "discovery:\n  exclude_services:\n    - exe_path: x\n",
            "discovery.exclude_services",
        ),
    ] {
        let e = file_error(yaml, &NO_ENV);
        assert_eq!(e.key.as_deref(), Some(key), "{yaml}");
        assert_eq!(e.line, Some(2), "{yaml}");
        assert!(e.message.contains("discovery.instrument"), "{}", e.message);
    }
    let (var, message) = env_error("", &[(vars::EXECUTABLE_PATH, "nginx$")]);
    assert_eq!(var, vars::EXECUTABLE_PATH);
    assert!(message.contains("OTEL_EBPF_AUTO_TARGET_EXE"), "{message}");
}

#[test]
fn unset_substitution_names_the_variable_and_line() {
    let yaml = "otel_traces_export:\n  endpoint: http://${COLLECTOR_HOST}:4317\n";
    let e = file_error(yaml, &NO_ENV);
    assert_eq!(e.line, Some(2));
    assert_eq!(e.key, None);
    assert!(
        e.message.contains("COLLECTOR_HOST is not set"),
        "{}",
        e.message
    );
}

#[test]
fn substitution_happens_before_parsing() {
    let yaml = "\
otel_traces_export:
  endpoint: http://${COLLECTOR_HOST}:${COLLECTOR_PORT:-4318}
  sampler:
    name: ${SAMPLER:-always_on}
prometheus_export:
  port: ${PROM_PORT}
routes:
  patterns: [\"/price/$$5\"]
";
    let env = [("COLLECTOR_HOST", "otelcol"), ("PROM_PORT", "9400")];
    let c = ok(yaml, &env);
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://otelcol:4318")
    );
    assert_eq!(c.export.traces.protocol, Some(OtlpProtocol::HttpProtobuf));
    assert_eq!(c.export.sampler, Sampler::AlwaysOn);
    assert_eq!(c.export.prometheus_port, Some(9400));
    assert_eq!(c.routes.patterns, vec!["/price/$5"]);
}

// --- accepted-but-ignored OBI keys -----------------------------------------------

/// `a.b[].c` as nested YAML with a value at the end.
fn yaml_for(path: &str) -> String {
    let mut out = String::new();
    let mut indent = 0;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let pad = " ".repeat(indent);
        match seg.strip_suffix("[]") {
            Some(list) => {
                out.push_str(&format!("{pad}{list}:\n{pad}  - open_ports: 80\n"));
                indent += 4;
            }
            None if last => out.push_str(&format!("{pad}{seg}: {{}}\n")),
            None => {
                out.push_str(&format!("{pad}{seg}:\n"));
                indent += 2;
            }
        }
    }
    out
}

#[test]
fn every_ignored_obi_key_is_accepted_and_warned_about() {
    for key in IGNORED_KEYS {
        let yaml = yaml_for(key);
        let c = load(&yaml, &NO_ENV).unwrap_or_else(|e| panic!("{key}:\n{yaml}\n{e}"));
        let expected = key.replace("[]", "[0]");
        assert_eq!(c.ignored_keys, vec![expected.clone()], "{yaml}");
        let w = c.warnings();
        assert!(
            w.iter()
                .any(|l| l.contains(&format!("`{expected}`")) && l.contains(FILE)),
            "{w:?}"
        );
    }
}

#[test]
fn ignored_sections_may_hold_anything_obi_allows() {
    let yaml = "\
ebpf:
  wakeup_len: 100
  context_propagation: all
network:
  enable: true
  cidrs: [10.0.0.0/8]
filter:
  application:
    url_path:
      not_match: /health
otel_traces_export:
  endpoint: http://localhost:4318
  reporters_cache_len: 10
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(
        c.ignored_keys,
        vec!["ebpf", "network", "otel_traces_export.reporters_cache_len"]
    );
    // `filter.application` is acted on (`pipeline::filter`).
    assert_eq!(
        c.export
            .filter
            .get("url_path")
            .and_then(|r| r.not_matches.as_deref()),
        Some("/health")
    );
    let e = file_error(
        "filter:\n  application:\n    k8s_pod_name:\n      match: x\n",
        &NO_ENV,
    );
    assert_eq!(e.key.as_deref(), Some("filter.application"));
    assert!(
        e.message.contains("not an attribute tandem can filter on"),
        "{e}"
    );
}

#[test]
fn obi_numeric_filter_rules_are_accepted_and_warned_about() {
    // OBI's filter page: `filter.application.server.port.greater_equals: 8000`.
    let yaml = "\
filter:
  application:
    server.port:
      greater_equals: 8000
    url.path:
      match: /api/*
      less_than: 3
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(
        c.ignored_keys,
        vec![
            "filter.application.server.port.greater_equals",
            "filter.application.url.path.less_than",
        ]
    );
    // The numeric-only rule is dropped; the glob beside a comparison still applies.
    assert!(!c.export.filter.contains_key("server.port"));
    assert_eq!(
        c.export
            .filter
            .get("url.path")
            .and_then(|r| r.matches.as_deref()),
        Some("/api/*")
    );
    let w = c.warnings();
    assert!(
        w.iter().any(|l| l.contains(
            "`filter.application.server.port.greater_equals` is an OBI setting tandem does \
             not implement yet"
        )),
        "{w:?}"
    );
    // A rule with neither a glob nor a comparison is still refused.
    let e = file_error("filter:\n  application:\n    url.path: {}\n", &NO_ENV);
    assert!(e.message.contains("give `match` or `not_match`"), "{e}");
    let e = file_error(
        "filter:\n  application:\n    url.path:\n      greater: 1\n",
        &NO_ENV,
    );
    assert!(e.message.contains("unknown key `greater`"), "{e}");
}

#[test]
fn a_repeated_key_inside_an_ignored_section_loads_and_is_warned_about() {
    // OBI's service discovery page repeats `exe_path` under `discovery.rules`, which
    // OBI does not read (nor check).
    let yaml = "\
discovery:
  rules:
    - match:
        open_ports: 80,443,8080
      exclude:
        exe_path: '*prometheus*'
        exe_path: '*grafana*'
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(c.ignored_keys, vec!["discovery.rules"]);
    assert!(
        c.warnings().iter().any(|w| w.contains("`discovery.rules`")),
        "{:?}",
        c.warnings()
    );
    // Repeated where tandem reads it, a key is refused.
    let e = file_error(
        "otel_traces_export:\n  endpoint: http://a:4318\n  endpoint: http://b:4318\n",
        &NO_ENV,
    );
    assert!(e.message.contains("duplicate"), "{e}");
}

#[test]
fn batching_backoff_compression_and_internal_metrics_are_acted_on() {
    let yaml = "
otel_traces_export:
  endpoint: http://localhost:4318
  max_export_batch_size: 100
  batch_timeout: 5s
  backoff_initial_interval: 1s
  backoff_max_interval: 2s
  backoff_max_elapsed_time: 30s
  compression: gzip
otel_metrics_export:
  endpoint: http://localhost:4318
  compression: none
internal_metrics:
  exporter: prometheus
  prometheus:
    port: 9090
    path: /tandem
";
    let c = ok(yaml, &NO_ENV);
    assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    let e = &c.export;
    assert_eq!(e.max_export_batch_size, 100);
    assert_eq!(e.batch_timeout, Duration::from_secs(5));
    assert_eq!(
        e.traces.backoff,
        crate::settings::Backoff {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(30),
        }
    );
    assert_eq!(
        e.traces.compression,
        Some(crate::settings::Compression::Gzip)
    );
    assert_eq!(e.metrics.compression, None);
    assert_eq!(e.metrics.backoff, crate::settings::Backoff::default());
    assert_eq!(
        e.internal_metrics,
        crate::settings::InternalMetricsSettings {
            exporter: crate::settings::InternalExporter::Prometheus,
            prometheus_port: Some(9090),
            prometheus_path: "/tandem".into(),
        }
    );
    // The variables win, OBI's names and OpenTelemetry's.
    let env = [
        (vars::TRACES_MAX_EXPORT_BATCH_SIZE, "7"),
        (vars::TRACES_BATCH_TIMEOUT, "250ms"),
        (vars::BACKOFF_MAX_ELAPSED_TIME, "1m"),
        (vars::OTLP_COMPRESSION, "gzip"),
        (vars::OTLP_TRACES_COMPRESSION, "none"),
        (vars::INTERNAL_METRICS_EXPORTER, "otel"),
        (vars::INTERNAL_METRICS_PROMETHEUS_PORT, "0"),
    ];
    let c = ok(yaml, &env);
    let e = &c.export;
    assert_eq!(e.max_export_batch_size, 7);
    assert_eq!(e.batch_timeout, Duration::from_millis(250));
    assert_eq!(e.traces.backoff.max_elapsed, Duration::from_secs(60));
    assert_eq!(e.traces.compression, None, "the signal's variable wins");
    assert_eq!(
        e.metrics.compression,
        Some(crate::settings::Compression::Gzip)
    );
    assert_eq!(
        e.internal_metrics.exporter,
        crate::settings::InternalExporter::Otel
    );
    assert_eq!(e.internal_metrics.prometheus_port, None, "0 means off");
    // Bad values name the key and what is allowed.
    let err = file_error("otel_traces_export:\n  compression: zstd\n", &NO_ENV).to_string();
    assert!(err.contains("otel_traces_export.compression"), "{err}");
    assert!(err.contains("gzip, none"), "{err}");
    let err = file_error("internal_metrics:\n  exporter: statsd\n", &NO_ENV).to_string();
    assert!(err.contains("disabled, prometheus, otel"), "{err}");
}

// --- environment over file -----------------------------------------------------

#[test]
fn environment_overrides_the_file() {
    let env = [
        (vars::TRACE_PRINTER, "json"),
        (vars::TRACES_SAMPLER, "traceidratio"),
        (vars::TRACES_SAMPLER_ARG, "0.5"),
        (vars::OTLP_TRACES_ENDPOINT, "http://other:4318/v1/traces"),
        (vars::PROMETHEUS_PORT, "9999"),
        (vars::KUBE_METADATA_ENABLE, "autodetect"),
        (vars::KUBE_CLUSTER_NAME, "from-env"),
        (vars::LOG_LEVEL, "warn"),
        (vars::OPEN_PORT, "9000-9100"),
    ];
    let yaml = format!(
        "{OBI_CONFIGMAP}prometheus_export:\n  port: 9400\nopen_port: 80\nlog_level: debug\n\
         attributes:\n  kubernetes:\n    enable: false\n    cluster_name: from-file\n"
    );
    let c = ok(&yaml, &env);
    assert_eq!(c.export.trace_printer, TracePrinter::Json);
    assert_eq!(c.export.sampler, Sampler::TraceIdRatio(0.5));
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://other:4318/v1/traces")
    );
    assert_eq!(c.export.traces.protocol, Some(OtlpProtocol::HttpProtobuf));
    assert_eq!(c.export.prometheus_port, Some(9999));
    assert_eq!(c.kubernetes.enable, KubeEnable::Autodetect);
    assert_eq!(c.kubernetes.cluster_name.as_deref(), Some("from-env"));
    assert_eq!(c.log_level, Some(LogLevel::Warn));
    assert_eq!(
        tandem_proto::selection::format_port_ranges(&c.selection().ports),
        "9000-9100"
    );
}

#[test]
fn sampler_argument_alone_keeps_the_file_sampler() {
    let c = ok(OBI_CONFIGMAP, &[(vars::TRACES_SAMPLER_ARG, "0.2")]);
    assert_eq!(c.export.sampler, Sampler::ParentBasedTraceIdRatio(0.2));
    let c = ok("", &[(vars::TRACES_SAMPLER, "parentbased_traceidratio")]);
    assert_eq!(
        c.export.sampler,
        Sampler::ParentBasedTraceIdRatio(1.0),
        "no argument: ratio 1 (OpenTelemetry default)"
    );
    let c = ok("", &[(vars::TRACES_SAMPLER, "always_off")]);
    assert_eq!(c.export.sampler, Sampler::AlwaysOff);
}

#[test]
fn empty_variables_count_as_unset() {
    let env = [
        (vars::TRACE_PRINTER, ""),
        (vars::OTLP_TRACES_ENDPOINT, "  "),
        (vars::OPEN_PORT, ""),
    ];
    let c = ok(&format!("{OBI_CONFIGMAP}open_port: 80\n"), &env);
    assert_eq!(c.export.trace_printer, TracePrinter::Text);
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://otelcol:4317")
    );
    assert_eq!(c.selection().ports.len(), 1);
}

#[test]
fn service_name_precedence() {
    let yaml = "service_name: from-file\n";
    assert_eq!(
        ok(yaml, &NO_ENV).export.service_name.as_deref(),
        Some("from-file")
    );
    let c = ok(yaml, &[(vars::EBPF_SERVICE_NAME, "obi")]);
    assert_eq!(c.export.service_name.as_deref(), Some("obi"));
    let c = ok(
        yaml,
        &[
            (vars::EBPF_SERVICE_NAME, "obi"),
            (vars::SERVICE_NAME, "otel"),
        ],
    );
    assert_eq!(c.export.service_name.as_deref(), Some("otel"));
    let c = ok("", &[(vars::SERVICE_NAMESPACE, "ns")]);
    assert_eq!(c.export.service_namespace.as_deref(), Some("ns"));
}

#[test]
fn metrics_interval_precedence() {
    let yaml = "otel_metrics_export:\n  interval: 10s\n";
    let ms = [(vars::METRIC_EXPORT_INTERVAL, "5000")];
    assert_eq!(ok("", &ms).export.metrics_interval, Duration::from_secs(5));
    assert_eq!(
        ok(yaml, &ms).export.metrics_interval,
        Duration::from_secs(10),
        "OBI: the file's interval wins over OTEL_METRIC_EXPORT_INTERVAL"
    );
    let both = [
        (vars::METRIC_EXPORT_INTERVAL, "5000"),
        (vars::METRICS_INTERVAL, "1m"),
    ];
    assert_eq!(
        ok(yaml, &both).export.metrics_interval,
        Duration::from_secs(60)
    );
    let (var, m) = env_error("", &[(vars::METRIC_EXPORT_INTERVAL, "0")]);
    assert_eq!(var, vars::METRIC_EXPORT_INTERVAL);
    assert!(m.contains("above zero"), "{m}");
}

#[test]
fn auto_target_exe_and_its_go_alias() {
    let c = ok("", &[(vars::AUTO_TARGET_EXE, "*/goblog")]);
    assert_eq!(c.selection().exe_globs, vec!["*/goblog"]);
    let c = ok("", &[(vars::GO_AUTO_TARGET_EXE, "*/app")]);
    assert_eq!(c.selection().exe_globs, vec!["*/app"]);
    let c = ok(
        "",
        &[
            (vars::GO_AUTO_TARGET_EXE, "*/app"),
            (vars::AUTO_TARGET_EXE, "*/goblog"),
        ],
    );
    assert_eq!(c.selection().exe_globs, vec!["*/goblog"]);
}

#[test]
fn bad_environment_values_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (vars::OPEN_PORT, "http", "expected 1-65535"),
        (
            vars::TRACES_SAMPLER,
            "sometimes",
            "expected one of always_on",
        ),
        (vars::TRACES_SAMPLER_ARG, "2", "between 0 and 1"),
        (
            vars::OTLP_PROTOCOL,
            "http/xml",
            "expected one of grpc, http/protobuf, http/json",
        ),
        (
            vars::OTLP_ENDPOINT,
            "otelcol:4317",
            "not an OTLP endpoint URL",
        ),
        (
            vars::KUBE_METADATA_ENABLE,
            "maybe",
            "true, false, autodetect",
        ),
        (vars::TRACE_PRINTER, "loud", "json_indent"),
        (vars::PROMETHEUS_PORT, "-1", "not a port number"),
        (vars::METRICS_INTERVAL, "10", "with a unit"),
        (vars::METRIC_EXPORT_INTERVAL, "10s", "milliseconds"),
        (vars::OTLP_TIMEOUT, "soon", "milliseconds"),
        (vars::LOG_LEVEL, "loud", "debug, info, warn, error"),
    ];
    for (name, value, allowed) in cases {
        let (var, message) = env_error("", &[(*name, *value)]);
        assert_eq!(var, *name);
        assert!(message.contains(allowed), "{name}={value}: {message}");
        let text = ConfigError::env(&var, message).to_string();
        assert!(
            text.starts_with(&format!("environment variable {name}: ")),
            "{text}"
        );
    }
}

// --- OTLP endpoints, protocols, headers ----------------------------------------

fn traces<E: Env>(yaml: &str, env: &E) -> OtlpSignal {
    ok(yaml, env).export.traces
}

#[test]
fn generic_endpoint_gets_the_signal_path_for_http() {
    let c = ok("", &[(vars::OTLP_ENDPOINT, "http://otelcol:4318")]);
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://otelcol:4318/v1/traces")
    );
    assert_eq!(
        c.export.metrics.endpoint.as_deref(),
        Some("http://otelcol:4318/v1/metrics")
    );
    assert_eq!(c.export.metrics.protocol, Some(OtlpProtocol::HttpProtobuf));
    let t = traces("", &[(vars::OTLP_ENDPOINT, "https://gw.example.com/otlp/")]);
    assert_eq!(
        t.endpoint.as_deref(),
        Some("https://gw.example.com/otlp/v1/traces")
    );
    assert_eq!(
        t.protocol,
        Some(OtlpProtocol::HttpProtobuf),
        "no port: the OpenTelemetry default"
    );
}

#[test]
fn generic_grpc_endpoint_is_used_as_is() {
    let t = traces("", &[(vars::OTLP_ENDPOINT, "http://otelcol:4317")]);
    assert_eq!(t.endpoint.as_deref(), Some("http://otelcol:4317"));
    assert_eq!(t.protocol, Some(OtlpProtocol::Grpc));
    let t = traces(
        "",
        &[
            (vars::OTLP_ENDPOINT, "http://otelcol:5555"),
            (vars::OTLP_PROTOCOL, "grpc"),
        ],
    );
    assert_eq!(t.endpoint.as_deref(), Some("http://otelcol:5555"));
    assert_eq!(t.protocol, Some(OtlpProtocol::Grpc));
}

#[test]
fn protocol_is_inferred_from_the_port_like_obi() {
    for (endpoint, protocol) in [
        ("http://c:4317", OtlpProtocol::Grpc),
        ("http://c:14317", OtlpProtocol::Grpc),
        ("http://c:4318", OtlpProtocol::HttpProtobuf),
        ("http://c:24318", OtlpProtocol::HttpProtobuf),
        ("http://c:8080", OtlpProtocol::HttpProtobuf),
        ("https://c", OtlpProtocol::HttpProtobuf),
    ] {
        let t = traces("", &[(vars::OTLP_TRACES_ENDPOINT, endpoint)]);
        assert_eq!(t.protocol, Some(protocol), "{endpoint}");
        assert_eq!(
            t.endpoint.as_deref(),
            Some(endpoint),
            "signal endpoints are used as is"
        );
    }
}

#[test]
fn signal_endpoint_in_the_file_beats_the_generic_variable() {
    let env = [(vars::OTLP_ENDPOINT, "http://generic:4318")];
    let c = ok(OBI_CONFIGMAP, &env);
    assert_eq!(
        c.export.traces.endpoint.as_deref(),
        Some("http://otelcol:4317")
    );
    assert_eq!(
        c.export.metrics.endpoint.as_deref(),
        Some("http://generic:4318/v1/metrics"),
        "metrics have no file endpoint: the generic variable applies"
    );
}

#[test]
fn empty_protocol_in_the_file_means_none_given_like_obi() {
    // OBI's schema lists "" among the protocols: none given, inferred from the port.
    let c = ok(
        "otel_traces_export:\n  endpoint: http://c:4317\n  protocol: \"\"\n\
         otel_metrics_export:\n  endpoint: http://c:4318/v1/metrics\n  protocol: ''\n",
        &NO_ENV,
    );
    assert_eq!(c.export.traces.protocol, Some(OtlpProtocol::Grpc));
    assert_eq!(c.export.metrics.protocol, Some(OtlpProtocol::HttpProtobuf));
    let e = file_error("otel_traces_export:\n  protocol: smoke\n", &NO_ENV);
    assert_eq!(e.key.as_deref(), Some("otel_traces_export.protocol"));
}

#[test]
fn metrics_features_all_and_star_are_every_obi_feature() {
    use crate::settings::MetricsFeatures;
    let every = MetricsFeatures {
        application: true,
        span: true,
        service_graph: true,
    };
    for yaml in [
        "metrics:\n  features: ['*']\n",
        "metrics:\n  features: [all]\n",
        "otel_metrics_export:\n  features: [ALL]\n",
        "prometheus_export:\n  features: ['*', application]\n",
    ] {
        let c = ok(yaml, &NO_ENV);
        assert_eq!(c.export.metrics_features, every, "{yaml}");
        // What tandem does not make is warned about, as when named one by one.
        for f in ["network", "network_inter_zone", "application_host", "ebpf"] {
            assert!(
                c.metrics_features_ignored.iter().any(|i| i == f),
                "{yaml}: {:?}",
                c.metrics_features_ignored
            );
        }
    }
    let c = ok("", &[("OTEL_EBPF_METRICS_FEATURES", "*")]);
    assert_eq!(c.export.metrics_features, every);
}

#[test]
fn protocol_precedence() {
    let yaml = "otel_traces_export:\n  endpoint: http://c:4317\n  protocol: http/protobuf\n";
    assert_eq!(
        traces(yaml, &NO_ENV).protocol,
        Some(OtlpProtocol::HttpProtobuf)
    );
    let generic = [(vars::OTLP_PROTOCOL, "grpc")];
    assert_eq!(traces(yaml, &generic).protocol, Some(OtlpProtocol::Grpc));
    let both = [
        (vars::OTLP_PROTOCOL, "grpc"),
        (vars::OTLP_TRACES_PROTOCOL, "http/protobuf"),
    ];
    assert_eq!(
        traces(yaml, &both).protocol,
        Some(OtlpProtocol::HttpProtobuf)
    );
    assert_eq!(
        ok(yaml, &both).export.metrics.protocol,
        Some(OtlpProtocol::Grpc),
        "the traces variable does not touch metrics"
    );
}

#[test]
fn headers_merge_and_are_percent_decoded() {
    let yaml = "otel_traces_export:\n  endpoint: http://c:4317\n  headers:\n    x-file: f\n    x-over: file\n";
    let env = [
        (
            vars::OTLP_HEADERS,
            "Authorization=Bearer%20xyz,x-over=generic",
        ),
        (vars::OTLP_TRACES_HEADERS, "x-over=traces"),
    ];
    let t = traces(yaml, &env);
    let expected: BTreeMap<String, String> = [
        ("Authorization", "Bearer xyz"),
        ("x-file", "f"),
        ("x-over", "traces"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(t.headers, expected);
    let m = ok(yaml, &env).export.metrics;
    assert_eq!(m.headers.get("x-over").map(String::as_str), Some("generic"));
}

#[test]
fn the_guides_unencoded_secret_header_works() {
    let env = [(
        vars::OTLP_HEADERS,
        "Authorization=Bearer Z2hwX0l4Y29QOWhr....ScQo=",
    )];
    let t = traces(OBI_CONFIGMAP, &env);
    assert_eq!(
        t.headers.get("Authorization").map(String::as_str),
        Some("Bearer Z2hwX0l4Y29QOWhr....ScQo=")
    );
}

#[test]
fn bad_headers_name_the_variable_and_never_the_secret() {
    let (var, message) = env_error("", &[(vars::OTLP_METRICS_HEADERS, "a=1,TopSecret")]);
    assert_eq!(var, vars::OTLP_METRICS_HEADERS);
    assert!(message.contains("item 2"), "{message}");
    assert!(!message.contains("TopSecret"), "{message}");
}

#[test]
fn timeouts_in_milliseconds() {
    let env = [
        (vars::OTLP_TIMEOUT, "2500"),
        (vars::OTLP_METRICS_TIMEOUT, "100"),
    ];
    let c = ok("", &env);
    assert_eq!(c.export.traces.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(c.export.metrics.timeout, Some(Duration::from_millis(100)));
}

#[test]
fn resource_attributes() {
    let env = [(
        vars::RESOURCE_ATTRIBUTES,
        "deployment.environment=prod,team=a%2Cb , host.name = h1",
    )];
    let c = ok("", &env);
    let attrs: Vec<(&str, &str)> = c
        .export
        .resource_attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attrs,
        vec![
            ("deployment.environment", "prod"),
            ("host.name", "h1"),
            ("team", "a,b")
        ]
    );
    let (var, _) = env_error("", &[(vars::RESOURCE_ATTRIBUTES, "novalue")]);
    assert_eq!(var, vars::RESOURCE_ATTRIBUTES);
}

#[test]
fn prometheus_port_zero_is_off() {
    let c = ok("prometheus_export:\n  port: 0\n", &NO_ENV);
    assert_eq!(c.export.prometheus_port, None);
    let c = ok(
        "prometheus_export:\n  port: 9400\n",
        &[(vars::PROMETHEUS_PORT, "0")],
    );
    assert_eq!(c.export.prometheus_port, None);
}

// --- selection -----------------------------------------------------------------

#[test]
fn kubernetes_only_entries_select_every_process_and_say_so() {
    let yaml = "\
open_port: 80
discovery:
  instrument:
    - open_ports: 8080
    - k8s_namespace: shop
      k8s_deployment_name: 'checkout-*'
";
    let c = ok(yaml, &NO_ENV);
    // The loader cannot select on Kubernetes criteria: it reports every process (the
    // processor's exact selection decides, `crate::select`).
    assert!(c.selection().is_empty());
    // Kubernetes metadata autodetected: resolved at run time, nothing to say.
    assert_eq!(c.warnings(), Vec::<String>::new());
    // Kubernetes metadata off: the entry can match nothing, and the user is told.
    let off = ok(
        &format!("{yaml}attributes:\n  kubernetes:\n    enable: false\n"),
        &NO_ENV,
    );
    let w = off.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("discovery.instrument[1]"), "{w:?}");
    assert!(w[0].contains("matches no process"), "{w:?}");
    assert_eq!(
        c.discovery.instrument[1].k8s_deployment_name.as_deref(),
        Some("checkout-*")
    );
}

#[test]
fn entries_the_loader_cannot_express_and_unknown_languages_are_reported() {
    let yaml = "\
discovery:
  instrument:
    - cmd_args: '*--serve*'
    - languages: go
    - languages: '{python,nodejs}'
      cmd_args: ['*app.py*', '*server.js*']
";
    let c = ok(yaml, &NO_ENV);
    assert!(c.selection().is_empty());
    let w = c.warnings();
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(
        w[0].contains("instrument[0]") && w[0].contains("processor selects"),
        "{w:?}"
    );
    assert!(
        w[2].contains("instrument[1].languages `go`") && w[2].contains("matches no process"),
        "{w:?}"
    );
    assert_eq!(
        c.discovery.instrument[2].cmd_args,
        vec!["*app.py*", "*server.js*"]
    );
}

#[test]
fn open_ports_accept_obi_spellings() {
    let yaml = "\
discovery:
  instrument:
    - open_ports: 443
    - open_ports: '80,8000-8001'
    - open_ports: [9000, '9100-9101']
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(
        tandem_proto::selection::format_port_ranges(&c.selection().ports),
        "443,80,8000-8001,9000,9100-9101"
    );
}

#[test]
fn duplicates_are_selected_once() {
    let yaml = "\
open_port: 80
discovery:
  instrument:
    - open_ports: 80
      exe_path: '*/nginx'
    - exe_path: '*/nginx'
";
    let s = ok(yaml, &[(vars::AUTO_TARGET_EXE, "*/nginx")]).selection();
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.exe_globs, vec!["*/nginx"]);
}

#[test]
fn kubernetes_enable_accepts_yaml_booleans_and_strings() {
    for (value, expected) in [
        ("true", KubeEnable::True),
        ("false", KubeEnable::False),
        ("'true'", KubeEnable::True),
        ("autodetect", KubeEnable::Autodetect),
    ] {
        let c = ok(
            &format!("attributes:\n  kubernetes:\n    enable: {value}\n"),
            &NO_ENV,
        );
        assert_eq!(c.kubernetes.enable, expected, "{value}");
    }
}

#[test]
fn default_exclusions_absent_empty_or_given() {
    assert_eq!(ok("", &NO_ENV).discovery.default_exclude_instrument, None);
    for yaml in [
        "discovery:\n  default_exclude_instrument:\n",
        "discovery:\n  default_exclude_instrument: []\n",
    ] {
        assert_eq!(
            ok(yaml, &NO_ENV).discovery.default_exclude_instrument,
            Some(Vec::new()),
            "{yaml}"
        );
    }
    let c = ok(
        "discovery:\n  default_exclude_instrument:\n    - exe_path: '*/otelcol*'\n",
        &NO_ENV,
    );
    let given = c.discovery.default_exclude_instrument.unwrap_or_default();
    assert_eq!(given[0].exe_path.as_deref(), Some("*/otelcol*"));
}

// --- Instrumentation switches ---------------------------------------------------------

#[test]
fn instrumentations_default_file_and_environment() {
    use crate::settings::{Instrumentation as I, Instrumentations};
    let d = ok("", &NO_ENV);
    assert_eq!(
        d.export.traces_instrumentations,
        Instrumentations::default()
    );
    assert!(d.export.traces_instrumentations.is_enabled(I::Http));
    assert!(d.export.traces_instrumentations.is_enabled(I::Grpc));
    assert!(d.export.metrics_instrumentations.is_enabled(I::Sql));
    assert!(!d.export.metrics_instrumentations.is_enabled(I::Dns));

    let yaml = "\
otel_traces_export:
  instrumentations: [http, redis]
metrics:
  instrumentations:
    - grpc
";
    let c = ok(yaml, &NO_ENV);
    let t = &c.export.traces_instrumentations;
    assert!(t.is_enabled(I::Http) && t.is_enabled(I::Redis));
    assert!(!t.is_enabled(I::Grpc) && !t.is_enabled(I::Sql));
    let m = &c.export.metrics_instrumentations;
    assert!(m.is_enabled(I::Grpc) && !m.is_enabled(I::Http));

    // The environment wins (an empty variable counts as unset); `*` is everything.
    let c = ok(
        yaml,
        &[
            ("OTEL_EBPF_TRACES_INSTRUMENTATIONS", "*"),
            ("OTEL_EBPF_METRICS_INSTRUMENTATIONS", ""),
        ],
    );
    assert_eq!(c.export.traces_instrumentations, Instrumentations::all());
    assert!(c.export.traces_instrumentations.is_enabled(I::Gpu));
    assert_eq!(c.export.metrics_instrumentations, m.clone());
    // An empty list switches everything off.
    let c = ok("metrics:\n  instrumentations: []\n", &NO_ENV);
    assert_eq!(c.export.metrics_instrumentations, Instrumentations::none());
    let c = ok(
        "",
        &[("OTEL_EBPF_METRICS_INSTRUMENTATIONS", "sql, Kafka,mongo")],
    );
    let m = &c.export.metrics_instrumentations;
    assert!(m.is_enabled(I::Sql) && m.is_enabled(I::Kafka) && m.is_enabled(I::Mongo));
    assert!(!m.is_enabled(I::Http));

    // Older files put the metrics list under the exporter.
    let c = ok("otel_metrics_export:\n  instrumentations: [sql]\n", &NO_ENV);
    assert!(c.export.metrics_instrumentations.is_enabled(I::Sql));
    assert!(!c.export.metrics_instrumentations.is_enabled(I::Http));
}

#[test]
fn unknown_instrumentation_is_an_error() {
    let (var, message) = env_error("", &[("OTEL_EBPF_TRACES_INSTRUMENTATIONS", "http,soap")]);
    assert_eq!(var, "OTEL_EBPF_TRACES_INSTRUMENTATIONS");
    assert!(
        message.contains("unknown instrumentation `soap`"),
        "{message}"
    );
    let e = file_error(
        "otel_traces_export:\n  instrumentations: [http, soap]\n",
        &NO_ENV,
    );
    assert_eq!(
        e.key.as_deref(),
        Some("otel_traces_export.instrumentations")
    );
    assert!(e.message.contains("soap"), "{}", e.message);
}

#[test]
fn kubernetes_informer_settings_and_downward_api() {
    let c = Config::from_yaml(
        Path::new("k.yml"),
        "attributes:\n  kubernetes:\n    informers_sync_timeout: 10s\n    informers_resync_period: 5m\n",
        &[
            ("OTEL_EBPF_KUBE_INFORMERS_RESYNC_PERIOD", "1h"),
            ("KUBE_NODE_NAME", "node-a"),
            ("KUBE_NAMESPACE", "tandem"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ],
    )
    .unwrap();
    let k = &c.kubernetes;
    assert_eq!(k.informers_sync_timeout, Duration::from_secs(10));
    assert_eq!(k.informers_resync_period, Duration::from_secs(3600));
    assert_eq!(k.node_name.as_deref(), Some("node-a"));
    assert_eq!(k.own_namespace.as_deref(), Some("tandem"));
    assert!(k.in_cluster);
    assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    let d = Config::default().kubernetes;
    assert_eq!(d.informers_sync_timeout, Duration::from_secs(30));
    assert_eq!(d.informers_resync_period, Duration::from_secs(1800));
}

#[test]
fn kubernetes_entries_leave_the_rest_of_the_selection() {
    let c = Config::from_yaml(
        Path::new("k.yml"),
        "discovery:\n  instrument:\n    - open_ports: 8080\n    - k8s_namespace: shop\n",
        &[("X", "y")],
    )
    .unwrap();
    assert!(
        c.selection().is_empty(),
        "a k8s-only entry selects everything without kube"
    );
    let s = c.selection_without_kubernetes_entries();
    assert_eq!(s.ports.len(), 1);
    let only_k8s = Config::from_yaml(
        Path::new("k.yml"),
        "discovery:\n  instrument:\n    - k8s_namespace: shop\n",
        &[("X", "y")],
    )
    .unwrap();
    assert!(only_k8s.selection_without_kubernetes_entries().is_empty());
    assert_eq!(only_k8s.warnings_for(false).len(), 1);
    assert!(only_k8s.warnings_for(true).is_empty());
}

#[test]
fn beyla_variables_log_format_target_pids_and_the_queue_size() {
    use tandem_proto::process::LogFormat;
    // Beyla's names are read when OBI's are unset; OBI's win.
    let c = ok(
        "",
        &[
            ("BEYLA_OPEN_PORT", "8080"),
            ("BEYLA_TRACE_PRINTER", "text"),
            ("OTEL_EBPF_LOG_LEVEL", "warn"),
            ("BEYLA_LOG_LEVEL", "debug"),
        ],
    );
    assert_eq!(
        tandem_proto::selection::format_port_ranges(&c.selection().ports),
        "8080"
    );
    assert_eq!(c.export.trace_printer, TracePrinter::Text);
    assert_eq!(c.log_level, Some(crate::config::LogLevel::Warn));

    let c = ok("log_format: json\ntarget_pids: [42, 43]\n", &[("X", "")]);
    assert_eq!(c.log_format, Some(LogFormat::Json));
    assert_eq!(c.selection().pids, vec![42, 43]);
    let c = ok(
        "log_format: json\ntarget_pids: [42]\n",
        &[
            ("OTEL_EBPF_LOG_FORMAT", "text"),
            ("OTEL_EBPF_TARGET_PID", "7,8"),
        ],
    );
    assert_eq!(c.log_format, Some(LogFormat::Text));
    assert_eq!(c.selection().pids, vec![7, 8]);
    let (var, message) = env_error("", &[("OTEL_EBPF_TARGET_PID", "7,x")]);
    assert_eq!(var, "OTEL_EBPF_TARGET_PID");
    assert!(message.contains("`x` is not a process id"), "{message}");

    let c = ok("", &[("OTEL_EBPF_OTLP_TRACES_QUEUE_SIZE", "100")]);
    assert_eq!(c.export.max_queue_size, 100);
}

/// Keys of OBI's current reference tandem does not act on load, each named once in
/// a warning (`cmd_args`, in the file too, is acted on: `crate::select`).
#[test]
fn current_obi_keys_load_with_a_warning() {
    let yaml = [
        "health_check:",
        "  port: 8080",
        "jvm_runtime_metrics: true",
        "excluded_linux_system_paths: [/usr/bin]",
        "file_format: v2",
        "attributes:",
        "  metric_span_names_limit: 100",
        "  rename_unresolved_hosts: unresolved",
        "  sensitive_query_params: [token]",
        "  metadata_retry: {}",
        "  kubernetes:",
        "    reconnect_initial_interval: 5s",
        "prometheus_export:",
        "  native_histogram: true",
        "  exemplar_filter: trace_based",
        "  extra_span_resource_attributes: [k8s.cluster.name]",
        "otel_metrics_export:",
        "  exponential_histogram: true",
        "discovery:",
        "  instrument:",
        "    - open_ports: 80",
        "      cmd_args: [\"--serve\"]",
        "",
    ]
    .join("\n");
    let c = ok(&yaml, &[("X", "")]);
    let warnings = c.warnings();
    assert_eq!(c.health_check.port, 8080, "health_check is acted on");
    for key in [
        "jvm_runtime_metrics",
        "excluded_linux_system_paths",
        "file_format",
        "attributes.rename_unresolved_hosts",
        "attributes.sensitive_query_params",
        "attributes.metadata_retry",
        "attributes.kubernetes.reconnect_initial_interval",
        "prometheus_export.native_histogram",
        "prometheus_export.exemplar_filter",
        "prometheus_export.extra_span_resource_attributes",
        "otel_metrics_export.exponential_histogram",
    ] {
        let n = warnings
            .iter()
            .filter(|w| w.contains(&format!("`{key}`")))
            .count();
        assert_eq!(n, 1, "{key}: {warnings:#?}");
    }
}

#[test]
fn histogram_buckets_are_obis_and_configurable() {
    let c = ok("", &[("X", "")]);
    assert_eq!(c.export.buckets, crate::settings::Buckets::default());
    assert_eq!(
        c.export.buckets.duration[0], 0.0,
        "OBI's buckets start at 0"
    );
    let c = ok(
        "otel_metrics_export:\n  buckets:\n    duration_histogram: [0.1, 1, 10]\nprometheus_export:\n  buckets:\n    request_size_histogram: [1]\n",
        &[("X", "")],
    );
    assert_eq!(c.export.buckets.duration, &[0.1, 1.0, 10.0][..]);
    assert_eq!(
        c.export.buckets.request_size,
        crate::settings::Buckets::default().request_size,
        "otel_metrics_export.buckets wins as a whole"
    );
    let e = file_error(
        "prometheus_export:\n  buckets:\n    response_size_histogram: [10, 5]\n",
        &[("X", "")],
    );
    assert_eq!(
        e.key.as_deref(),
        Some("prometheus_export.buckets.response_size_histogram")
    );
    assert!(e.message.contains("ascending"), "{e}");
}

#[test]
fn health_check_from_the_file_and_the_environment() {
    let c = ok("", &NO_ENV);
    assert!(!c.health_check.enabled(), "off by default, as OBI");
    let yaml = "health_check:\n  port: 8080\n  listen_address: 0.0.0.0\n";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(c.health_check.port, 8080);
    assert_eq!(c.health_check.listen_address.to_string(), "0.0.0.0");
    let c = ok(
        yaml,
        &[
            ("OTEL_EBPF_HEALTH_CHECK_PORT", "9091"),
            ("OTEL_EBPF_HEALTH_CHECK_UNIX_SOCKET_PATH", "@tandem-health"),
        ],
    );
    assert_eq!(c.health_check.port, 9091);
    assert_eq!(
        c.health_check.unix_socket_path.as_deref(),
        Some("@tandem-health")
    );
    let (var, message) = env_error(
        "",
        &[("OTEL_EBPF_HEALTH_CHECK_LISTEN_ADDRESS", "localhost")],
    );
    assert_eq!(var, "OTEL_EBPF_HEALTH_CHECK_LISTEN_ADDRESS");
    assert!(message.contains("not an IP address"), "{message}");
}
