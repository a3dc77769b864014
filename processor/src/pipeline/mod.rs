//! The stages between a transaction and its telemetry, in the order a transaction
//! meets them: `route` (http.route, ignored paths), `metrics` (every transaction),
//! `span` (ids, sampling by `sample`, attributes), decoration (`resource`: which
//! process produced it; Kubernetes peers), then every sink of `export::sink`
//! (trace printer, OTLP traces; the metric sinks read the registry).

pub mod db;
pub mod filter;
pub mod grpc;
pub mod metrics;
pub mod resource;
pub mod route;
pub mod sample;
pub mod span;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tandem_proto::v1::ProcessStarted;
use tracing::info;

use crate::export::printer::Printer;
use crate::export::sink::{self, Internal, Sink, SinkError, SinkReport};
use crate::export::traces::TraceExportCounts;
use crate::model::{Exchange, Transaction};
use crate::settings::{ExportSettings, Instrumentations, MetricsFeatures, RoutesSettings, Sampler};

use self::metrics::MetricsRegistry;
use self::resource::{ProcessMap, ResourceSettings};
use self::route::{RouteError, Router};
use self::span::build_span;

/// A pipeline that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid routes settings")]
    Routes(#[from] RouteError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the pipeline must be created inside a multi-thread Tokio runtime (the exporters run on it)")]
    NoRuntime,
}

/// What the pipeline did, for the processor's summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub transactions: u64,
    pub ignored_traces: u64,
    pub ignored_metrics: u64,
    pub spans_sampled: u64,
    pub spans_not_sampled: u64,
    /// Spans not built because no sink reads spans (metrics only).
    pub spans_not_built: u64,
    /// Transactions whose instrumentation (http, grpc, ...) is switched off for
    /// traces / for metrics (`*.instrumentations`).
    pub disabled_traces: u64,
    pub disabled_metrics: u64,
    /// Routes folded into `/**` by `max_routes`.
    pub routes_overflowed: u64,
    pub span_export: TraceExportCounts,
    /// (exported, failed) metric export requests.
    pub metric_exports: (u64, u64),
    /// Spans printed by the trace printer.
    pub printed: u64,
    /// Transactions of processes seen exporting OTLP themselves, left alone
    /// (`exclude_otel_instrumented_services`), and such processes seen.
    pub excluded_otel_instrumented: u64,
    pub otel_instrumented_processes: u64,
    /// Transactions `filter.application` dropped.
    pub filtered: u64,
    /// Span metric observations whose span name was reported as `AGGREGATED`
    /// (`attributes.metric_span_names_limit`).
    pub span_names_aggregated: u64,
}

impl PipelineStats {
    fn with(mut self, r: SinkReport) -> Self {
        if let Some(s) = r.spans {
            self.span_export = s;
        }
        if let Some(m) = r.metric_exports {
            self.metric_exports = m;
        }
        if let Some(p) = r.printed {
            self.printed = p;
        }
        self
    }
}

/// The Kubernetes attributes of a span's peer (a pod of this node, or a Service's
/// cluster IP): `k8s.dst.*` on CLIENT spans (the peer is the destination),
/// `k8s.src.*` on SERVER spans (the peer is the source) — OBI's names for the two
/// ends of a connection: `.name`, `.namespace`, `.type` (`Pod`, `Service`) and
/// `.owner.name`.
pub fn peer_attributes(
    side: crate::model::Side,
    p: &crate::kube::Peer,
) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let (name, namespace, kind, owner) = match side {
        crate::model::Side::Client => (
            "k8s.dst.name",
            "k8s.dst.namespace",
            "k8s.dst.type",
            "k8s.dst.owner.name",
        ),
        crate::model::Side::Server => (
            "k8s.src.name",
            "k8s.src.namespace",
            "k8s.src.type",
            "k8s.src.owner.name",
        ),
    };
    let mut v = vec![
        KeyValue::new(name, p.name.clone()),
        KeyValue::new(namespace, p.namespace.clone()),
        KeyValue::new(kind, p.kind),
    ];
    if let Some(o) = &p.owner_name {
        v.push(KeyValue::new(owner, o.clone()));
    }
    v
}

