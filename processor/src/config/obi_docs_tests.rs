//! Every YAML example of OBI's configuration documentation loads, unchanged (issue 14).
//!
//! The examples are `testdata/obi-docs/<page>-<n>.yml`, copied verbatim from the
//! opentelemetry.io pages under `docs/zero-code/obi/configure/` and
//! `docs/zero-code/obi/network/` (the first two lines of each file are comments naming
//! the page and its section). `testdata/obi-docs/README.md` lists them and the
//! fragments that are not OBI configuration files (Collector configurations,
//! Kubernetes manifests, shell). Each file is loaded the way the binary loads
//! `--config` ([`Config::load`], here with an empty environment) and must either load
//! — acted on, or with a warning for every OBI key tandem accepts and ignores — or be
//! in [`REFUSED`] with the reason and the message expected.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

const NO_ENV: [(&str, &str); 0] = [];

/// A file that loads, with the warnings it must give: one for each accepted-but-ignored
/// key present (as a dotted path) and for each metrics feature tandem does not make.
/// (Warnings about `discovery.instrument` entries, the selection's business, are
/// printed, not checked.)
struct Loads {
    file: &'static str,
    ignored: &'static [&'static str],
    features: &'static [&'static str],
}

const fn loads(file: &'static str) -> Loads {
    Loads {
        file,
        ignored: &[],
        features: &[],
    }
}

const fn ignoring(file: &'static str, ignored: &'static [&'static str]) -> Loads {
    Loads {
        file,
        ignored,
        features: &[],
    }
}

/// Every example that loads.
const LOADS: &[Loads] = &[
    loads("collector-receiver-1.yml"),
    ignoring("example-1.yml", &["ebpf"]),
    Loads {
        features: &["network", "network_inter_zone"],
        ..loads("export-data-1.yml")
    },
    ignoring(
        "export-data-2.yml",
        &[
            "discovery.instrument[0].metrics",
            "discovery.instrument[1].metrics",
        ],
    ),
    Loads {
        features: &["application_jvm"],
        ..ignoring("export-data-3.yml", &["jvm_runtime_metrics"])
    },
    ignoring(
        "export-data-4.yml",
        &[
            "otel_metrics_export.histogram_aggregation",
            "otel_metrics_export.ttl",
        ],
    ),
    loads("export-data-5.yml"),
    ignoring(
        "export-data-6.yml",
        &[
            "prometheus_export.ttl",
            "prometheus_export.extra_resource_attributes",
        ],
    ),
    loads("export-modes-1.yml"),
    loads("export-modes-2.yml"),
    ignoring("filter-metrics-traces-1.yml", &["filter.network"]),
    ignoring("filter-metrics-traces-2.yml", &["filter.network"]),
    ignoring(
        "filter-metrics-traces-3.yml",
        &["filter.application.server.port.greater_equals"],
    ),
    ignoring("filter-metrics-traces-4.yml", &["filter.network"]),
    loads("internal-metrics-reporter-1.yml"),
    loads("metrics-histograms-1.yml"),
    loads("metrics-histograms-2.yml"),
    ignoring(
        "metrics-histograms-3.yml",
        &["otel_metrics_export.buckets.stat_tcp_rtt_histogram"],
    ),
    ignoring(
        "metrics-traces-attributes-1.yml",
        &["attributes.select.resource"],
    ),
    loads("metrics-traces-attributes-2.yml"),
    ignoring(
        "metrics-traces-attributes-3.yml",
        &["attributes.select.traces"],
    ),
    ignoring(
        "metrics-traces-attributes-4.yml",
        &["attributes.sensitive_query_params"],
    ),
    ignoring("metrics-traces-attributes-5.yml", &["ebpf"]),
    ignoring(
        "metrics-traces-attributes-6.yml",
        &["attributes.instance_id"],
    ),
    loads("metrics-traces-attributes-7.yml"),
    ignoring(
        "metrics-traces-attributes-8.yml",
        &["attributes.extra_group_attributes"],
    ),
    ignoring("network-1.yml", &["network"]),
    ignoring("network-2.yml", &["network"]),
    ignoring("network-config-1.yml", &["network"]),
    ignoring("network-config-2.yml", &["network"]),
    ignoring("network-config-3.yml", &["network"]),
    loads("network-inter-az-1.yml"),
    Loads {
        features: &["network", "network_inter_zone"],
        ..loads("network-inter-az-2.yml")
    },
    ignoring("network-quickstart-1.yml", &["network"]),
    ignoring("network-quickstart-2.yml", &["network"]),
    ignoring("options-1.yml", &["shutdown_timeout", "channel_buffer_len"]),
    loads("options-2.yml"),
    loads("options-3.yml"),
    loads("options-4.yml"),
    loads("resources-instrumenter-config-1.yml"),
    loads("routes-decorator-1.yml"),
    loads("routes-decorator-2.yml"),
    loads("routes-decorator-3.yml"),
    loads("routes-decorator-4.yml"),
    loads("sample-traces-1.yml"),
    loads("service-discovery-1.yml"),
    loads("service-discovery-2.yml"),
    loads("service-discovery-3.yml"),
    loads("service-discovery-4.yml"),
    loads("service-discovery-5.yml"),
    loads("service-discovery-6.yml"),
    loads("service-discovery-7.yml"),
    loads("service-discovery-8.yml"),
    ignoring("service-discovery-9.yml", &["discovery.rules"]),
    ignoring("service-discovery-10.yml", &["discovery.rules"]),
    loads("service-discovery-11.yml"),
    loads("service-discovery-12.yml"),
    loads("service-discovery-13.yml"),
    ignoring("tune-performance-1.yml", &["ebpf"]),
];

/// A file tandem refuses, why, and what the error must say.
struct Refused {
    file: &'static str,
    why: &'static str,
    message: &'static str,
}

/// Examples refused: none. tandem refuses OBI's deprecated regular-expression
/// selectors (`executable_path`, `discovery.services`, ...) on purpose, with
/// directions; no example of the documentation uses them.
const REFUSED: &[Refused] = &[];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/testdata/obi-docs")
}

