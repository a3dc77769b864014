//! One span per database operation, with the OpenTelemetry database semantic
//! conventions, as OBI emits them.
//!
//! * **Kind**: CLIENT when the instrumented process is the database's client, SERVER
//!   when it is the database server itself.
//! * **Name**: `{db.operation.name} {db.collection.name}` (`SELECT users`), the
//!   operation alone when no table is known (`GET`, `BEGIN`), else the system
//!   (`postgresql`).
//! * **Attributes**: `db.system.name` (`postgresql`, `redis`, `mysql`), `db.namespace`
//!   (the connection's database, when its start was seen), `db.operation.name`,
//!   `db.collection.name`, `db.query.text` (literals replaced by `?`; Redis: the
//!   command and key, other arguments `?`), `server.address` / `server.port` (the
//!   database's socket), `network.peer.address` / `network.peer.port`; on errors
//!   `db.response.status_code` (SQLSTATE, Redis error prefix) and `error.type` (the
//!   same code, or `connection_closed` when no answer came).
//! * **Status**: Error with the database's message when it answered with an error,
//!   or when the connection closed before the answer; unset otherwise.
//! * **Ids**: a new trace per operation (the wire protocols carry no trace context).

use opentelemetry::trace::Status;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::IdGenerator;

use crate::model::{Completion, DbOperation, Side, Transaction};
use crate::pipeline::span::{span_data, span_times, SpanIds, SpanRecord};
use crate::settings::Sampler;

/// The span name of `op`.
pub fn span_name(op: &DbOperation) -> String {
    match (&op.operation, &op.collection) {
        (Some(o), Some(c)) => format!("{o} {c}"),
        (Some(o), None) => o.clone(),
        _ => op.system.name().to_string(),
    }
}

/// `error.type` of a failed operation, `None` when it succeeded.
pub fn db_error_type(tx: &Transaction, op: &DbOperation) -> Option<String> {
    if let Some(e) = &op.error {
        return Some(e.code.clone().unwrap_or_else(|| "_OTHER".to_string()));
    }
    (tx.completion == Completion::ConnectionClosed).then(|| "connection_closed".to_string())
}

/// Builds the span of the database operation `tx` (whose part is `op`).
pub fn build_db_span(
    tx: &Transaction,
    op: &DbOperation,
    sampler: Sampler,
    ids: &dyn IdGenerator,
) -> SpanRecord {
    let ids = SpanIds::of(tx, None, None, sampler, ids);
    let sampled = ids.sampled;
    let is_server = tx.side == Side::Server;
    let server_end = if is_server { tx.local } else { tx.peer };

    let mut attrs = operation_attributes(op);
    if let Some(q) = &op.query_text {
        attrs.push(KeyValue::new("db.query.text", q.clone()));
    }
    if let Some(s) = server_end {
        attrs.push(KeyValue::new(
            "server.address",
            crate::model::ip_text(s.ip()),
        ));
        attrs.push(KeyValue::new("server.port", i64::from(s.port())));
    }
    if let Some(p) = tx.peer {
        attrs.push(KeyValue::new(
            "network.peer.address",
            crate::model::ip_text(p.ip()),
        ));
        attrs.push(KeyValue::new("network.peer.port", i64::from(p.port())));
    }
    if let Some(code) = op.error.as_ref().and_then(|e| e.code.clone()) {
        attrs.push(KeyValue::new("db.response.status_code", code));
    }
    let error_type = db_error_type(tx, op);
    let status = match (&error_type, &op.error) {
        (Some(_), Some(e)) => Status::error(e.message.clone()),
        (Some(_), None) => Status::error(""),
        _ => Status::Unset,
    };
    if let Some(e) = error_type {
        attrs.push(KeyValue::new("error.type", e));
    }
    let times = span_times(tx.start_mono_ns, tx.end_mono_ns, tx.realtime_offset_ns);
    let mut data = span_data(
        ids.context,
        tx.side,
        span_name(op).into(),
        times,
        attrs,
        status,
    );
    data.parent_span_id = ids.parent;
    data.parent_span_is_remote = ids.remote;
    SpanRecord { data, sampled }
}

