//! One span per HTTP transaction, with the OpenTelemetry HTTP semantic conventions.
//!
//! * **Kind**: SERVER when the process accepted the connection, CLIENT when it
//!   initiated it.
//! * **Name**: server spans `METHOD route` (`GET /users/{id}`), or `METHOD` without a
//!   route; client spans `METHOD` (as OBI and the conventions do: a client has no
//!   route). A method outside the conventions' list is reported as `HTTP` in the name
//!   and `_OTHER` in `http.request.method`, the original in
//!   `http.request.method_original`.
//! * **Ids**: a valid W3C `traceparent` header in the request gives the trace id, the
//!   parent span id and the parent's sampled flag (and `tracestate` is kept);
//!   otherwise the span is a root with a new random trace id. The span id is always
//!   new. For a client span, the `traceparent` the process itself sent names the span
//!   the downstream will take as its parent (the application's own span when it is
//!   instrumented); tandem's client span becomes a child of it, in the same trace.
//! * **Attributes**: `http.request.method`, `url.path`, `http.route` (server, when
//!   routed), `http.response.status_code` (when a response was seen),
//!   `server.address` (the `Host` header's host, else the server's IP),
//!   `server.port` (the server's port on the socket), `client.address` (server
//!   spans: the peer's IP), `network.peer.address`/`network.peer.port`,
//!   `network.protocol.version`, `http.request.body.size`, `http.response.body.size`
//!   (the decoded body: a chunked body's chunk data, without its framing; bytes the
//!   capture cut are counted as long as the framing around them was seen),
//!   `user_agent.original` (server spans), `error.type` on errors. The query string is
//!   not reported (it may hold secrets), nor is `url.full`.
//! * **Status**: Error for 5xx on server spans, for 4xx and 5xx on client spans, and
//!   when the connection closed before a response (`error.type` =
//!   `connection_closed`); unset otherwise.
//! * **Times**: the first request byte and the last response byte, converted from
//!   CLOCK_MONOTONIC with the loader's offset.
//!
//! **Linked**: the ids come from the stitcher (`stitch/link.rs`, given when the
//! request began): a server span is the child of the client span on the other end of
//! its connection when this processor traced it, a client span the child of the
//! server request in flight on its thread for thread-per-request runtimes; a
//! `traceparent` of the request comes first. See `docs/traces.md`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::IdGenerator;

use crate::model::{Exchange, HttpExchange, LinkKind, Side, Transaction, KNOWN_METHODS};
use crate::pipeline::grpc::{self, GrpcCall};
use crate::pipeline::sample::{should_sample, Parent};
use crate::settings::Sampler;

/// A parsed W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

/// Parses `traceparent` per W3C Trace Context level 1: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lower-case hex, ids not all zero, version `ff` invalid; a higher version may carry
/// more fields after a `-`.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim();
    let mut parts = v.splitn(5, '-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || !lower_hex(flags, 2) {
        return None;
    }
    if version == "00" && rest.is_some() {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let parent_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// One span as tandem builds it, whatever the exporter: the fields of an OTLP span
/// that tandem fills (no events, no links; the instrumentation scope is always
/// [`SCOPE_NAME`] / [`SCOPE_VERSION`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Trace id, span id, sampled flag and `tracestate`.
    pub span_context: SpanContext,
    /// `SpanId::INVALID` for a root span.
    pub parent_span_id: SpanId,
    /// The parent came from another process (a `traceparent` header).
    pub parent_span_is_remote: bool,
    pub span_kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start_time: SystemTime,
    pub end_time: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
}

/// A span ready to print and, when `sampled`, to export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub data: Span,
    pub sampled: bool,
}

