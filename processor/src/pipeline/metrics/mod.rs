//! RED metrics of every transaction, aggregated in place: one lookup per
//! transaction finds its series (its attribute set), whose histograms it updates.
//! `families` says which metrics and attributes a transaction feeds.
//!
//! Each instrumented process has its own series under its own resource. Readers
//! (the OTLP push, the Prometheus scrape) take cumulative snapshots
//! ([`MetricsRegistry::collect`], [`MetricsRegistry::snapshot`]). At most
//! [`MAX_METERED_PROCESSES`] processes are metered at once; past that, the
//! longest-metered one is retired (collected one last time, then dropped), as is a
//! process whose resource changed (a new process with the same pid, or Kubernetes
//! metadata learnt later). Each metric of a process holds at most
//! [`MAX_SERIES_PER_METRIC`] series; further attribute sets are counted in one
//! series with the single attribute `otel.metric.overflow=true`, as the
//! OpenTelemetry SDK does.
//!
//! tandem's own metrics (the loader's posture, the internal metrics) live under the
//! processor's own resource ([`MetricsRegistry::set_own`]).

pub mod data;
pub mod families;
pub mod select;
pub mod span_names;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::{KeyValue, Value};

use crate::export::encode::unix_nanos;
use crate::model::Transaction;
use crate::pipeline::resource::{ProcessResource, Resource};
use crate::settings::{AttributeSelect, Buckets, MetricsFeatures};
use crate::stitch::{FastMap, KeyHasher};

pub use data::{
    Descriptor, Histogram, Kind, MetricData, Number, Point, ResourceMetrics, SeriesData,
};
pub use families::{
    Family, Instrument, BODY_SIZE_BUCKETS, DB_DURATION_BUCKETS, DURATION_BUCKETS, FAMILIES,
};

/// Most processes metered at once.
pub const MAX_METERED_PROCESSES: usize = 1024;
/// Most series (attribute sets) per metric of one process (the SDK's default
/// cardinality limit).
pub const MAX_SERIES_PER_METRIC: usize = 2000;

/// One attribute set of a family, with one histogram per instrument.
#[derive(Debug)]
struct Series {
    attributes: Vec<KeyValue>,
    histograms: Vec<Histogram>,
    start_unix_ns: u64,
}

/// The series of one process.
#[derive(Debug)]
struct ProcessMetrics {
    process: Arc<ProcessResource>,
    /// Per family: series, and an index from attribute hash to series positions.
    families: [FamilySeries; FAMILIES],
}

#[derive(Debug, Default)]
struct FamilySeries {
    series: Vec<Series>,
    index: FastMap<u64, Vec<usize>>,
    /// The series of attribute sets past the cardinality limit.
    overflow: Option<usize>,
}

fn attributes_hash(attrs: &[KeyValue]) -> u64 {
    let mut h = KeyHasher::default();
    for kv in attrs {
        kv.key.as_str().hash(&mut h);
        match &kv.value {
            Value::I64(i) => i.hash(&mut h),
            Value::Bool(b) => b.hash(&mut h),
            Value::F64(f) => f.to_bits().hash(&mut h),
            other => other.as_str().hash(&mut h),
        }
    }
    h.finish()
}

impl FamilySeries {
    /// The series of `attrs` (made if new, or the overflow series past the limit).
    fn series(
        &mut self,
        family: Family,
        attrs: &[KeyValue],
        now: u64,
        buckets: &Buckets,
    ) -> &mut Series {
        let hash = attributes_hash(attrs);
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|i| self.series[*i].attributes == attrs)
        });
        let i = match found {
            Some(i) => i,
            None if self.series.len() >= MAX_SERIES_PER_METRIC => match self.overflow {
                Some(i) => i,
                None => {
                    let i = self.push(
                        family,
                        vec![KeyValue::new("otel.metric.overflow", true)],
                        now,
                        buckets,
                    );
                    self.overflow = Some(i);
                    i
                }
            },
            None => {
                let i = self.push(family, attrs.to_vec(), now, buckets);
                self.index.entry(hash).or_default().push(i);
                i
            }
        };
        &mut self.series[i]
    }

    fn push(
        &mut self,
        family: Family,
        attributes: Vec<KeyValue>,
        now: u64,
        buckets: &Buckets,
    ) -> usize {
        self.series.push(Series {
            attributes,
            histograms: family
                .instruments()
                .iter()
                .map(|i| Histogram::new(bounds_of(i, buckets)))
                .collect(),
            start_unix_ns: now,
        });
        self.series.len() - 1
    }
}

/// The bucket boundaries of instrument `i`: the configured ones by what it measures
/// (counters have none).
fn bounds_of(i: &Instrument, buckets: &Buckets) -> &'static [f64] {
    use families::Measure;
    match i.measure {
        _ if i.bounds.is_empty() => &[],
        Measure::Duration | Measure::ClientDuration | Measure::ServerDuration => buckets.duration,
        Measure::RequestBody => buckets.request_size,
        Measure::ResponseBody => buckets.response_size,
        Measure::One | Measure::Failed => &[],
    }
}

