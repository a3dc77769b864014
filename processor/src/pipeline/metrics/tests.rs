use super::*;
use crate::model::Side;
use crate::pipeline::resource::{ProcessMap, ResourceSettings};
use crate::pipeline::span::tests::tx;

/// One histogram data point: attributes, count, sum.
pub(crate) type Point = (Vec<KeyValue>, u64, f64);

/// (metric name, data points) of the histograms of `rm`, flattened for asserts.
pub(crate) fn histograms(rm: &ResourceMetrics) -> Vec<(String, Vec<Point>)> {
    rm.metrics
        .iter()
        .map(|m| {
            let pts = m
                .series
                .iter()
                .filter_map(|s| match &s.point {
                    super::Point::Histogram(h) => Some((s.attributes.clone(), h.count, h.sum)),
                    _ => None,
                })
                .collect();
            (m.descriptor.name.to_string(), pts)
        })
        .collect()
}

fn find<'a>(h: &'a [(String, Vec<Point>)], name: &str) -> &'a Vec<Point> {
    &h.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .1
}

fn service_name(rm: &ResourceMetrics) -> Option<Value> {
    rm.process
        .resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
}

#[test]
fn the_loader_posture_is_a_gauge_under_the_processors_own_resource() {
    let mut reg = MetricsRegistry::default();
    assert!(reg.collect().is_empty());
    let resource = crate::pipeline::resource::own_resource("tandem-processor", "box");
    let posture = LoaderPosture {
        excess: vec!["CAP_SYS_ADMIN".into(), "CAP_NET_ADMIN".into()],
        privileged: "holds CAP_SYS_ADMIN".into(),
    };
    reg.record_loader_posture(&resource, &posture);
    let all = reg.collect();
    assert_eq!(all.len(), 1);
    let rm = &all[0];
    assert_eq!(service_name(rm), Some("tandem-processor".into()));
    let mut points = vec![];
    for m in &rm.metrics {
        for s in &m.series {
            if let (Kind::Gauge, super::Point::Gauge(v)) = (m.descriptor.kind, &s.point) {
                points.push((m.descriptor.name.to_string(), *v, s.attributes.clone()));
            }
        }
    }
    assert_eq!(points.len(), 1, "{points:?}");
    let (name, value, attrs) = &points[0];
    assert_eq!(name, "tandem.loader.excess_capabilities");
    assert_eq!(*value, 2.0);
    assert!(attrs.contains(&KeyValue::new(
        "tandem.loader.capabilities.excess",
        "CAP_SYS_ADMIN,CAP_NET_ADMIN"
    )));
    assert!(attrs.contains(&KeyValue::new("tandem.loader.privileged", true)));
    // The Prometheus scrape of the applications' metrics leaves tandem's own out.
    assert!(reg.snapshot().is_empty());
}

#[test]
fn records_durations_and_sizes_with_bounded_attributes() {
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let p = procs.get(42);
    let mut reg = MetricsRegistry::default();
    let t = tx(Side::Server, "GET", "/users/1", Some(200));
    reg.record(&p, &t, Some(&"/users/{id}".into()));
    reg.record(
        &p,
        &tx(Side::Server, "GET", "/users/2", Some(200)),
        Some(&"/users/{id}".into()),
    );
    reg.record(&p, &tx(Side::Client, "POST", "/pay", Some(503)), None);
    let all = reg.collect();
    assert_eq!(all.len(), 1);
    let h = histograms(&all[0]);
    let server = find(&h, "http.server.request.duration");
    assert_eq!(server.len(), 1);
    let (attrs, count, sum) = &server[0];
    assert_eq!(*count, 2);
    assert!((sum - 0.5).abs() < 1e-9, "{sum}");
    let mut keys: Vec<String> = attrs.iter().map(|kv| kv.key.to_string()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "http.request.method",
            "http.response.status_code",
            "http.route",
            "server.port"
        ]
    );
    assert!(attrs.iter().all(|kv| kv.value.as_str() != "/users/1"));
    let client = find(&h, "http.client.request.duration");
    assert_eq!(client[0].1, 1);
    assert!(client[0]
        .0
        .contains(&KeyValue::new("error.type", "503".to_string())));
    assert!(client[0]
        .0
        .contains(&KeyValue::new("server.address", "shop.example".to_string())));
    let req_body = find(&h, "http.server.request.body.size");
    assert_eq!((req_body[0].1, req_body[0].2), (2, 24.0));
    let resp_body = find(&h, "http.client.response.body.size");
    assert_eq!((resp_body[0].1, resp_body[0].2), (1, 34.0));
    assert_eq!(
        all[0]
            .process
            .resource
            .get(&opentelemetry::Key::from_static_str("process.pid")),
        Some(42i64.into())
    );
}

