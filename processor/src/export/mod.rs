//! Sending telemetry out: OTLP traces (`traces`, a bounded queue in front of the SDK's
//! OTLP exporter) and metrics (`metrics`, periodic push), exporters built from the
//! settings (`otlp`), and the trace printer (`printer`).

pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod traces;

#[cfg(test)]
mod receiver_tests;
