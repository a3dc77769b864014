//! RED metrics of HTTP transactions, per the OpenTelemetry HTTP semantic conventions.
//!
//! | instrument | unit | kind |
//! |---|---|---|
//! | `http.server.request.duration`, `http.client.request.duration` | `s` | histogram, buckets [`DURATION_BUCKETS`] |
//! | `http.server.request.body.size`, `http.server.response.body.size`, `http.client.request.body.size`, `http.client.response.body.size` | `By` | histogram, buckets [`BODY_SIZE_BUCKETS`] |
//!
//! Attributes are bounded: `http.request.method` (`_OTHER` for unknown methods),
//! `http.response.status_code`, `error.type`, and on server metrics `http.route` and
//! `server.port`, on client metrics `server.address` and `server.port`. The raw path
//! never is. Every transaction counts, sampled or not.
//!
//! One OpenTelemetry SDK meter provider per process carries that process's resource;
//! each has a manual reader, collected by [`MetricsRegistry::collect`] for the OTLP
//! push and the Prometheus scrape alike (cumulative temporality). At most
//! [`MAX_METERED_PROCESSES`] processes are metered at once; past that, the
//! longest-metered one is retired (collected one last time, then dropped). The SDK
//! additionally caps each instrument at 2000 attribute sets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Gauge, Histogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;

use crate::model::{DbOperation, Exchange, HttpExchange, Side, Transaction, KNOWN_METHODS};
use crate::pipeline::db::db_metric_attributes;
use crate::pipeline::grpc::{self, GrpcCall};
use crate::pipeline::resource::ProcessResource;
use crate::pipeline::span::{error_type, host_of, scope};

/// The HTTP semantic conventions' duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The database semantic conventions' `db.client.operation.duration` buckets, in
/// seconds.
pub const DB_DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Body size buckets in bytes (the conventions give none; powers of two up to 8 MiB).
pub const BODY_SIZE_BUCKETS: [f64; 12] = [
    0.0, 32.0, 128.0, 512.0, 2048.0, 8192.0, 32768.0, 131072.0, 524288.0, 2097152.0, 8388608.0,
    33554432.0,
];

/// Most processes metered at once.
pub const MAX_METERED_PROCESSES: usize = 1024;

/// A manual reader shared between its provider and the registry.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

#[derive(Debug)]
struct ProcessMeters {
    process: Arc<ProcessResource>,
    provider: SdkMeterProvider,
    reader: SharedReader,
    server_duration: Histogram<f64>,
    client_duration: Histogram<f64>,
    rpc_server_duration: Histogram<f64>,
    rpc_client_duration: Histogram<f64>,
    server_request_body: Histogram<u64>,
    server_response_body: Histogram<u64>,
    client_request_body: Histogram<u64>,
    client_response_body: Histogram<u64>,
    db_client_duration: Histogram<f64>,
}

impl ProcessMeters {
    fn new(process: Arc<ProcessResource>) -> Self {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder()
            .with_resource(process.resource.clone())
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter_with_scope(scope());
        let duration = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let size = |name: &'static str, what: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit("By")
                .with_description(what)
                .with_boundaries(BODY_SIZE_BUCKETS.to_vec())
                .build()
        };
        ProcessMeters {
            server_duration: duration(
                "http.server.request.duration",
                "Duration of HTTP server requests.",
            ),
            client_duration: duration(
                "http.client.request.duration",
                "Duration of HTTP client requests.",
            ),
            rpc_server_duration: duration(
                "rpc.server.call.duration",
                "Duration of RPC server calls.",
            ),
            rpc_client_duration: duration(
                "rpc.client.call.duration",
                "Duration of RPC client calls.",
            ),
            server_request_body: size(
                "http.server.request.body.size",
                "Size of HTTP server request bodies.",
            ),
            server_response_body: size(
                "http.server.response.body.size",
                "Size of HTTP server response bodies.",
            ),
            client_request_body: size(
                "http.client.request.body.size",
                "Size of HTTP client request bodies.",
            ),
            client_response_body: size(
                "http.client.response.body.size",
                "Size of HTTP client response bodies.",
            ),
            db_client_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of database client operations.")
                .with_boundaries(DB_DURATION_BUCKETS.to_vec())
                .build(),
            process,
            provider,
            reader,
        }
    }

    fn collect(&self) -> Option<ResourceMetrics> {
        let mut rm = ResourceMetrics::default();
        match self.reader.collect(&mut rm) {
            Ok(()) => Some(rm),
            Err(e) => {
                tracing::debug!(pid = self.process.pid, "metrics collection failed: {e}");
                None
            }
        }
    }
}

