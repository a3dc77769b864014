//! Which metrics a transaction feeds, with which bounded attributes.
//!
//! | family | instruments | attributes |
//! |---|---|---|
//! | HTTP server | `http.server.request.duration` (s), `http.server.request.body.size`, `http.server.response.body.size` (By) | `http.request.method` (`_OTHER` for unknown methods), `http.response.status_code`, `error.type`, `http.route`, `server.port` |
//! | HTTP client | `http.client.request.duration`, `http.client.request.body.size`, `http.client.response.body.size` | method, status, `error.type`, `server.address`, `server.port` |
//! | RPC server / client | `rpc.server.call.duration`, `rpc.client.call.duration` (s) | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `error.type`, `server.port` (+ `server.address` on clients) |
//! | database client | `db.client.operation.duration` (s) | `db.system.name`, `db.namespace`, `db.operation.name`, `db.collection.name`, `db.response.status_code`, `error.type` |
//!
//! | span metrics (`metrics.features: application_span`) | `traces_spanmetrics_latency` (s), `traces_spanmetrics_calls_total`, `traces_spanmetrics_size_total`, `traces_spanmetrics_response_size_total` (bytes) | `service.name`, `service.namespace`, `span.name`, `span.kind` (`SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`), `status.code` (`STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`), `source` (`tandem`) |
//! | service graph (`application_service_graph`) | `traces_service_graph_request_client` (s, client spans), `traces_service_graph_request_server` (s, server spans), `traces_service_graph_request_total`, `traces_service_graph_request_failed_total` | `client`, `server` (service names: the process's own, and the other end's when this processor traced it and linked the two spans; else the other end's address), `client_service_namespace`, `server_service_namespace` (when known), `source` |
//!
//! As in OBI, the span and service graph metrics count every span of either side:
//! a request between two traced processes counts once in
//! `traces_service_graph_request_client` (the client's span), once in `_server`
//! (the server's) and twice in `_total`.
//!
//! `attributes.select` ([`super::select`]) removes any of these per family and adds
//! optional ones (`url.path`, `client.address`, `server.address` of HTTP servers;
//! `url.path` of HTTP clients), and `attributes.metric_span_names_limit`
//! ([`super::span_names`]) bounds the span names of span metrics.
//!
//! Without a selection the raw path never is an attribute. Every transaction counts, sampled or not;
//! database operations are measured on the client side only (the conventions define
//! no server-side database metric).

use std::sync::Arc;

use opentelemetry::{Key, KeyValue, Value};

use crate::model::{DbOperation, Exchange, HttpExchange, Side, Transaction, KNOWN_METHODS};
use crate::pipeline::grpc::{self, GrpcCall};
use crate::pipeline::resource::ProcessResource;
use crate::pipeline::span::{error_type, host_of, span_failed, span_name};

use super::data::{Descriptor, Kind, Number};

/// OBI's default duration buckets (the HTTP semantic conventions' with 0 first), in
/// seconds, for every duration histogram (`buckets.duration_histogram`).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The database duration histogram's default buckets: OBI's duration buckets (OBI
/// uses one set for every duration).
pub const DB_DURATION_BUCKETS: [f64; 15] = DURATION_BUCKETS;

/// OBI's default body size buckets in bytes (`buckets.request_size_histogram`,
/// `buckets.response_size_histogram`).
pub const BODY_SIZE_BUCKETS: [f64; 10] = [
    0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

const fn histogram(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    number: Number,
) -> Descriptor {
    Descriptor {
        name,
        unit,
        description,
        kind: Kind::Histogram,
        number,
    }
}

/// One instrument of a family: what it measures of a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Instrument {
    pub descriptor: Descriptor,
    pub bounds: &'static [f64],
    pub measure: Measure,
}

/// What an instrument records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Duration,
    RequestBody,
    ResponseBody,
    /// 1 per transaction (counters of calls).
    One,
    /// 1 per failed transaction.
    Failed,
    /// The duration, of client spans only.
    ClientDuration,
    /// The duration, of server spans only.
    ServerDuration,
}

