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
