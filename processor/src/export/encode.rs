//! Span batches as OTLP protobuf bytes, without a network: the
//! `ExportTraceServiceRequest` body that an OTLP exporter (gRPC or HTTP/protobuf)
//! sends for them, built with the same `opentelemetry-proto` transform the
//! `opentelemetry-otlp` exporters use. The throughput benchmark measures encoding
//! with it; tests use it to look at what would be sent.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;
use prost::Message;

use crate::pipeline::resource::ProcessResource;

/// The request for `spans`, grouped by process as the trace export groups them: one
/// `ResourceSpans` per process, in first-seen order, each with that process's
/// resource.
pub fn trace_request(spans: Vec<(Arc<ProcessResource>, SpanData)>) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanData>)> = Vec::new();
    let mut index: HashMap<*const ProcessResource, usize> = HashMap::new();
    for (process, span) in spans {
        match index.get(&Arc::as_ptr(&process)) {
            Some(&i) => groups[i].1.push(span),
            None => {
                index.insert(Arc::as_ptr(&process), groups.len());
                groups.push((process, vec![span]));
            }
        }
    }
    let resource_spans = groups
        .into_iter()
        .flat_map(|(process, spans)| {
            let resource = ResourceAttributesWithSchema::from(&process.resource);
            group_spans_by_resource_and_scope(spans, &resource)
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// [`trace_request`] encoded as protobuf: the body of an OTLP/HTTP
/// `application/x-protobuf` export, and the message of an OTLP/gRPC one.
pub fn encode_spans(spans: Vec<(Arc<ProcessResource>, SpanData)>) -> Vec<u8> {
    trace_request(spans).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;
    use crate::pipeline::resource::{ProcessMap, ResourceSettings};
    use crate::pipeline::span::build_span;
    use crate::pipeline::span::tests::{tx, SeqIds};
    use crate::settings::Sampler;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    fn service_name(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> String {
        rs.resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn groups_by_process_and_round_trips() {
        let mut procs = ProcessMap::new(ResourceSettings::default());
        for (pid, exe) in [(1, "/bin/a"), (2, "/bin/b")] {
            procs.on_started(&tandem_proto::v1::ProcessStarted {
                pid,
                exe_path: exe.into(),
                ..Default::default()
            });
        }
        let ids = SeqIds::default();
        let span = |path: &str| {
            build_span(
                &tx(Side::Server, "GET", path, Some(200)),
                Some(path),
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
        let bytes = encode_spans(batch);
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
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_spans(Vec::new()).is_empty());
    }
}