#[test]
fn new_process_with_same_pid_retires_the_old_meters() {
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let mut reg = MetricsRegistry::default();
    let t = tx(Side::Server, "GET", "/", Some(200));
    reg.record(&procs.get(42), &t, None);
    procs.on_started(&tandem_proto::v1::ProcessStarted {
        pid: 42,
        exe_path: "/bin/new".into(),
        ..Default::default()
    });
    reg.record(&procs.get(42), &t, None);
    // Both exported once; then only the new one.
    assert_eq!(reg.collect().len(), 2);
    assert_eq!(reg.collect().len(), 1);
    assert_eq!(reg.processes(), 1);
}

#[test]
fn series_are_bounded_per_metric_with_one_overflow_series() {
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let p = procs.get(1);
    let mut reg = MetricsRegistry::default();
    for i in 0..(MAX_SERIES_PER_METRIC + 50) {
        let route = format!("/r{i}");
        reg.record(
            &p,
            &tx(Side::Server, "GET", &route, Some(200)),
            Some(&route.as_str().into()),
        );
    }
    let all = reg.collect();
    let m = all[0]
        .metric("http.server.request.duration")
        .expect("metric");
    assert_eq!(m.series.len(), MAX_SERIES_PER_METRIC + 1);
    let overflow = m
        .series
        .iter()
        .find(|s| s.attributes == vec![KeyValue::new("otel.metric.overflow", true)])
        .expect("overflow series");
    match &overflow.point {
        super::Point::Histogram(h) => assert_eq!(h.count, 50),
        other => panic!("{other:?}"),
    }
}

#[test]
fn processes_are_bounded() {
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let mut reg = MetricsRegistry::default();
    let t = tx(Side::Server, "GET", "/", Some(200));
    for pid in 0..(MAX_METERED_PROCESSES as u32 + 3) {
        reg.record(&procs.get(pid), &t, None);
    }
    assert_eq!(reg.processes(), MAX_METERED_PROCESSES);
    // The three retired are collected one last time.
    assert_eq!(reg.collect().len(), MAX_METERED_PROCESSES + 3);
    assert_eq!(reg.collect().len(), MAX_METERED_PROCESSES);
}

