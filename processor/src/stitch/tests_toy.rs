//! A protocol added through one parser file (`toykv.rs`) and one registration line:
//! the stitcher detects it among the others, its transactions become spans and
//! metrics with no other change.

use super::toykv::ToyKv;
use super::*;

use crate::model::{DbOperation, DbSystem, Exchange};
use crate::pipeline::span::build_span;
use crate::pipeline::span::tests::{attr, SeqIds};
use crate::settings::Sampler;
use crate::stitch::tests::{closed, data, event, v4};
use tandem_proto::v1::ConnectionOpened;

/// The registry's protocols, and the toy.
static WITH_TOY: &[&dyn Protocol] = &[
    &Http2Protocol,
    &Http1Protocol,
    &PostgresProtocol,
    &MySqlProtocol,
    &RedisProtocol,
    &ToyKv, // <- the registration line
];

const PID: u32 = 3;

fn conversation() -> Vec<Event> {
    vec![
        event(
            1,
            EventKind::ConnectionOpened(ConnectionOpened {
                pid: PID,
                tid: PID,
                conn_id: 1,
                local: v4([127, 0, 0, 1], 41000),
                peer: v4([127, 0, 0, 1], 7777),
                role: Role::Client as i32,
                preexisting: false,
            }),
        ),
        data(
            2,
            PID,
            1,
            Direction::Egress,
            b"set colour blue\nget colour\n",
        ),
        data(3, PID, 1, Direction::Ingress, b"+ok\n+bl"),
        data(4, PID, 1, Direction::Ingress, b"ue\n"),
        data(5, PID, 1, Direction::Egress, b"get shape\n"),
        data(6, PID, 1, Direction::Ingress, b"-miss\n"),
        data(7, PID, 1, Direction::Egress, b"get size\n"),
        closed(8, PID, 1),
    ]
}

fn run(protocols: &'static [&'static dyn Protocol]) -> (Vec<Transaction>, Stitcher) {
    let mut st = Stitcher::with_protocols(Limits::default(), protocols);
    let mut out = Vec::new();
    for e in conversation() {
        st.push(&e, 0, &mut out);
    }
    (out, st)
}

#[test]
fn the_toy_protocol_is_detected_and_paired() {
    let (out, st) = run(WITH_TOY);
    let got: Vec<(String, String, Option<String>, Completion, u64, u64)> = out
        .iter()
        .map(|t| {
            let op = t.db().expect("a database operation");
            (
                op.operation.clone().unwrap_or_default(),
                op.query_text.clone().unwrap_or_default(),
                op.error.as_ref().and_then(|e| e.code.clone()),
                t.completion,
                t.start_mono_ns,
                t.end_mono_ns,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "SET".into(),
                "set colour".into(),
                None,
                Completion::Complete,
                2,
                3
            ),
            (
                "GET".into(),
                "get colour".into(),
                None,
                Completion::Complete,
                2,
                4
            ),
            (
                "GET".into(),
                "get shape".into(),
                Some("miss".into()),
                Completion::Complete,
                5,
                6
            ),
            (
                "GET".into(),
                "get size".into(),
                None,
                Completion::ConnectionClosed,
                7,
                8
            ),
        ]
    );
    assert_eq!(st.stats().transactions, 4);
    assert!(out.iter().all(|t| t.side == Side::Client));
}

#[test]
fn its_transactions_become_spans_and_metrics_with_no_other_change() {
    let (out, _) = run(WITH_TOY);
    let t = &out[2];
    assert_eq!(t.protocol_name(), "toykv");
    assert_eq!(
        t.instrumentation(),
        crate::settings::Instrumentation::Memcached
    );
    let s = build_span(t, None, Sampler::AlwaysOn, &SeqIds::default()).data;
    assert_eq!(s.name, "GET");
    assert_eq!(attr(&s, "db.system.name"), Some(&"toykv".into()));
    assert_eq!(attr(&s, "db.query.text"), Some(&"get shape".into()));
    assert_eq!(attr(&s, "error.type"), Some(&"miss".into()));
    assert_eq!(attr(&s, "server.port"), Some(&7777i64.into()));
    let mut procs = crate::pipeline::resource::ProcessMap::new(Default::default());
    let mut reg = crate::pipeline::metrics::MetricsRegistry::default();
    for t in &out {
        reg.record(&procs.get(PID), t, None);
    }
    let all = reg.collect();
    let m = all[0]
        .metric("db.client.operation.duration")
        .expect("the database client metric");
    let total: u64 = m
        .series
        .iter()
        .map(|s| match &s.point {
            crate::pipeline::metrics::Point::Histogram(h) => h.count,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 4);
    assert!(m.series.iter().all(|s| s
        .attributes
        .contains(&opentelemetry::KeyValue::new("db.system.name", "toykv"))));
    assert!(matches!(
        t.exchange,
        Exchange::Db(DbOperation {
            system: DbSystem::Other { name: "toykv", .. },
            ..
        })
    ));
}

#[test]
fn without_its_line_the_toy_is_not_parsed() {
    let (out, st) = run(crate::protocols::REGISTRY);
    assert!(out.iter().all(|t| t.db().is_none()), "{out:?}");
    assert!(st.stats().parse_errors > 0, "read as HTTP/1 and rejected");
}