/// The instrumentation scope of everything tandem exports.
pub const SCOPE_NAME: &str = "tandem";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn wall_time(mono_ns: u64, offset_ns: i64) -> SystemTime {
    let ns = i128::from(mono_ns) + i128::from(offset_ns);
    let ns = u64::try_from(ns.max(0)).unwrap_or(u64::MAX);
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The wall-clock (start, end) of a transaction from its monotonic times and the
/// batch's offset; the end is never before the start.
pub(crate) fn span_times(
    start_mono_ns: u64,
    end_mono_ns: u64,
    realtime_offset_ns: i64,
) -> (SystemTime, SystemTime) {
    let start = wall_time(start_mono_ns, realtime_offset_ns);
    (start, wall_time(end_mono_ns, realtime_offset_ns).max(start))
}

/// The span of one transaction seen from `side`, with no parent (callers with one
/// set it), events or links.
pub(crate) fn span_data(
    span_context: SpanContext,
    side: Side,
    name: Cow<'static, str>,
    (start_time, end_time): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    status: Status,
) -> Span {
    Span {
        span_context,
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: match side {
            Side::Server => SpanKind::Server,
            Side::Client => SpanKind::Client,
        },
        name,
        start_time,
        end_time,
        attributes,
        status,
    }
}

/// The host part of a `Host` header value (`name:port`, `[v6]:port`, `name`).
pub fn host_of(host_header: &str) -> &str {
    let h = host_header.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// `server.address` of an HTTP exchange: the `Host` header's host, else the IP of
/// `server_end` (the server's socket address).
pub(crate) fn server_address(h: &HttpExchange, server_end: Option<SocketAddr>) -> Option<String> {
    h.request
        .header("host")
        .map(host_of)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| server_end.map(|s| crate::model::ip_text(s.ip())))
}

/// Builds the span of `tx`, any protocol. `route` is an HTTP request's `http.route`
/// (server spans only).
pub fn build_span(
    tx: &Transaction,
    route: Option<&Arc<str>>,
    sampler: Sampler,
    ids: &dyn IdGenerator,
) -> SpanRecord {
    match &tx.exchange {
        Exchange::Http(h) => http_span(tx, h, route, sampler, ids),
        Exchange::Db(op) => crate::pipeline::db::build_db_span(tx, op, sampler, ids),
    }
}

fn http_span(
    tx: &Transaction,
    h: &HttpExchange,
    route: Option<&Arc<str>>,
    sampler: Sampler,
    ids: &dyn IdGenerator,
) -> SpanRecord {
    let req = &h.request;
    let known: Option<&'static str> = KNOWN_METHODS.iter().copied().find(|m| *m == req.method);
    let method: &'static str = known.unwrap_or("_OTHER");
    let is_server = tx.side == Side::Server;
    let route = route.filter(|_| is_server);

    let grpc = GrpcCall::of(h);
    let name = http_span_name(h, route, grpc.as_ref());

    let ids = SpanIds::of(
        tx,
        req.header("traceparent"),
        req.header("tracestate"),
        sampler,
        ids,
    );
    let (span_context, sampled) = (ids.context.clone(), ids.sampled);

    let (server_sock, peer_sock): (Option<SocketAddr>, Option<SocketAddr>) = (tx.local, tx.peer);
    let server_end = if is_server { server_sock } else { peer_sock };

    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new("http.request.method", method));
    if known.is_none() {
        attrs.push(KeyValue::new(
            "http.request.method_original",
            req.method.to_string(),
        ));
    }
    attrs.push(KeyValue::new("url.path", req.path.clone()));
    if let Some(r) = route {
        attrs.push(KeyValue::new("http.route", Value::from(r.clone())));
    }
    let status_code = h.response.as_ref().map(|r| r.status);
    if let Some(code) = status_code {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
    }
    if let Some(a) = server_address(h, server_end) {
        attrs.push(KeyValue::new("server.address", a));
    }
    if let Some(s) = server_end {
        attrs.push(KeyValue::new("server.port", i64::from(s.port())));
    }
    if let Some(p) = peer_sock {
        // One string for both attributes.
        let ip = Value::from(Arc::<str>::from(crate::model::ip_text(p.ip())));
        if is_server {
            attrs.push(KeyValue::new("client.address", ip.clone()));
        }
        attrs.push(KeyValue::new("network.peer.address", ip));
        attrs.push(KeyValue::new("network.peer.port", i64::from(p.port())));
    }
    if !req.version.is_empty() {
        attrs.push(KeyValue::new("network.protocol.version", req.version));
    }
    attrs.push(KeyValue::new(
        "http.request.body.size",
        i64::try_from(req.body_size).unwrap_or(i64::MAX),
    ));
    if let Some(r) = &h.response {
        attrs.push(KeyValue::new(
            "http.response.body.size",
            i64::try_from(r.body_size).unwrap_or(i64::MAX),
        ));
    }
    if is_server {
        if let Some(ua) = req.header("user-agent") {
            attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
    }
    let error_type = error_type(tx.side, h);
    let status = match &error_type {
        Some(_) => Status::error(""),
        None => Status::Unset,
    };
    if let Some(e) = error_type {
        attrs.push(KeyValue::new("error.type", e));
    }
    // gRPC calls: RPC attributes instead of HTTP ones (see `grpc`).
    let (attrs, status) = match &grpc {
        Some(call) => grpc::span_attributes(tx, h, call),
        None => (attrs, status),
    };

    let times = span_times(tx.start_mono_ns, tx.end_mono_ns, tx.realtime_offset_ns);
    let mut data = span_data(span_context, tx.side, name, times, attrs, status);
    data.parent_span_id = ids.parent;
    data.parent_span_is_remote = ids.remote;
    SpanRecord { data, sampled }
}

/// The ids of a transaction's span and the sampling decision.
pub(crate) struct SpanIds {
    pub context: SpanContext,
    pub parent: SpanId,
    /// The parent is in another process (a `traceparent`, the client end of the
    /// connection).
    pub remote: bool,
    pub sampled: bool,
}

impl SpanIds {
    /// The ids the stitcher gave `tx` when its request began (`stitch/link.rs`);
    /// for a transaction made outside a stitcher, those of the request's
    /// `traceparent` or new ones. `tracestate` is kept when a `traceparent` is
    /// continued.
    pub(crate) fn of(
        tx: &Transaction,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        sampler: Sampler,
        ids: &dyn IdGenerator,
    ) -> SpanIds {
        let (trace_id, span_id, parent, link, remote_sampled) = match tx.trace {
            Some(t) => (
                TraceId::from_bytes(t.trace_id.to_be_bytes()),
                SpanId::from_bytes(t.span_id.to_be_bytes()),
                SpanId::from_bytes(t.parent_span_id.to_be_bytes()),
                t.link,
                t.remote_sampled,
            ),
            None => match traceparent.and_then(parse_traceparent) {
                Some(p) => (
                    p.trace_id,
                    ids.new_span_id(),
                    p.parent_id,
                    LinkKind::TraceParent,
                    Some(p.sampled),
                ),
                None => (
                    ids.new_trace_id(),
                    ids.new_span_id(),
                    SpanId::INVALID,
                    LinkKind::Root,
                    None,
                ),
            },
        };
        let sampling_parent = match remote_sampled {
            Some(true) => Parent::Sampled,
            Some(false) => Parent::NotSampled,
            None => Parent::None,
        };
        let sampled = should_sample(sampler, trace_id, sampling_parent);
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let trace_state = tracestate
            .filter(|_| link == LinkKind::TraceParent)
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        SpanIds {
            context: SpanContext::new(trace_id, span_id, flags, false, trace_state),
            parent,
            remote: matches!(link, LinkKind::TraceParent | LinkKind::Connection),
            sampled,
        }
    }
}

/// The span name of `tx` (`route`: an HTTP server request's `http.route`): as its
/// span is named (see the module documentation and `pipeline/db.rs`).
pub fn span_name(tx: &Transaction, route: Option<&Arc<str>>) -> Cow<'static, str> {
    match &tx.exchange {
        Exchange::Http(h) => http_span_name(
            h,
            route.filter(|_| tx.side == Side::Server),
            GrpcCall::of(h).as_ref(),
        ),
        Exchange::Db(op) => crate::pipeline::db::span_name(op).into(),
    }
}

