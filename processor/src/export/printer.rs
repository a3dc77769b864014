//! `trace_printer`: spans on stdout, for debugging, like OBI's.
//!
//! * `text`: one line per span, in OBI's layout:
//!   `START (DURATION[DURATION]) TYPE STATUS METHOD PATH [FROM]->[TO] contentLen:NB
//!   responseLen:NB svc=[SERVICE] traceparent=[00-TRACE-SPAN[PARENT]-FLAGS]`, where
//!   TYPE is `HTTP` (server) or `HTTPClient`, FROM→TO is client→server, and START is
//!   UTC (OBI prints local time). OBI prints its two durations from the request's
//!   queueing start and its processing start; tandem knows one start, printed twice.
//! * `json` / `json_indent`: one JSON object per span (one line / indented), with the
//!   fields of the text line plus every span attribute.
//! * Database spans: `START (DURATION[DURATION]) TYPE CODE NAME
//!   [FROM]->[TO] svc=[SERVICE] traceparent=[...]`, TYPE `SQLClient`, `SQLServer`,
//!   `RedisClient` or `RedisServer`, CODE the error code or 0.
//! * `counter`: nothing per span; `Processed N requests` at shutdown.
//! * `disabled`: nothing.
//!
//! Every span built is printed, sampled or not (sampling only decides the export).

use std::io::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanKind;
use serde_json::{json, Map, Value};

use crate::model::{DbOperation, DbSystem, Exchange, HttpExchange, Side, Transaction};
use crate::pipeline::resource::ProcessResource;
use crate::pipeline::span::{Span as SpanData, SpanRecord};
use crate::settings::TracePrinter;

/// Prints spans in the configured format.
pub struct Printer {
    kind: TracePrinter,
    out: Box<dyn Write + Send>,
    count: u64,
    failed: bool,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("kind", &self.kind)
            .field("count", &self.count)
            .finish()
    }
}

impl Printer {
    /// A printer writing to stdout.
    pub fn stdout(kind: TracePrinter) -> Self {
        Self::new(kind, Box::new(std::io::stdout()))
    }

    /// Spans seen (printed unless disabled or counted only).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether spans are printed (`text`, `json`, `json_indent`), not only counted.
    pub fn prints(&self) -> bool {
        matches!(
            self.kind,
            TracePrinter::Text | TracePrinter::Json | TracePrinter::JsonIndent
        )
    }

    /// Counts a span that was not built (nothing prints it).
    pub fn count_one(&mut self) {
        self.count += 1;
    }

    pub fn new(kind: TracePrinter, out: Box<dyn Write + Send>) -> Self {
        Printer {
            kind,
            out,
            count: 0,
            failed: false,
        }
    }

    /// Prints the span of `tx`. A database span's text line has TYPE
    /// `SQLClient`/`SQLServer`, `RedisClient`/`RedisServer`, the error code (or 0)
    /// as STATUS, the span name for METHOD PATH; the JSON forms carry the span's
    /// attributes.
    pub fn print(&mut self, rec: &SpanRecord, tx: &Transaction, process: &ProcessResource) {
        match &tx.exchange {
            Exchange::Http(h) => self.span(
                || text_line(rec, tx, h, process),
                || json_value(rec, tx, h, process),
            ),
            Exchange::Db(op) => self.span(
                || db_text_line(rec, tx, op, process),
                || db_json_value(rec, tx, op, process),
            ),
        }
    }

    /// Counts one span and prints it in the configured format: `text` its text line,
    /// `json` its JSON object.
    fn span(&mut self, text: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
        self.count += 1;
        let line = match self.kind {
            TracePrinter::Disabled | TracePrinter::Counter => return,
            TracePrinter::Text => text(),
            TracePrinter::Json => json().to_string(),
            TracePrinter::JsonIndent => serde_json::to_string_pretty(&json()).unwrap_or_default(),
        };
        self.write_line(&line);
    }

    /// Ends printing (the counter prints its total).
    pub fn finish(&mut self) {
        if self.kind == TracePrinter::Counter {
            let line = format!("Processed {} requests", self.count);
            self.write_line(&line);
        }
        let _ = self.out.flush();
    }

    fn write_line(&mut self, line: &str) {
        if let Err(e) = writeln!(self.out, "{line}") {
            if !self.failed {
                tracing::warn!("trace printer cannot write: {e}");
                self.failed = true;
            }
        }
    }
}

