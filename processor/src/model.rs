//! What the processor makes of raw events: one [`Transaction`] type for every
//! protocol — a request and its answer on one connection of one process. The
//! connection, process and timing metadata are shared; the protocol part
//! ([`Exchange`]) says what was asked and answered. `stitch` produces them; the
//! pipeline stages (route, metrics, span, sampling, decoration) and the sinks
//! consume them.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::settings::Instrumentation;

/// Which side of the connection the instrumented process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// It accepted the connection: SERVER spans.
    Server,
    /// It initiated the connection: CLIENT spans.
    Client,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The answer was seen to its last byte.
    Complete,
    /// The connection closed before the answer ended (or before any answer).
    ConnectionClosed,
    /// The capture was cut short in the headers (or in a chunked body's framing),
    /// bytes did not parse, or events were lost; what is known is reported.
    Truncated,
}

/// One request and its answer on one connection of one process, any protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub pid: u32,
    /// The thread that carried the request's first byte.
    pub tid: u32,
    pub conn_id: u64,
    pub side: Side,
    /// The instrumented process's address, and its peer's.
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// CLOCK_MONOTONIC ns of the request's first byte (the data event's timestamp).
    pub start_mono_ns: u64,
    /// CLOCK_MONOTONIC ns of the answer's last byte (or of the close, the loss).
    pub end_mono_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC for converting the two above.
    pub realtime_offset_ns: i64,
    pub completion: Completion,
    /// What was asked and answered.
    pub exchange: Exchange,
    /// The span's trace identity, given when the request began (see
    /// `stitch/link.rs`); `None` for transactions made outside a stitcher (the
    /// span then takes a `traceparent` of the request or new ids).
    pub trace: Option<TraceIds>,
}

/// How a span found its parent (see `stitch/link.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// None: a root span.
    Root,
    /// A W3C `traceparent` header of the request.
    TraceParent,
    /// A client span: the server request in flight on the thread that sent it.
    Thread,
    /// A server span: the client span on the other end of its connection.
    Connection,
    /// A client span of a Go process: the server request in flight on the
    /// goroutine it was sent for (or that goroutine's creator).
    Goroutine,
}

impl LinkKind {
    /// The label of the counters and the trace printer.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Root => "root",
            LinkKind::TraceParent => "traceparent",
            LinkKind::Thread => "thread",
            LinkKind::Connection => "connection",
            LinkKind::Goroutine => "goroutine",
        }
    }
}

/// The trace identity of a transaction's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0 for a root span.
    pub parent_span_id: u64,
    pub link: LinkKind,
    /// The `sampled` flag of the `traceparent` the trace's first span here
    /// continued (`None`: that span was a root): with the trace id, what every
    /// sampler decides from, inherited by every span linked below it.
    pub remote_sampled: Option<bool>,
    /// The pid of the traced process on the other end of the connection, when this
    /// span was linked to its span there (0: not linked by connection).
    pub peer_pid: u32,
    /// Where the request began in the subscription's stream (see `crate::resume`).
    pub begin: crate::resume::Begin,
}

/// The protocol part of a [`Transaction`].
#[derive(Debug, Clone, PartialEq)]
pub enum Exchange {
    /// An HTTP/1.x or HTTP/2 request (gRPC calls included) and its response.
    Http(HttpExchange),
    /// A database operation (PostgreSQL, MySQL, Redis) and its answer.
    Db(DbOperation),
}

impl Transaction {
    /// The HTTP part, for HTTP transactions.
    pub fn http(&self) -> Option<&HttpExchange> {
        match &self.exchange {
            Exchange::Http(h) => Some(h),
            Exchange::Db(_) => None,
        }
    }

    /// The database part, for database operations.
    pub fn db(&self) -> Option<&DbOperation> {
        match &self.exchange {
            Exchange::Db(d) => Some(d),
            Exchange::Http(_) => None,
        }
    }

    /// The OBI instrumentation the transaction belongs to (`http`, `grpc`, `sql`,
    /// `redis`), which `*.instrumentations` switch on and off.
    pub fn instrumentation(&self) -> Instrumentation {
        match &self.exchange {
            Exchange::Http(h) if h.is_grpc() => Instrumentation::Grpc,
            Exchange::Http(_) => Instrumentation::Http,
            Exchange::Db(d) => match d.system {
                DbSystem::Redis => Instrumentation::Redis,
                DbSystem::Postgresql | DbSystem::Mysql => Instrumentation::Sql,
                DbSystem::Other {
                    instrumentation, ..
                } => instrumentation,
            },
        }
    }

    /// The protocol's short name, for counters: `http1`, `http2`, `grpc`,
    /// `postgresql`, `mysql`, `redis`.
    pub fn protocol_name(&self) -> &'static str {
        match &self.exchange {
            Exchange::Http(h) if h.is_grpc() => "grpc",
            Exchange::Http(h) if h.request.version == HTTP_2 => "http2",
            Exchange::Http(_) => "http1",
            Exchange::Db(d) => d.system.name(),
        }
    }

    /// Unix ns of the end (from the monotonic clock and the batch's offset).
    pub fn end_unix_ns(&self) -> u64 {
        u64::try_from(i128::from(self.end_mono_ns) + i128::from(self.realtime_offset_ns))
            .unwrap_or(0)
    }

    /// Duration in seconds (never negative).
    pub fn duration_secs(&self) -> f64 {
        self.end_mono_ns.saturating_sub(self.start_mono_ns) as f64 / 1e9
    }
}

