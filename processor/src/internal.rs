//! tandem's own counters as metrics, OBI's `internal_metrics`: with `exporter:
//! prometheus` (or a `prometheus.port`) they are served at
//! `internal_metrics.prometheus.path` (default `/internal/metrics`) on that port (or
//! the application metrics' port); with `exporter: otel` they go out with the OTLP
//! metrics, under the processor's own resource (`service.name` = the subscription
//! name).
//!
//! | metric (Prometheus name) | kind | attributes |
//! |---|---|---|
//! | `tandem_events_received_total` | counter | `kind` (data, connection_opened, ...) |
//! | `tandem_events_lost_total` | counter | `location` (kernel_ring_buffer, subscriber_queue, source, in_transit) |
//! | `tandem_transactions_total` | counter | `protocol` (http1, http2, grpc, postgresql, mysql, redis) |
//! | `tandem_spans_exported_total` | counter | |
//! | `tandem_spans_dropped_total` | counter | `reason` (queue_full, failed, abandoned) |
//! | `tandem_otel_trace_exports_total`, `tandem_otel_metric_exports_total` | counter | |
//! | `tandem_otel_metric_export_errors_total` | counter | |
//! | `tandem_spans_linked_total` | counter | `kind` (server, client), `by` (connection, thread, goroutine, traceparent) |
//! | `tandem_spans_unlinked_total` | counter | `kind` (server, client), `reason` (server: `no_client_seen`; client: `no_server_request`, `ambiguous`, `runtime`, `multiplexing`, `unknown_process`) |
//! | `tandem_instrumented_processes` | gauge | `process_name` |
//! | `tandem_connections` | gauge | |
//! | `tandem_internal_build_info` | gauge (1) | `version` |

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use opentelemetry::KeyValue;

use crate::export::encode::unix_nanos;
use crate::export::prometheus::{render, Route};
use crate::export::sink::Internal;
use crate::pipeline::metrics::{
    Descriptor, Kind, MetricData, Number, Point, ResourceMetrics, SeriesData,
};
use crate::pipeline::resource::{own_resource, ProcessResource};
use crate::settings::{InternalExporter, InternalMetricsSettings};
use crate::stitch::link::Unlinked;
use crate::summary::Summary;

/// The latest summary, shared by the event loop (writer) and the readers.
#[derive(Clone)]
pub struct InternalMetrics {
    latest: Arc<Mutex<Summary>>,
    process: Arc<ProcessResource>,
    start_unix_ns: u64,
}

const fn counter(name: &'static str, unit: &'static str, description: &'static str) -> Descriptor {
    Descriptor {
        name,
        unit,
        description,
        kind: Kind::Counter,
        number: Number::Int,
    }
}

const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Descriptor {
    Descriptor {
        name,
        unit,
        description,
        kind: Kind::Gauge,
        number: Number::Int,
    }
}

