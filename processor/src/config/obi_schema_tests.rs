//! Every key of OBI's current configuration reference loads (issue 14).
//!
//! The reference is OBI's generated JSON schema, vendored unchanged as
//! `testdata/obi-config-schema.json` (`testdata/README.md` names its source). The test
//! walks it from the root object, resolving `$ref` into `$defs`, and enumerates every
//! key path: objects with `properties` are recursed into, lists of objects as `key[]`,
//! maps (`additionalProperties`) under a placeholder key (`x`, or the first name the
//! schema allows). For each leaf it builds a minimal YAML document setting that key to
//! a sample value (the schema's `default`, else the first of `examples` / `enum`, else
//! one of its type: `true`, `1`, `1.0`, a string fitting its `format` or `pattern`, a
//! list of one sample item, `{}`), loads it with [`Config::from_yaml`] and an empty
//! environment, and requires that it loads and is either acted on (the configuration
//! differs from the same document without the key) or warned about (a warning names
//! the key or an ignored parent). OBI's deprecated regular-expression selectors, which
//! tandem refuses on purpose, must be refused with directions.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::*;

const SCHEMA: &str = include_str!("testdata/obi-config-schema.json");
const NO_ENV: [(&str, &str); 0] = [];

/// OBI's deprecated regular-expression selectors: refused with directions (see
/// `file::refuse_regex`), every key under them too.
const REFUSED: [&str; 4] = [
    "executable_path",
    "discovery.services",
    "discovery.exclude_services",
    "discovery.default_exclude_services",
];

/// What the refusal must say.
const REFUSED_DIRECTIONS: &str = "use discovery.instrument";

/// Map keys where `x` is not a valid name for tandem (it checks them) but a real one
/// is: the filter's attribute names (tandem refuses attributes it does not know).
const MAP_KEYS: [(&str, &str); 1] = [("filter.application", "url.path")];

/// Samples where the schema's type admits values OBI itself cannot use: the sampler
/// argument is a ratio written as a string (the schema says only `string`).
const SAMPLES: [(&str, &str); 1] = [("otel_traces_export.sampler.arg", "\"0.5\"")];

/// Keys that mean something only beside another: the sampler's argument is a ratio
/// for the ratio samplers (the same sibling is in the document without the key).
const SIBLINGS: [(&str, &str, &str); 1] =
    [("otel_traces_export.sampler.arg", "name", "traceidratio")];

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    /// An element of a list (`[]`).
    Item,
}

/// A leaf key path and its schema.
#[derive(Debug, Clone)]
struct Leaf<'a> {
    path: Vec<Seg>,
    /// The property as written (it may hold `$ref` beside `examples`).
    node: &'a Value,
    /// Indices of the `Item` segments that are OBI glob selectors (an entry needs a
    /// selection criterion besides the key under test).
    selector_items: Vec<usize>,
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Item => out.push_str("[]"),
        }
    }
    out
}

fn ref_name(node: &Value) -> Option<&str> {
    node.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
}

/// `node` with its `$ref`s followed.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match ref_name(node) {
            Some(name) => {
                node = root["$defs"]
                    .get(name)
                    .unwrap_or_else(|| panic!("schema: no $defs/{name}"))
            }
            None => break,
        }
    }
    node
}

fn is_object_with_properties(node: &Value) -> bool {
    node.get("properties").is_some_and(Value::is_object)
}

