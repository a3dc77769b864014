//! From an [`OtlpSignal`] (what the configuration says of traces or metrics) to the
//! OTLP transport's settings.
//!
//! * Protocol: `grpc` or `http/protobuf`; when unset, `grpc` for an endpoint on port
//!   4317 and `http/protobuf` otherwise (OBI infers it the same way).
//! * Endpoint: used as given. For HTTP it is the full URL including the signal path
//!   (`/v1/traces`, `/v1/metrics`), which `config` appends for the generic endpoint.
//! * Headers: gRPC metadata or HTTP headers. Timeout: per export attempt (default
//!   10 s). Compression: gzip when asked for.
//! * Retries: the transport's, with the signal's backoff (default 100 ms doubling to
//!   1.6 s, given up 5 s after the first attempt; OBI's `backoff_*` keys set them).

use crate::export::transport::{
    Compression, RetryPolicy, TransportSettings, DEFAULT_MAX_IN_FLIGHT,
};
use crate::settings::{self, OtlpProtocol, OtlpSignal};

/// Default timeout of one export attempt.
pub use crate::export::transport::DEFAULT_TIMEOUT;

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

/// The transport settings of `signal`; `None` when it has no endpoint.
pub fn transport_settings(signal: &OtlpSignal) -> Option<TransportSettings> {
    let endpoint = signal.endpoint.as_deref()?;
    let protocol = protocol_of(signal, endpoint);
    Some(TransportSettings {
        endpoint: endpoint.to_string(),
        protocol,
        headers: signal.headers.clone(),
        timeout: signal.timeout.unwrap_or(DEFAULT_TIMEOUT),
        compression: signal.compression.map(|c| match c {
            settings::Compression::Gzip => Compression::Gzip,
        }),
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        retry: RetryPolicy {
            initial_interval: signal.backoff.initial_interval,
            max_interval: signal.backoff.max_interval,
            max_elapsed: signal.backoff.max_elapsed,
        },
        tls: signal.tls.clone(),
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
    fn settings_follow_the_signal() {
        assert!(transport_settings(&OtlpSignal::default()).is_none());
        let s = OtlpSignal {
            endpoint: Some("http://c:4317".into()),
            compression: Some(settings::Compression::Gzip),
            ..Default::default()
        };
        let t = transport_settings(&s).expect("settings");
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.compression, Some(Compression::Gzip));
        assert_eq!(t.timeout, DEFAULT_TIMEOUT);
        assert_eq!(t.retry.max_elapsed, std::time::Duration::from_secs(5));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn builds_both_transports_and_refuses_bad_headers() {
        use crate::export::transport::{Signal, Transport};
        for (protocol, endpoint) in [
            (OtlpProtocol::Grpc, "http://127.0.0.1:1"),
            (OtlpProtocol::HttpProtobuf, "http://127.0.0.1:1/v1/traces"),
        ] {
            let s = OtlpSignal {
                endpoint: Some(endpoint.into()),
                protocol: Some(protocol),
                ..Default::default()
            };
            let t = transport_settings(&s).expect("settings");
            assert!(Transport::new(Signal::Traces, t).is_ok());
        }
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("bad header".to_string(), "x".to_string());
        let s = OtlpSignal {
            endpoint: Some("http://127.0.0.1:1".into()),
            protocol: Some(OtlpProtocol::Grpc),
            headers,
            ..Default::default()
        };
        match Transport::new(Signal::Traces, transport_settings(&s).expect("settings")) {
            Ok(_) => panic!("a header with a space was accepted"),
            Err(err) => assert!(err.to_string().contains("bad header"), "{err}"),
        }
    }
}
