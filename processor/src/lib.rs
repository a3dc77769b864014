//! tandem's unprivileged half as a library: the `tandem-processor` binary, the
//! benchmarks and the tests use it.
//!
//! Data flows one way: `client` (raw events from the loader) -> `engine` (the event
//! loop body) -> `stitch` (with `protocols`: bytes to [`model::Transaction`]s) ->
//! `pipeline` (routes, metrics, spans, sampling, decoration) -> `export` (sinks:
//! OTLP, Prometheus, the trace printer). `run` is the whole processor; `config`
//! fills `settings`; `summary` and `internal` report on tandem itself.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod engine;
pub mod export;
pub mod health;
pub mod internal;
pub mod kube;
pub mod model;
pub mod pipeline;
pub mod printer;
pub mod protocols;
pub mod resume;
pub mod run;
pub mod select;
pub mod settings;
pub mod stats;
pub mod stitch;
pub mod summary;
