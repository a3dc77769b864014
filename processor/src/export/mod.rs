//! Sending telemetry out. Every exporter is a sink (`sink`): the trace printer
//! (`printer`), OTLP traces (`traces`: a bounded queue and batching), OTLP metrics
//! (`metrics`: a periodic push) and the Prometheus scrape endpoint (`prometheus`).
//! OTLP requests are encoded here without the OpenTelemetry SDK (`wire`, `encode`,
//! `encode_metrics`) and sent by the OTLP transport (`transport`: gRPC or
//! HTTP/protobuf, retries, several exports in flight), configured from the settings
//! by `otlp`.

pub mod encode;
pub mod encode_metrics;
pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod prometheus;
pub mod sink;
pub mod traces;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod receiver_tests;
