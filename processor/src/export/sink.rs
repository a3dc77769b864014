//! Sinks: where the pipeline's output goes. Every exporter is one [`Sink`] in a
//! list built from the settings ([`build`]): the trace printer (every span built),
//! OTLP traces (sampled spans), OTLP metrics (a periodic push of the registry) and
//! the Prometheus endpoint (scrapes of the registry). Span sinks are handed each
//! span; metric sinks read the registry the pipeline records into.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::export::metrics::{Extra, MetricExport};
use crate::export::printer::Printer;
use crate::export::prometheus::{PrometheusEndpoint, PrometheusError, Route};
use crate::export::traces::{Batching, TraceExport, TraceExportCounts};
use crate::export::transport::{Signal, Transport, TransportError};
use crate::model::Transaction;
use crate::pipeline::metrics::MetricsRegistry;
use crate::pipeline::resource::ProcessResource;
use crate::pipeline::span::SpanRecord;
use crate::settings::ExportSettings;

/// What a sink reports for the summaries and the internal metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// OTLP traces: spans queued, exported, dropped, failed, abandoned.
    pub spans: Option<TraceExportCounts>,
    /// OTLP metrics: (exported, failed) requests.
    pub metric_exports: Option<(u64, u64)>,
    /// Trace printer: spans printed.
    pub printed: Option<u64>,
}

impl SinkReport {
    /// The sum of two reports (a list of sinks).
    pub fn merge(self, other: SinkReport) -> SinkReport {
        SinkReport {
            spans: self.spans.or(other.spans),
            metric_exports: self.metric_exports.or(other.metric_exports),
            printed: self.printed.or(other.printed),
        }
    }
}

/// One output of the pipeline.
pub trait Sink: Send {
    /// Short name for logs (`otlp-traces`, `trace-printer`, ...).
    fn name(&self) -> &'static str;

    /// A span was built for `tx` (sampled or not; `span.sampled` says).
    fn span(&mut self, _span: &SpanRecord, _tx: &Transaction, _process: &Arc<ProcessResource>) {}

    /// Whether it reads the spans it is handed. When no sink does, the pipeline
    /// builds no span and calls [`Sink::span_not_built`] instead.
    fn reads_spans(&self) -> bool {
        false
    }

    /// A transaction's span was not built: no sink reads spans.
    fn span_not_built(&mut self) {}

    /// The end of an input batch: a sink that batches may hand work on.
    fn flush(&mut self) {}

    /// A sink that holds spans after the input batch (an exporter) tells
    /// `progress` which, and when they are delivered (see `crate::resume`).
    fn set_progress(&mut self, _progress: &Arc<crate::resume::Progress>) {}

    /// What it did so far.
    fn report(&self) -> SinkReport;

    /// The address it listens on, for a sink that serves (Prometheus).
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// Stops: delivers what it holds within its grace period.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static, SinkReport>;
}

/// A sink that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
}

/// The trace printer as a sink.
impl Sink for Printer {
    fn name(&self) -> &'static str {
        "trace-printer"
    }

    fn span(&mut self, span: &SpanRecord, tx: &Transaction, process: &Arc<ProcessResource>) {
        self.print(span, tx, process);
    }

    fn reads_spans(&self) -> bool {
        self.prints()
    }

    fn span_not_built(&mut self) {
        self.count_one();
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            printed: Some(self.count()),
            ..SinkReport::default()
        }
    }

    fn shutdown(mut self: Box<Self>) -> BoxFuture<'static, SinkReport> {
        self.finish();
        let report = self.report();
        async move { report }.boxed()
    }
}

/// OTLP traces: sampled spans, queued and batched.
pub struct OtlpTraces(pub TraceExport);

