//! Sending telemetry out: OTLP traces (`traces`, a bounded queue in front of the SDK's
//! OTLP exporter) and metrics (`metrics`, periodic push), exporters built from the
//! settings (`otlp`), the trace printer (`printer`), the Prometheus scrape endpoint
//! (`prometheus`), and span batches as OTLP protobuf bytes (`encode`).

pub mod encode;
pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod prometheus;
pub mod traces;
pub mod transport;

#[cfg(test)]
mod receiver_tests;