impl ProcessMetrics {
    fn new(process: Arc<ProcessResource>) -> Self {
        ProcessMetrics {
            process,
            families: Default::default(),
        }
    }

    fn snapshot(&self, now: u64) -> ResourceMetrics {
        let mut metrics = Vec::new();
        for family in Family::ALL {
            let fs = &self.families[family.index()];
            for (i, instrument) in family.instruments().iter().enumerate() {
                let series: Vec<SeriesData> = fs
                    .series
                    .iter()
                    .filter_map(|s| {
                        let h = s.histograms.get(i)?;
                        (h.count > 0).then(|| SeriesData {
                            attributes: s.attributes.clone(),
                            point: match instrument.descriptor.kind {
                                Kind::Counter => Point::Counter(h.sum),
                                _ => Point::Histogram(h.clone()),
                            },
                            start_unix_ns: s.start_unix_ns,
                        })
                    })
                    .collect();
                if !series.is_empty() {
                    metrics.push(MetricData {
                        descriptor: instrument.descriptor,
                        series,
                    });
                }
            }
        }
        ResourceMetrics {
            process: self.process.clone(),
            time_unix_ns: now,
            metrics,
        }
    }
}

/// tandem's own metrics: gauges and counters set to their current values.
#[derive(Debug)]
struct OwnMetrics {
    process: Arc<ProcessResource>,
    start_unix_ns: u64,
    metrics: Vec<MetricData>,
}

/// The loader's capability posture as a metric (`tandem.loader.excess_capabilities`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderPosture {
    /// Capabilities the loader holds that no enabled feature needs (`CAP_*`).
    pub excess: Vec<String>,
    /// Why the loader is privileged-equivalent; empty when it is not.
    pub privileged: String,
}

/// The gauge of the loader's posture.
pub const LOADER_EXCESS: Descriptor = Descriptor {
    name: "tandem.loader.excess_capabilities",
    unit: "{capability}",
    description: "Capabilities the loader holds that no enabled feature needs (0 when it holds \
                  only what it uses); attribute tandem.loader.capabilities.excess names them.",
    kind: Kind::Gauge,
    number: Number::Int,
};

/// Per-process series, and tandem's own.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    by_pid: HashMap<u32, ProcessMetrics>,
    order: VecDeque<u32>,
    /// Replaced or evicted processes: collected once more, then dropped.
    retired: Vec<ProcessMetrics>,
    own: Option<OwnMetrics>,
    /// The attributes of the transaction being recorded (reused).
    scratch: Vec<KeyValue>,
    /// Which metrics are made (`metrics.features`).
    features: MetricsFeatures,
    /// Histogram boundaries (`buckets`).
    buckets: Buckets,
    /// `attributes.select`, resolved per family.
    selection: [select::FamilySelection; FAMILIES],
    /// Some family's selection is not the default one.
    selected: bool,
    /// `attributes.metric_span_names_limit`.
    span_names: span_names::SpanNameLimiter,
}

fn now_unix_ns() -> u64 {
    unix_nanos(SystemTime::now())
}

impl MetricsRegistry {
    /// A registry making the metrics of `features`.
    pub fn with_features(features: MetricsFeatures) -> Self {
        MetricsRegistry {
            features,
            ..MetricsRegistry::default()
        }
    }

    /// Which metrics are made from now on.
    pub fn set_features(&mut self, features: MetricsFeatures) {
        self.features = features;
    }

    /// The histogram boundaries of the series made from now on.
    pub fn set_buckets(&mut self, buckets: Buckets) {
        self.buckets = buckets;
    }

    /// The attributes each family reports from now on (`attributes.select`); an
    /// invalid glob is an error (the configuration checks them first).
    pub fn set_attribute_select(
        &mut self,
        select: &AttributeSelect,
    ) -> Result<(), select::SelectError> {
        self.selection = select::resolve(select)?;
        self.selected = self.selection.iter().any(|s| !s.is_default());
        Ok(())
    }

    /// Most distinct span names per service in span metrics from now on
    /// (`attributes.metric_span_names_limit`; 0: no limit). Forgets the names seen.
    pub fn set_span_names_limit(&mut self, limit: usize) {
        self.span_names = span_names::SpanNameLimiter::new(limit);
    }

    /// Span metric observations whose span name was reported as `AGGREGATED`
    /// (`attributes.metric_span_names_limit`).
    pub fn span_names_aggregated(&self) -> u64 {
        self.span_names.aggregated()
    }

    /// Records one transaction of `process`, any protocol (`route`: an HTTP
    /// server request's `http.route`).
    pub fn record(
        &mut self,
        process: &Arc<ProcessResource>,
        tx: &Transaction,
        route: Option<&Arc<str>>,
    ) {
        self.record_linked(process, tx, route, None);
    }

