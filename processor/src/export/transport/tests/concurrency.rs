//! Several exports in flight (observed by the server, not timed), and the exporter's
//! accounting: every queued item ends exported, rejected, failed or abandoned.

use std::sync::Arc;

use super::servers::{closed_port, grpc_ok, http, serve, Script};
use super::*;

/// Answers every request after `delay`.
fn slow(http2: bool, delay: Duration) -> Arc<Script> {
    Arc::new(move |_, _| {
        let ok = if http2 {
            grpc_ok(vec![])
        } else {
            http(200, &[], "")
        };
        (delay, ok)
    })
}

async fn slow_server(http2: bool) -> (servers::Server, TransportSettings) {
    let server = serve(
        "127.0.0.1:0",
        http2,
        slow(http2, Duration::from_millis(200)),
    )
    .await;
    let s = if http2 {
        settings(server.http_url(""), OtlpProtocol::Grpc)
    } else {
        settings(server.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf)
    };
    (server, s)
}

async fn exporter_keeps_four_in_flight(http2: bool) {
    let (server, mut s) = slow_server(http2).await;
    s.max_in_flight = 4;
    let t = Transport::new(Signal::Traces, s).expect("transport");
    let exporter = Exporter::spawn(t, 16);
    for i in 0..8 {
        exporter
            .try_send(traces_body(i * 10, 10), 10)
            .expect("queued");
    }
    let st = exporter.shutdown(Duration::from_secs(30)).await;
    assert_eq!(server.record.requests(), 8);
    // 8 exports, 4 at a time: the server had exactly 4 requests open at once.
    assert_eq!(server.record.max_concurrent(), 4);
    assert_eq!((st.exports_queued, st.items_queued), (8, 80), "{st:?}");
    assert_eq!((st.items_abandoned, st.items_dropped), (0, 0), "{st:?}");
    let t = st.transport;
    assert_eq!(
        (t.exports_ok, t.items_exported, t.attempts),
        (8, 80, 8),
        "{t:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_exporter_keeps_max_in_flight_exports_running() {
    exporter_keeps_four_in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_exporter_keeps_max_in_flight_exports_running() {
    exporter_keeps_four_in_flight(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_limits_concurrent_callers_to_max_in_flight() {
    for http2 in [false, true] {
        let (server, mut s) = slow_server(http2).await;
        s.max_in_flight = 3;
        let t = Transport::new(Signal::Traces, s).expect("transport");
        let tasks: Vec<_> = (0..9)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move { t.export(traces_body(i, 2), 2).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("exported");
        }
        assert_eq!(server.record.requests(), 9);
        assert_eq!(server.record.max_concurrent(), 3, "http2: {http2}");
        assert_eq!(t.stats().items_exported, 18);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_in_flight_exports_within_the_grace_period() {
    let (server, s) = slow_server(true).await;
    let exporter = Exporter::spawn(Transport::new(Signal::Traces, s).expect("transport"), 8);
    for i in 0..6 {
        exporter.send(traces_body(i, 5), 5).await.expect("queued");
    }
    let st = exporter.shutdown(Duration::from_secs(30)).await;
    assert_eq!(server.record.requests(), 6);
    assert_eq!(
        (st.items_queued, st.transport.items_exported),
        (30, 30),
        "{st:?}"
    );
    assert_eq!((st.exports_abandoned, st.exports_in_flight), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_lost_uncounted_when_the_collector_is_down() {
    let mut s = settings(
        format!("http://127.0.0.1:{}", closed_port()),
        OtlpProtocol::Grpc,
    );
    s.max_in_flight = 2;
    s.retry.max_elapsed = Duration::from_millis(300);
    let exporter = Exporter::spawn(Transport::new(Signal::Traces, s).expect("transport"), 3);
    let (mut full, mut sent) = (0, 0);
    for i in 0..50u64 {
        match exporter.try_send(traces_body(i, 4), 4) {
            Ok(()) => sent += 1,
            Err(SendError::Full) => full += 1,
            Err(e) => panic!("{e}"),
        }
        if i == 25 {
            // Let the first exports give up, so that later ones fail rather than wait.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    assert!(full > 0 && sent > 0, "full {full}, sent {sent}");
    let during = exporter.stats();
    assert_eq!(during.items_dropped, full * 4);
    let st = exporter.shutdown(Duration::from_millis(200)).await;
    let t = st.transport;
    assert_eq!(st.items_queued, sent * 4);
    assert_eq!(st.items_queued + st.items_dropped, 200, "{st:?}");
    assert_eq!(t.items_exported, 0);
    assert_eq!(
        t.items_exported + t.items_rejected + t.items_failed + st.items_abandoned,
        st.items_queued,
        "{st:?}"
    );
    assert!(t.items_failed > 0, "{st:?}");
    assert!(st.items_abandoned > 0, "{st:?}");
    assert_eq!(st.exports_in_flight, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_drops_and_counts() {
    let (_server, mut s) = slow_server(false).await;
    s.max_in_flight = 1;
    let exporter = Exporter::spawn(Transport::new(Signal::Traces, s).expect("transport"), 1);
    exporter
        .try_send(traces_body(0, 1), 1)
        .expect("taken at once");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One export running (200 ms), one body queued: the next ones do not fit.
    exporter.try_send(traces_body(1, 2), 2).expect("queued");
    assert_eq!(
        exporter.try_send(traces_body(3, 3), 3),
        Err(SendError::Full)
    );
    assert_eq!(
        exporter.try_send(traces_body(6, 4), 4),
        Err(SendError::Full)
    );
    let st = exporter.stats();
    assert_eq!(
        (st.exports_in_flight, st.exports_dropped, st.items_dropped),
        (1, 2, 7)
    );
    let st = exporter.shutdown(Duration::from_secs(10)).await;
    assert_eq!((st.items_queued, st.items_dropped), (3, 7), "{st:?}");
    assert_eq!(st.transport.items_exported, 3, "{st:?}");
}