const fn duration(name: &'static str, description: &'static str) -> Instrument {
    Instrument {
        descriptor: histogram(name, "s", description, Number::Double),
        bounds: &DURATION_BUCKETS,
        measure: Measure::Duration,
    }
}

const fn size(name: &'static str, description: &'static str, measure: Measure) -> Instrument {
    Instrument {
        descriptor: histogram(name, "By", description, Number::Int),
        bounds: &BODY_SIZE_BUCKETS,
        measure,
    }
}

/// Groups of instruments sharing one attribute set per transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    DbClient,
    SpanMetrics,
    ServiceGraph,
}

pub const FAMILIES: usize = 7;

/// A counter kept as a histogram without buckets (its sum is the total).
const fn counter(name: &'static str, description: &'static str, measure: Measure) -> Instrument {
    Instrument {
        descriptor: Descriptor {
            name,
            unit: "",
            description,
            kind: Kind::Counter,
            number: Number::Int,
        },
        bounds: &[],
        measure,
    }
}

static SPAN_METRICS: [Instrument; 4] = [
    Instrument {
        // OBI's name, without a unit (Prometheus: no `_seconds` suffix).
        descriptor: histogram(
            "traces_spanmetrics_latency",
            "",
            "Duration of spans, in seconds.",
            Number::Double,
        ),
        bounds: &DURATION_BUCKETS,
        measure: Measure::Duration,
    },
    counter("traces_spanmetrics_calls_total", "Spans.", Measure::One),
    counter(
        "traces_spanmetrics_size_total",
        "Request body bytes of spans.",
        Measure::RequestBody,
    ),
    counter(
        "traces_spanmetrics_response_size_total",
        "Response body bytes of spans.",
        Measure::ResponseBody,
    ),
];

static SERVICE_GRAPH: [Instrument; 4] = [
    Instrument {
        descriptor: histogram(
            "traces_service_graph_request_client",
            "s",
            "Duration of requests between two services, seen from the client.",
            Number::Double,
        ),
        bounds: &DURATION_BUCKETS,
        measure: Measure::ClientDuration,
    },
    Instrument {
        descriptor: histogram(
            "traces_service_graph_request_server",
            "s",
            "Duration of requests between two services, seen from the server.",
            Number::Double,
        ),
        bounds: &DURATION_BUCKETS,
        measure: Measure::ServerDuration,
    },
    counter(
        "traces_service_graph_request_total",
        "Requests between two services (each traced side counts).",
        Measure::One,
    ),
    counter(
        "traces_service_graph_request_failed_total",
        "Failed requests between two services (each traced side counts).",
        Measure::Failed,
    ),
];

static HTTP_SERVER: [Instrument; 3] = [
    duration(
        "http.server.request.duration",
        "Duration of HTTP server requests.",
    ),
    size(
        "http.server.request.body.size",
        "Size of HTTP server request bodies.",
        Measure::RequestBody,
    ),
    size(
        "http.server.response.body.size",
        "Size of HTTP server response bodies.",
        Measure::ResponseBody,
    ),
];

static HTTP_CLIENT: [Instrument; 3] = [
    duration(
        "http.client.request.duration",
        "Duration of HTTP client requests.",
    ),
    size(
        "http.client.request.body.size",
        "Size of HTTP client request bodies.",
        Measure::RequestBody,
    ),
    size(
        "http.client.response.body.size",
        "Size of HTTP client response bodies.",
        Measure::ResponseBody,
    ),
];

static RPC_SERVER: [Instrument; 1] = [duration(
    "rpc.server.call.duration",
    "Duration of RPC server calls.",
)];

static RPC_CLIENT: [Instrument; 1] = [duration(
    "rpc.client.call.duration",
    "Duration of RPC client calls.",
)];

static DB_CLIENT: [Instrument; 1] = [Instrument {
    descriptor: histogram(
        "db.client.operation.duration",
        "s",
        "Duration of database client operations.",
        Number::Double,
    ),
    bounds: &DB_DURATION_BUCKETS,
    measure: Measure::Duration,
}];