/// What the span and the metric say of the operation: system, namespace, operation
/// and collection, those known.
fn operation_attributes(op: &DbOperation) -> Vec<KeyValue> {
    let mut attrs = vec![KeyValue::new("db.system.name", op.system.name())];
    if let Some(ns) = &op.namespace {
        attrs.push(KeyValue::new("db.namespace", ns.clone()));
    }
    if let Some(o) = &op.operation {
        attrs.push(KeyValue::new("db.operation.name", o.clone()));
    }
    if let Some(c) = &op.collection {
        attrs.push(KeyValue::new("db.collection.name", c.clone()));
    }
    attrs
}

/// The bounded attributes of `db.client.operation.duration`.
pub fn db_metric_attributes(tx: &Transaction, op: &DbOperation) -> Vec<KeyValue> {
    let mut attrs = operation_attributes(op);
    if let Some(code) = op.error.as_ref().and_then(|e| e.code.clone()) {
        attrs.push(KeyValue::new("db.response.status_code", code));
    }
    if let Some(e) = db_error_type(tx, op) {
        attrs.push(KeyValue::new("error.type", e));
    }
    attrs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{DbError, DbSystem, Exchange};
    use crate::pipeline::span::build_span;
    use crate::pipeline::span::tests::SeqIds;
    use crate::pipeline::span::Span as SpanData;
    use opentelemetry::trace::SpanKind;
    use opentelemetry::Value;

    /// A PostgreSQL operation of a client (pid 7).
    pub(crate) fn db_tx(
        system: DbSystem,
        op: Option<&str>,
        coll: Option<&str>,
        error: Option<DbError>,
    ) -> Transaction {
        Transaction {
            trace: None,
            pid: 7,
            tid: 7,
            conn_id: 1,
            side: Side::Client,
            local: Some("127.0.0.1:40000".parse().expect("addr")),
            peer: Some("127.0.0.1:5432".parse().expect("addr")),
            exchange: Exchange::Db(DbOperation {
                system,
                operation: op.map(String::from),
                collection: coll.map(String::from),
                query_text: Some("SELECT * FROM users WHERE id = ?".into()),
                error,
                namespace: Some("shop".into()),
            }),
            start_mono_ns: 1_000,
            end_mono_ns: 5_000,
            realtime_offset_ns: 10,
            completion: Completion::Complete,
        }
    }

    fn tx(op: Option<&str>, coll: Option<&str>, error: Option<DbError>) -> Transaction {
        db_tx(DbSystem::Postgresql, op, coll, error)
    }

    fn build_db_span(t: &Transaction, sampler: Sampler, ids: &dyn IdGenerator) -> SpanRecord {
        build_span(t, None, sampler, ids)
    }

    fn op(t: &Transaction) -> &DbOperation {
        t.db().expect("a database operation")
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn names_attributes_and_errors() {
        let ids = SeqIds::default();
        let ok = build_db_span(
            &tx(Some("SELECT"), Some("users"), None),
            Sampler::AlwaysOn,
            &ids,
        );
        assert_eq!(ok.data.name, "SELECT users");
        assert_eq!(ok.data.span_kind, SpanKind::Client);
        assert_eq!(ok.data.status, Status::Unset);
        assert_eq!(
            attr(&ok.data, "db.system.name"),
            Some(&Value::from("postgresql"))
        );
        assert_eq!(attr(&ok.data, "server.port"), Some(&Value::from(5432)));
        assert_eq!(attr(&ok.data, "db.namespace"), Some(&Value::from("shop")));
        assert_eq!(attr(&ok.data, "error.type"), None);

        let err = DbError {
            code: Some("42P01".into()),
            message: "relation \"nope\" does not exist".into(),
        };
        let failed = build_db_span(
            &tx(Some("SELECT"), Some("nope"), Some(err)),
            Sampler::AlwaysOn,
            &ids,
        );
        assert_eq!(
            failed.data.status,
            Status::error("relation \"nope\" does not exist")
        );
        assert_eq!(
            attr(&failed.data, "db.response.status_code"),
            Some(&Value::from("42P01"))
        );
        assert_eq!(
            attr(&failed.data, "error.type"),
            Some(&Value::from("42P01"))
        );

        assert_eq!(span_name(op(&tx(Some("BEGIN"), None, None))), "BEGIN");
        assert_eq!(span_name(op(&tx(None, None, None))), "postgresql");
        let mut closed = tx(Some("SELECT"), None, None);
        closed.completion = Completion::ConnectionClosed;
        assert_eq!(
            db_error_type(&closed, op(&closed)).as_deref(),
            Some("connection_closed")
        );
    }
}