fn process_map(export: &ExportSettings, host_name: String) -> ProcessMap {
    ProcessMap::new(ResourceSettings {
        service_name: export.service_name.clone(),
        service_namespace: export.service_namespace.clone(),
        resource_attributes: export.resource_attributes.clone(),
        host_name,
    })
}

/// Most processes remembered as exporting OTLP themselves.
pub const MAX_OTEL_INSTRUMENTED: usize = 65_536;

/// Transactions in, spans and metrics out. Single consumer: the processor's event
/// loop calls it; the exporters run on tasks of the same (multi-thread) runtime.
pub struct Pipeline {
    router: Router,
    processes: ProcessMap,
    /// Kubernetes metadata (peer addresses; the resources read it through `processes`).
    kube: Option<Arc<crate::kube::Store>>,
    sampler: Sampler,
    ids: Box<dyn IdGenerator>,
    metrics: Option<Arc<Mutex<MetricsRegistry>>>,
    sinks: Vec<Box<dyn Sink>>,
    prometheus: Option<SocketAddr>,
    /// Some sink reads spans (else none is built).
    reads_spans: bool,
    stats: PipelineStats,
    traces_instrumentations: Instrumentations,
    metrics_instrumentations: Instrumentations,
    metrics_features: MetricsFeatures,
    exclude_otel_instrumented: bool,
    /// `filter.application`.
    filter: filter::Filter,
    /// Processes seen exporting OTLP themselves (bounded; see `on_transaction`).
    otel_instrumented: std::collections::HashSet<u32>,
}

impl Pipeline {
    /// Builds the stages and the sinks the settings ask for (traces: an endpoint;
    /// metrics: an OTLP endpoint, a Prometheus port, or both, reading the same
    /// registry). `host_name` is `host.name` ([`resource::local_host_name`]). Must
    /// run inside a multi-thread Tokio runtime.
    pub fn new(
        routes: &RoutesSettings,
        export: &ExportSettings,
        host_name: String,
    ) -> Result<Self, PipelineError> {
        Self::with_printer(
            routes,
            export,
            host_name,
            Printer::stdout(export.trace_printer),
        )
    }

    /// As [`Pipeline::new`], printing spans with `printer`.
    pub fn with_printer(
        routes: &RoutesSettings,
        export: &ExportSettings,
        host_name: String,
        printer: Printer,
    ) -> Result<Self, PipelineError> {
        Self::build(
            routes,
            export,
            host_name,
            printer,
            None,
            Internal::default(),
        )
    }