impl Family {
    pub fn instruments(self) -> &'static [Instrument] {
        match self {
            Family::HttpServer => &HTTP_SERVER,
            Family::HttpClient => &HTTP_CLIENT,
            Family::RpcServer => &RPC_SERVER,
            Family::RpcClient => &RPC_CLIENT,
            Family::DbClient => &DB_CLIENT,
            Family::SpanMetrics => &SPAN_METRICS,
            Family::ServiceGraph => &SERVICE_GRAPH,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Every family, in export order.
    pub const ALL: [Family; FAMILIES] = [
        Family::HttpServer,
        Family::HttpClient,
        Family::RpcServer,
        Family::RpcClient,
        Family::DbClient,
        Family::SpanMetrics,
        Family::ServiceGraph,
    ];
}

/// What one transaction contributes: its family and the values (its attributes go
/// into the caller's buffer).
#[derive(Debug)]
pub struct Observation {
    pub family: Family,
    pub duration_secs: f64,
    pub request_body: Option<u64>,
    pub response_body: Option<u64>,
    pub side: Side,
    pub failed: bool,
}

impl Observation {
    pub fn value(&self, measure: Measure) -> Option<f64> {
        match measure {
            Measure::Duration => Some(self.duration_secs),
            Measure::RequestBody => self.request_body.map(|v| v as f64),
            Measure::ResponseBody => self.response_body.map(|v| v as f64),
            Measure::One => Some(1.0),
            Measure::Failed => self.failed.then_some(1.0),
            Measure::ClientDuration => (self.side == Side::Client).then_some(self.duration_secs),
            Measure::ServerDuration => (self.side == Side::Server).then_some(self.duration_secs),
        }
    }
}

/// The observation of `tx` (`route`: an HTTP server request's `http.route`), its
/// attributes written to `attrs`; `None` when it feeds no metric (a database
/// server's operations).
pub fn observe(
    tx: &Transaction,
    route: Option<&Arc<str>>,
    attrs: &mut Vec<KeyValue>,
) -> Option<Observation> {
    attrs.clear();
    match &tx.exchange {
        Exchange::Http(h) => Some(match GrpcCall::of(h) {
            Some(call) => {
                attrs.extend(grpc::metric_attributes(tx, h, &call));
                Observation {
                    family: match tx.side {
                        Side::Server => Family::RpcServer,
                        Side::Client => Family::RpcClient,
                    },
                    duration_secs: tx.duration_secs(),
                    request_body: None,
                    response_body: None,
                    side: tx.side,
                    failed: false,
                }
            }
            None => {
                http_attributes(tx, h, route, attrs);
                Observation {
                    family: match tx.side {
                        Side::Server => Family::HttpServer,
                        Side::Client => Family::HttpClient,
                    },
                    duration_secs: tx.duration_secs(),
                    request_body: Some(h.request.body_size),
                    response_body: h.response.as_ref().map(|r| r.body_size),
                    side: tx.side,
                    failed: false,
                }
            }
        }),
        Exchange::Db(op) if tx.side == Side::Client => {
            attrs.extend(db_attributes(tx, op));
            Some(Observation {
                family: Family::DbClient,
                duration_secs: tx.duration_secs(),
                request_body: None,
                response_body: None,
                side: tx.side,
                failed: false,
            })
        }
        Exchange::Db(_) => None,
    }
}

/// The bounded attributes of an HTTP transaction's metrics.
pub fn http_attributes(
    tx: &Transaction,
    h: &HttpExchange,
    route: Option<&Arc<str>>,
    attrs: &mut Vec<KeyValue>,
) {
    let req = &h.request;
    let method: Value = match KNOWN_METHODS.iter().find(|m| **m == req.method) {
        Some(m) => Value::from(*m),
        None => Value::from("_OTHER"),
    };
    attrs.push(KeyValue::new("http.request.method", method));
    if let Some(r) = &h.response {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    if let Some(e) = error_type(tx.side, h) {
        attrs.push(KeyValue::new("error.type", e));
    }
    match tx.side {
        Side::Server => {
            if let Some(r) = route {
                attrs.push(KeyValue::new("http.route", Value::from(r.clone())));
            }
            if let Some(l) = tx.local {
                attrs.push(KeyValue::new("server.port", i64::from(l.port())));
            }
        }
        Side::Client => {
            let host = req
                .header("host")
                .map(|h| host_of(h).to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| tx.peer.map(|p| crate::model::ip_text(p.ip())));
            if let Some(h) = host {
                attrs.push(KeyValue::new("server.address", h));
            }
            if let Some(p) = tx.peer {
                attrs.push(KeyValue::new("server.port", i64::from(p.port())));
            }
        }
    }
}

/// The bounded attributes of `db.client.operation.duration`.
pub fn db_attributes(tx: &Transaction, op: &DbOperation) -> Vec<KeyValue> {
    crate::pipeline::db::db_metric_attributes(tx, op)
}

/// The observation of `tx` for span metrics (`family` = [`Family::SpanMetrics`]) or
/// the service graph ([`Family::ServiceGraph`]); attributes written to `attrs`.
/// `own` is the process's resource, `peer` the traced process on the other end
/// when the two spans were linked.
pub fn observe_span(
    family: Family,
    tx: &Transaction,
    route: Option<&Arc<str>>,
    own: &ProcessResource,
    peer: Option<&ProcessResource>,
    attrs: &mut Vec<KeyValue>,
) -> Observation {
    attrs.clear();
    let namespace = |p: &ProcessResource| {
        p.resource
            .get(&Key::from_static_str("service.namespace"))
            .map(|v| v.as_str().into_owned())
            .filter(|v| !v.is_empty())
    };
    let failed = span_failed(tx);
    match family {
        Family::ServiceGraph => {
            // The other end: its service name when traced and linked, else its
            // address (the server: the Host header's host, else its IP).
            let other = match peer {
                Some(p) => p.service_name.clone(),
                None => match (&tx.exchange, tx.side) {
                    (Exchange::Http(h), Side::Client) => h
                        .request
                        .header("host")
                        .map(|v| host_of(v).to_string())
                        .filter(|v| !v.is_empty())
                        .or_else(|| tx.peer.map(|a| crate::model::ip_text(a.ip())))
                        .unwrap_or_default(),
                    _ => tx
                        .peer
                        .map(|a| crate::model::ip_text(a.ip()))
                        .unwrap_or_default(),
                },
            };
            let own_ns = namespace(own);
            let other_ns = peer.and_then(namespace);
            let (client, client_ns, server, server_ns) = match tx.side {
                Side::Client => (own.service_name.clone(), own_ns, other, other_ns),
                Side::Server => (other, other_ns, own.service_name.clone(), own_ns),
            };
            attrs.push(KeyValue::new("client", client));
            if let Some(ns) = client_ns {
                attrs.push(KeyValue::new("client_service_namespace", ns));
            }
            attrs.push(KeyValue::new("server", server));
            if let Some(ns) = server_ns {
                attrs.push(KeyValue::new("server_service_namespace", ns));
            }
        }
        _ => {
            attrs.push(KeyValue::new("service.name", own.service_name.clone()));
            if let Some(ns) = namespace(own) {
                attrs.push(KeyValue::new("service.namespace", ns));
            }
            attrs.push(KeyValue::new(
                "span.name",
                span_name(tx, route).into_owned(),
            ));
            attrs.push(KeyValue::new(
                "span.kind",
                match tx.side {
                    Side::Server => "SPAN_KIND_SERVER",
                    Side::Client => "SPAN_KIND_CLIENT",
                },
            ));
            attrs.push(KeyValue::new(
                "status.code",
                if failed {
                    "STATUS_CODE_ERROR"
                } else {
                    "STATUS_CODE_UNSET"
                },
            ));
        }
    }
    attrs.push(KeyValue::new("source", "tandem"));
    let (request_body, response_body) = match &tx.exchange {
        Exchange::Http(h) => (
            Some(h.request.body_size),
            Some(h.response.as_ref().map_or(0, |r| r.body_size)),
        ),
        Exchange::Db(_) => (Some(0), Some(0)),
    };
    Observation {
        family,
        duration_secs: tx.duration_secs(),
        request_body,
        response_body,
        side: tx.side,
        failed,
    }
}
