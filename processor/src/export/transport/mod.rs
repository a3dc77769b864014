//! OTLP transport for request bodies that are already encoded: one
//! `ExportTraceServiceRequest` or `ExportMetricsServiceRequest` in protobuf, sent over
//! gRPC (`grpc`, tonic with a pass-through codec: the bytes are copied once into the
//! gRPC frame, never decoded or re-encoded) or HTTP/protobuf (`http`, hyper's pooled
//! HTTP/1.1 client), retried with backoff until the retry policy's time is up.
//!
//! * [`Transport::export`] sends one body and returns how many of its items (spans or
//!   data points) the collector accepted. It can be called from several tasks at once;
//!   at most [`TransportSettings::max_in_flight`] exports run at a time (the others wait
//!   for a slot), each holding its slot through its retries.
//! * [`Exporter`] is a task in front of a `Transport`: bodies go into a bounded queue
//!   ([`Exporter::try_send`] never waits), up to `max_in_flight` exports run
//!   concurrently, and [`Exporter::shutdown`] finishes what it can within a grace period.
//! * Retries (OTLP specification, "Failures"): gRPC `CANCELLED`, `DEADLINE_EXCEEDED`,
//!   `RESOURCE_EXHAUSTED`, `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE`, `DATA_LOSS`
//!   (waiting as long as a `google.rpc.RetryInfo` says, when the status carries one);
//!   HTTP 429, 502, 503, 504 (honouring `Retry-After`); connection failures and attempts
//!   that time out. Everything else (HTTP 400, gRPC `INVALID_ARGUMENT`, ...) fails at
//!   once. `RESOURCE_EXHAUSTED` without `RetryInfo` is retried too (the specification
//!   only says "should retry" when `RetryInfo` is present): retrying within the elapsed
//!   limit loses nothing more than giving up would.
//! * Backoff between attempts: from [`RetryPolicy::initial_interval`], times 1.5 per
//!   retry up to [`RetryPolicy::max_interval`], each wait randomised within ±50%; no
//!   attempt starts later than [`RetryPolicy::max_elapsed`] after the first.
//! * Accounting: every export ends in exactly one of accepted, rejected by the
//!   collector (partial success, per item), or failed ([`TransportStats`]). One WARN
//!   is logged when exports start failing and one when they work again (a success at
//!   least a second after the last failure, so that a collector throttling some
//!   requests does not flip the state on every export), not one per failed attempt.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::settings::OtlpProtocol;

mod backoff;
mod exporter;
mod grpc;
mod health;
mod http;
pub mod tls;

pub use tls::TlsSettings;
#[cfg(test)]
pub(crate) mod tests;

use backoff::Backoff;
pub use exporter::{Exporter, ExporterStats, SendError};
use health::Health;

/// Which OTLP service a transport sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The gRPC method (`Export` of the signal's collector service).
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// The OTLP/HTTP path `config` appends to a generic endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The signal's endpoint variable, for error messages.
    fn endpoint_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }

    /// What the items of one request are.
    fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        })
    }
}

/// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry (OBI `backoff_initial_interval`).
    pub initial_interval: Duration,
    /// Longest wait between two attempts (OBI `backoff_max_interval`); a server's
    /// `Retry-After` or `RetryInfo` may ask for longer and is honoured.
    pub max_interval: Duration,
    /// No attempt starts later than this after the first one (OBI
    /// `backoff_max_elapsed_time`). Zero: never retry.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// Default timeout of one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of concurrent exports.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// Where and how to send one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSettings {
    /// Full URL as configured: for HTTP including the signal path (`/v1/traces`), for
    /// gRPC `http://host:port` (an empty path or `/`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// gRPC metadata or HTTP headers sent with every request.
    pub headers: BTreeMap<String, String>,
    /// Timeout of one attempt (connecting included).
    pub timeout: Duration,
    pub compression: Option<Compression>,
    /// Exports running at the same time (each with its retries).
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// For `https://` endpoints.
    pub tls: TlsSettings,
}