const EVENTS: Descriptor = counter(
    "tandem.events.received",
    "{event}",
    "Events received from the loader, by kind.",
);
const LOST: Descriptor = counter(
    "tandem.events.lost",
    "{event}",
    "Events lost before they reached the processor, by where they were lost.",
);
const TRANSACTIONS: Descriptor = counter(
    "tandem.transactions",
    "{transaction}",
    "Transactions (request and answer) made of the events, by protocol.",
);
const SPANS_EXPORTED: Descriptor = counter(
    "tandem.spans.exported",
    "{span}",
    "Spans the OTLP collector accepted.",
);
const SPANS_DROPPED: Descriptor = counter(
    "tandem.spans.dropped",
    "{span}",
    "Sampled spans that did not reach the collector, by reason.",
);
const TRACE_EXPORTS: Descriptor = counter(
    "tandem.otel.trace.exports",
    "{request}",
    "OTLP trace export requests sent.",
);
const METRIC_EXPORTS: Descriptor = counter(
    "tandem.otel.metric.exports",
    "{request}",
    "OTLP metric export requests that succeeded.",
);
const METRIC_EXPORT_ERRORS: Descriptor = counter(
    "tandem.otel.metric.export.errors",
    "{request}",
    "OTLP metric export requests that failed.",
);
const LINKED: Descriptor = counter(
    "tandem.spans.linked",
    "{span}",
    "Spans given a parent, by span kind and by what linked them (stitch/link.rs).",
);
const UNLINKED: Descriptor = counter(
    "tandem.spans.unlinked",
    "{span}",
    "Spans left as roots without a traceparent, by span kind and reason.",
);
const SELECTION_DROPPED: Descriptor = counter(
    "tandem.selection.dropped.events",
    "{event}",
    "Events of processes the exact selection (discovery.*) does not select, dropped before stitching.",
);
const SELECTION_PROCESSES: Descriptor = gauge(
    "tandem.selection.processes",
    "{process}",
    "Processes judged by the exact selection, by verdict (selected, excluded, not_matching).",
);
const PROCESSES: Descriptor = gauge(
    "tandem.instrumented.processes",
    "{process}",
    "Instrumented processes alive, by executable name.",
);
const CONNECTIONS: Descriptor = gauge(
    "tandem.connections",
    "{connection}",
    "Connections the stitcher tracks.",
);
const BUILD_INFO: Descriptor = gauge(
    "tandem.internal.build.info",
    "",
    "A constant 1 labelled with tandem's version.",
);

impl InternalMetrics {
    /// Internal metrics under the resource of processor `name` on `host_name`.
    pub fn new(name: &str, host_name: &str) -> Self {
        InternalMetrics {
            latest: Arc::new(Mutex::new(Summary::default())),
            process: Arc::new(ProcessResource::new(0, own_resource(name, host_name))),
            start_unix_ns: unix_nanos(SystemTime::now()),
        }
    }

    /// Publishes the latest counts.
    pub fn update(&self, summary: Summary) {
        if let Ok(mut s) = self.latest.lock() {
            *s = summary;
        }
    }

