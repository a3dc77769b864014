//! OTLP exporters (from `opentelemetry-otlp`) built from an [`OtlpSignal`].
//!
//! * Protocol: `grpc` (tonic) or `http/protobuf`; when unset, `grpc` for an endpoint
//!   on port 4317 and `http/protobuf` otherwise (OBI infers it the same way).
//! * Endpoint: used as given. For HTTP it is the full URL including the signal path
//!   (`/v1/traces`, `/v1/metrics`), which `config` appends for the generic endpoint.
//! * Headers: gRPC metadata or HTTP headers. Timeout: per export attempt (default
//!   10 s, the SDK's).
//! * Retries: the SDK's policy (3 retries, exponential backoff from 100 ms to 1.6 s
//!   with jitter, retryable errors only, honouring server throttling).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::settings::{OtlpProtocol, OtlpSignal};

/// Default timeout of one export attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An exporter that cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP {signal} header {name:?} cannot be sent as gRPC metadata: {reason}")]
    BadHeader {
        signal: &'static str,
        name: String,
        reason: String,
    },
    #[error("cannot build the OTLP {signal} exporter for {endpoint:?} ({protocol:?})")]
    Build {
        signal: &'static str,
        endpoint: String,
        protocol: OtlpProtocol,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The protocol used for `signal`: as configured, else inferred from the port.
pub fn protocol_of(signal: &OtlpSignal, endpoint: &str) -> OtlpProtocol {
    signal.protocol.unwrap_or_else(|| {
        let authority = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(endpoint)
            .split('/')
            .next()
            .unwrap_or_default();
        if authority.ends_with(":4317") {
            OtlpProtocol::Grpc
        } else {
            OtlpProtocol::HttpProtobuf
        }
    })
}

fn metadata(
    signal: &'static str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<MetadataMap, OtlpError> {
    let mut map = MetadataMap::new();
    for (k, v) in headers {
        let bad = |reason: String| OtlpError::BadHeader {
            signal,
            name: k.clone(),
            reason,
        };
        let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let value = AsciiMetadataValue::try_from(v.as_str()).map_err(|e| bad(e.to_string()))?;
        map.insert(key, value);
    }
    Ok(map)
}

fn http_headers(headers: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The span exporter for `signal`, `None` when it has no endpoint. Needs a Tokio
/// runtime (the gRPC channel starts a task).
pub fn span_exporter(signal: &OtlpSignal) -> Result<Option<SpanExporter>, OtlpError> {
    let Some(endpoint) = signal.endpoint.as_deref() else {
        return Ok(None);
    };
    let protocol = protocol_of(signal, endpoint);
    let timeout = signal.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let built = match protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_metadata(metadata("traces", &signal.headers)?)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(http_headers(&signal.headers))
            .build(),
    };
    built.map(Some).map_err(|source| OtlpError::Build {
        signal: "traces",
        endpoint: endpoint.to_string(),
        protocol,
        source,
    })
}

/// The metric exporter for `signal` (cumulative temporality), `None` without endpoint.
pub fn metric_exporter(signal: &OtlpSignal) -> Result<Option<MetricExporter>, OtlpError> {
    let Some(endpoint) = signal.endpoint.as_deref() else {
        return Ok(None);
    };
    let protocol = protocol_of(signal, endpoint);
    let timeout = signal.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let built = match protocol {
        OtlpProtocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_metadata(metadata("metrics", &signal.headers)?)
            .build(),
        OtlpProtocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(http_headers(&signal.headers))
            .build(),
    };
    built.map(Some).map_err(|source| OtlpError::Build {
        signal: "metrics",
        endpoint: endpoint.to_string(),
        protocol,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_inferred_from_port() {
        let s = OtlpSignal::default();
        assert_eq!(protocol_of(&s, "http://c:4317"), OtlpProtocol::Grpc);
        assert_eq!(
            protocol_of(&s, "http://c:4318/v1/traces"),
            OtlpProtocol::HttpProtobuf
        );
        let s = OtlpSignal {
            protocol: Some(OtlpProtocol::HttpProtobuf),
            ..Default::default()
        };
        assert_eq!(protocol_of(&s, "http://c:4317"), OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn bad_grpc_header_is_an_error() {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("bad header".to_string(), "x".to_string());
        assert!(matches!(
            metadata("traces", &headers),
            Err(OtlpError::BadHeader { .. })
        ));
        headers.clear();
        headers.insert("Authorization".to_string(), "Bearer x".to_string());
        let m = metadata("traces", &headers).expect("valid");
        assert_eq!(
            m.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer x")
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn builds_both_transports() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let s = OtlpSignal {
                endpoint: Some("http://127.0.0.1:1/v1/traces".into()),
                protocol: Some(protocol),
                ..Default::default()
            };
            assert!(span_exporter(&s).expect("builds").is_some());
            assert!(metric_exporter(&s).expect("builds").is_some());
        }
        assert!(span_exporter(&OtlpSignal::default()).expect("ok").is_none());
    }
}
