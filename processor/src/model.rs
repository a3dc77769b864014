//! What the processor makes of raw events: transactions (one request and its
//! response on one connection). Produced by `stitch`, consumed by the pipeline
//! (routes, sampling, spans, metrics, export).

use std::net::SocketAddr;

/// Which side of the connection the instrumented process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// It accepted the connection: SERVER spans.
    Server,
    /// It initiated the connection: CLIENT spans.
    Client,
}

/// An HTTP/1.x request as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// e.g. `GET`; as sent (case preserved).
    pub method: String,
    /// The request target without the query string, e.g. `/users/42`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// `1.0` or `1.1`.
    pub version: String,
    /// Header names lower-cased, in order; at most `MAX_HEADERS`, values bounded.
    pub headers: Vec<(String, String)>,
    /// Body bytes (after de-chunking accounting), as far as known.
    pub body_size: u64,
}

/// An HTTP/1.x response as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_size: u64,
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

#[cfg(test)]
impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The response was seen to its last byte.
    Complete,
    /// The connection closed before the response ended (or before any response).
    ConnectionClosed,
    /// The capture was cut short in the headers (or in a chunked body's framing),
    /// bytes did not parse, or events were lost; what is known is reported.
    Truncated,
}

/// One HTTP request and its response on one connection of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTransaction {
    pub pid: u32,
    pub tid: u32,
    pub conn_id: u64,
    pub side: Side,
    /// The instrumented process's address, and its peer's.
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub request: HttpRequest,
    /// `None` when the connection closed before a response started (or, with
    /// `Completion::Truncated`, when events were lost before it was seen).
    pub response: Option<HttpResponse>,
    /// CLOCK_MONOTONIC ns of the request's first byte (the data event's timestamp).
    pub start_mono_ns: u64,
    /// CLOCK_MONOTONIC ns of the response's last byte (or of the close).
    pub end_mono_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC for converting the two above.
    pub realtime_offset_ns: i64,
    pub completion: Completion,
}

/// Which database protocol a [`DbTransaction`] was read from (`db.system.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbSystem {
    /// PostgreSQL frontend/backend protocol 3.0 (an SQL database).
    Postgresql,
    /// Redis serialization protocol (RESP2/RESP3, inline commands).
    Redis,
    /// MySQL client/server protocol (MySQL, MariaDB).
    Mysql,
}

impl DbSystem {
    /// The `db.system.name` value.
    pub fn name(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Redis => "redis",
            DbSystem::Mysql => "mysql",
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

/// One database operation (a query, a command) and its answer on one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct DbTransaction {
    pub pid: u32,
    pub tid: u32,
    pub conn_id: u64,
    pub side: Side,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
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
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    pub realtime_offset_ns: i64,
    pub completion: Completion,
}