    /// As [`Pipeline::with_printer`], recording into `registry` (when given; else a
    /// registry of its own when a metric sink needs one) and serving `internal`.
    pub fn build(
        routes: &RoutesSettings,
        export: &ExportSettings,
        host_name: String,
        printer: Printer,
        registry: Option<Arc<Mutex<MetricsRegistry>>>,
        internal: Internal,
    ) -> Result<Self, PipelineError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| PipelineError::NoRuntime)?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(PipelineError::NoRuntime);
        }
        Router::new(routes)?;
        let processes = process_map(export, host_name);
        // Metrics are recorded when something reads them: the OTLP push, the
        // Prometheus scrape, or both.
        let metrics = registry.or_else(|| {
            sink::wants_metrics(export).then(|| {
                Arc::new(Mutex::new(MetricsRegistry::with_features(
                    export.metrics_features,
                )))
            })
        });
        let sinks = sink::build(export, printer, metrics.as_ref(), internal)?;
        Self::from_parts(routes, export, processes, metrics, sinks)
    }

    /// A pipeline with these sinks (and, when given, this registry), for callers that
    /// make their own (the benchmark: an encode-only trace export).
    pub fn with_sinks(
        routes: &RoutesSettings,
        export: &ExportSettings,
        host_name: String,
        registry: Option<Arc<Mutex<MetricsRegistry>>>,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Self, PipelineError> {
        let processes = process_map(export, host_name);
        Self::from_parts(routes, export, processes, registry, sinks)
    }

    fn from_parts(
        routes: &RoutesSettings,
        export: &ExportSettings,
        processes: ProcessMap,
        metrics: Option<Arc<Mutex<MetricsRegistry>>>,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Self, PipelineError> {
        let router = Router::new(routes)?;
        if let Some(m) = &metrics {
            if let Ok(mut m) = m.lock() {
                m.set_features(export.metrics_features);
                m.set_buckets(export.buckets);
                m.set_span_names_limit(export.metric_span_names_limit);
                if let Err(e) = m.set_attribute_select(&export.attribute_select) {
                    tracing::warn!(
                        metric = %e.metric,
                        "attributes.select not used: {}",
                        e.message
                    );
                }
            }
        }
        let prometheus = sinks.iter().find_map(|s| s.local_addr());
        let reads_spans = sinks.iter().any(|s| s.reads_spans());
        info!(
            traces = export.traces.endpoint.as_deref().unwrap_or("(none)"),
            metrics = export.metrics.endpoint.as_deref().unwrap_or("(none)"),
            prometheus = %prometheus.map_or("(none)".to_string(), |p| p.to_string()),
            sampler = ?export.sampler,
            sinks = %sinks.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
            "telemetry pipeline ready"
        );
        Ok(Pipeline {
            router,
            processes,
            kube: None,
            sampler: export.sampler,
            ids: Box::new(RandomIdGenerator::default()),
            metrics,
            sinks,
            prometheus,
            reads_spans,
            stats: PipelineStats::default(),
            traces_instrumentations: export.traces_instrumentations.clone(),
            metrics_instrumentations: export.metrics_instrumentations.clone(),
            metrics_features: export.metrics_features,
            exclude_otel_instrumented: export.exclude_otel_instrumented,
            filter: filter::Filter::new(&export.filter).unwrap_or_else(|e| {
                tracing::warn!("filter.application not used: {e}");
                filter::Filter::default()
            }),
            otel_instrumented: std::collections::HashSet::new(),
        })
    }

    /// Uses `ids` for trace and span ids (tests: predictable ids).
    pub fn set_id_generator(&mut self, ids: Box<dyn IdGenerator>) {
        self.ids = ids;
    }

    /// The metrics registry, when something reads metrics.
    pub fn registry(&self) -> Option<&Arc<Mutex<MetricsRegistry>>> {
        self.metrics.as_ref()
    }

    /// The loader's capability posture as `tandem.loader.*` resource attributes of
    /// the processes seen from now on.
    pub fn set_loader_attributes(&mut self, attrs: std::collections::BTreeMap<String, String>) {
        self.processes.set_loader_attributes(attrs);
    }

    /// The loader's capability posture as tandem's own metric
    /// (`tandem.loader.excess_capabilities`, resource [`resource::own_resource`] with
    /// `name`), when metrics are exported.
    pub fn set_loader_posture(&mut self, name: &str, posture: &metrics::LoaderPosture) {
        let Some(m) = &self.metrics else {
            return;
        };
        let resource = resource::own_resource(name, self.processes.host_name());
        if let Ok(mut m) = m.lock() {
            m.record_loader_posture(&resource, posture);
        }
    }

    /// Decorates resources and peers with Kubernetes metadata from `store`.
    pub fn set_kubernetes(&mut self, store: Arc<crate::kube::Store>) {
        self.processes.set_kubernetes(store.clone());
        self.kube = Some(store);
    }

    /// A process started or was found running: its resource comes from here.
    pub fn on_process(&mut self, p: &ProcessStarted) {
        self.processes.on_started(p);
    }

    /// Process `pid` accepted a connection on local address `local`: evidence of its
    /// pod's IP when it runs in a container (`k8s.pod.ip`, see `resource`).
    pub fn on_accepted(&mut self, pid: u32, local: std::net::IpAddr) {
        self.processes.on_served(pid, local);
    }

    /// Processes whose resource is known now.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// One transaction, any protocol: route (HTTP), metrics (always, unless its
    /// instrumentation is off for metrics or its route is ignored), span (handed to
    /// every sink; exported when sampled).
    pub fn on_transaction(&mut self, tx: &Transaction) {
        self.stats.transactions += 1;
        if self.exclude_otel_instrumented && self.leave_alone(tx) {
            self.stats.excluded_otel_instrumented += 1;
            return;
        }
        let routed = match &tx.exchange {
            Exchange::Http(h) => Some(self.router.route(&h.request.path)),
            Exchange::Db(_) => None,
        };
        let route = routed.as_ref().and_then(|r| r.route.as_ref());
        if !self.filter.is_empty() && !self.filter.keeps(tx, route.map(|r| &**r)) {
            self.stats.filtered += 1;
            return;
        }
        if let (crate::model::Side::Server, Some(local)) = (tx.side, tx.local) {
            // Evidence of the process's pod IP (once per process; see `resource`).
            self.processes.on_served(tx.pid, local.ip());
        }
        let process = self.processes.get(tx.pid);
        let kind = tx.instrumentation();
        if !self.metrics_instrumentations.is_enabled(kind) {
            self.stats.disabled_metrics += 1;
        } else if routed.as_ref().is_some_and(|r| r.ignore_metrics) {
            self.stats.ignored_metrics += 1;
        } else if let Some(m) = &self.metrics {
            // The traced process on the other end, for the service graph's names.
            let peer = tx
                .trace
                .map(|t| t.peer_pid)
                .filter(|p| *p != 0 && self.metrics_features.service_graph)
                .map(|p| self.processes.get(p));
            if let Ok(mut m) = m.lock() {
                m.record_linked(&process, tx, route, peer.as_deref());
            }
        }
        if !self.traces_instrumentations.is_enabled(kind) {
            self.stats.disabled_traces += 1;
            return;
        }
        if routed.as_ref().is_some_and(|r| r.ignore_traces) {
            self.stats.ignored_traces += 1;
            return;
        }
        if !self.reads_spans {
            // Nothing prints or exports spans (metrics only): none is built.
            self.stats.spans_not_built += 1;
            for s in &mut self.sinks {
                s.span_not_built();
            }
            return;
        }
        let mut rec = build_span(tx, route, self.sampler, self.ids.as_ref());
        if let (Some(store), Some(peer), Exchange::Http(_)) = (&self.kube, tx.peer, &tx.exchange) {
            if let Some(p) = store.peer(peer.ip()) {
                rec.data.attributes.extend(peer_attributes(tx.side, &p));
            }
        }
        if rec.sampled {
            self.stats.spans_sampled += 1;
        } else {
            self.stats.spans_not_sampled += 1;
        }
        for s in &mut self.sinks {
            s.span(&rec, tx, &process);
        }
    }

    /// Whether `tx`'s process exports OTLP itself (an OpenTelemetry SDK): seen in
    /// this transaction (an HTTP `POST` to `/v1/traces`, `/v1/metrics` or `/v1/logs`,
    /// or a gRPC call to `/opentelemetry.proto.collector.*`) or before. OBI's
    /// `exclude_otel_instrumented_services` leaves such processes alone: their own
    /// SDK reports them. At most [`MAX_OTEL_INSTRUMENTED`] are remembered.
    fn leave_alone(&mut self, tx: &Transaction) -> bool {
        if self.otel_instrumented.contains(&tx.pid) {
            return true;
        }
        let exports = tx.side == crate::model::Side::Client
            && tx.http().is_some_and(|h| {
                let p = h.request.path.as_str();
                (h.request.method == "POST"
                    && matches!(p, "/v1/traces" | "/v1/metrics" | "/v1/logs"))
                    || p.starts_with("/opentelemetry.proto.collector.")
            });
        if exports && self.otel_instrumented.len() < MAX_OTEL_INSTRUMENTED {
            self.otel_instrumented.insert(tx.pid);
            self.stats.otel_instrumented_processes += 1;
            info!(
                pid = tx.pid,
                "process exports OTLP itself (OpenTelemetry SDK): left alone \
                 (discovery.exclude_otel_instrumented_services)"
            );
        }
        exports
    }

    /// A process exited: forget what was learnt of it.
    pub fn on_exit(&mut self, pid: u32) {
        self.otel_instrumented.remove(&pid);
        self.processes.on_exit(pid);
    }

    /// Sinks that hold spans past the input batch report to `progress`.
    pub fn set_progress(&mut self, progress: &std::sync::Arc<crate::resume::Progress>) {
        for s in &mut self.sinks {
            s.set_progress(progress);
        }
    }

    /// The end of an input batch: the sinks hand their work on.
    pub fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush();
        }
    }

    /// Where the Prometheus endpoint listens, when there is one.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus
    }

    pub fn stats(&self) -> PipelineStats {
        let mut s = self.stats;
        s.routes_overflowed = self.router.overflowed();
        if let Some(m) = &self.metrics {
            if let Ok(m) = m.lock() {
                s.span_names_aggregated = m.span_names_aggregated();
            }
        }
        self.sinks
            .iter()
            .fold(s, |acc, sink| acc.with(sink.report()))
    }

    /// Stops every sink: the Prometheus endpoint stops listening, queued spans and
    /// the metrics are exported one last time (each bounded by its grace period),
    /// the printer ends.
    pub async fn shutdown(mut self) -> PipelineStats {
        self.flush();
        let mut s = self.stats();
        for sink in self.sinks.drain(..) {
            s = s.with(sink.shutdown().await);
        }
        s
    }
}