/// The bounded attributes of a transaction's metrics.
pub fn metric_attributes(tx: &Transaction, h: &HttpExchange, route: Option<&str>) -> Vec<KeyValue> {
    let req = &h.request;
    let method = if KNOWN_METHODS.contains(&&*req.method) {
        req.method.to_string()
    } else {
        "_OTHER".to_string()
    };
    let mut attrs = vec![KeyValue::new("http.request.method", method)];
    if let Some(r) = &h.response {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    if let Some(e) = error_type(tx.side, h) {
        attrs.push(KeyValue::new("error.type", e));
    }
    match tx.side {
        Side::Server => {
            if let Some(r) = route {
                attrs.push(KeyValue::new("http.route", r.to_string()));
            }
            if let Some(l) = tx.local {
                attrs.push(KeyValue::new("server.port", i64::from(l.port())));
            }
        }
        Side::Client => {
            let host = req
                .header("host")
                .map(|h| host_of(h).to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| tx.peer.map(|p| p.ip().to_string()));
            if let Some(h) = host {
                attrs.push(KeyValue::new("server.address", h));
            }
            if let Some(p) = tx.peer {
                attrs.push(KeyValue::new("server.port", i64::from(p.port())));
            }
        }
    }
    attrs
}

/// Per-process meters.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    by_pid: HashMap<u32, ProcessMeters>,
    order: VecDeque<u32>,
    /// Replaced or evicted meters: collected once more, then dropped.
    retired: Vec<ProcessMeters>,
    /// tandem's own metrics (the loader's posture), under the processor's resource.
    own: Option<OwnMeters>,
}

/// Metrics about tandem itself rather than an instrumented process: resource
/// `service.name` = the processor's subscription name, `host.name`.
#[derive(Debug)]
struct OwnMeters {
    /// Kept alive: the gauge records through it.
    _provider: SdkMeterProvider,
    reader: SharedReader,
    excess: Gauge<i64>,
}

/// The loader's capability posture as a metric (`tandem.loader.excess_capabilities`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderPosture {
    /// Capabilities the loader holds that no enabled feature needs (`CAP_*`).
    pub excess: Vec<String>,
    /// Why the loader is privileged-equivalent; empty when it is not.
    pub privileged: String,
}

impl OwnMeters {
    fn new(resource: Resource) -> Self {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.clone())
            .build();
        let excess = provider
            .meter_with_scope(scope())
            .i64_gauge("tandem.loader.excess_capabilities")
            .with_unit("{capability}")
            .with_description(
                "Capabilities the loader holds that no enabled feature needs (0 when it holds \
                 only what it uses); attribute tandem.loader.capabilities.excess names them.",
            )
            .build();
        OwnMeters {
            _provider: provider,
            reader,
            excess,
        }
    }

    fn collect(&self) -> Option<ResourceMetrics> {
        let mut rm = ResourceMetrics::default();
        match self.reader.collect(&mut rm) {
            Ok(()) => Some(rm),
            Err(e) => {
                tracing::debug!("tandem's own metrics collection failed: {e}");
                None
            }
        }
    }
}

impl MetricsRegistry {
    /// Records the loader's posture under `resource` (the processor's own): the
    /// gauge `tandem.loader.excess_capabilities`.
    pub fn record_loader_posture(&mut self, resource: &Resource, posture: &LoaderPosture) {
        let own = self
            .own
            .get_or_insert_with(|| OwnMeters::new(resource.clone()));
        let count = i64::try_from(posture.excess.len()).unwrap_or(i64::MAX);
        own.excess.record(
            count,
            &[
                KeyValue::new(
                    "tandem.loader.capabilities.excess",
                    posture.excess.join(","),
                ),
                KeyValue::new("tandem.loader.privileged", !posture.privileged.is_empty()),
            ],
        );
    }

    /// Records one transaction of `process`, any protocol.
    pub fn record(
        &mut self,
        process: &Arc<ProcessResource>,
        tx: &Transaction,
        route: Option<&str>,
    ) {
        match &tx.exchange {
            Exchange::Http(h) => self.record_http(process, tx, h, route),
            Exchange::Db(op) => self.record_db(process, tx, op),
        }
    }

    fn record_http(
        &mut self,
        process: &Arc<ProcessResource>,
        tx: &Transaction,
        h: &HttpExchange,
        route: Option<&str>,
    ) {
        let meters = self.meters(process);
        let secs = tx.duration_secs();
        if let Some(call) = GrpcCall::of(h) {
            // gRPC: rpc.*.call.duration instead of the http.* instruments.
            let attrs = grpc::metric_attributes(tx, h, &call);
            match tx.side {
                Side::Server => meters.rpc_server_duration.record(secs, &attrs),
                Side::Client => meters.rpc_client_duration.record(secs, &attrs),
            }
            return;
        }
        let attrs = metric_attributes(tx, h, route);
        let response_size = h.response.as_ref().map(|r| r.body_size);
        let (duration, req_body, resp_body) = match tx.side {
            Side::Server => (
                &meters.server_duration,
                &meters.server_request_body,
                &meters.server_response_body,
            ),
            Side::Client => (
                &meters.client_duration,
                &meters.client_request_body,
                &meters.client_response_body,
            ),
        };
        duration.record(secs, &attrs);
        req_body.record(h.request.body_size, &attrs);
        if let Some(size) = response_size {
            resp_body.record(size, &attrs);
        }
    }