impl TransportSettings {
    /// Settings with the defaults: no headers, 10 s timeout, no compression, 4 exports
    /// in flight, the default retry policy.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        TransportSettings {
            endpoint: endpoint.into(),
            protocol,
            headers: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            compression: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry: RetryPolicy::default(),
            tls: TlsSettings::default(),
        }
    }
}

/// Settings a transport cannot be built from.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "OTLP {signal} endpoint {endpoint:?} is not usable: {reason} (set {variable} or \
         OTEL_EXPORTER_OTLP_ENDPOINT to a URL such as http://127.0.0.1:{port})"
    )]
    InvalidEndpoint {
        signal: Signal,
        endpoint: String,
        reason: String,
        variable: &'static str,
        port: u16,
    },
    #[error(
        "OTLP {signal} header {name:?} cannot be sent: {reason} (check \
         OTEL_EXPORTER_OTLP_HEADERS / OTEL_EXPORTER_OTLP_{upper}_HEADERS)",
        upper = signal.to_string().to_uppercase()
    )]
    InvalidHeader {
        signal: Signal,
        name: String,
        reason: String,
    },
    #[error("OTLP {signal} transport setting {setting} is invalid: {reason}")]
    InvalidSetting {
        signal: Signal,
        setting: &'static str,
        reason: String,
    },
    #[error("the OTLP {signal} transport must be created inside a Tokio runtime")]
    NoRuntime { signal: Signal },
}

/// An export that did not reach the collector, or that the collector refused whole.
/// The body's items are counted in [`TransportStats::items_failed`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    #[error(
        "OTLP {signal} export of {items} {what} to {endpoint} was refused, not retried: \
         {reason}{hint}",
        what = signal.items()
    )]
    Refused {
        signal: Signal,
        endpoint: String,
        items: u64,
        reason: String,
        /// What to check, starting with "; " (may be empty).
        hint: &'static str,
        attempts: u32,
    },
    #[error(
        "OTLP {signal} export of {items} {what} to {endpoint} failed after {attempts} \
         attempt(s) in {elapsed:.1?}: {last}; is the collector running and reachable?",
        what = signal.items()
    )]
    GaveUp {
        signal: Signal,
        endpoint: String,
        items: u64,
        /// The last attempt's failure.
        last: String,
        attempts: u32,
        elapsed: Duration,
    },
}

impl ExportError {
    /// Attempts made before the export was given up.
    pub fn attempts(&self) -> u32 {
        match self {
            ExportError::Refused { attempts, .. } | ExportError::GaveUp { attempts, .. } => {
                *attempts
            }
        }
    }
}

/// A body the collector answered with success (possibly rejecting some items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Items the body held (as the caller said).
    pub items: u64,
    /// Items the collector rejected (`rejected_spans` / `rejected_data_points` of the
    /// response's partial success), at most `items`.
    pub rejected: u64,
    /// The partial success's `error_message`, when it had one.
    pub message: Option<String>,
    /// Attempts it took (1: no retry).
    pub attempts: u32,
}

impl Exported {
    /// Items the collector accepted.
    pub fn accepted(&self) -> u64 {
        self.items.saturating_sub(self.rejected)
    }
}

/// Counters of one transport (all clones share them), readable at any time. An export
/// future dropped before it finished counts its attempts but no items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Exports the collector answered with success.
    pub exports_ok: u64,
    /// Exports that failed ([`ExportError`]).
    pub exports_failed: u64,
    /// Items accepted by the collector.
    pub items_exported: u64,
    /// Items the collector rejected in a partial success.
    pub items_rejected: u64,
    /// Items of failed exports.
    pub items_failed: u64,
    /// Requests sent (first attempts and retries).
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Request body bytes handed to the connection, summed over attempts, before
    /// compression.
    pub bytes_sent: u64,
}

