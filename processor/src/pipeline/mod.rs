//! The stages between a transaction and its telemetry, in the order a transaction
//! meets them: `route` (http.route, ignored paths), `metrics` (every transaction),
//! `span` (ids, sampling by `sample`, attributes), with `resource` saying which
//! process produced it.

pub mod metrics;
pub mod resource;
pub mod route;
pub mod sample;
pub mod span;