    /// [`MetricsRegistry::record`], with `peer`: the traced process on the other
    /// end of the connection, when the two spans were linked (service graph names).
    pub fn record_linked(
        &mut self,
        process: &Arc<ProcessResource>,
        tx: &Transaction,
        route: Option<&Arc<str>>,
        peer: Option<&ProcessResource>,
    ) {
        let mut attrs = std::mem::take(&mut self.scratch);
        if self.features.application {
            if let Some(obs) = families::observe(tx, route, &mut attrs) {
                self.select(obs.family, tx, &mut attrs);
                self.add(process, tx, &obs, &attrs);
            }
        }
        for (on, family) in [
            (self.features.span, Family::SpanMetrics),
            (self.features.service_graph, Family::ServiceGraph),
        ] {
            if on {
                let obs = families::observe_span(family, tx, route, process, peer, &mut attrs);
                self.select(family, tx, &mut attrs);
                if family == Family::SpanMetrics {
                    self.span_names.apply(&mut attrs);
                }
                self.add(process, tx, &obs, &attrs);
            }
        }
        attrs.clear();
        self.scratch = attrs;
    }

    /// Applies `attributes.select` to `attrs`, the default attributes of `family`.
    fn select(&self, family: Family, tx: &Transaction, attrs: &mut Vec<KeyValue>) {
        if self.selected {
            let s = &self.selection[family.index()];
            if !s.is_default() {
                s.apply(tx, attrs);
            }
        }
    }

    fn add(
        &mut self,
        process: &Arc<ProcessResource>,
        tx: &Transaction,
        obs: &families::Observation,
        attrs: &[KeyValue],
    ) {
        let now = tx.end_unix_ns();
        let family = obs.family;
        let buckets = self.buckets;
        let meters = self.meters(process);
        let series = meters.families[family.index()].series(family, attrs, now, &buckets);
        for (h, instrument) in series.histograms.iter_mut().zip(family.instruments()) {
            if let Some(v) = obs.value(instrument.measure) {
                h.record(v);
            }
        }
    }

    fn meters(&mut self, process: &Arc<ProcessResource>) -> &mut ProcessMetrics {
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
            .or_insert_with(|| ProcessMetrics::new(process.clone()))
    }

    /// Sets tandem's own metric `descriptor` (a gauge or counter) to `series`
    /// (attribute sets and values), under `resource` (the processor's own; the
    /// first call's resource is kept).
    pub fn set_own(
        &mut self,
        resource: &Resource,
        descriptor: Descriptor,
        series: Vec<(Vec<KeyValue>, f64)>,
    ) {
        let own = self.own.get_or_insert_with(|| OwnMetrics {
            process: Arc::new(ProcessResource::new(0, resource.clone())),
            start_unix_ns: now_unix_ns(),
            metrics: Vec::new(),
        });
        let start = own.start_unix_ns;
        let data = MetricData {
            descriptor,
            series: series
                .into_iter()
                .map(|(attributes, v)| SeriesData {
                    attributes,
                    point: match descriptor.kind {
                        Kind::Counter => Point::Counter(v),
                        _ => Point::Gauge(v),
                    },
                    start_unix_ns: start,
                })
                .collect(),
        };
        match own
            .metrics
            .iter_mut()
            .find(|m| m.descriptor.name == descriptor.name)
        {
            Some(m) => *m = data,
            None => own.metrics.push(data),
        }
    }

    /// Records the loader's posture under `resource` (the processor's own): the
    /// gauge `tandem.loader.excess_capabilities`.
    pub fn record_loader_posture(&mut self, resource: &Resource, posture: &LoaderPosture) {
        let count = posture.excess.len() as f64;
        let attrs = vec![
            KeyValue::new(
                "tandem.loader.capabilities.excess",
                posture.excess.join(","),
            ),
            KeyValue::new("tandem.loader.privileged", !posture.privileged.is_empty()),
        ];
        self.set_own(resource, LOADER_EXCESS, vec![(attrs, count)]);
    }

    fn own_snapshot(&self, now: u64) -> Option<ResourceMetrics> {
        let own = self.own.as_ref()?;
        Some(ResourceMetrics {
            process: own.process.clone(),
            time_unix_ns: now,
            metrics: own.metrics.clone(),
        })
    }

    /// Current values of every metered process and tandem's own (cumulative), and
    /// one last time those of retired processes, which are then dropped.
    pub fn collect(&mut self) -> Vec<ResourceMetrics> {
        let now = now_unix_ns();
        let mut out: Vec<ResourceMetrics> = self.by_pid.values().map(|m| m.snapshot(now)).collect();
        out.extend(self.own_snapshot(now));
        for old in self.retired.drain(..) {
            out.push(old.snapshot(now));
        }
        out.retain(|rm| !rm.metrics.is_empty());
        out
    }

    /// Current values of every metered process (cumulative), leaving the retired
    /// ones to [`MetricsRegistry::collect`] and tandem's own to the internal
    /// metrics: the Prometheus scrape reads with this, so that the OTLP push still
    /// sends the last values of retired processes, and a scrape never shows a
    /// retired process next to its successor with the same pid.
    pub fn snapshot(&self) -> Vec<ResourceMetrics> {
        let now = now_unix_ns();
        let mut out: Vec<ResourceMetrics> = self.by_pid.values().map(|m| m.snapshot(now)).collect();
        out.retain(|rm| !rm.metrics.is_empty());
        out
    }

    /// Processes metered now.
    pub fn processes(&self) -> usize {
        self.by_pid.len()
    }
}
