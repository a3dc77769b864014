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
//!   `network.protocol.version`, `http.request.body.size`, `http.response.body.size`,
//!   `user_agent.original` (server spans), `error.type` on errors. The query string is
//!   not reported (it may hold secrets), nor is `url.full`.
//! * **Status**: Error for 5xx on server spans, for 4xx and 5xx on client spans, and
//!   when the connection closed before a response (`error.type` =
//!   `connection_closed`); unset otherwise.
//! * **Times**: the first request byte and the last response byte, converted from
//!   CLOCK_MONOTONIC with the loader's offset.
//!
//! **Not linked**: a client call made while handling a server request is not made a
//! child of that server span. Transactions reach the pipeline when their response
//! ends, so a server transaction arrives *after* the client calls it made; linking
//! would need the stitcher to announce a server request when it starts (pid, tid,
//! start time) and the client spans to wait for it, and would still be wrong for
//! runtimes that move requests between threads. Spans of one process are therefore
//! only linked through `traceparent` headers the application itself propagates.

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

use crate::model::{Exchange, HttpExchange, Side, Transaction, KNOWN_METHODS};
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
    let name: Cow<'static, str> = match (known, route) {
        _ if grpc.is_some() => grpc
            .as_ref()
            .map(|c| c.path.clone())
            .unwrap_or_default()
            .into(),
        (Some(m), Some(r)) => format!("{m} {r}").into(),
        (None, Some(r)) => format!("HTTP {r}").into(),
        (Some(m), None) => Cow::Borrowed(m),
        (None, None) => Cow::Borrowed("HTTP"),
    };

    let parent = req.header("traceparent").and_then(parse_traceparent);
    let (trace_id, parent_span_id, sampling_parent) = match parent {
        Some(p) => (
            p.trace_id,
            p.parent_id,
            if p.sampled {
                Parent::Sampled
            } else {
                Parent::NotSampled
            },
        ),
        None => (ids.new_trace_id(), SpanId::INVALID, Parent::None),
    };
    let trace_state = parent
        .and_then(|_| req.header("tracestate"))
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sampled = should_sample(sampler, trace_id, sampling_parent);
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let span_context = SpanContext::new(trace_id, ids.new_span_id(), flags, false, trace_state);

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
    let server_address = req
        .header("host")
        .map(host_of)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| server_end.map(|s| crate::model::ip_text(s.ip())));
    if let Some(a) = server_address {
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
    data.parent_span_id = parent_span_id;
    data.parent_span_is_remote = parent.is_some();
    SpanRecord { data, sampled }
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
pub(crate) mod tests {
    use super::*;
    use crate::model::{Completion, HttpRequest, HttpResponse};

    /// The HTTP part of a test transaction, to change it.
    pub(crate) fn http_mut(t: &mut Transaction) -> &mut HttpExchange {
        match &mut t.exchange {
            Exchange::Http(h) => h,
            Exchange::Db(_) => panic!("not an HTTP transaction"),
        }
    }
    use opentelemetry::Value;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Ids counting up from 1, for exact assertions.
    #[derive(Debug, Default)]
    pub(crate) struct SeqIds(AtomicU64);

    impl IdGenerator for SeqIds {
        fn new_trace_id(&self) -> TraceId {
            TraceId::from(u128::from(self.0.fetch_add(1, Ordering::Relaxed) + 1))
        }
        fn new_span_id(&self) -> SpanId {
            SpanId::from(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }

    pub(crate) fn tx(side: Side, method: &str, path: &str, status: Option<u16>) -> Transaction {
        Transaction {
            pid: 42,
            tid: 42,
            conn_id: 1,
            side,
            local: Some("10.0.0.1:8080".parse().expect("addr")),
            peer: Some("10.0.0.2:51000".parse().expect("addr")),
            exchange: Exchange::Http(HttpExchange {
                request: HttpRequest {
                    method: crate::model::method_from_bytes(method.as_bytes()),
                    path: path.into(),
                    query: Some("secret=1".into()),
                    version: "1.1",
                    headers: vec![
                        ("host".into(), "shop.example:8080".into()),
                        ("user-agent".into(), "curl/8".into()),
                    ],
                    body_size: 12,
                },
                response: status.map(|s| HttpResponse {
                    status: s,
                    version: "1.1",
                    headers: vec![],
                    body_size: 34,
                }),
            }),
            start_mono_ns: 1_000_000_000,
            end_mono_ns: 1_250_000_000,
            realtime_offset_ns: 1_700_000_000_000_000_000,
            completion: Completion::Complete,
        }
    }

    pub(crate) fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn traceparent_parsing() {
        let ok = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .expect("valid");
        assert_eq!(
            ok.trace_id,
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex")
        );
        assert_eq!(
            ok.parent_id,
            SpanId::from_hex("b7ad6b7169203331").expect("hex")
        );
        assert!(ok.sampled);
        let un = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
            .expect("valid");
        assert!(!un.sampled);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version may append fields.
        assert!(parse_traceparent(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever"
        )
        .is_some());
    }

    #[test]
    fn server_span_attributes_and_name() {
        let t = tx(Side::Server, "GET", "/users/42", Some(200));
        let s = build_span(
            &t,
            Some(&"/users/{id}".into()),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        let d = &s.data;
        assert!(s.sampled);
        assert_eq!(d.name, "GET /users/{id}");
        assert_eq!(d.span_kind, SpanKind::Server);
        assert_eq!(d.parent_span_id, SpanId::INVALID);
        assert_eq!(d.span_context.trace_id(), TraceId::from(1u128));
        assert_eq!(d.span_context.span_id(), SpanId::from(2u64));
        assert!(d.span_context.is_sampled());
        assert_eq!(d.status, Status::Unset);
        let a = |k| attr(d, k).cloned();
        assert_eq!(a("http.request.method"), Some("GET".into()));
        assert_eq!(a("url.path"), Some("/users/42".into()));
        assert_eq!(a("http.route"), Some("/users/{id}".into()));
        assert_eq!(a("http.response.status_code"), Some(200i64.into()));
        assert_eq!(a("server.address"), Some("shop.example".into()));
        assert_eq!(a("server.port"), Some(8080i64.into()));
        assert_eq!(a("client.address"), Some("10.0.0.2".into()));
        assert_eq!(a("network.peer.port"), Some(51000i64.into()));
        assert_eq!(a("network.protocol.version"), Some("1.1".into()));
        assert_eq!(a("http.request.body.size"), Some(12i64.into()));
        assert_eq!(a("http.response.body.size"), Some(34i64.into()));
        assert_eq!(a("user_agent.original"), Some("curl/8".into()));
        assert_eq!(a("error.type"), None);
        assert!(d
            .attributes
            .iter()
            .all(|kv| !kv.value.as_str().contains("secret")));
        let start = d
            .start_time
            .duration_since(UNIX_EPOCH)
            .expect("after epoch");
        assert_eq!(start.as_nanos(), 1_700_000_001_000_000_000);
        let dur = d.end_time.duration_since(d.start_time).expect("ordered");
        assert_eq!(dur, Duration::from_millis(250));
    }

    #[test]
    fn client_span_and_error_statuses() {
        let t = tx(Side::Client, "POST", "/api/pay", Some(404));
        let s = build_span(
            &t,
            Some(&"/api/pay".into()),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(s.data.name, "POST");
        assert_eq!(s.data.span_kind, SpanKind::Client);
        assert_eq!(attr(&s.data, "http.route"), None);
        assert_eq!(attr(&s.data, "client.address"), None);
        assert_eq!(attr(&s.data, "server.port"), Some(&51000i64.into()));
        assert_eq!(s.data.status, Status::error(""));
        assert_eq!(attr(&s.data, "error.type"), Some(&"404".into()));

        let s = build_span(
            &tx(Side::Server, "GET", "/", Some(404)),
            None,
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(s.data.status, Status::Unset);
        assert_eq!(s.data.name, "GET");
        let s = build_span(
            &tx(Side::Server, "GET", "/", Some(503)),
            None,
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(s.data.status, Status::error(""));
        let s = build_span(
            &tx(Side::Server, "GET", "/", None),
            None,
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(
            attr(&s.data, "error.type"),
            Some(&"connection_closed".into())
        );
        assert_eq!(attr(&s.data, "http.response.status_code"), None);
    }

    #[test]
    fn unknown_method_is_other() {
        let s = build_span(
            &tx(Side::Server, "PURGE", "/c", Some(200)),
            Some(&"/c".into()),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(s.data.name, "HTTP /c");
        assert_eq!(attr(&s.data, "http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(
            attr(&s.data, "http.request.method_original"),
            Some(&"PURGE".into())
        );
    }

    #[test]
    fn traceparent_continues_the_trace_and_drives_parent_based_sampling() {
        let mut t = tx(Side::Server, "GET", "/", Some(200));
        http_mut(&mut t).request.headers.push((
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into(),
        ));
        http_mut(&mut t)
            .request
            .headers
            .push(("tracestate".into(), "vendor=x".into()));
        let s = build_span(&t, None, Sampler::ParentBasedAlwaysOn, &SeqIds::default());
        assert_eq!(
            s.data.span_context.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex")
        );
        assert_eq!(
            s.data.parent_span_id,
            SpanId::from_hex("b7ad6b7169203331").expect("hex")
        );
        assert!(s.data.parent_span_is_remote);
        assert_eq!(s.data.span_context.trace_state().get("vendor"), Some("x"));
        // Unsampled parent: not sampled even with parentbased_always_on.
        assert!(!s.sampled);
        assert!(!s.data.span_context.is_sampled());
        // always_on ignores the parent's flag.
        let s = build_span(&t, None, Sampler::AlwaysOn, &SeqIds::default());
        assert!(s.sampled);
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(host_of("a.example:80"), "a.example");
        assert_eq!(host_of("a.example"), "a.example");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