    /// Records one database operation of `process` in `db.client.operation.duration`
    /// (client side only: the conventions define no server-side database metric).
    fn record_db(&mut self, process: &Arc<ProcessResource>, tx: &Transaction, op: &DbOperation) {
        if tx.side != Side::Client {
            return;
        }
        let meters = self.meters(process);
        let secs = tx.duration_secs();
        meters
            .db_client_duration
            .record(secs, &db_metric_attributes(tx, op));
    }

    fn meters(&mut self, process: &Arc<ProcessResource>) -> &ProcessMeters {
        let pid = process.pid;
        let stale = self
            .by_pid
            .get(&pid)
            .is_some_and(|m| !Arc::ptr_eq(&m.process, process));
        if stale {
            if let Some(old) = self.by_pid.remove(&pid) {
                self.order.retain(|p| *p != pid);
                self.retired.push(old);
            }
        }
        if !self.by_pid.contains_key(&pid) {
            while self.by_pid.len() >= MAX_METERED_PROCESSES {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                if let Some(old) = self.by_pid.remove(&oldest) {
                    self.retired.push(old);
                }
            }
            self.order.push_back(pid);
        }
        self.by_pid
            .entry(pid)
            .or_insert_with(|| ProcessMeters::new(process.clone()))
    }

    /// Current values of every metered process (cumulative), and one last time those
    /// of retired ones.
    pub fn collect(&mut self) -> Vec<ResourceMetrics> {
        let mut out: Vec<ResourceMetrics> = self
            .by_pid
            .values()
            .filter_map(ProcessMeters::collect)
            .collect();
        out.extend(self.own.as_ref().and_then(OwnMeters::collect));
        for old in self.retired.drain(..) {
            out.extend(old.collect());
            if let Err(e) = old.provider.shutdown() {
                tracing::debug!(pid = old.process.pid, "meter provider shutdown: {e}");
            }
        }
        out
    }

    /// Current values of every metered process (cumulative), leaving the retired
    /// ones to [`MetricsRegistry::collect`]: the Prometheus scrape reads with this, so
    /// that the OTLP push still sends the last values of retired processes, and a
    /// scrape never shows a retired process next to its successor with the same pid.
    pub fn snapshot(&self) -> Vec<ResourceMetrics> {
        self.by_pid
            .values()
            .filter_map(ProcessMeters::collect)
            .collect()
    }

    /// Number of processes metered now.
    #[cfg(test)]
    pub fn processes(&self) -> usize {
        self.by_pid.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::resource::{ProcessMap, ResourceSettings};
    use crate::pipeline::span::tests::tx;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    /// One histogram data point: attributes, count, sum.
    pub(crate) type Point = (Vec<KeyValue>, u64, f64);

    /// (metric name, data points) of f64 and u64 histograms, flattened for asserts.
    pub(crate) fn histograms(rm: &ResourceMetrics) -> Vec<(String, Vec<Point>)> {
        let mut out = vec![];
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let pts = match m.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                        .data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.count(), p.sum()))
                        .collect(),
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => h
                        .data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.count(), p.sum() as f64))
                        .collect(),
                    _ => vec![],
                };
                out.push((m.name().to_string(), pts));
            }
        }
        out
    }

    fn find<'a>(h: &'a [(String, Vec<Point>)], name: &str) -> &'a Vec<Point> {
        &h.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
            .1
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
        let service = rm
            .resource()
            .get(&opentelemetry::Key::from_static_str("service.name"));
        assert_eq!(service, Some("tandem-processor".into()));
        let mut points = vec![];
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                if let AggregatedMetrics::I64(MetricData::Gauge(g)) = m.data() {
                    for p in g.data_points() {
                        points.push((
                            m.name().to_string(),
                            p.value(),
                            p.attributes().cloned().collect::<Vec<_>>(),
                        ));
                    }
                }
            }
        }
        assert_eq!(points.len(), 1, "{points:?}");
        let (name, value, attrs) = &points[0];
        assert_eq!(name, "tandem.loader.excess_capabilities");
        assert_eq!(*value, 2);
        assert!(attrs.contains(&KeyValue::new(
            "tandem.loader.capabilities.excess",
            "CAP_SYS_ADMIN,CAP_NET_ADMIN"
        )));
        assert!(attrs.contains(&KeyValue::new("tandem.loader.privileged", true)));
    }

    #[test]
    fn records_durations_and_sizes_with_bounded_attributes() {
        let mut procs = ProcessMap::new(ResourceSettings::default());
        let p = procs.get(42);
        let mut reg = MetricsRegistry::default();
        let t = tx(Side::Server, "GET", "/users/1", Some(200));
        reg.record(&p, &t, Some("/users/{id}"));
        reg.record(
            &p,
            &tx(Side::Server, "GET", "/users/2", Some(200)),
            Some("/users/{id}"),
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
                .resource()
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
}