/// The `.yml` files of the folder, by name.
fn files() -> BTreeSet<String> {
    std::fs::read_dir(dir())
        .unwrap_or_else(|e| panic!("{}: {e}", dir().display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect()
}

/// What the configuration sets that the default does not, one item per setting.
fn acted_on(c: &Config) -> Vec<String> {
    let d = Config::default();
    let mut out = Vec::new();
    macro_rules! diff {
        ($($name:literal => $($field:ident).+),* $(,)?) => {
            $(if c.$($field).+ != d.$($field).+ {
                out.push(format!("{}={:?}", $name, c.$($field).+));
            })*
        };
    }
    diff!(
        "open_port" => discovery.open_port,
        "target_pids" => discovery.target_pids,
        "routes" => routes,
        "routes.wildcard_char" => routes_wildcard_char,
        "routes.max_path_segment_cardinality" => routes_max_path_segment_cardinality,
        "trace_printer" => export.trace_printer,
        "otel_traces_export" => export.traces,
        "otel_metrics_export" => export.metrics,
        "sampler" => export.sampler,
        "prometheus_export.port" => export.prometheus_port,
        "prometheus_export.path" => export.prometheus_path,
        "metrics_interval" => export.metrics_interval,
        "internal_metrics" => export.internal_metrics,
        "otel_traces_export.instrumentations" => export.traces_instrumentations,
        "metrics.instrumentations" => export.metrics_instrumentations,
        "buckets" => export.buckets,
        "filter.application" => export.filter,
        "attributes.select" => export.attribute_select,
        "attributes.metric_span_names_limit" => export.metric_span_names_limit,
        "health_check" => health_check,
        "metrics.features" => metrics_features,
        "attributes.kubernetes.enable" => kubernetes.enable,
        "attributes.kubernetes.resource_labels" => kubernetes.resource_labels,
        "log_level" => log_level,
    );
    // Selectors in full would be long: their criteria are enough.
    let selectors = |list: &[InstrumentSelector]| -> Vec<String> {
        list.iter()
            .map(|s| {
                let none = InstrumentSelector::default();
                let debug = format!("{s:?}");
                let empty = format!("{none:?}");
                // Keep the fields that differ from an empty selector.
                let fields = |t: &str| -> Vec<String> {
                    t.trim_start_matches("InstrumentSelector { ")
                        .trim_end_matches(" }")
                        .split(", ")
                        .map(str::to_string)
                        .collect()
                };
                let empty = fields(&empty);
                fields(&debug)
                    .into_iter()
                    .filter(|f| !empty.contains(f))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    if !c.discovery.instrument.is_empty() {
        out.push(format!(
            "discovery.instrument={:?}",
            selectors(&c.discovery.instrument)
        ));
    }
    if !c.discovery.exclude_instrument.is_empty() {
        out.push(format!(
            "discovery.exclude_instrument={:?}",
            selectors(&c.discovery.exclude_instrument)
        ));
    }
    if let Some(list) = &c.discovery.default_exclude_instrument {
        out.push(format!(
            "discovery.default_exclude_instrument={:?}",
            selectors(list)
        ));
    }
    out
}

/// The warnings of a loaded file about accepted-but-ignored keys and metrics features
/// (the keys and features they name), and any such warning that names none.
#[derive(Debug, Default, PartialEq)]
struct Warned {
    ignored: BTreeSet<String>,
    features: BTreeSet<String>,
    unreadable: Vec<String>,
}

/// The name between the first pair of backticks after `prefix`.
fn quoted_after<'a>(w: &'a str, prefix: &str) -> Option<&'a str> {
    w.split_once(prefix)?
        .1
        .split_once('`')?
        .1
        .split_once('`')
        .map(|(k, _)| k)
}

fn sort_warnings(file: &Path, warnings: &[String]) -> Warned {
    let named = format!("{}: ", file.display());
    let mut out = Warned::default();
    for w in warnings {
        if w.contains("is an OBI setting tandem does not implement yet") && w.starts_with(&named) {
            match quoted_after(w, &named) {
                Some(k) => out.ignored.insert(k.to_string()),
                None => {
                    out.unreadable.push(w.clone());
                    true
                }
            };
        } else if let Some(f) = w
            .strip_prefix("metrics feature `")
            .and_then(|r| r.split_once('`'))
            .filter(|(_, rest)| rest.contains("does not implement yet"))
        {
            out.features.insert(f.0.to_string());
        } else if w.contains("does not implement yet") {
            out.unreadable.push(w.clone());
        }
    }
    out
}

fn expected_warned(expected: &Loads) -> Warned {
    Warned {
        ignored: expected.ignored.iter().map(|k| k.to_string()).collect(),
        features: expected.features.iter().map(|k| k.to_string()).collect(),
        unreadable: Vec::new(),
    }
}

#[test]
fn obi_docs_every_example_is_collected_and_listed() {
    let readme = std::fs::read_to_string(dir().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let collected: usize = readme
        .lines()
        .find_map(|l| l.strip_prefix("Examples collected: "))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("README.md has no `Examples collected: N` line"));
    let files = files();
    assert_eq!(
        files.len(),
        collected,
        "README.md says {collected} examples were collected; the folder has {}",
        files.len()
    );
    for f in &files {
        assert!(
            readme.contains(&format!("`{f}`")),
            "{f} is not listed in README.md"
        );
        let text = std::fs::read_to_string(dir().join(f)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.starts_with("# source: https://opentelemetry.io/docs/zero-code/obi/"),
            "{f} does not name its page on its first line"
        );
    }
    // Every file has its expectation, and every expectation its file.
    let expected: BTreeSet<String> = LOADS
        .iter()
        .map(|l| l.file)
        .chain(REFUSED.iter().map(|r| r.file))
        .map(str::to_string)
        .collect();
    assert_eq!(
        expected.len(),
        LOADS.len() + REFUSED.len(),
        "a file is listed twice"
    );
    assert_eq!(
        files, expected,
        "files without expectations, or the reverse"
    );
}

#[test]
fn obi_docs_every_example_loads_acted_on_or_warned() {
    let mut failures = Vec::new();
    let mut loaded = 0;
    for expected in LOADS {
        let path = dir().join(expected.file);
        let c = match Config::load(Some(&path), &NO_ENV) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: does not load: {e}", expected.file));
                continue;
            }
        };
        let mut warnings = c.warnings();
        warnings.sort();
        let acted = acted_on(&c);
        loaded += 1;
        println!("{}: loads", expected.file);
        for a in &acted {
            println!("    acted on: {a}");
        }
        for w in &warnings {
            println!("    warning:  {w}");
        }
        if acted.is_empty() && warnings.is_empty() {
            failures.push(format!(
                "{}: loads but is neither acted on nor warned about",
                expected.file
            ));
        }
        let got = sort_warnings(&path, &warnings);
        let want = expected_warned(expected);
        if got != want {
            failures.push(format!(
                "{}: warnings\n{got:#?}\nexpected\n{want:#?}",
                expected.file
            ));
        }
    }
    for r in REFUSED {
        let path = dir().join(r.file);
        match Config::load(Some(&path), &NO_ENV) {
            Ok(_) => failures.push(format!(
                "{}: loads, but is expected to be refused ({})",
                r.file, r.why
            )),
            Err(e) => {
                let e = e.to_string();
                println!("{}: refused ({}):\n    {e}", r.file, r.why);
                if !e.contains(r.message) || !e.contains(&path.display().to_string()) {
                    failures.push(format!(
                        "{}: refused with `{e}`, expected a message naming the file and \
                         saying `{}`",
                        r.file, r.message
                    ));
                }
            }
        }
    }
    println!(
        "{} examples: {loaded} of {} load, {} refused as expected",
        LOADS.len() + REFUSED.len(),
        LOADS.len(),
        REFUSED.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
