//! OTLP protobuf encoding of tandem's spans, without the OpenTelemetry SDK: the
//! `ExportTraceServiceRequest` body an OTLP exporter sends (gRPC message or
//! HTTP/protobuf body), written straight from [`Span`] with the field numbers of
//! `opentelemetry-proto`'s messages (its prost types decode it in the tests). Each
//! process's `Resource` message is encoded once ([`resource`]) and copied into every
//! request; spans are encoded as they come, grouped by process ([`SpanGroups`]).
//!
//! Measured (docs/benchmarks.md): the SDK path (`SpanData` → prost types →
//! `encode_to_vec`) cost 2.4–3.4 µs per span; this costs a fraction of it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};

use crate::export::wire::{
    len_field_len, put_fixed32, put_fixed64, put_key_value, put_len, put_len_prefix, put_str,
    put_uint,
};
use crate::pipeline::resource::{ProcessResource, Resource};
use crate::pipeline::span::{Span, SCOPE_NAME, SCOPE_VERSION};
use crate::stitch::FastMap;

/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// `InstrumentationScope` fields.
const SCOPE_NAME_FIELD: u32 = 1;
const SCOPE_VERSION_FIELD: u32 = 2;
/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans` fields.
const RS_RESOURCE: u32 = 1;
const RS_SCOPE_SPANS: u32 = 2;
/// `ScopeSpans` fields.
const SS_SCOPE: u32 = 1;
const SS_SPANS: u32 = 2;
/// `Span` fields.
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
/// `Status` fields.
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
/// `SpanFlags`: the flags say whether the parent is remote.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// The `Resource` message of `r` (its attributes).
pub fn resource(r: &Resource) -> Vec<u8> {
    let mut buf = Vec::new();
    for kv in r.iter() {
        put_key_value(&mut buf, RESOURCE_ATTRIBUTES, kv);
    }
    buf
}

/// The `InstrumentationScope` message of every tandem span and metric.
pub fn scope() -> Vec<u8> {
    let mut buf = Vec::new();
    put_str(&mut buf, SCOPE_NAME_FIELD, SCOPE_NAME);
    put_str(&mut buf, SCOPE_VERSION_FIELD, SCOPE_VERSION);
    buf
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Appends the `Span` message of `span` (its fields, no key or length) to `buf`.
pub fn span(buf: &mut Vec<u8>, span: &Span) {
    let c = &span.span_context;
    put_len(buf, SPAN_TRACE_ID, &c.trace_id().to_bytes());
    put_len(buf, SPAN_SPAN_ID, &c.span_id().to_bytes());
    let trace_state = c.trace_state().header();
    put_str(buf, SPAN_TRACE_STATE, &trace_state);
    if span.parent_span_id != SpanId::INVALID {
        put_len(buf, SPAN_PARENT_SPAN_ID, &span.parent_span_id.to_bytes());
    }
    put_str(buf, SPAN_NAME, &span.name);
    put_uint(buf, SPAN_KIND, kind_number(&span.span_kind));
    put_fixed64(buf, SPAN_START, unix_nanos(span.start_time));
    put_fixed64(buf, SPAN_END, unix_nanos(span.end_time));
    for kv in &span.attributes {
        put_key_value(buf, SPAN_ATTRIBUTES, kv);
    }
    let (code, message) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    let status_len = if message.is_empty() {
        0
    } else {
        len_field_len(STATUS_MESSAGE, message.len())
    } + if code == 0 { 0 } else { 2 };
    put_len_prefix(buf, SPAN_STATUS, status_len);
    put_str(buf, STATUS_MESSAGE, message);
    put_uint(buf, STATUS_CODE, code);
    let mut flags = u32::from(c.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
    if span.parent_span_is_remote {
        flags |= FLAGS_IS_REMOTE;
    }
    put_fixed32(buf, SPAN_FLAGS, flags);
}

/// Spans encoded as they come, grouped by process: what one chunk of an
/// `ExportTraceServiceRequest` holds. [`SpanGroups::take`] makes the chunk's bytes:
/// a valid request on its own, and, protobuf concatenating repeated fields, any
/// concatenation of chunks is the request holding all their spans (the export task
/// joins chunks into requests without decoding them).
#[derive(Debug)]
pub struct SpanGroups {
    scope: Vec<u8>,
    /// Per process (in first-seen order): its resource, its spans as
    /// `ScopeSpans.spans` fields.
    groups: Vec<(Arc<ProcessResource>, Vec<u8>)>,
    index: FastMap<usize, usize>,
    one: Vec<u8>,
    spans: u64,
}

impl Default for SpanGroups {
    fn default() -> Self {
        SpanGroups {
            scope: scope(),
            groups: Vec::new(),
            index: FastMap::default(),
            one: Vec::new(),
            spans: 0,
        }
    }
}

impl SpanGroups {
    /// Spans held.
    pub fn len(&self) -> u64 {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Encodes `s` of `process`.
    pub fn add(&mut self, process: &Arc<ProcessResource>, s: &Span) {
        let key = Arc::as_ptr(process) as usize;
        let groups = &mut self.groups;
        let i = *self.index.entry(key).or_insert_with(|| {
            groups.push((process.clone(), Vec::with_capacity(4096)));
            groups.len() - 1
        });
        self.one.clear();
        span(&mut self.one, s);
        if let Some((_, buf)) = self.groups.get_mut(i) {
            put_len(buf, SS_SPANS, &self.one);
        }
        self.spans += 1;
    }

    /// The chunk of everything held (one `ResourceSpans` per process), and how many
    /// spans it holds; empties the groups.
    pub fn take(&mut self) -> (Vec<u8>, u64) {
        let scope_len = len_field_len(SS_SCOPE, self.scope.len());
        let mut total = 0;
        for (process, spans) in &self.groups {
            let scope_spans_len = scope_len + spans.len();
            let resource_spans_len = len_field_len(RS_RESOURCE, process.otlp.len())
                + len_field_len(RS_SCOPE_SPANS, scope_spans_len);
            total += len_field_len(REQUEST_RESOURCE_SPANS, resource_spans_len);
        }
        let mut out = Vec::with_capacity(total);
        for (process, spans) in self.groups.drain(..) {
            let scope_spans_len = scope_len + spans.len();
            let resource_spans_len = len_field_len(RS_RESOURCE, process.otlp.len())
                + len_field_len(RS_SCOPE_SPANS, scope_spans_len);
            put_len_prefix(&mut out, REQUEST_RESOURCE_SPANS, resource_spans_len);
            put_len(&mut out, RS_RESOURCE, &process.otlp);
            put_len_prefix(&mut out, RS_SCOPE_SPANS, scope_spans_len);
            put_len(&mut out, SS_SCOPE, &self.scope);
            out.extend_from_slice(&spans);
        }
        self.index.clear();
        let n = std::mem::take(&mut self.spans);
        (out, n)
    }
}

/// The request of `(process, span)` pairs, grouped by process in first-seen order:
/// one `ResourceSpans` per process (with that process's resource), one `ScopeSpans`
/// (scope `tandem`) in each.
pub fn encode_spans(spans: &[(Arc<ProcessResource>, Span)]) -> Vec<u8> {
    let mut g = SpanGroups::default();
    for (p, s) in spans {
        g.add(p, s);
    }
    g.take().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;
    use crate::pipeline::resource::{ProcessMap, ResourceSettings};
    use crate::pipeline::span::build_span;
    use crate::pipeline::span::tests::{tx, SeqIds};
    use crate::settings::Sampler;
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as P;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use prost::Message;

    fn service_name(rs: &ResourceSpans) -> String {
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

    fn procs() -> ProcessMap {
        let mut procs = ProcessMap::new(ResourceSettings::default());
        for (pid, exe) in [(1, "/bin/a"), (2, "/bin/b")] {
            procs.on_started(&tandem_proto::v1::ProcessStarted {
                pid,
                exe_path: exe.into(),
                ..Default::default()
            });
        }
        procs
    }

    #[test]
    fn groups_by_process_and_round_trips() {
        let mut procs = procs();
        let ids = SeqIds::default();
        let span = |path: &str| {
            build_span(
                &tx(Side::Server, "GET", path, Some(200)),
                Some(&path.into()),
                Sampler::AlwaysOn,
                &ids,
            )
            .data
        };
        let batch = vec![
            (procs.get(1), span("/x")),
            (procs.get(2), span("/y")),
            (procs.get(1), span("/z")),
        ];
        let bytes = encode_spans(&batch);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let summary: Vec<(String, Vec<String>)> = decoded
            .resource_spans
            .iter()
            .map(|rs| {
                let names = rs
                    .scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter().map(|s| s.name.clone()))
                    .collect();
                (service_name(rs), names)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "a".to_string(),
                    vec!["GET /x".to_string(), "GET /z".to_string()]
                ),
                ("b".to_string(), vec!["GET /y".to_string()]),
            ]
        );
        let scope = decoded.resource_spans[0].scope_spans[0].scope.as_ref();
        assert_eq!(scope.map(|s| s.name.as_str()), Some("tandem"));
        assert_eq!(scope.map(|s| s.version.as_str()), Some(SCOPE_VERSION));
    }

    /// Every field tandem sets comes back as written, exactly.
    #[test]
    fn every_span_field_decodes_exactly() {
        let mut procs = procs();
        let mut t = tx(Side::Client, "POST", "/pay", Some(503));
        crate::pipeline::span::tests::http_mut(&mut t)
            .request
            .headers
            .push((
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ));
        let mut s = build_span(&t, None, Sampler::AlwaysOn, &SeqIds::default()).data;
        s.span_context = opentelemetry::trace::SpanContext::new(
            s.span_context.trace_id(),
            s.span_context.span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).expect("state"),
        );
        s.status = Status::error("boom");
        let bytes = encode_spans(&[(procs.get(1), s.clone())]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            p.trace_id,
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c")
                .expect("hex")
                .to_bytes()
        );
        assert_eq!(p.span_id, s.span_context.span_id().to_bytes());
        assert_eq!(p.parent_span_id, s.parent_span_id.to_bytes());
        assert_eq!(p.trace_state, "vendor=x");
        assert_eq!(p.name, "POST");
        assert_eq!(p.kind, 3, "CLIENT");
        assert_eq!(p.start_time_unix_nano, unix_nanos(s.start_time));
        assert_eq!(p.end_time_unix_nano, unix_nanos(s.end_time));
        assert_eq!(p.flags, 0x301, "sampled, parent remote");
        let status = p.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "boom"));
        assert_eq!(p.attributes.len(), s.attributes.len());
        for (got, want) in p.attributes.iter().zip(&s.attributes) {
            assert_eq!(got.key, want.key.as_str());
            let v = got.value.as_ref().and_then(|v| v.value.clone());
            let w = match &want.value {
                opentelemetry::Value::I64(i) => P::IntValue(*i),
                other => P::StringValue(other.as_str().into_owned()),
            };
            assert_eq!(v, Some(w), "{}", want.key);
        }
        // An unset status and a root span: code 0, no parent.
        let root = build_span(
            &tx(Side::Server, "GET", "/", Some(200)),
            None,
            Sampler::AlwaysOn,
            &SeqIds::default(),
        )
        .data;
        let bytes = encode_spans(&[(procs.get(2), root)]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(p.parent_span_id.is_empty());
        assert_eq!(p.flags, 0x101);
        assert_eq!(p.status.as_ref().map(|s| s.code), Some(0));
        let r = req.resource_spans[0].resource.as_ref().expect("resource");
        assert!(r.attributes.iter().any(|kv| kv.key == "process.pid"
            && kv.value.as_ref().and_then(|v| v.value.clone()) == Some(P::IntValue(2))));
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_spans(&[]).is_empty());
    }

    #[test]
    fn concatenated_chunks_are_the_request_of_all_their_spans() {
        let mut procs = procs();
        let ids = SeqIds::default();
        let span = |path: &str| {
            build_span(
                &tx(Side::Server, "GET", path, Some(200)),
                None,
                Sampler::AlwaysOn,
                &ids,
            )
            .data
        };
        let a = encode_spans(&[(procs.get(1), span("/1")), (procs.get(2), span("/2"))]);
        let b = encode_spans(&[(procs.get(1), span("/3"))]);
        let joined = [a, b].concat();
        let req = ExportTraceServiceRequest::decode(joined.as_slice()).expect("decodes");
        let got: Vec<(String, usize)> = req
            .resource_spans
            .iter()
            .map(|rs| (service_name(rs), rs.scope_spans[0].spans.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 1),
                ("a".to_string(), 1)
            ]
        );
    }
}