#[derive(Default)]
struct Counters {
    exports_ok: AtomicU64,
    exports_failed: AtomicU64,
    items_exported: AtomicU64,
    items_rejected: AtomicU64,
    items_failed: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    bytes_sent: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One attempt's result, as the protocol modules report it.
enum Attempt {
    /// The collector took the request; `rejected` items of it were refused.
    Accepted { rejected: i64, message: String },
    Failed {
        /// What happened, for messages ("HTTP 503 Service Unavailable: ...").
        reason: String,
        retry: Retry,
    },
}

enum Retry {
    /// Not retryable; what to check, starting with "; ".
    Never(&'static str),
    /// Retryable, after the server's delay if it gave one, else after the backoff.
    After(Option<Duration>),
}

enum Client {
    Grpc(grpc::GrpcClient),
    // Boxed: the pooled client is much larger than the channel.
    Http(Box<http::HttpClient>),
}

/// Sends encoded OTLP request bodies for one signal to one endpoint. Clones share the
/// connections, the in-flight limit and the counters.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    signal: Signal,
    endpoint: String,
    client: Client,
    timeout: Duration,
    retry: RetryPolicy,
    max_in_flight: usize,
    slots: Semaphore,
    counters: Counters,
    health: Health,
    /// Whether a partial success has been logged (once, at WARN).
    rejection_logged: AtomicBool,
}

impl Transport {
    /// Validates the settings and prepares the connection (made lazily, on the first
    /// export). Must be called inside a Tokio runtime.
    pub fn new(signal: Signal, settings: TransportSettings) -> Result<Self, TransportError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::NoRuntime { signal });
        }
        let invalid = |setting, reason: &str| TransportError::InvalidSetting {
            signal,
            setting,
            reason: reason.into(),
        };
        if settings.timeout.is_zero() {
            return Err(invalid("timeout", "it must be longer than zero"));
        }
        if settings.max_in_flight == 0 || settings.max_in_flight > 1 << 20 {
            return Err(invalid("max_in_flight", "it must be between 1 and 2^20"));
        }
        if settings.retry.initial_interval.is_zero() && !settings.retry.max_elapsed.is_zero() {
            return Err(invalid(
                "backoff_initial_interval",
                "it must be longer than zero when retries are enabled",
            ));
        }
        let client = match settings.protocol {
            OtlpProtocol::Grpc => Client::Grpc(grpc::GrpcClient::new(signal, &settings)?),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                Client::Http(Box::new(http::HttpClient::new(signal, &settings)?))
            }
        };
        Ok(Transport {
            inner: Arc::new(Inner {
                signal,
                endpoint: settings.endpoint,
                client,
                timeout: settings.timeout,
                retry: settings.retry,
                max_in_flight: settings.max_in_flight,
                slots: Semaphore::new(settings.max_in_flight),
                counters: Counters::default(),
                health: Health::new(),
                rejection_logged: AtomicBool::new(false),
            }),
        })
    }

    pub fn signal(&self) -> Signal {
        self.inner.signal
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            exports_ok: get(&c.exports_ok),
            exports_failed: get(&c.exports_failed),
            items_exported: get(&c.items_exported),
            items_rejected: get(&c.items_rejected),
            items_failed: get(&c.items_failed),
            attempts: get(&c.attempts),
            retries: get(&c.retries),
            bytes_sent: get(&c.bytes_sent),
        }
    }

    /// Sends one encoded `Export{Trace,Metrics}ServiceRequest` holding `items` spans or
    /// data points, retrying as the policy says. Waits for a free slot first when
    /// `max_in_flight` exports are running.
    pub async fn export(&self, body: Bytes, items: u64) -> Result<Exported, ExportError> {
        let inner = &*self.inner;
        // The semaphore is never closed; without a permit the export would still run.
        let _slot = inner.slots.acquire().await.ok();
        let started = Instant::now();
        let deadline = started.checked_add(inner.retry.max_elapsed);
        let body_len = body.len() as u64;
        let wire = match &inner.client {
            Client::Grpc(_) => Ok(body),
            Client::Http(c) => c.prepare(body).await,
        };
        let wire = match wire {
            Ok(wire) => wire,
            Err(reason) => {
                let error = ExportError::Refused {
                    signal: inner.signal,
                    endpoint: inner.endpoint.clone(),
                    items,
                    reason,
                    hint: "",
                    attempts: 0,
                };
                add(&inner.counters.exports_failed, 1);
                add(&inner.counters.items_failed, items);
                return Err(error);
            }
        };
        let mut backoff = Backoff::new(inner.retry);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            add(&inner.counters.attempts, 1);
            add(&inner.counters.bytes_sent, body_len);
            let sent = match &inner.client {
                Client::Grpc(c) => tokio::time::timeout(inner.timeout, c.send(wire.clone())).await,
                Client::Http(c) => tokio::time::timeout(inner.timeout, c.send(wire.clone())).await,
            };
            let attempt = sent.unwrap_or_else(|_| Attempt::Failed {
                reason: format!("no answer within the timeout ({:?})", inner.timeout),
                retry: Retry::After(None),
            });
            let (reason, retry) = match attempt {
                Attempt::Accepted { rejected, message } => {
                    let rejected = u64::try_from(rejected).unwrap_or(0).min(items);
                    self.recovered();
                    let c = &inner.counters;
                    add(&c.exports_ok, 1);
                    add(&c.items_exported, items - rejected);
                    add(&c.items_rejected, rejected);
                    if rejected > 0 || !message.is_empty() {
                        self.partial_success(rejected, items, &message);
                    }
                    return Ok(Exported {
                        items,
                        rejected,
                        message: (!message.is_empty()).then_some(message),
                        attempts,
                    });
                }
                Attempt::Failed { reason, retry } => (reason, retry),
            };
            let error = match retry {
                Retry::Never(hint) => ExportError::Refused {
                    signal: inner.signal,
                    endpoint: inner.endpoint.clone(),
                    items,
                    reason,
                    hint,
                    attempts,
                },
                Retry::After(asked) => {
                    let wait = backoff.next_wait();
                    let wait = asked.unwrap_or(wait);
                    let now = Instant::now();
                    let in_time = match (deadline, now.checked_add(wait)) {
                        (Some(d), Some(at)) => at <= d,
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    if in_time {
                        self.failed_attempt(&reason, true);
                        add(&inner.counters.retries, 1);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let last = match asked {
                        Some(asked) => format!(
                            "{reason} (the server asked to wait {asked:?}, past the retry \
                             limit of {:?})",
                            inner.retry.max_elapsed
                        ),
                        None => reason,
                    };
                    ExportError::GaveUp {
                        signal: inner.signal,
                        endpoint: inner.endpoint.clone(),
                        items,
                        last,
                        attempts,
                        elapsed: started.elapsed(),
                    }
                }
            };
            self.failed_attempt(&error.to_string(), false);
            add(&inner.counters.exports_failed, 1);
            add(&inner.counters.items_failed, items);
            return Err(error);
        }
    }

    /// Logs the change to failing once; later failures are only counted.
    fn failed_attempt(&self, what: &str, retrying: bool) {
        let inner = &*self.inner;
        if inner.health.failed(1) {
            let next = if retrying { "retrying" } else { "dropped" };
            tracing::warn!(
                "OTLP {} export to {} is failing ({next}): {what}. Further failures are \
                 counted, not logged, until exports succeed again",
                inner.signal,
                inner.endpoint
            );
        }
    }

    fn recovered(&self) {
        let inner = &*self.inner;
        if let Some(failures) = inner.health.succeeded() {
            tracing::warn!(
                "OTLP {} export to {} works again after {failures} failed attempt(s); \
                 {} {} failed so far in total",
                inner.signal,
                inner.endpoint,
                self.stats().items_failed,
                inner.signal.items()
            );
        }
    }

    /// The first partial success at WARN, later ones at DEBUG (all are counted).
    fn partial_success(&self, rejected: u64, items: u64, message: &str) {
        let inner = &*self.inner;
        let what = inner.signal.items();
        if inner.rejection_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                "OTLP {} collector at {} rejected {rejected} of {items} {what}: {message}",
                inner.signal,
                inner.endpoint,
            );
        } else {
            tracing::warn!(
                "OTLP {} collector at {} rejected {rejected} of {items} {what}: {message} \
                 (further partial rejections are counted and logged at debug level)",
                inner.signal,
                inner.endpoint,
            );
        }
    }
}
