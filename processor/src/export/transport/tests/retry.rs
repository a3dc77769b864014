//! Which failures are retried, how often, and how long the waits are, against
//! scripted HTTP/1.1 and gRPC (HTTP/2) servers; a collector that is down, then up.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use tonic_types::{ErrorDetails, StatusExt};

use super::servers::{self, closed_port, grpc_ok, grpc_status, http, serve, Script};
use super::*;

fn script(
    f: impl Fn(usize) -> hyper::Response<servers::Body> + Send + Sync + 'static,
) -> Arc<Script> {
    Arc::new(move |n, _| (Duration::ZERO, f(n)))
}

async fn http_transport(script: Arc<Script>) -> (servers::Server, Transport) {
    let server = serve("127.0.0.1:0", false, script).await;
    let s = settings(server.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf);
    (
        server,
        Transport::new(Signal::Traces, s).expect("transport"),
    )
}

async fn grpc_transport(script: Arc<Script>) -> (servers::Server, Transport) {
    let server = serve("127.0.0.1:0", true, script).await;
    let s = settings(server.http_url(""), OtlpProtocol::Grpc);
    (
        server,
        Transport::new(Signal::Traces, s).expect("transport"),
    )
}

fn partial(rejected: i64, message: &str) -> Vec<u8> {
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message.into(),
        }),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_retries_429_502_503_504_honouring_retry_after() {
    let started = Instant::now();
    let (server, t) = http_transport(script(|n| match n {
        0 => http(503, &[("retry-after", "1")], "busy"),
        1 => http(429, &[("retry-after", "0")], ""),
        2 => http(502, &[], "bad gateway"),
        3 => http(504, &[], ""),
        _ => http(
            200,
            &[("content-type", "application/x-protobuf")],
            partial(2, "too old"),
        ),
    }))
    .await;
    let done = t.export(traces_body(0, 10), 10).await.expect("exported");
    assert_eq!(
        done,
        Exported {
            items: 10,
            rejected: 2,
            message: Some("too old".into()),
            attempts: 5
        }
    );
    assert_eq!(done.accepted(), 8);
    assert_eq!(server.record.requests(), 5);
    // Retry-After: 1 was waited for (the backoff alone is at most 100 ms a wait).
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let st = t.stats();
    assert_eq!(
        (
            st.exports_ok,
            st.items_exported,
            st.items_rejected,
            st.attempts,
            st.retries
        ),
        (1, 8, 2, 5, 4),
        "{st:?}"
    );
    // Every attempt sent the same body.
    let seen = server.record.seen();
    assert!(seen
        .iter()
        .all(|s| s.body == traces_body(0, 10) && s.path == "/v1/traces"));
    let ct = &seen[0].headers["content-type"];
    assert_eq!(ct, "application/x-protobuf");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_other_errors_are_not_retried() {
    for status in [400u16, 401, 403, 404, 413, 500, 501] {
        let (server, t) = http_transport(script(move |_| http(status, &[], "nope"))).await;
        let e = t.export(traces_body(0, 4), 4).await.expect_err("refused");
        assert!(
            matches!(e, ExportError::Refused { attempts: 1, .. }),
            "{status}: {e}"
        );
        assert!(e.to_string().contains(&status.to_string()), "{e}");
        assert_eq!(server.record.requests(), 1, "{status}");
        let st = t.stats();
        assert_eq!(
            (st.exports_failed, st.items_failed, st.retries),
            (1, 4, 0),
            "{st:?}"
        );
    }
    // A google.rpc.Status body is shown by its message.
    let body = tonic_types::Status {
        code: 3,
        message: "span 3 has no trace id".into(),
        details: vec![],
    }
    .encode_to_vec();
    let (_server, t) = http_transport(script(move |_| {
        http(
            400,
            &[("content-type", "application/x-protobuf")],
            body.clone(),
        )
    }))
    .await;
    let e = t.export(traces_body(0, 4), 4).await.expect_err("refused");
    assert!(
        e.to_string()
            .contains("400 Bad Request: span 3 has no trace id"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_elapsed_limit() {
    let (server, t) = {
        let server = serve("127.0.0.1:0", false, script(|_| http(503, &[], ""))).await;
        let mut s = settings(server.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf);
        s.retry = RetryPolicy {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(300),
        };
        (
            server,
            Transport::new(Signal::Traces, s).expect("transport"),
        )
    };
    let e = t.export(traces_body(0, 4), 4).await.expect_err("gave up");
    let ExportError::GaveUp { attempts, .. } = &e else {
        panic!("{e}")
    };
    // Waits of 5..20 ms within 300 ms: many attempts, every one reached the server.
    assert!(*attempts >= 10, "{e}");
    assert_eq!(server.record.requests(), *attempts as usize);
    let st = t.stats();
    assert_eq!(st.attempts, u64::from(*attempts));
    assert_eq!(st.retries, u64::from(*attempts) - 1);
    assert_eq!((st.exports_failed, st.items_failed), (1, 4));

    // A Retry-After past the limit ends the export at once.
    let (server, t) = http_transport(script(|_| http(503, &[("retry-after", "3600")], ""))).await;
    let started = Instant::now();
    let e = t.export(traces_body(0, 4), 4).await.expect_err("gave up");
    assert!(matches!(e, ExportError::GaveUp { attempts: 1, .. }), "{e}");
    assert!(e.to_string().contains("asked to wait 3600s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.record.requests(), 1);

    // max_elapsed zero: no retries at all.
    let server = serve("127.0.0.1:0", false, script(|_| http(503, &[], ""))).await;
    let mut s = settings(server.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf);
    s.retry.max_elapsed = Duration::ZERO;
    let t = Transport::new(Signal::Traces, s).expect("transport");
    let e = t.export(traces_body(0, 4), 4).await.expect_err("gave up");
    assert_eq!(e.attempts(), 1);
    assert_eq!(server.record.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_without_an_answer_times_out_and_is_retried() {
    let slow: Arc<Script> = Arc::new(|n, _| {
        let delay = if n == 0 {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        (delay, http(200, &[], ""))
    });
    let server = serve("127.0.0.1:0", false, slow).await;
    let mut s = settings(server.http_url("/v1/traces"), OtlpProtocol::HttpProtobuf);
    s.timeout = Duration::from_millis(300);
    let t = Transport::new(Signal::Traces, s).expect("transport");
    let done = t
        .export(traces_body(0, 4), 4)
        .await
        .expect("second attempt");
    assert_eq!((done.attempts, done.rejected), (2, 0));
    assert_eq!(server.record.requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_retryable_codes_are_retried_and_retry_info_is_honoured() {
    let started = Instant::now();
    let (server, t) = grpc_transport(script(|n| match n {
        0 => grpc_status(tonic::Status::unavailable("starting")),
        1 => grpc_status(tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "memory limiter",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(700))),
        )),
        2 => grpc_status(tonic::Status::deadline_exceeded("slow")),
        3 => grpc_status(tonic::Status::aborted("")),
        _ => grpc_ok(partial(1, "one bad span")),
    }))
    .await;
    let done = t.export(traces_body(0, 5), 5).await.expect("exported");
    assert_eq!(
        done,
        Exported {
            items: 5,
            rejected: 1,
            message: Some("one bad span".into()),
            attempts: 5
        }
    );
    assert_eq!(server.record.requests(), 5);
    // The RetryInfo delay was waited for (the backoff alone is at most 100 ms a wait).
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let seen = server.record.seen();
    for s in &seen {
        assert_eq!(s.path, Signal::Traces.grpc_path());
        assert_eq!(servers::grpc_message(s), (false, traces_body(0, 5)));
    }
    let st = t.stats();
    assert_eq!(
        (st.items_exported, st.items_rejected, st.retries),
        (4, 1, 4)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_other_codes_are_not_retried() {
    for status in [
        tonic::Status::invalid_argument("bad data"),
        tonic::Status::unauthenticated("who are you"),
        tonic::Status::unimplemented(""),
        tonic::Status::internal("oops"),
    ] {
        let code = status.code();
        let (server, t) = grpc_transport(script(move |_| grpc_status(status.clone()))).await;
        let e = t.export(traces_body(0, 3), 3).await.expect_err("refused");
        assert!(
            matches!(e, ExportError::Refused { attempts: 1, .. }),
            "{code:?}: {e}"
        );
        assert!(e.to_string().contains(&format!("{code:?}")), "{e}");
        assert_eq!(server.record.requests(), 1);
        assert_eq!(t.stats().items_failed, 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_sends_metadata_compression_and_timeout() {
    let (server, _) = grpc_transport(script(|_| grpc_ok(vec![]))).await;
    let mut s = settings(server.http_url("/"), OtlpProtocol::Grpc);
    s.compression = Some(Compression::Gzip);
    s.headers = [("Authorization".to_string(), "Bearer abc".to_string())].into();
    let t = Transport::new(Signal::Metrics, s).expect("transport");
    let done = t.export(metrics_body(), 3).await.expect("exported");
    assert_eq!((done.items, done.rejected), (3, 0));
    let seen = server.record.seen();
    let h = &seen[0].headers;
    assert_eq!(seen[0].path, Signal::Metrics.grpc_path());
    assert_eq!(h["authorization"], "Bearer abc");
    assert_eq!(h["grpc-encoding"], "gzip");
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-timeout"], "5000000u");
    assert_eq!(servers::grpc_message(&seen[0]), (true, metrics_body()));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sends_headers_and_gzip() {
    let server = serve("127.0.0.1:0", false, script(|_| http(200, &[], ""))).await;
    let mut s = settings(server.http_url("/v1/metrics"), OtlpProtocol::HttpProtobuf);
    s.compression = Some(Compression::Gzip);
    s.headers = [("Authorization".to_string(), "Bearer abc".to_string())].into();
    let t = Transport::new(Signal::Metrics, s).expect("transport");
    t.export(metrics_body(), 3).await.expect("exported");
    let seen = server.record.seen();
    let h = &seen[0].headers;
    assert_eq!(h["authorization"], "Bearer abc");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(servers::gunzip(&seen[0].body), metrics_body());
    // Counted before compression.
    assert_eq!(t.stats().bytes_sent, metrics_body().len() as u64);
}

/// Down (nothing listens), then up on the same port: the export in progress goes
/// through once the server is there; an export that ran out of time is counted.
async fn down_then_up(http2: bool) {
    let port = closed_port();
    let (endpoint, protocol) = if http2 {
        (format!("http://127.0.0.1:{port}"), OtlpProtocol::Grpc)
    } else {
        (
            format!("http://127.0.0.1:{port}/v1/traces"),
            OtlpProtocol::HttpProtobuf,
        )
    };
    let mut s = settings(endpoint, protocol);
    s.retry.max_elapsed = Duration::from_millis(400);
    let t = Transport::new(Signal::Traces, s.clone()).expect("transport");
    let e = t.export(traces_body(0, 7), 7).await.expect_err("down");
    assert!(matches!(e, ExportError::GaveUp { .. }), "{e}");
    assert!(e.to_string().contains("connection failed"), "{e}");
    let failed_attempts = e.attempts();
    assert!(failed_attempts >= 3, "{e}");
    let st = t.stats();
    assert_eq!((st.exports_failed, st.items_failed), (1, 7), "{st:?}");
    assert_eq!(st.attempts, u64::from(failed_attempts));

    // A transport with a long retry limit keeps trying while the server comes up.
    s.retry.max_elapsed = Duration::from_secs(20);
    let t2 = Transport::new(Signal::Traces, s).expect("transport");
    let pending = tokio::spawn({
        let t2 = t2.clone();
        async move { t2.export(traces_body(0, 7), 7).await }
    });
    while t2.stats().attempts < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer: Arc<Script> = Arc::new(move |_, _| {
        let ok = if http2 {
            grpc_ok(vec![])
        } else {
            http(200, &[], "")
        };
        (Duration::ZERO, ok)
    });
    let server = serve(&format!("127.0.0.1:{port}"), http2, answer).await;
    let done = pending.await.expect("task").expect("exported once up");
    // The attempt in flight when the server came up may be the one that succeeds.
    assert!(done.attempts >= 3, "{done:?}");
    assert_eq!(server.record.requests(), 1);
    let st = t2.stats();
    assert_eq!(
        (st.exports_ok, st.items_exported, st.items_failed),
        (1, 7, 0)
    );
    assert_eq!(st.retries, st.attempts - 1);
    assert_eq!(st.attempts, u64::from(done.attempts));

    // The first transport works again too (its connection is remade).
    let done = t.export(traces_body(0, 7), 7).await.expect("exported");
    assert_eq!(done.attempts, 1);
    assert_eq!(server.record.requests(), 2);
    let st = t.stats();
    assert_eq!(
        (st.exports_ok, st.exports_failed, st.items_failed),
        (1, 1, 7)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_collector_down_then_up() {
    down_then_up(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_collector_down_then_up() {
    down_then_up(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_are_named() {
    let err = |endpoint: &str, protocol| {
        Transport::new(Signal::Traces, settings(endpoint.into(), protocol))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{endpoint} accepted"))
    };
    let e = err("localhost:4317", OtlpProtocol::Grpc);
    assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
    // https is accepted; a TLS file that cannot be read is named.
    for (endpoint, protocol) in [
        ("https://c:4317", OtlpProtocol::Grpc),
        ("https://c:4318/v1/traces", OtlpProtocol::HttpProtobuf),
    ] {
        let mut s = settings(endpoint.into(), protocol);
        assert!(
            Transport::new(Signal::Traces, s.clone()).is_ok(),
            "{endpoint}"
        );
        s.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = Transport::new(Signal::Traces, s).err().expect("no CA file");
        assert!(
            e.to_string()
                .contains("TLS: CA certificate file /nonexistent/ca.pem"),
            "{e}"
        );
    }
    assert!(err("http://c:4317/v1/traces", OtlpProtocol::Grpc).contains("no path"));
    assert!(err("ftp://c/v1/traces", OtlpProtocol::HttpProtobuf).contains("ftp"));
    assert!(err("not a url", OtlpProtocol::HttpProtobuf).contains("not a URL"));

    let mut s = settings("http://127.0.0.1:4317".into(), OtlpProtocol::Grpc);
    s.headers = [("bad header".to_string(), "v".to_string())].into();
    let e = Transport::new(Signal::Metrics, s.clone())
        .err()
        .expect("bad name");
    assert!(e.to_string().contains("\"bad header\""), "{e}");
    assert!(
        e.to_string().contains("OTEL_EXPORTER_OTLP_METRICS_HEADERS"),
        "{e}"
    );
    s.headers = [("x-k".to_string(), "line\nbreak".to_string())].into();
    assert!(Transport::new(Signal::Traces, s.clone()).is_err());
    s.protocol = OtlpProtocol::HttpProtobuf;
    assert!(Transport::new(Signal::Traces, s.clone()).is_err());
    s.headers.clear();
    s.max_in_flight = 0;
    let e = Transport::new(Signal::Traces, s.clone())
        .err()
        .expect("zero");
    assert!(e.to_string().contains("max_in_flight"), "{e}");
    s.max_in_flight = 1;
    s.timeout = Duration::ZERO;
    assert!(Transport::new(Signal::Traces, s).is_err());
}

#[test]
fn transport_needs_a_runtime() {
    let s = settings("http://127.0.0.1:4317".into(), OtlpProtocol::Grpc);
    let e = Transport::new(Signal::Traces, s).err().expect("no runtime");
    assert!(matches!(e, TransportError::NoRuntime { .. }), "{e}");
}

#[test]
fn backoff_grows_and_stays_within_bounds() {
    let mut b = Backoff::new(RetryPolicy {
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(60),
    });
    let mut base = 0.1f64;
    for _ in 0..30 {
        let w = b.next_wait().as_secs_f64();
        assert!(
            w >= base * 0.5 - 1e-9 && w <= (base * 1.5).min(5.0) + 1e-9,
            "{w} {base}"
        );
        base = (base * 1.5).min(5.0);
    }
    // Absurd settings do not panic.
    let mut b = Backoff::new(RetryPolicy {
        initial_interval: Duration::MAX,
        max_interval: Duration::MAX,
        max_elapsed: Duration::MAX,
    });
    for _ in 0..3 {
        let _ = b.next_wait();
    }
}

/// Log lines written while `f` runs on a current-thread runtime (so every task logs
/// to this thread's subscriber).
fn logged<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f());
    let text = String::from_utf8_lossy(&buf.0.lock().expect("lock")).into_owned();
    text
}

#[test]
fn one_warn_when_exports_start_failing_and_one_when_they_work_again() {
    let log = logged(|| async {
        let port = closed_port();
        let mut s = settings(
            format!("http://127.0.0.1:{port}/v1/traces"),
            OtlpProtocol::HttpProtobuf,
        );
        s.retry.max_elapsed = Duration::from_millis(200);
        let t = Transport::new(Signal::Traces, s).expect("transport");
        for _ in 0..3 {
            t.export(traces_body(0, 2), 2).await.expect_err("down");
        }
        assert!(t.stats().attempts >= 6);
        let server = serve(
            &format!("127.0.0.1:{port}"),
            false,
            script(|_| http(200, &[], "")),
        )
        .await;
        // Successes right after failures are not "working again" yet (no flapping).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for _ in 0..3 {
            t.export(traces_body(0, 2), 2).await.expect("up");
        }
        assert_eq!(server.record.requests(), 3);
    });
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 2, "{log}");
    assert!(
        warns[0].contains("is failing (retrying): connection failed"),
        "{log}"
    );
    assert!(warns[1].contains("works again after"), "{log}");
    assert!(warns[1].contains("6 spans failed so far"), "{log}");
}