/// Whether `tx`'s span has an error status.
pub fn span_failed(tx: &Transaction) -> bool {
    match &tx.exchange {
        Exchange::Http(h) => match GrpcCall::of(h) {
            Some(call) => call.error_type(tx.side).is_some(),
            None => error_type(tx.side, h).is_some(),
        },
        Exchange::Db(op) => crate::pipeline::db::db_error_type(tx, op).is_some(),
    }
}

/// `route` only for server spans (the caller filters).
fn http_span_name(
    h: &HttpExchange,
    route: Option<&Arc<str>>,
    grpc: Option<&GrpcCall>,
) -> Cow<'static, str> {
    let known: Option<&'static str> = KNOWN_METHODS
        .iter()
        .copied()
        .find(|m| *m == h.request.method);
    match (known, route) {
        _ if grpc.is_some() => grpc.map(|c| c.path.clone()).unwrap_or_default().into(),
        (Some(m), Some(r)) => format!("{m} {r}").into(),
        (None, Some(r)) => format!("HTTP {r}").into(),
        (Some(m), None) => Cow::Borrowed(m),
        (None, None) => Cow::Borrowed("HTTP"),
    }
}

/// `error.type` of a failed transaction: the status code for 5xx (server) and 4xx/5xx
/// (client), `connection_closed` when no response came; `None` when it succeeded.
pub fn error_type(side: Side, h: &HttpExchange) -> Option<String> {
    match &h.response {
        None => Some("connection_closed".to_string()),
        Some(r) => {
            let failed = match side {
                Side::Server => r.status >= 500,
                Side::Client => r.status >= 400,
            };
            failed.then(|| r.status.to_string())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
