//! The trace export queue against real servers (the transport's scripted test
//! servers): grouping into one request, drops at the bound, failures, several
//! requests in flight, the encode-only path.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as P;
use prost::Message;

use super::*;
use crate::export::transport::tests::servers::{self, http, Script};
use crate::export::transport::{Signal, Transport, TransportSettings};
use crate::model::Side;
use crate::pipeline::resource::{ProcessMap, ResourceSettings};
use crate::pipeline::span::build_span;
use crate::pipeline::span::tests::{tx, SeqIds};
use crate::settings::{OtlpProtocol, Sampler};

fn span(path: &str) -> crate::pipeline::span::Span {
    build_span(
        &tx(Side::Server, "GET", path, Some(200)),
        Some(&path.into()),
        Sampler::AlwaysOn,
        &SeqIds::default(),
    )
    .data
}

fn procs() -> ProcessMap {
    let mut m = ProcessMap::new(ResourceSettings::default());
    for (pid, exe) in [(1, "/bin/a"), (2, "/bin/b")] {
        m.on_started(&tandem_proto::v1::ProcessStarted {
            pid,
            exe_path: exe.into(),
            ..Default::default()
        });
    }
    m
}

/// An HTTP/protobuf server answering every export with `status` after `delay`.
async fn server(status: u16, delay: Duration) -> servers::Server {
    let script: Arc<Script> = Arc::new(move |_, _| (delay, http(status, &[], Vec::new())));
    servers::serve("127.0.0.1:0", false, script).await
}

fn transport(s: &servers::Server, max_in_flight: usize) -> Transport {
    let mut settings = TransportSettings::new(s.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf);
    settings.max_in_flight = max_in_flight;
    settings.retry.max_elapsed = Duration::ZERO;
    Transport::new(Signal::Traces, settings).expect("transport")
}

fn service(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> String {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(P::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_holds_every_process_and_shutdown_flushes() {
    let s = server(200, Duration::ZERO).await;
    let mut export = TraceExport::spawn(transport(&s, 4), Batching::default());
    let mut p = procs();
    export.offer(&p.get(1), &span("/x"), Begin::default());
    export.offer(&p.get(2), &span("/y"), Begin::default());
    export.offer(&p.get(1), &span("/z"), Begin::default());
    let c = export.shutdown().await;
    assert_eq!((c.queued, c.exported, c.requests), (3, 3, 1), "{c:?}");
    let seen = s.record.seen();
    assert_eq!(seen.len(), 1);
    let req = ExportTraceServiceRequest::decode(seen[0].body.clone()).expect("decodes");
    let groups: Vec<(String, Vec<String>)> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let names = rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect();
            (service(rs), names)
        })
        .collect();
    assert_eq!(
        groups,
        vec![
            (
                "a".to_string(),
                vec!["GET /x".to_string(), "GET /z".to_string()]
            ),
            ("b".to_string(), vec!["GET /y".to_string()]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_collector_never_blocks_and_drops_are_counted() {
    let s = server(200, Duration::from_millis(300)).await;
    let batching = Batching {
        max_queue_size: 10,
        ..Batching::default()
    };
    let mut export = TraceExport::spawn(transport(&s, 1), batching);
    let mut p = procs();
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        export.offer(&p.get(1), &span("/x"), Begin::default());
    }
    export.flush();
    assert!(started.elapsed() < Duration::from_secs(2), "offer blocked");
    let c = export.stats();
    assert_eq!(c.queued + c.dropped_queue_full, 10_000, "{c:?}");
    assert!(c.queued <= 10, "{c:?}");
    let c = export.shutdown().await;
    assert_eq!(c.exported, c.queued, "{c:?}");
    assert_eq!(c.lost(), c.dropped_queue_full, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_exports_are_counted_as_failed() {
    let s = server(400, Duration::ZERO).await;
    let mut export = TraceExport::spawn(transport(&s, 4), Batching::default());
    export.offer(&procs().get(1), &span("/x"), Begin::default());
    let c = export.shutdown().await;
    assert_eq!((c.exported, c.failed), (0, 1), "{c:?}");
    assert_eq!(s.record.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_of_the_batch_size_go_out_several_at_once() {
    let s = server(200, Duration::from_millis(200)).await;
    let batching = Batching {
        max_queue_size: 1000,
        max_export_batch_size: 10,
        batch_timeout: Duration::from_secs(5),
    };
    let mut export = TraceExport::spawn(transport(&s, 4), batching);
    let mut p = procs();
    for i in 0..80 {
        export.offer(&p.get(1), &span(&format!("/{i}")), Begin::default());
        if i % 10 == 9 {
            // The end of an input batch: a chunk of 10.
            export.flush();
        }
    }
    let c = export.shutdown().await;
    assert_eq!((c.exported, c.requests), (80, 8), "{c:?}");
    assert_eq!(s.record.max_concurrent(), 4, "as many in flight as allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn encode_only_counts_what_it_would_send() {
    let mut export = TraceExport::encode_only(Batching::default());
    let mut p = procs();
    for _ in 0..1000 {
        export.offer(&p.get(2), &span("/x"), Begin::default());
    }
    let c = export.shutdown().await;
    assert_eq!((c.queued, c.exported, c.requests), (1000, 1000, 1), "{c:?}");
    assert!(c.bytes > 1000 * 100, "{c:?}");
}