#[cfg(test)]
mod instrumentation_tests {
    use super::*;
    use crate::model::{DbSystem, HttpResponse, Side};
    use crate::pipeline::db::tests::db_tx as db_op;
    use crate::pipeline::span::tests::{http_mut, tx};
    use crate::settings::{Instrumentation, TracePrinter};

    fn grpc_tx() -> Transaction {
        let mut t = tx(Side::Server, "POST", "/a.B/C", Some(200));
        let h = http_mut(&mut t);
        h.request.version = "2";
        h.request.headers = vec![("content-type".into(), "application/grpc".into())];
        h.response = Some(HttpResponse {
            status: 200,
            version: "2",
            headers: vec![("grpc-status".into(), "0".into())],
            body_size: 0,
        });
        t
    }

    /// A pipeline with a Prometheus registry that traces the `traces` instrumentations
    /// and measures the `metrics` ones (a JSON printer into nothing reads the spans,
    /// so that they are built).
    fn gated_pipeline(traces: &str, metrics: &str) -> Pipeline {
        let export = ExportSettings {
            prometheus_port: Some(0),
            traces_instrumentations: Instrumentations::parse_list(traces).expect("list"),
            metrics_instrumentations: Instrumentations::parse_list(metrics).expect("list"),
            ..Default::default()
        };
        printing_pipeline(&export)
    }