/// Every leaf key path under `node`.
fn walk<'a>(
    root: &'a Value,
    node: &'a Value,
    path: Vec<Seg>,
    selector_items: Vec<usize>,
    out: &mut Vec<Leaf<'a>>,
) {
    assert!(path.len() < 32, "schema too deep at {}", display(&path));
    let r = resolve(root, node);
    // OBI's IntEnum (ports, pids) is read from a scalar or a list, not as its Go
    // struct's `Ranges`: a leaf.
    let int_enum = ref_name(node) == Some("IntEnum");
    if !int_enum && is_object_with_properties(r) {
        let props = r["properties"].as_object().expect("properties");
        for (k, child) in props {
            let mut p = path.clone();
            p.push(Seg::Key(k.clone()));
            walk(root, child, p, selector_items.clone(), out);
        }
        return;
    }
    if !int_enum {
        if let Some(extra) = r.get("additionalProperties").filter(|v| v.is_object()) {
            let here = display(&path);
            let key = MAP_KEYS
                .iter()
                .find(|(p, _)| *p == here)
                .map(|(_, k)| k.to_string())
                .or_else(|| {
                    r.pointer("/propertyNames/enum/0")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "x".to_string());
            let mut p = path;
            p.push(Seg::Key(key));
            walk(root, extra, p, selector_items, out);
            return;
        }
        if let Some(items) = r.get("items") {
            if is_object_with_properties(resolve(root, items)) {
                let mut p = path;
                let mut sel = selector_items;
                if ref_name(items) == Some("GlobAttributes") {
                    sel.push(p.len());
                }
                p.push(Seg::Item);
                walk(root, items, p, sel, out);
                return;
            }
        }
    }
    out.push(Leaf {
        path,
        node,
        selector_items,
    });
}

/// Sample values for a leaf, the schema's own first: `default`, `examples`, `enum`
/// (of the property, then of what it refers to; of each `oneOf` alternative), then one
/// of its type.
fn samples(root: &Value, node: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let r = resolve(root, node);
    if ref_name(node) == Some("IntEnum") {
        let range = &root["$defs"]["IntRange"];
        return range["examples"].as_array().cloned().unwrap_or_default();
    }
    for n in [node, r] {
        if let Some(d) = n.get("default") {
            out.push(d.clone());
        }
        for list in ["examples", "enum"] {
            if let Some(v) = n.get(list).and_then(Value::as_array) {
                out.extend(v.iter().cloned());
            }
        }
    }
    if let Some(alts) = r.get("oneOf").and_then(Value::as_array) {
        for a in alts {
            out.extend(samples(root, a));
        }
    }
    match r.get("type").and_then(Value::as_str) {
        Some("boolean") => out.extend([json!(true), json!(false)]),
        Some("integer") => out.push(json!(1)),
        Some("number") => out.push(json!(1.0)),
        Some("string") => {
            let pattern = r.get("pattern").and_then(Value::as_str).unwrap_or("");
            out.push(match r.get("format").and_then(Value::as_str) {
                Some("uri") => json!("http://localhost:4318"),
                Some("ip") => json!("127.0.0.1"),
                _ if pattern.starts_with("^name:") => json!("name:eth0"),
                _ if pattern.contains("(ms|s|m)") => json!("30s"),
                _ => json!("x"),
            });
        }
        Some("array") => {
            let items = r.get("items").cloned().unwrap_or(json!({}));
            out.extend(
                samples(root, &items)
                    .into_iter()
                    .take(3)
                    .map(|s| json!([s])),
            );
        }
        Some("object") => out.push(json!({})),
        _ => {}
    }
    let mut seen = Vec::new();
    out.retain(|v| {
        let new = !seen.contains(v);
        seen.push(v.clone());
        new
    });
    out
}

/// The document setting `leaf` to `value` (`None`: the same document without it, and
/// without the sections left empty), with a criterion in each selector entry on the
/// way and the key's [`SIBLINGS`].
fn document(leaf: &Leaf, value: Option<&Value>) -> Value {
    fn build(segs: &[Seg], at: usize, leaf: &Leaf, value: Option<&Value>) -> Option<Value> {
        let Some((seg, rest)) = segs.split_first() else {
            return value.cloned();
        };
        match seg {
            Seg::Key(k) => {
                let mut m = Map::new();
                if let Some(v) = build(rest, at + 1, leaf, value) {
                    m.insert(k.clone(), v);
                }
                if rest.is_empty() {
                    let path = display(&leaf.path);
                    for (_, key, v) in SIBLINGS.iter().filter(|(p, _, _)| *p == path) {
                        m.insert(key.to_string(), json!(v));
                    }
                }
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Seg::Item => {
                let selector = leaf.selector_items.contains(&at);
                let mut item = match build(rest, at + 1, leaf, value) {
                    Some(item) => item,
                    None if selector => json!({}),
                    None => return None,
                };
                if selector {
                    // The key under test is the first of `rest`.
                    let tested = match rest.first() {
                        Some(Seg::Key(k)) => k.as_str(),
                        _ => "",
                    };
                    let (k, v) = if tested == "containers_only" {
                        ("open_ports", json!("80"))
                    } else {
                        ("containers_only", json!(true))
                    };
                    if let Value::Object(m) = &mut item {
                        m.entry(k).or_insert(v);
                    }
                }
                Some(json!([item]))
            }
        }
    }
    build(&leaf.path, 0, leaf, value).unwrap_or(json!({}))
}

fn yaml(doc: &Value) -> String {
    yaml_serde::to_string(doc).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// The configuration without what records the file's ignored keys (compared apart),
/// and without the ignored keys of selector entries (kept in them, never acted on).
fn settings(c: &Config) -> Config {
    let strip = |l: &[InstrumentSelector]| -> Vec<InstrumentSelector> {
        l.iter().map(InstrumentSelector::without_ignored).collect()
    };
    let mut c = Config {
        ignored_keys: Vec::new(),
        ..c.clone()
    };
    c.discovery.instrument = strip(&c.discovery.instrument);
    c.discovery.exclude_instrument = strip(&c.discovery.exclude_instrument);
    c.discovery.default_exclude_instrument =
        c.discovery.default_exclude_instrument.as_deref().map(strip);
    c
}

/// The ignored keys the warnings name (list indices as `[]`).
fn warned_keys(warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .filter(|w| w.contains("is an OBI setting tandem does not implement yet"))
        .filter_map(|w| w.split('`').nth(1))
        .map(|k| {
            let mut out = String::new();
            let mut in_index = false;
            for ch in k.chars() {
                match ch {
                    '[' => {
                        in_index = true;
                        out.push_str("[]");
                    }
                    ']' => in_index = false,
                    _ if in_index => {}
                    _ => out.push(ch),
                }
            }
            out
        })
        .collect()
}

fn names(key: &str, path: &str) -> bool {
    path == key
        || path
            .strip_prefix(key)
            .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
}

#[derive(Debug, Default)]
struct Report {
    paths: usize,
    acted_on: usize,
    warned: usize,
    refused: usize,
    failures: Vec<String>,
}

fn check(root: &Value) -> Report {
    let mut leaves = Vec::new();
    walk(root, root, Vec::new(), Vec::new(), &mut leaves);
    let file = Path::new("/obi-schema.yml");
    let load = |doc: &Value| Config::from_yaml(file, &yaml(doc), &NO_ENV);
    let mut report = Report {
        paths: leaves.len(),
        ..Report::default()
    };
    let mut seen = BTreeSet::new();
    for leaf in &leaves {
        let path = display(&leaf.path);
        assert!(seen.insert(path.clone()), "{path} enumerated twice");
        let mut candidates = samples(root, leaf.node);
        if let Some((_, s)) = SAMPLES.iter().find(|(p, _)| *p == path) {
            candidates.insert(0, yaml_serde::from_str(s).expect("sample"));
        }
        let Some(first) = candidates.first() else {
            report.failures.push(format!("{path}: no sample value"));
            continue;
        };
        if REFUSED.iter().any(|r| names(r, &path)) {
            let doc = document(leaf, Some(first));
            match load(&doc) {
                Ok(_) => report.failures.push(format!(
                    "{path}: loads, but OBI's regular-expression selectors must be refused\n{}",
                    yaml(&doc)
                )),
                Err(e) => {
                    let e = e.to_string();
                    let top = REFUSED.iter().find(|r| names(r, &path)).expect("refused");
                    if !e.contains(REFUSED_DIRECTIONS) || !e.contains(top) {
                        report.failures.push(format!(
                            "{path}: refused without directions or without naming `{top}`: {e}"
                        ));
                    } else {
                        println!("{path}: refused");
                        report.refused += 1;
                    }
                }
            }
            continue;
        }
        let base = match load(&document(leaf, None)) {
            Ok(c) => c,
            Err(e) => {
                report
                    .failures
                    .push(format!("{path}: the document without the key fails: {e}"));
                continue;
            }
        };
        // The first sample must load; the others are tried when it is not acted on
        // (an enum's first value may be tandem's default).
        let mut outcome = None;
        for (i, value) in candidates.iter().enumerate() {
            let doc = document(leaf, Some(value));
            let c = match load(&doc) {
                Ok(c) => c,
                Err(e) if i == 0 => {
                    outcome = Some(Err(format!(
                        "{path}: does not load with {value}: {e}\n{}",
                        yaml(&doc)
                    )));
                    break;
                }
                Err(_) => continue,
            };
            let warnings = c.warnings();
            if let Some(k) = warned_keys(&warnings).iter().find(|k| names(k, &path)) {
                outcome = Some(Ok(format!("warned (`{k}`)")));
                break;
            }
            if settings(&c) != settings(&base) {
                outcome = Some(Ok(format!("acted on ({value})")));
                break;
            }
            if i == 0 {
                outcome = Some(Err(format!(
                    "{path}: loads with {value} but is neither acted on nor warned about \
                     (warnings: {warnings:?})"
                )));
            }
        }
        match outcome {
            Some(Ok(how)) => {
                println!("{path}: {how}");
                if how.starts_with("warned") {
                    report.warned += 1;
                } else {
                    report.acted_on += 1;
                }
            }
            Some(Err(f)) => report.failures.push(f),
            None => report.failures.push(format!("{path}: no sample loads")),
        }
    }
    println!(
        "{} paths: {} loaded ({} acted on, {} warned), {} refused, {} failed",
        report.paths,
        report.acted_on + report.warned,
        report.acted_on,
        report.warned,
        report.refused,
        report.failures.len()
    );
    report
}

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("testdata/obi-config-schema.json is JSON")
}

#[test]
fn obi_schema_every_key_loads_acted_on_or_warned() {
    let report = check(&schema());
    assert!(
        report.failures.is_empty(),
        "{} of {} OBI schema keys fail:\n{}",
        report.failures.len(),
        report.paths,
        report.failures.join("\n")
    );
    assert!(report.refused > 0, "the refused selectors were not seen");
}

#[test]
fn obi_schema_check_fails_on_a_key_tandem_does_not_know() {
    let mut s = schema();
    s["properties"]["zz_bogus"] = json!({"type": "boolean"});
    s["$defs"]["TracesConfig"]["properties"]["zz_bogus_too"] = json!({"type": "integer"});
    let report = check(&s);
    let failed: Vec<&String> = report
        .failures
        .iter()
        .filter(|f| f.starts_with("zz_bogus:") || f.starts_with("otel_traces_export.zz_bogus_too:"))
        .collect();
    assert_eq!(failed.len(), 2, "{:#?}", report.failures);
}