/// `network.protocol.version` values.
pub const HTTP_1_0: &str = "1.0";
pub const HTTP_1_1: &str = "1.1";
pub const HTTP_2: &str = "2";

/// An HTTP request and, when one was seen, its response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpExchange {
    pub request: HttpRequest,
    /// `None` when the connection closed before a response started (or, with
    /// `Completion::Truncated`, when events were lost before it was seen).
    pub response: Option<HttpResponse>,
}

impl HttpExchange {
    /// A gRPC call: HTTP/2 with a `content-type` of `application/grpc` (or
    /// `application/grpc+proto`, `application/grpc;...`) on the request or response.
    pub fn is_grpc(&self) -> bool {
        let grpc_type = |v: &str| {
            let v = v.trim();
            let lower = |p: &str| {
                v.as_bytes()
                    .get(..p.len())
                    .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
            };
            v.eq_ignore_ascii_case("application/grpc")
                || lower("application/grpc+")
                || lower("application/grpc;")
        };
        self.request.version == HTTP_2
            && (self.request.header("content-type").is_some_and(grpc_type)
                || self
                    .response
                    .as_ref()
                    .and_then(|r| r.header("content-type"))
                    .is_some_and(grpc_type))
    }
}

/// An HTTP request as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// e.g. `GET`; as sent (case preserved). Borrowed for the common methods.
    pub method: Cow<'static, str>,
    /// The request target without the query string, e.g. `/users/42`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// `1.0`, `1.1` or `2` ([`HTTP_1_0`], [`HTTP_1_1`], [`HTTP_2`]).
    pub version: &'static str,
    /// Header names lower-cased, in order; at most `MAX_HEADERS`, values bounded.
    pub headers: Vec<Header>,
    /// Body bytes (after de-chunking accounting), as far as known.
    pub body_size: u64,
}

/// An HTTP response as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub version: &'static str,
    pub headers: Vec<Header>,
    pub body_size: u64,
}

/// One header: its lower-case name (borrowed for the names in [`KNOWN_HEADERS`]: no
/// allocation for them per message) and its value.
pub type Header = (Cow<'static, str>, String);

/// Header names common enough to be kept without an allocation.
pub const KNOWN_HEADERS: [&str; 32] = [
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expires",
    "grpc-encoding",
    "grpc-message",
    "grpc-status",
    "keep-alive",
    "last-modified",
    "location",
    "origin",
    "referer",
    "server",
    "set-cookie",
    "te",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "vary",
    "x-forwarded-for",
];

/// A lower-case header name: a static string for the known ones, else owned.
pub fn header_name(lower: &str) -> Cow<'static, str> {
    match KNOWN_HEADERS.iter().find(|k| **k == lower) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(lower.to_owned()),
    }
}

/// Most headers kept per message, and most bytes of one header value.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_VALUE: usize = 1024;

impl HttpRequest {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl HttpResponse {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Which database protocol a [`DbOperation`] was read from (`db.system.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbSystem {
    /// PostgreSQL frontend/backend protocol 3.0 (an SQL database).
    Postgresql,
    /// Redis serialization protocol (RESP2/RESP3, inline commands).
    Redis,
    /// MySQL client/server protocol (MySQL, MariaDB).
    Mysql,
    /// A database or key-value protocol added without a variant of its own: its
    /// `db.system.name`, and the OBI instrumentation that switches it on and off.
    Other {
        name: &'static str,
        instrumentation: Instrumentation,
    },
}

impl DbSystem {
    /// The `db.system.name` value.
    pub fn name(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Redis => "redis",
            DbSystem::Mysql => "mysql",
            DbSystem::Other { name, .. } => name,
        }
    }
}

/// The error a database answered with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbError {
    /// `db.response.status_code`: the SQLSTATE (PostgreSQL) or the error prefix
    /// (Redis: `ERR`, `WRONGTYPE`, ...).
    pub code: Option<String>,
    /// The error message, bounded.
    pub message: String,
}

/// One database operation (a query, a command) and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct DbOperation {
    pub system: DbSystem,
    /// `db.operation.name`: `SELECT`, `GET`, ...
    pub operation: Option<String>,
    /// `db.collection.name`: the table, when the statement names it.
    pub collection: Option<String>,
    /// `db.query.text`, literals replaced by `?`.
    pub query_text: Option<String>,
    pub error: Option<DbError>,
    /// `db.namespace`: the database the connection uses (PostgreSQL's startup
    /// `database`, MySQL's handshake or `COM_INIT_DB`), when seen.
    pub namespace: Option<String>,
}

/// The methods the HTTP semantic conventions know (others are `_OTHER`).
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// A method as sent: the known ones as static strings (no allocation per request),
/// others as text (invalid UTF-8 replaced).
pub fn method_from_bytes(method: &[u8]) -> Cow<'static, str> {
    match KNOWN_METHODS.iter().find(|m| m.as_bytes() == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(String::from_utf8_lossy(method).into_owned()),
    }
}

/// `ip` as text, as `IpAddr`'s `Display` writes it (IPv4 written directly: no
/// formatting machinery for the common case).
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                let o = *octet;
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
            out
        }
        v6 => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ] {
            let addr: std::net::IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }
}
