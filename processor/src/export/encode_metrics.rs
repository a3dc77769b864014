//! OTLP protobuf encoding of collected metrics: the `ExportMetricsServiceRequest`
//! body of an OTLP metrics export, one `ResourceMetrics` per resource, one
//! `ScopeMetrics` (scope `tandem`) in each, cumulative temporality. Field numbers
//! are those of `opentelemetry-proto`'s messages (its prost types decode it in the
//! tests). Not on the per-transaction path: it runs once per export interval.

use crate::export::encode::scope;
use crate::export::wire::{
    put_double, put_fixed64, put_int64, put_key_value, put_len, put_packed_double,
    put_packed_fixed64, put_str, put_uint,
};
use crate::pipeline::metrics::{Kind, MetricData, Number, Point, ResourceMetrics};

/// `ExportMetricsServiceRequest.resource_metrics`.
const REQUEST_RESOURCE_METRICS: u32 = 1;
/// `ResourceMetrics` / `ScopeMetrics` fields.
const RM_RESOURCE: u32 = 1;
const RM_SCOPE_METRICS: u32 = 2;
const SM_SCOPE: u32 = 1;
const SM_METRICS: u32 = 2;
/// `Metric` fields.
const METRIC_NAME: u32 = 1;
const METRIC_DESCRIPTION: u32 = 2;
const METRIC_UNIT: u32 = 3;
const METRIC_GAUGE: u32 = 5;
const METRIC_SUM: u32 = 7;
const METRIC_HISTOGRAM: u32 = 9;
/// `Gauge`/`Sum`/`Histogram` fields.
const DATA_POINTS: u32 = 1;
const TEMPORALITY: u32 = 2;
const IS_MONOTONIC: u32 = 3;
/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;
/// `NumberDataPoint` fields.
const NUMBER_START: u32 = 2;
const NUMBER_TIME: u32 = 3;
const NUMBER_AS_DOUBLE: u32 = 4;
const NUMBER_AS_INT: u32 = 6;
const NUMBER_ATTRIBUTES: u32 = 7;
/// `HistogramDataPoint` fields.
const HIST_START: u32 = 2;
const HIST_TIME: u32 = 3;
const HIST_COUNT: u32 = 4;
const HIST_SUM: u32 = 5;
const HIST_BUCKET_COUNTS: u32 = 6;
const HIST_BOUNDS: u32 = 7;
const HIST_ATTRIBUTES: u32 = 9;
const HIST_MIN: u32 = 11;
const HIST_MAX: u32 = 12;

/// The request for `collected`.
pub fn encode_metrics(collected: &[ResourceMetrics]) -> Vec<u8> {
    let scope = scope();
    let mut out = Vec::new();
    for rm in collected {
        let mut metrics = Vec::new();
        for m in &rm.metrics {
            let mut one = Vec::new();
            metric(&mut one, m, rm.time_unix_ns);
            put_len(&mut metrics, SM_METRICS, &one);
        }
        let mut scope_metrics = Vec::new();
        put_len(&mut scope_metrics, SM_SCOPE, &scope);
        scope_metrics.extend_from_slice(&metrics);
        let mut resource_metrics = Vec::new();
        put_len(&mut resource_metrics, RM_RESOURCE, &rm.process.otlp);
        put_len(&mut resource_metrics, RM_SCOPE_METRICS, &scope_metrics);
        put_len(&mut out, REQUEST_RESOURCE_METRICS, &resource_metrics);
    }
    out
}

/// Data points in all `collected`.
pub fn data_points(collected: &[ResourceMetrics]) -> u64 {
    collected
        .iter()
        .flat_map(|rm| &rm.metrics)
        .map(|m| m.series.len() as u64)
        .sum()
}