    /// The metrics of the latest counts.
    pub fn snapshot(&self) -> ResourceMetrics {
        let s = self.latest.lock().map(|s| s.clone()).unwrap_or_default();
        let start = self.start_unix_ns;
        let one = |descriptor: Descriptor, series: Vec<(Vec<KeyValue>, u64)>| MetricData {
            descriptor,
            series: series
                .into_iter()
                .map(|(attributes, v)| SeriesData {
                    attributes,
                    point: match descriptor.kind {
                        Kind::Counter => Point::Counter(v as f64),
                        _ => Point::Gauge(v as f64),
                    },
                    start_unix_ns: start,
                })
                .collect(),
        };
        let by = |key: &'static str, m: Vec<(String, u64)>| -> Vec<(Vec<KeyValue>, u64)> {
            m.into_iter()
                .map(|(k, v)| (vec![KeyValue::new(key, k)], v))
                .collect()
        };
        let e = s.pipeline.span_export;
        let metrics = vec![
            one(
                EVENTS,
                by(
                    "kind",
                    s.input
                        .by_kind
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                ),
            ),
            one(
                LOST,
                by(
                    "location",
                    s.input
                        .lost
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                ),
            ),
            one(
                TRANSACTIONS,
                by(
                    "protocol",
                    s.transactions
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                ),
            ),
            one(SPANS_EXPORTED, vec![(vec![], e.exported)]),
            one(
                SPANS_DROPPED,
                by(
                    "reason",
                    vec![
                        ("queue_full".to_string(), e.dropped_queue_full),
                        ("failed".to_string(), e.failed),
                        ("abandoned".to_string(), e.abandoned),
                    ],
                ),
            ),
            one(TRACE_EXPORTS, vec![(vec![], e.requests)]),
            one(METRIC_EXPORTS, vec![(vec![], s.pipeline.metric_exports.0)]),
            one(
                METRIC_EXPORT_ERRORS,
                vec![(vec![], s.pipeline.metric_exports.1)],
            ),
            one(LINKED, {
                let l = s.links;
                [
                    ("server", "connection", l.server_by_connection),
                    ("server", "traceparent", l.server_by_traceparent),
                    ("client", "thread", l.client_by_thread),
                    ("client", "goroutine", l.client_by_goroutine),
                    ("client", "traceparent", l.client_by_traceparent),
                ]
                .into_iter()
                .map(|(kind, by, n)| {
                    (
                        vec![KeyValue::new("kind", kind), KeyValue::new("by", by)],
                        n,
                    )
                })
                .collect()
            }),
            one(UNLINKED, {
                let l = s.links;
                let server = (
                    vec![
                        KeyValue::new("kind", "server"),
                        KeyValue::new("reason", "no_client_seen"),
                    ],
                    l.server_roots,
                );
                std::iter::once(server)
                    .chain(Unlinked::ALL.iter().map(|r| {
                        (
                            vec![
                                KeyValue::new("kind", "client"),
                                KeyValue::new("reason", r.name()),
                            ],
                            l.unlinked(*r),
                        )
                    }))
                    .collect()
            }),
            one(
                SELECTION_DROPPED,
                vec![(vec![], s.selection.events_dropped)],
            ),
            one(
                SELECTION_PROCESSES,
                by(
                    "verdict",
                    vec![
                        ("selected".to_string(), s.selection.selected),
                        ("excluded".to_string(), s.selection.excluded),
                        ("not_matching".to_string(), s.selection.not_matching),
                    ],
                ),
            ),
            one(
                PROCESSES,
                by("process_name", s.processes.clone().into_iter().collect()),
            ),
            one(CONNECTIONS, vec![(vec![], s.connections as u64)]),
            one(
                BUILD_INFO,
                vec![(vec![KeyValue::new("version", env!("CARGO_PKG_VERSION"))], 1)],
            ),
        ];
        ResourceMetrics {
            process: self.process.clone(),
            time_unix_ns: unix_nanos(SystemTime::now()),
            metrics: metrics
                .into_iter()
                .filter(|m| !m.series.is_empty())
                .collect(),
        }
    }

    /// What the sinks serve of these metrics, per `settings`.
    pub fn sinks(&self, settings: &InternalMetricsSettings) -> Internal {
        let prometheus =
            settings.exporter == InternalExporter::Prometheus || settings.prometheus_port.is_some();
        let mut internal = Internal::default();
        if prometheus {
            let me = self.clone();
            internal.routes.push((
                settings.prometheus_port,
                Route::text(&settings.prometheus_path, move || render(&[me.snapshot()])),
            ));
        }
        if settings.exporter == InternalExporter::Otel {
            let me = self.clone();
            internal.otlp = Some(Arc::new(move || Some(me.snapshot())));
        }
        internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_prometheus_series() {
        let m = InternalMetrics::new("tandem-processor", "box");
        let mut s = Summary::default();
        s.input.by_kind.insert("data", 7);
        s.input.lost.insert("subscriber_queue", 2);
        s.transactions.insert("redis", 3);
        s.pipeline.span_export.exported = 5;
        s.pipeline.span_export.dropped_queue_full = 1;
        s.processes.insert("nginx".into(), 2);
        m.update(s);
        let text = render(&[m.snapshot()]);
        for want in [
            "tandem_events_received_total{job=\"tandem-processor\"",
            "kind=\"data\"",
            "tandem_events_lost_total{",
            "location=\"subscriber_queue\"",
            "tandem_transactions_total{",
            "protocol=\"redis\"",
            "tandem_spans_dropped_total{",
            "reason=\"queue_full\"",
            "tandem_instrumented_processes{",
            "process_name=\"nginx\"",
            "# TYPE tandem_spans_exported_total counter",
            "# TYPE tandem_instrumented_processes gauge",
            "service_name=\"tandem-processor\"",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
        let exported = text
            .lines()
            .find(|l| l.starts_with("tandem_spans_exported_total{"))
            .expect("exported");
        assert!(exported.ends_with(" 5"), "{exported}");
    }
}
