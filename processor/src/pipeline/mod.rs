//! The stages between a transaction and its telemetry: route, sample, span, metrics.

pub mod route;
pub mod sample;