    /// A pipeline with `export` whose JSON printer (into nothing) reads the spans.
    fn printing_pipeline(export: &ExportSettings) -> Pipeline {
        Pipeline::with_printer(
            &RoutesSettings::default(),
            export,
            "box".into(),
            Printer::new(TracePrinter::Json, Box::new(std::io::sink())),
        )
        .expect("pipeline")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn instrumentations_gate_spans_and_metrics_per_kind() {
        let mut p = gated_pipeline("http", "grpc");
        assert_eq!(grpc_tx().instrumentation(), Instrumentation::Grpc);
        let http = tx(Side::Server, "GET", "/x", Some(200));
        assert_eq!(http.instrumentation(), Instrumentation::Http);
        p.on_transaction(&grpc_tx());
        p.on_transaction(&http);
        let s = p.stats();
        // gRPC: metrics only; HTTP: span only.
        assert_eq!((s.disabled_traces, s.disabled_metrics), (1, 1));
        assert_eq!(s.spans_sampled, 1);
        let names: Vec<String> = p
            .registry()
            .expect("registry")
            .lock()
            .expect("lock")
            .snapshot()
            .iter()
            .flat_map(crate::pipeline::metrics::tests::histograms)
            .filter(|(_, points)| !points.is_empty())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["rpc.server.call.duration"]);
        p.shutdown().await;
    }

