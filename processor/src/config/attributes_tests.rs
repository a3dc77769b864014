//! `attributes.select` and `attributes.metric_span_names_limit`.

use std::path::Path;

use super::*;
use crate::settings::{AttributeRule, DEFAULT_METRIC_SPAN_NAMES_LIMIT};

const FILE: &str = "/config/obi-config.yml";
const NO_ENV: [(&str, &str); 0] = [];

fn load<E: Env>(yaml: &str, env: &E) -> Result<Config, ConfigError> {
    Config::from_yaml(Path::new(FILE), yaml, env)
}

fn ok<E: Env>(yaml: &str, env: &E) -> Config {
    load(yaml, env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn metric_span_names_limit_from_file_and_environment() {
    assert_eq!(
        ok("", &NO_ENV).export.metric_span_names_limit,
        DEFAULT_METRIC_SPAN_NAMES_LIMIT
    );
    let yaml = "attributes:\n  metric_span_names_limit: 7\n";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(c.export.metric_span_names_limit, 7);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // 0 and negative: no limit.
    for v in ["0", "-1"] {
        let yaml = format!("attributes:\n  metric_span_names_limit: {v}\n");
        assert_eq!(ok(&yaml, &NO_ENV).export.metric_span_names_limit, 0);
    }
    let env = [("OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT", "3")];
    assert_eq!(ok(yaml, &env).export.metric_span_names_limit, 3);
    let env = [("BEYLA_METRIC_SPAN_NAMES_LIMIT", "4")];
    assert_eq!(ok(yaml, &env).export.metric_span_names_limit, 4);
    let env = [
        ("BEYLA_METRIC_SPAN_NAMES_LIMIT", "4"),
        ("OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT", "5"),
    ];
    assert_eq!(ok("", &env).export.metric_span_names_limit, 5);
    let e = load("", &[("OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT", "many")]).unwrap_err();
    assert!(
        e.to_string().contains("OTEL_EBPF_METRIC_SPAN_NAMES_LIMIT"),
        "{e}"
    );
    let e = load("attributes:\n  metric_span_names_limit: lots\n", &NO_ENV).unwrap_err();
    assert!(
        e.to_string().contains("attributes.metric_span_names_limit"),
        "{e}"
    );
}

#[test]
fn select_entries_are_read_in_file_order() {
    let yaml = "\
attributes:
  select:
    http_server_request_duration:
      include: [url.path]
      exclude: ['http_route']
    '*':
      include: '*'
    db.client.operation.duration:
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(
        c.export.attribute_select.rules,
        vec![
            AttributeRule {
                metric: "http_server_request_duration".into(),
                include: vec!["url.path".into()],
                exclude: vec!["http_route".into()],
            },
            AttributeRule {
                metric: "*".into(),
                include: vec!["*".into()],
                exclude: vec![],
            },
            AttributeRule {
                metric: "db.client.operation.duration".into(),
                ..AttributeRule::default()
            },
        ]
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn select_resource_and_traces_are_accepted_with_a_warning_each() {
    let yaml = "\
attributes:
  select:
    resource:
      include: ['*']
    traces:
      exclude: [url.path]
    http_client_request_duration:
      include: [url.path]
";
    let c = ok(yaml, &NO_ENV);
    assert_eq!(c.export.attribute_select.rules.len(), 1);
    let w = c.warnings();
    for key in ["attributes.select.resource", "attributes.select.traces"] {
        assert_eq!(
            w.iter().filter(|l| l.contains(&format!("`{key}`"))).count(),
            1,
            "{w:?}"
        );
    }
}

#[test]
fn an_invalid_glob_in_select_names_its_key() {
    let yaml = "\
attributes:
  select:
    http_*:
      include: ['url[']
";
    let e = load(yaml, &NO_ENV).unwrap_err().to_string();
    assert!(e.contains("attributes.select.http_*.include"), "{e}");
    assert!(e.contains("url["), "{e}");
    let e = load(
        "attributes:\n  select:\n    'http_{a':\n      include: [x]\n",
        &NO_ENV,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("attributes.select.http_{a"), "{e}");
    // An unknown key of an entry is refused.
    let e = load(
        "attributes:\n  select:\n    http_*:\n      inclde: [x]\n",
        &NO_ENV,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inclde"), "{e}");
}
