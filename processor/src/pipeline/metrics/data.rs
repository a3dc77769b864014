//! The values the metrics registry aggregates and hands to its readers (the OTLP
//! push and the Prometheus scrape): explicit-bucket histograms, gauges and
//! counters, cumulative, per resource.

use std::sync::Arc;

use opentelemetry::KeyValue;

use crate::pipeline::resource::ProcessResource;

/// An explicit-bucket histogram of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds (inclusive) of all but the last bucket.
    pub bounds: &'static [f64],
    /// One more than `bounds`.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    pub fn record(&mut self, v: f64) {
        // The first bound not below the value: bucket i holds (bounds[i-1], bounds[i]].
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// What one series of a metric holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    Histogram(Histogram),
    /// A last value.
    Gauge(f64),
    /// A monotonic total.
    Counter(f64),
}

/// Kinds of metric, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Histogram,
    Gauge,
    Counter,
}

/// Whether a metric's values are integers (counts, bytes) or floating point
/// (seconds): OTLP gauges and sums say so; Prometheus prints them the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    Int,
    Double,
}

/// A metric's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    pub number: Number,
}

/// One series: its attributes and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub attributes: Vec<KeyValue>,
    pub point: Point,
    /// Unix ns the series started accumulating (cumulative start time).
    pub start_unix_ns: u64,
}

/// One metric and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricData {
    pub descriptor: Descriptor,
    pub series: Vec<SeriesData>,
}

/// The metrics of one resource at one moment.
#[derive(Debug, Clone)]
pub struct ResourceMetrics {
    pub process: Arc<ProcessResource>,
    /// Unix ns of the collection.
    pub time_unix_ns: u64,
    pub metrics: Vec<MetricData>,
}

impl ResourceMetrics {
    /// The metric named `name`, if it has series.
    pub fn metric(&self, name: &str) -> Option<&MetricData> {
        self.metrics.iter().find(|m| m.descriptor.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_values_up_to_their_bound() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.record(v);
        }
        assert_eq!(h.counts, vec![2, 2, 1]);
        assert_eq!((h.count, h.sum, h.min, h.max), (5, 8.0, 0.5, 3.0));
    }
}