    /// `exclude_otel_instrumented_services`: from its first OTLP export on, a
    /// process gets nothing from tandem; off, it is instrumented like any other.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_exporting_otlp_itself_is_left_alone() {
        for (exclude, spans) in [(true, 1), (false, 4)] {
            let export = ExportSettings {
                exclude_otel_instrumented: exclude,
                ..Default::default()
            };
            let mut p = printing_pipeline(&export);
            let mut served = tx(Side::Server, "GET", "/x", Some(200));
            served.pid = 9;
            let mut export_call = tx(Side::Client, "POST", "/v1/traces", Some(200));
            export_call.pid = 9;
            let mut other = tx(Side::Server, "GET", "/y", Some(200));
            other.pid = 10;
            // Before its first export, 9 is instrumented; then not, until it exits.
            p.on_transaction(&served);
            p.on_transaction(&export_call);
            p.on_transaction(&served);
            p.on_transaction(&other);
            let s = p.stats();
            if exclude {
                assert_eq!(
                    (s.excluded_otel_instrumented, s.otel_instrumented_processes),
                    (2, 1)
                );
                assert_eq!(s.spans_sampled, 2, "9 before its export, and 10");
            } else {
                assert_eq!((s.excluded_otel_instrumented, s.spans_sampled), (0, spans));
            }
            p.on_exit(9);
            p.on_transaction(&served);
            assert_eq!(
                p.stats().excluded_otel_instrumented,
                if exclude { 2 } else { 0 }
            );
            p.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn filter_application_drops_and_counts() {
        let export = ExportSettings {
            filter: [(
                "url.path".to_string(),
                filter::Rule {
                    matches: None,
                    not_matches: Some("/health".into()),
                },
            )]
            .into(),
            ..Default::default()
        };
        let mut p = printing_pipeline(&export);
        p.on_transaction(&tx(Side::Server, "GET", "/health", Some(200)));
        p.on_transaction(&tx(Side::Server, "GET", "/users/1", Some(200)));
        let s = p.stats();
        assert_eq!((s.filtered, s.spans_sampled), (1, 1));
        p.shutdown().await;
    }

    fn db_tx(system: DbSystem) -> Transaction {
        let mut t = db_op(system, Some("GET"), None, None);
        if let Exchange::Db(op) = &mut t.exchange {
            op.query_text = None;
            op.namespace = None;
        }
        t.local = None;
        t.peer = None;
        t
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_span_is_built_when_no_sink_reads_spans() {
        let export = ExportSettings {
            prometheus_port: Some(0),
            ..Default::default()
        };
        let mut p = Pipeline::with_printer(
            &RoutesSettings::default(),
            &export,
            "box".into(),
            Printer::new(TracePrinter::Counter, Box::new(std::io::sink())),
        )
        .expect("pipeline");
        p.on_transaction(&tx(Side::Server, "GET", "/x", Some(200)));
        let s = p.shutdown().await;
        assert_eq!((s.spans_sampled, s.spans_not_built, s.printed), (0, 1, 1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn instrumentations_gate_database_operations() {
        assert_eq!(
            db_tx(DbSystem::Redis).instrumentation(),
            Instrumentation::Redis
        );
        assert_eq!(
            db_tx(DbSystem::Postgresql).instrumentation(),
            Instrumentation::Sql
        );
        assert_eq!(
            db_tx(DbSystem::Mysql).instrumentation(),
            Instrumentation::Sql
        );
        let mut p = gated_pipeline("sql", "redis");
        p.on_transaction(&db_tx(DbSystem::Redis));
        p.on_transaction(&db_tx(DbSystem::Postgresql));
        let s = p.stats();
        // Redis: metrics only; PostgreSQL: span only.
        assert_eq!((s.disabled_traces, s.disabled_metrics), (1, 1));
        assert_eq!(s.spans_sampled, 1);
        p.shutdown().await;
    }
}
