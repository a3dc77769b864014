//! The Prometheus text exposition format 0.0.4 of collected metrics.
//!
//! * Names as OBI's Prometheus names: the OpenTelemetry name with `.` replaced by
//!   `_` and the unit as a suffix (`s`: `_seconds`, `By`: `_bytes`), e.g.
//!   `http.server.request.duration` -> `http_server_request_duration_seconds`,
//!   `http.server.request.body.size` -> `http_server_request_body_size_bytes`;
//!   counters end in `_total`.
//! * Histograms as `NAME_bucket{...,le="B"}` (cumulative counts, ending with
//!   `le="+Inf"`), `NAME_sum`, `NAME_count`; gauges and counters as one line.
//! * Labels: the metric's attributes with `.` as `_` (`http_request_method`,
//!   `http_response_status_code`, `http_route`, `server_port`, `server_address`,
//!   `error_type`), plus, from the process's resource, `service_name`,
//!   `service_namespace` (when set), `job` (`namespace/name`, or `name`) and
//!   `instance` (`service.instance.id`), as OBI labels its application metrics.
//! * `target_info` (gauge, value 1): one series per process with `job`, `instance`
//!   and its resource attributes (`host_name`, `process_pid`, `telemetry_sdk_name`,
//!   ...), as OpenTelemetry's Prometheus compatibility rules and OBI do.
//!
//! Series and families are sorted, so a scrape is deterministic.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry::{Key, Value};

use crate::pipeline::metrics::{Histogram, Kind, Point, ResourceMetrics};
use crate::pipeline::resource::Resource;

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
        let resource = resource_labels(&rm.process.resource);
        let mut has_series = false;
        for m in &rm.metrics {
            let d = &m.descriptor;
            let mut name = metric_name(d.name, d.unit);
            if d.kind == Kind::Counter && !name.ends_with("_total") {
                name.push_str("_total");
            }
            let series: Vec<Series> = m
                .series
                .iter()
                .map(|s| {
                    let labels = labels(&s.attributes, &resource);
                    match &s.point {
                        Point::Histogram(h) => histogram(&name, &labels, h),
                        Point::Gauge(v) | Point::Counter(v) => {
                            let base = label_text(&labels, None);
                            let line = format!("{name}{base} {}\n", number(*v));
                            (base, line)
                        }
                    }
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            has_series = true;
            let family = families.entry(name).or_default();
            family.help = d.description.to_string();
            family.kind = match d.kind {
                Kind::Histogram => "histogram",
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            family.series.extend(series);
        }
        if has_series {
            let labels = target_info_labels(&rm.process.resource);
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

/// A series' labels: its attributes, then the resource's labels it does not have,
/// sorted.
fn labels(
    attributes: &[opentelemetry::KeyValue],
    resource: &[(String, String)],
) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = attributes
        .iter()
        .map(|kv| (label_name(kv.key.as_str()), value_text(&kv.value)))
        .collect();
    for (k, v) in resource {
        if !labels.iter().any(|(n, _)| n == k) {
            labels.push((k.clone(), v.clone()));
        }
    }
    labels.sort();
    labels
}

/// The lines of one histogram series.
fn histogram(name: &str, labels: &[(String, String)], h: &Histogram) -> Series {
    let base = label_text(labels, None);
    let mut lines = String::new();
    let mut cumulative = 0u64;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let le = number(*bound);
        let _ = writeln!(
            lines,
            "{name}_bucket{} {cumulative}",
            label_text(labels, Some(&le))
        );
    }
    let _ = writeln!(
        lines,
        "{name}_bucket{} {}",
        label_text(labels, Some("+Inf")),
        h.count
    );
    let _ = writeln!(lines, "{name}_sum{base} {}", number(h.sum));
    let _ = writeln!(lines, "{name}_count{base} {}", h.count);
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
    for kv in resource.iter() {
        if kv.key.as_str() == "service.instance.id" {
            continue;
        }
        labels
            .entry(label_name(kv.key.as_str()))
            .or_insert_with(|| value_text(&kv.value));
    }
    let labels: Vec<(String, String)> = labels.into_iter().collect();
    label_text(&labels, None)
}

/// `{a="1",b="2"}` (with `le` last when given); empty for no labels.
pub(super) fn label_text(labels: &[(String, String)], le: Option<&str>) -> String {
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