/// (FROM, TO): client then server, `-:0` where unknown.
fn endpoints(side: Side, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> (String, String) {
    let fmt = |a: Option<SocketAddr>| a.map_or_else(|| "-:0".to_string(), |a| a.to_string());
    match side {
        Side::Server => (fmt(peer), fmt(local)),
        Side::Client => (fmt(local), fmt(peer)),
    }
}

fn traceparent(d: &SpanData) -> String {
    let c = &d.span_context;
    format!(
        "00-{}-{}[{}]-{:02x}",
        c.trace_id(),
        c.span_id(),
        d.parent_span_id,
        c.trace_flags().to_u8()
    )
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The span's attributes as a JSON object.
fn attributes_json(d: &SpanData) -> Map<String, Value> {
    let mut attrs = Map::new();
    for kv in &d.attributes {
        let v = match &kv.value {
            opentelemetry::Value::I64(i) => json!(i),
            opentelemetry::Value::F64(f) => json!(f),
            opentelemetry::Value::Bool(b) => json!(b),
            other => json!(other.as_str()),
        };
        attrs.insert(kv.key.to_string(), v);
    }
    attrs
}

fn text_line(
    rec: &SpanRecord,
    tx: &Transaction,
    h: &HttpExchange,
    process: &ProcessResource,
) -> String {
    let d = &rec.data;
    let dur = d.end_time.duration_since(d.start_time).unwrap_or_default();
    let (from, to) = endpoints(tx.side, tx.local, tx.peer);
    format!(
        "{} ({dur:?}[{dur:?}]) {} {} {} {} [{from}]->[{to}] contentLen:{}B responseLen:{}B svc=[{}] traceparent=[{}]",
        utc(d.start_time),
        if d.span_kind == SpanKind::Server { "HTTP" } else { "HTTPClient" },
        h.response.as_ref().map_or(0, |r| r.status),
        h.request.method,
        h.request.path,
        h.request.body_size,
        h.response.as_ref().map_or(0, |r| r.body_size),
        process.service_name,
        traceparent(&rec.data),
    )
}

/// The JSON fields of every span (keys are printed sorted): `kind` is its TYPE,
/// `from` and `to` its endpoints.
fn span_json(
    kind: &str,
    d: &SpanData,
    sampled: bool,
    process: &ProcessResource,
    (from, to): (String, String),
) -> Map<String, Value> {
    let fields = json!({
        "type": kind,
        "name": d.name,
        "from": from,
        "to": to,
        "start": utc(d.start_time),
        "startUnixNano": unix_ns(d.start_time),
        "endUnixNano": unix_ns(d.end_time),
        "traceID": d.span_context.trace_id().to_string(),
        "spanID": d.span_context.span_id().to_string(),
        "sampled": sampled,
        "serviceName": process.service_name,
        "pid": process.pid,
        "attributes": attributes_json(d),
    });
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn json_value(
    rec: &SpanRecord,
    tx: &Transaction,
    h: &HttpExchange,
    process: &ProcessResource,
) -> Value {
    let d = &rec.data;
    let kind = if d.span_kind == SpanKind::Server {
        "HTTP"
    } else {
        "HTTPClient"
    };
    let ends = endpoints(tx.side, tx.local, tx.peer);
    let mut fields = span_json(kind, d, rec.sampled, process, ends);
    let http = [
        ("method", json!(h.request.method)),
        ("path", json!(h.request.path)),
        ("status", json!(h.response.as_ref().map_or(0, |r| r.status))),
        ("contentLen", json!(h.request.body_size)),
        (
            "responseLen",
            json!(h.response.as_ref().map_or(0, |r| r.body_size)),
        ),
        ("parentSpanID", json!(d.parent_span_id.to_string())),
    ];
    for (k, v) in http {
        fields.insert(k.to_string(), v);
    }
    Value::Object(fields)
}

fn db_type(tx: &Transaction, op: &DbOperation) -> &'static str {
    match (op.system, tx.side) {
        (DbSystem::Redis, Side::Client) => "RedisClient",
        (DbSystem::Redis, Side::Server) => "RedisServer",
        (DbSystem::Other { .. }, Side::Client) => "DBClient",
        (DbSystem::Other { .. }, Side::Server) => "DBServer",
        (_, Side::Client) => "SQLClient",
        (_, Side::Server) => "SQLServer",
    }
}

fn db_text_line(
    rec: &SpanRecord,
    tx: &Transaction,
    op: &DbOperation,
    process: &ProcessResource,
) -> String {
    let d = &rec.data;
    let dur = d.end_time.duration_since(d.start_time).unwrap_or_default();
    let (from, to) = endpoints(tx.side, tx.local, tx.peer);
    format!(
        "{} ({dur:?}[{dur:?}]) {} {} {} [{from}]->[{to}] svc=[{}] traceparent=[{}]",
        utc(d.start_time),
        db_type(tx, op),
        op.error
            .as_ref()
            .and_then(|e| e.code.clone())
            .unwrap_or_else(|| "0".to_string()),
        d.name,
        process.service_name,
        traceparent(d),
    )
}

fn db_json_value(
    rec: &SpanRecord,
    tx: &Transaction,
    op: &DbOperation,
    process: &ProcessResource,
) -> Value {
    let ends = endpoints(tx.side, tx.local, tx.peer);
    Value::Object(span_json(
        db_type(tx, op),
        &rec.data,
        rec.sampled,
        process,
        ends,
    ))
}

/// `YYYY-MM-DD HH:MM:SS.sssss` in UTC (five decimals, as OBI prints).
pub fn utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:05}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos() / 10_000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::resource::{ProcessMap, ResourceSettings};
    use crate::pipeline::span::build_span;
    use crate::pipeline::span::tests::{tx, SeqIds};
    use crate::settings::Sampler;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn database_spans_print() {
        use crate::model::{Completion, DbError};
        let buf = Buf::default();
        let mut p = Printer::new(TracePrinter::Text, Box::new(buf.clone()));
        let mut procs = ProcessMap::new(ResourceSettings::default());
        let t = Transaction {
            pid: 42,
            tid: 42,
            conn_id: 1,
            side: Side::Client,
            local: Some("127.0.0.1:40000".parse().expect("addr")),
            peer: Some("127.0.0.1:5432".parse().expect("addr")),
            exchange: Exchange::Db(DbOperation {
                system: DbSystem::Postgresql,
                operation: Some("SELECT".into()),
                collection: Some("nope".into()),
                query_text: Some("SELECT * FROM nope".into()),
                error: Some(DbError {
                    code: Some("42P01".into()),
                    message: "relation \"nope\" does not exist".into(),
                }),
                namespace: None,
            }),
            trace: None,
            start_mono_ns: 1_000_000,
            end_mono_ns: 3_000_000,
            realtime_offset_ns: 0,
            completion: Completion::Complete,
        };
        let rec = build_span(&t, None, Sampler::AlwaysOn, &SeqIds::default());
        p.print(&rec, &t, &procs.get(42));
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert!(
            out.contains(" SQLClient 42P01 SELECT nope [127.0.0.1:40000]->[127.0.0.1:5432] "),
            "{out}"
        );
        let mut p = Printer::new(TracePrinter::Json, Box::new(buf.clone()));
        buf.0.lock().expect("lock").clear();
        p.print(&rec, &t, &procs.get(42));
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["type"], "SQLClient");
        assert_eq!(v["attributes"]["db.query.text"], "SELECT * FROM nope");
    }

    fn printed(kind: TracePrinter) -> String {
        let buf = Buf::default();
        let mut p = Printer::new(kind, Box::new(buf.clone()));
        let mut procs = ProcessMap::new(ResourceSettings::default());
        procs.on_started(&tandem_proto::v1::ProcessStarted {
            pid: 42,
            exe_path: "/usr/bin/shop".into(),
            ..Default::default()
        });
        let t = tx(Side::Server, "GET", "/users/42", Some(200));
        let rec = build_span(
            &t,
            Some(&"/users/{id}".into()),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        p.print(&rec, &t, &procs.get(42));
        p.print(&rec, &t, &procs.get(42));
        p.finish();
        let out = buf.0.lock().expect("lock").clone();
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00.00000");
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_001_123_456_789);
        assert_eq!(utc(t), "2023-11-14 22:13:21.12345");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&utc(leap)[..10], "2000-02-29");
    }

    #[test]
    fn text_line_in_obi_layout() {
        let out = printed(TracePrinter::Text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "2023-11-14 22:13:21.00000 (250ms[250ms]) HTTP 200 GET /users/42 \
             [10.0.0.2:51000]->[10.0.0.1:8080] contentLen:12B responseLen:34B svc=[shop] \
             traceparent=[00-00000000000000000000000000000001-0000000000000002[0000000000000000]-01]"
        );
    }

    #[test]
    fn json_and_counter() {
        let out = printed(TracePrinter::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(lines[0]).expect("json");
        assert_eq!(v["name"], "GET /users/{id}");
        assert_eq!(v["serviceName"], "shop");
        assert_eq!(v["attributes"]["http.response.status_code"], 200);
        let out = printed(TracePrinter::JsonIndent);
        assert!(out.lines().count() > 10);
        assert_eq!(printed(TracePrinter::Counter), "Processed 2 requests\n");
        assert_eq!(printed(TracePrinter::Disabled), "");
    }
}
