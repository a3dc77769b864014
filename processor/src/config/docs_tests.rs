//! Every key the parser knows is in `docs/configuration.md`, and every key the
//! document names is one the parser knows (issue 14).
//!
//! The parser's keys are read from the parser itself: an unknown key in a section
//! makes serde list the section's keys (`expected one of ...`). The document's keys
//! are its backticked dotted paths, with `section.{a, b}` lists expanded.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

/// The sections of the file, as a YAML prefix that opens them (a key under the
/// prefix at the indentation given is inside the section) and their dotted path.
const SECTIONS: [(&str, &str, &str); 17] = [
    ("", "", ""),
    ("otel_traces_export", "otel_traces_export:\n", "  "),
    (
        "otel_traces_export.sampler",
        "otel_traces_export:\n  sampler:\n",
        "    ",
    ),
    ("otel_metrics_export", "otel_metrics_export:\n", "  "),
    ("prometheus_export", "prometheus_export:\n", "  "),
    (
        "otel_metrics_export.buckets",
        "otel_metrics_export:\n  buckets:\n",
        "    ",
    ),
    (
        "prometheus_export.buckets",
        "prometheus_export:\n  buckets:\n",
        "    ",
    ),
    ("metrics", "metrics:\n", "  "),
    ("health_check", "health_check:\n", "  "),
    ("routes", "routes:\n", "  "),
    ("filter", "filter:\n", "  "),
    ("discovery", "discovery:\n", "  "),
    (
        "discovery.instrument[]",
        "discovery:\n  instrument:\n    - open_ports: 80\n",
        "      ",
    ),
    ("attributes", "attributes:\n", "  "),
    (
        "attributes.kubernetes",
        "attributes:\n  kubernetes:\n",
        "    ",
    ),
    ("internal_metrics", "internal_metrics:\n", "  "),
    (
        "internal_metrics.prometheus",
        "internal_metrics:\n  prometheus:\n",
        "    ",
    ),
];

/// The keys serde expects in a section, from the error an unknown key gives.
fn parser_keys(open: &str, indent: &str) -> Vec<String> {
    let yaml = format!("{open}{indent}zz_not_a_key: 1\n");
    let e = match Config::from_yaml(Path::new("/x.yml"), &yaml, &[("X", "")]) {
        Err(ConfigError::File(e)) => e.message,
        other => panic!("an unknown key must be refused: {other:?}"),
    };
    let list = e
        .split("expected one of ")
        .nth(1)
        .or_else(|| e.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in {e:?}"));
    list.split(" (")
        .next()
        .unwrap_or_default()
        .split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim_matches(|c| c == '`' || c == ' ').to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// Every dotted key path the document names (backticked), `a.{b, c}` expanded.
fn document_keys(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let q: String = quoted.split_whitespace().collect::<Vec<_>>().join(" ");
        match q.split_once(".{") {
            Some((prefix, rest)) => {
                for k in rest.trim_end_matches('}').split(',') {
                    out.insert(format!("{prefix}.{}", k.trim()));
                }
            }
            None => {
                out.insert(q);
            }
        }
    }
    out
}

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_parser_key_is_documented() {
    let documented = document_keys(&doc());
    // A document key names a section's key as `section.key`, or a top-level key
    // alone; an entry of `discovery.instrument` as `discovery.instrument[].key` or by
    // its name in the selector table (`exe_path`, `k8s_namespace`, ...).
    let mut missing = Vec::new();
    for (section, open, indent) in SECTIONS {
        for key in parser_keys(open, indent) {
            let full = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let bare_ok = section.is_empty() || section == "discovery.instrument[]";
            // A section is documented through its keys.
            let is_section = SECTIONS.iter().any(|(s, _, _)| *s == full);
            let found = is_section
                || documented.contains(&full)
                || (bare_ok && documented.contains(&key))
                || documented
                    .iter()
                    .any(|d| d.starts_with(&format!("{full}:")));
            if !found {
                missing.push(full);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the parser knows that docs/configuration.md does not name: {missing:#?}"
    );
}

#[test]
fn every_documented_key_is_known_to_the_parser() {
    let known: BTreeSet<String> = SECTIONS
        .iter()
        .flat_map(|(section, open, indent)| {
            parser_keys(open, indent).into_iter().map(move |k| {
                if section.is_empty() {
                    k
                } else {
                    format!("{section}.{k}")
                }
            })
        })
        .collect();
    let sections: BTreeSet<&str> = SECTIONS.iter().map(|(s, _, _)| *s).collect();
    let top: BTreeSet<String> = known.iter().filter(|k| !k.contains('.')).cloned().collect();
    let mut unknown = Vec::new();
    for d in document_keys(&doc()) {
        // A dotted path under a section of the file, in key syntax.
        let Some((head, _)) = d.split_once('.') else {
            continue;
        };
        let looks_like_key = d
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c));
        if !looks_like_key || !top.contains(head) || sections.contains(d.as_str()) {
            continue;
        }
        // discovery.instrument[0].cmd_args and the like: indices as [].
        let normal = d
            .split('.')
            .map(|seg| match seg.split_once('[') {
                Some((name, _)) => format!("{name}[]"),
                None => seg.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let normal = normal.replace("discovery.instrument.", "discovery.instrument[].");
        if !known.contains(&normal) && !known.contains(&normal.replace("[]", "")) {
            unknown.push(d);
        }
    }
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names keys the parser does not know: {unknown:#?}"
    );
}