/// `metrics.features: [application_span, application_service_graph]`: OBI's span
/// metrics and service graph, with the other end's service name when linked.
#[test]
fn span_metrics_and_service_graph_follow_the_features() {
    use crate::model::{LinkKind, TraceIds};
    let mut procs = ProcessMap::new(ResourceSettings::default());
    for (pid, exe) in [(42, "/srv/frontend"), (7, "/usr/bin/curl")] {
        procs.on_started(&tandem_proto::v1::ProcessStarted {
            pid,
            exe_path: exe.into(),
            ..Default::default()
        });
    }
    let (front, curl) = (procs.get(42), procs.get(7));
    let mut reg = MetricsRegistry::with_features(MetricsFeatures {
        application: false,
        span: true,
        service_graph: true,
    });
    let linked = |mut t: Transaction, peer: u32| {
        t.trace = Some(TraceIds {
            trace_id: 1,
            span_id: 2,
            parent_span_id: 3,
            link: LinkKind::Connection,
            remote_sampled: None,
            peer_pid: peer,
            begin: Default::default(),
        });
        t
    };
    // Two requests from curl (linked), one failing; one from an untraced client.
    let ok = linked(tx(Side::Server, "GET", "/u/1", Some(200)), 7);
    let failed = linked(tx(Side::Server, "GET", "/u/2", Some(503)), 7);
    let untraced = tx(Side::Server, "GET", "/u/3", Some(200));
    let route: Arc<str> = "/u/{id}".into();
    for t in [&ok, &failed] {
        reg.record_linked(&front, t, Some(&route), Some(&curl));
    }
    reg.record_linked(&front, &untraced, Some(&route), None);
    let all = reg.collect();
    assert_eq!(all.len(), 1);
    let rm = &all[0];
    let names: Vec<&str> = rm.metrics.iter().map(|m| m.descriptor.name).collect();
    assert_eq!(
        names,
        [
            "traces_spanmetrics_latency",
            "traces_spanmetrics_calls_total",
            "traces_spanmetrics_size_total",
            "traces_spanmetrics_response_size_total",
            "traces_service_graph_request_server",
            "traces_service_graph_request_total",
            "traces_service_graph_request_failed_total",
        ],
        "no application metric, no client histogram (no client span)"
    );
    let counter = |name: &str| -> Vec<(Vec<KeyValue>, f64)> {
        rm.metric(name)
            .map(|m| {
                m.series
                    .iter()
                    .map(|s| match s.point {
                        super::Point::Counter(v) => (s.attributes.clone(), v),
                        _ => panic!("{name} is not a counter"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let graph = |client: &str| {
        vec![
            KeyValue::new("client", client.to_string()),
            KeyValue::new("server", "frontend"),
            KeyValue::new("source", "tandem"),
        ]
    };
    let mut total = counter("traces_service_graph_request_total");
    total.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    assert_eq!(total, vec![(graph("10.0.0.2"), 1.0), (graph("curl"), 2.0)]);
    assert_eq!(
        counter("traces_service_graph_request_failed_total"),
        vec![(graph("curl"), 1.0)]
    );
    let span_attrs = |status: &str| {
        vec![
            KeyValue::new("service.name", "frontend"),
            KeyValue::new("span.name", "GET /u/{id}"),
            KeyValue::new("span.kind", "SPAN_KIND_SERVER"),
            KeyValue::new("status.code", status.to_string()),
            KeyValue::new("source", "tandem"),
        ]
    };
    let mut calls = counter("traces_spanmetrics_calls_total");
    calls.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    assert_eq!(
        calls,
        vec![
            (span_attrs("STATUS_CODE_ERROR"), 1.0),
            (span_attrs("STATUS_CODE_UNSET"), 2.0)
        ]
    );
    // The request bodies of the span helper are 12 bytes each.
    let sizes: f64 = counter("traces_spanmetrics_size_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(sizes, 36.0);

    // Prometheus names are OBI's.
    let text = crate::export::prometheus::render(&all);
    for line in [
        "# TYPE traces_spanmetrics_latency histogram",
        "# TYPE traces_spanmetrics_calls_total counter",
        "# TYPE traces_service_graph_request_server_seconds histogram",
        "# TYPE traces_service_graph_request_total counter",
        "# TYPE traces_service_graph_request_failed_total counter",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        text.contains(
            "traces_service_graph_request_total{client=\"curl\",instance=\"-42\",job=\"frontend\",server=\"frontend\",service_name=\"frontend\",source=\"tandem\"} 2"
        ),
        "{text}"
    );
}

/// The attribute keys of `metric`'s only series after recording `t` with the
/// selection `rules` (metric glob, include, exclude).
fn keys_with(rules: &[(&str, &[&str], &[&str])], t: &Transaction, metric: &str) -> Vec<String> {
    let select = crate::settings::AttributeSelect {
        rules: rules
            .iter()
            .map(|(m, i, e)| crate::settings::AttributeRule {
                metric: m.to_string(),
                include: i.iter().map(|s| s.to_string()).collect(),
                exclude: e.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    };
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let mut reg = MetricsRegistry::default();
    reg.set_attribute_select(&select).expect("valid selection");
    reg.record(&procs.get(42), t, Some(&"/users/{id}".into()));
    let all = reg.collect();
    let h = histograms(&all[0]);
    let points = find(&h, metric);
    assert_eq!(points.len(), 1);
    let mut keys: Vec<String> = points[0].0.iter().map(|kv| kv.key.to_string()).collect();
    keys.sort();
    keys
}

fn server_tx() -> Transaction {
    tx(Side::Server, "GET", "/users/1", Some(200))
}

#[test]
fn select_exclude_removes_a_default_attribute() {
    let keys = keys_with(
        &[("http.server.request.duration", &[], &["http.route"])],
        &server_tx(),
        "http.server.request.duration",
    );
    assert_eq!(
        keys,
        [
            "http.request.method",
            "http.response.status_code",
            "server.port"
        ]
    );
    // One family, one attribute set: the body size histograms too.
    let keys = keys_with(
        &[("http.server.request.duration", &[], &["http.route"])],
        &server_tx(),
        "http.server.request.body.size",
    );
    assert!(!keys.contains(&"http.route".to_string()), "{keys:?}");
}

#[test]
fn select_include_adds_optional_attributes() {
    let t = server_tx();
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let mut reg = MetricsRegistry::default();
    reg.set_attribute_select(&crate::settings::AttributeSelect {
        rules: vec![crate::settings::AttributeRule {
            metric: "http.server.*".into(),
            include: vec!["url.path".into(), "client_address".into()],
            exclude: vec![],
        }],
    })
    .expect("valid");
    reg.record(&procs.get(42), &t, Some(&"/users/{id}".into()));
    let all = reg.collect();
    let h = histograms(&all[0]);
    let attrs = &find(&h, "http.server.request.duration")[0].0;
    assert!(
        attrs.contains(&KeyValue::new("url.path", "/users/1")),
        "{attrs:?}"
    );
    assert!(
        attrs.contains(&KeyValue::new("client.address", "10.0.0.2")),
        "{attrs:?}"
    );
    assert!(attrs.iter().all(|kv| kv.key.as_str() != "server.address"));
    // The query string never is an attribute.
    assert!(attrs.iter().all(|kv| !kv.value.as_str().contains("secret")));
    // Client metrics are another family: unchanged.
    let keys = keys_with(
        &[("http.server.*", &["url.path"], &[])],
        &tx(Side::Client, "POST", "/pay", Some(200)),
        "http.client.request.duration",
    );
    assert_eq!(
        keys,
        [
            "http.request.method",
            "http.response.status_code",
            "server.address",
            "server.port"
        ]
    );
}

#[test]
fn select_star_includes_every_optional_attribute() {
    let keys = keys_with(
        &[("*", &["*"], &[])],
        &server_tx(),
        "http.server.request.duration",
    );
    assert_eq!(
        keys,
        [
            "client.address",
            "http.request.method",
            "http.response.status_code",
            "http.route",
            "server.address",
            "server.port",
            "url.path"
        ]
    );
    let mut procs = ProcessMap::new(ResourceSettings::default());
    let mut reg = MetricsRegistry::default();
    reg.set_attribute_select(&crate::settings::AttributeSelect {
        rules: vec![crate::settings::AttributeRule {
            metric: "*".into(),
            include: vec!["*".into()],
            exclude: vec![],
        }],
    })
    .expect("valid");
    reg.record(&procs.get(42), &server_tx(), None);
    let h = histograms(&reg.collect()[0]);
    let attrs = &find(&h, "http.server.request.duration")[0].0;
    assert!(
        attrs.contains(&KeyValue::new("server.address", "shop.example")),
        "{attrs:?}"
    );
}

#[test]
fn an_exact_selector_wins_over_a_wildcard_one() {
    // The wildcard excludes url.path after including everything; the exact one
    // includes it back and excludes the route. In either order in the file.
    let wildcard: (&str, &[&str], &[&str]) = ("http_*", &["*"], &["url_path", "client.address"]);
    let exact: (&str, &[&str], &[&str]) = (
        "http_server_request_duration",
        &["url.path"],
        &["http.route"],
    );
    for rules in [[wildcard, exact], [exact, wildcard]] {
        let keys = keys_with(&rules, &server_tx(), "http.server.request.duration");
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "server.address",
                "server.port",
                "url.path"
            ],
            "{rules:?}"
        );
    }
    // The client family matches only the wildcard.
    let keys = keys_with(
        &[wildcard, exact],
        &tx(Side::Client, "GET", "/x", Some(200)),
        "http.client.request.duration",
    );
    assert!(!keys.contains(&"url.path".to_string()), "{keys:?}");
    assert!(keys.contains(&"server.address".to_string()), "{keys:?}");
}

#[test]
fn select_takes_prometheus_names_with_and_without_unit_suffix() {
    for metric in [
        "http_server_request_duration",
        "http_server_request_duration_seconds",
        "http.server.request.duration",
        "http_server_response_body_size_bytes",
    ] {
        let keys = keys_with(
            &[(metric, &["url_path"], &["http_request_method"])],
            &server_tx(),
            "http.server.request.duration",
        );
        assert!(keys.contains(&"url.path".to_string()), "{metric}: {keys:?}");
        assert!(
            !keys.contains(&"http.request.method".to_string()),
            "{metric}: {keys:?}"
        );
    }
    // A name of no family changes nothing.
    let keys = keys_with(
        &[("http_server_request_duration_total", &["*"], &["*"])],
        &server_tx(),
        "http.server.request.duration",
    );
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn an_invalid_glob_is_refused() {
    let mut reg = MetricsRegistry::default();
    let e = reg
        .set_attribute_select(&crate::settings::AttributeSelect {
            rules: vec![crate::settings::AttributeRule {
                metric: "http_*".into(),
                include: vec![],
                exclude: vec!["a[".into()],
            }],
        })
        .unwrap_err();
    assert_eq!((e.metric.as_str(), e.key), ("http_*", Some("exclude")));
}

#[test]
fn span_metrics_span_names_are_limited_per_service() {
    let mut procs = ProcessMap::new(ResourceSettings::default());
    for (pid, exe) in [(42, "/srv/frontend"), (7, "/srv/backend")] {
        procs.on_started(&tandem_proto::v1::ProcessStarted {
            pid,
            exe_path: exe.into(),
            ..Default::default()
        });
    }
    let mut reg = MetricsRegistry::with_features(MetricsFeatures {
        application: true,
        span: true,
        service_graph: false,
    });
    reg.set_span_names_limit(2);
    for route in ["/a", "/b", "/c", "/a"] {
        let r: Arc<str> = route.into();
        reg.record(&procs.get(42), &server_tx(), Some(&r));
    }
    let r: Arc<str> = "/c".into();
    reg.record(&procs.get(7), &server_tx(), Some(&r));
    assert_eq!(reg.span_names_aggregated(), 1);
    for rm in reg.collect() {
        let calls = rm.metric("traces_spanmetrics_calls_total").expect("calls");
        let mut names: Vec<(String, f64)> = calls
            .series
            .iter()
            .map(|s| {
                let n = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "span.name")
                    .map(|kv| kv.value.to_string())
                    .unwrap_or_default();
                match s.point {
                    super::Point::Counter(v) => (n, v),
                    _ => panic!("a counter"),
                }
            })
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        match service_name(&rm).map(|v| v.to_string()).as_deref() {
            Some("frontend") => assert_eq!(
                names,
                [
                    ("AGGREGATED".to_string(), 1.0),
                    ("GET /a".to_string(), 2.0),
                    ("GET /b".to_string(), 1.0)
                ]
            ),
            Some("backend") => assert_eq!(names, [("GET /c".to_string(), 1.0)]),
            other => panic!("{other:?}"),
        }
        // The application metrics keep their routes.
        let h = histograms(&rm);
        assert!(find(&h, "http.server.request.duration")
            .iter()
            .all(|(a, _, _)| a.iter().any(|kv| kv.key.as_str() == "http.route")));
    }
}