fn metric(buf: &mut Vec<u8>, m: &MetricData, time: u64) {
    let d = &m.descriptor;
    put_str(buf, METRIC_NAME, d.name);
    put_str(buf, METRIC_DESCRIPTION, d.description);
    put_str(buf, METRIC_UNIT, d.unit);
    let mut data = Vec::new();
    for s in &m.series {
        let mut p = Vec::new();
        match &s.point {
            Point::Histogram(h) => {
                put_fixed64(&mut p, HIST_START, s.start_unix_ns);
                put_fixed64(&mut p, HIST_TIME, time);
                put_fixed64(&mut p, HIST_COUNT, h.count);
                put_double(&mut p, HIST_SUM, h.sum);
                put_packed_fixed64(&mut p, HIST_BUCKET_COUNTS, h.counts.iter().copied());
                put_packed_double(&mut p, HIST_BOUNDS, h.bounds);
                for kv in &s.attributes {
                    put_key_value(&mut p, HIST_ATTRIBUTES, kv);
                }
                if h.count > 0 {
                    put_double(&mut p, HIST_MIN, h.min);
                    put_double(&mut p, HIST_MAX, h.max);
                }
            }
            Point::Gauge(v) | Point::Counter(v) => {
                put_fixed64(&mut p, NUMBER_START, s.start_unix_ns);
                put_fixed64(&mut p, NUMBER_TIME, time);
                match d.number {
                    Number::Double => put_double(&mut p, NUMBER_AS_DOUBLE, *v),
                    // sfixed64.
                    Number::Int => {
                        p.push((NUMBER_AS_INT << 3 | 1) as u8);
                        p.extend_from_slice(&(*v as i64).to_le_bytes());
                    }
                }
                for kv in &s.attributes {
                    put_key_value(&mut p, NUMBER_ATTRIBUTES, kv);
                }
            }
        }
        put_len(&mut data, DATA_POINTS, &p);
    }
    match d.kind {
        Kind::Histogram => {
            put_uint(&mut data, TEMPORALITY, CUMULATIVE);
            put_len(buf, METRIC_HISTOGRAM, &data);
        }
        Kind::Counter => {
            put_uint(&mut data, TEMPORALITY, CUMULATIVE);
            put_int64(&mut data, IS_MONOTONIC, 1);
            put_len(buf, METRIC_SUM, &data);
        }
        Kind::Gauge => put_len(buf, METRIC_GAUGE, &data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;
    use crate::pipeline::metrics::{LoaderPosture, MetricsRegistry};
    use crate::pipeline::resource::{own_resource, ProcessMap, ResourceSettings};
    use crate::pipeline::span::tests::tx;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
    use prost::Message;

    #[test]
    fn histograms_and_gauges_decode_exactly() {
        let mut procs = ProcessMap::new(ResourceSettings::default());
        let mut reg = MetricsRegistry::default();
        let p = procs.get(42);
        reg.record(
            &p,
            &tx(Side::Server, "GET", "/u/1", Some(200)),
            Some(&"/u/{id}".into()),
        );
        reg.record(
            &p,
            &tx(Side::Server, "GET", "/u/2", Some(200)),
            Some(&"/u/{id}".into()),
        );
        reg.record_loader_posture(
            &own_resource("tandem-processor", "box"),
            &LoaderPosture {
                excess: vec!["CAP_SYS_ADMIN".into()],
                privileged: String::new(),
            },
        );
        let collected = reg.collect();
        let bytes = encode_metrics(&collected);
        let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(req.resource_metrics.len(), 2);
        let app = &req.resource_metrics[0];
        let sm = &app.scope_metrics[0];
        assert_eq!(sm.scope.as_ref().map(|s| s.name.as_str()), Some("tandem"));
        let d = sm
            .metrics
            .iter()
            .find(|m| m.name == "http.server.request.duration")
            .expect("duration");
        assert_eq!(d.unit, "s");
        assert_eq!(d.description, "Duration of HTTP server requests.");
        let Some(Data::Histogram(h)) = &d.data else {
            panic!("{d:?}")
        };
        assert_eq!(h.aggregation_temporality, 2);
        let pt = &h.data_points[0];
        assert_eq!(pt.count, 2);
        assert_eq!(pt.sum, Some(0.5));
        assert_eq!((pt.min, pt.max), (Some(0.25), Some(0.25)));
        assert_eq!(
            pt.explicit_bounds,
            crate::pipeline::metrics::DURATION_BUCKETS.to_vec()
        );
        assert_eq!(pt.bucket_counts.len(), pt.explicit_bounds.len() + 1);
        assert_eq!(pt.bucket_counts[7], 2, "0.25 falls in (0.1, 0.25]");
        assert!(pt.start_time_unix_nano > 0 && pt.start_time_unix_nano <= pt.time_unix_nano);
        let keys: Vec<&str> = pt.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert!(keys.contains(&"http.route"), "{keys:?}");
        let size = sm
            .metrics
            .iter()
            .find(|m| m.name == "http.server.request.body.size")
            .expect("size");
        assert_eq!(size.unit, "By");
        let own = &req.resource_metrics[1];
        let g = &own.scope_metrics[0].metrics[0];
        assert_eq!(g.name, "tandem.loader.excess_capabilities");
        let Some(Data::Gauge(g)) = &g.data else {
            panic!("{g:?}")
        };
        assert_eq!(g.data_points[0].value, Some(N::AsInt(1)));
        assert_eq!(data_points(&collected), 4);
    }
}