impl Sink for OtlpTraces {
    fn name(&self) -> &'static str {
        "otlp-traces"
    }

    fn span(&mut self, span: &SpanRecord, tx: &Transaction, process: &Arc<ProcessResource>) {
        if span.sampled {
            let begin = tx.trace.map(|t| t.begin).unwrap_or_default();
            self.0.offer(process, &span.data, begin);
        }
    }

    fn set_progress(&mut self, progress: &Arc<crate::resume::Progress>) {
        self.0.set_progress(progress.clone());
    }

    fn reads_spans(&self) -> bool {
        true
    }

    fn flush(&mut self) {
        self.0.flush();
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            spans: Some(self.0.stats()),
            ..SinkReport::default()
        }
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, SinkReport> {
        async move {
            SinkReport {
                spans: Some(self.0.shutdown().await),
                ..SinkReport::default()
            }
        }
        .boxed()
    }
}

/// OTLP metrics: the periodic push.
pub struct OtlpMetrics(pub MetricExport);

impl Sink for OtlpMetrics {
    fn name(&self) -> &'static str {
        "otlp-metrics"
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            metric_exports: Some(self.0.counts()),
            ..SinkReport::default()
        }
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, SinkReport> {
        async move {
            SinkReport {
                metric_exports: Some(self.0.shutdown().await),
                ..SinkReport::default()
            }
        }
        .boxed()
    }
}

/// The Prometheus scrape endpoint.
pub struct Prometheus(pub PrometheusEndpoint);

impl Sink for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        Some(self.0.local_addr())
    }

    fn report(&self) -> SinkReport {
        SinkReport::default()
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, SinkReport> {
        async move {
            self.0.shutdown().await;
            SinkReport::default()
        }
        .boxed()
    }
}

/// Whether the settings ask for any metric reader (OTLP or Prometheus).
pub fn wants_metrics(export: &ExportSettings) -> bool {
    export.metrics.endpoint.is_some() || export.prometheus_port.is_some()
}

/// What else the sinks serve besides the pipeline's own output: tandem's internal
/// metrics, on the Prometheus endpoint (`routes`) or in the OTLP push (`otlp`).
#[derive(Default, Clone)]
pub struct Internal {
    /// Extra Prometheus routes, and the port they go on (`None`: the application
    /// metrics' port).
    pub routes: Vec<(Option<u16>, Route)>,
    pub otlp: Option<Extra>,
}

/// The sinks `export` asks for, in order: trace printer, OTLP traces, OTLP metrics,
/// Prometheus endpoint(s). `registry` is where the pipeline records metrics (given
/// when [`wants_metrics`] or internal metrics need one).
pub fn build(
    export: &ExportSettings,
    printer: Printer,
    registry: Option<&Arc<Mutex<MetricsRegistry>>>,
    internal: Internal,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(printer)];
    if let Some(settings) = crate::export::otlp::transport_settings(&export.traces) {
        let transport = Transport::new(Signal::Traces, settings)?;
        let batching = Batching {
            max_queue_size: export.max_queue_size,
            max_export_batch_size: export.max_export_batch_size,
            batch_timeout: export.batch_timeout,
        };
        sinks.push(Box::new(OtlpTraces(TraceExport::spawn(
            transport, batching,
        ))));
    }
    if let (Some(settings), Some(registry)) = (
        crate::export::otlp::transport_settings(&export.metrics),
        registry,
    ) {
        let transport = Transport::new(Signal::Metrics, settings)?;
        sinks.push(Box::new(OtlpMetrics(MetricExport::spawn(
            transport,
            registry.clone(),
            internal.otlp.clone(),
            export.metrics_interval,
        ))));
    }
    // Prometheus: the application metrics' port, and any other port the internal
    // metrics ask for.
    let mut ports: Vec<(u16, Vec<Route>)> = Vec::new();
    if let (Some(port), Some(registry)) = (export.prometheus_port, registry) {
        ports.push((
            port,
            vec![Route::registry(&export.prometheus_path, registry.clone())],
        ));
    }
    for (port, route) in internal.routes {
        let port = port.or(export.prometheus_port).unwrap_or(0);
        match ports.iter_mut().find(|(p, _)| *p == port && port != 0) {
            Some((_, routes)) => routes.push(route),
            None => ports.push((port, vec![route])),
        }
    }
    for (port, routes) in ports {
        sinks.push(Box::new(Prometheus(PrometheusEndpoint::serve_routes(
            port, routes,
        )?)));
    }
    Ok(sinks)
}
