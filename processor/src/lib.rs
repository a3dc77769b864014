//! tandem's unprivileged half as a library: the `tandem-processor` binary, the
//! benchmarks and the tests use it.
//!
//! Data flows one way: `client` (raw events from the loader) -> `stitch` (with
//! `protocols`: bytes to transactions) -> `pipeline` (routes, sampling, spans,
//! metrics) -> `export` (OTLP, printers). `config` fills `settings`.

pub mod client;
pub mod config;
pub mod export;
pub mod kube;
pub mod model;
pub mod pipeline;
pub mod printer;
pub mod protocols;
pub mod settings;
pub mod stats;
pub mod stitch;
