//! Tests of the HTTP spans, and the helpers other modules' tests use (`tx`, `SeqIds`,
//! `http_mut`, `attr`).

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
        trace: None,
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
    assert!(
        parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever")
            .is_some()
    );
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

/// Spans linked below a root (by thread, by connection) carry its trace id and its
/// remote sampled flag: every sampler decides the same for the whole trace.
#[test]
fn linked_spans_are_sampled_with_their_root() {
    use crate::model::{LinkKind, TraceIds};
    let ids = SeqIds(AtomicU64::new(1));
    let mut kept = [0usize; 2];
    for i in 0..400u64 {
        let trace_id = u128::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) << 1 | 1;
        for remote_sampled in [None, Some(true), Some(false)] {
            let root = TraceIds {
                trace_id,
                span_id: 1,
                parent_span_id: 0,
                link: LinkKind::Root,
                remote_sampled,
                peer_pid: 0,
                begin: Default::default(),
            };
            let chain = [
                root,
                TraceIds {
                    span_id: 2,
                    parent_span_id: 1,
                    link: LinkKind::Thread,
                    ..root
                },
                TraceIds {
                    span_id: 3,
                    parent_span_id: 2,
                    link: LinkKind::Connection,
                    ..root
                },
            ];
            for sampler in [
                Sampler::TraceIdRatio(0.5),
                Sampler::ParentBasedTraceIdRatio(0.5),
                Sampler::ParentBasedAlwaysOn,
            ] {
                let decisions: Vec<bool> = chain
                    .iter()
                    .map(|t| {
                        let mut x = tx(Side::Server, "GET", "/", Some(200));
                        x.trace = Some(*t);
                        build_span(&x, None, sampler, &ids).sampled
                    })
                    .collect();
                assert!(
                    decisions.iter().all(|d| *d == decisions[0]),
                    "{sampler:?} {remote_sampled:?}: {decisions:?}"
                );
                if sampler == Sampler::TraceIdRatio(0.5) && remote_sampled.is_none() {
                    kept[usize::from(decisions[0])] += 1;
                }
            }
        }
    }
    // The ratio keeps some traces and drops others, each whole.
    assert!(kept[0] > 100 && kept[1] > 100, "{kept:?}");
}
