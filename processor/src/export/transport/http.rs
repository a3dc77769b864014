//! OTLP/HTTP with protobuf bodies: `POST` to the configured URL on hyper's pooled
//! HTTP/1.1 client (keep-alive connections, one per concurrent export), gzip done
//! once per export (not per attempt), the response body decoded for partial success.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

use super::{Attempt, Compression, Retry, Signal, TransportError, TransportSettings};

/// Longest response body read (responses are a few bytes; this bounds a broken peer).
const MAX_RESPONSE: usize = 1 << 20;

type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(super) struct HttpClient {
    signal: Signal,
    client: HyperClient,
    uri: Uri,
    headers: HeaderMap,
    gzip: bool,
    /// `http/json`: the protobuf body is sent in the OTLP JSON mapping.
    json: bool,
}

impl HttpClient {
    pub(super) fn new(signal: Signal, s: &TransportSettings) -> Result<Self, TransportError> {
        let invalid = |reason: String| TransportError::InvalidEndpoint {
            signal,
            endpoint: s.endpoint.clone(),
            reason,
            variable: signal.endpoint_variable(),
            port: 4318,
        };
        let uri: Uri = s
            .endpoint
            .parse()
            .map_err(|e| invalid(format!("not a URL ({e})")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(invalid(format!("scheme {other:?} is not http or https"))),
            None => {
                return Err(invalid(
                    "no scheme (expected http://host:port/v1/...)".into(),
                ))
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        let gzip = s.compression == Some(Compression::Gzip);
        let mut headers = HeaderMap::new();
        for (name, value) in &s.headers {
            let bad = |reason: String| TransportError::InvalidHeader {
                signal,
                name: name.clone(),
                reason,
            };
            let key = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| bad(format!("not an HTTP header name ({e})")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| bad(format!("not a valid HTTP header value ({e})")))?;
            headers.append(key, value);
        }
        let json = s.protocol == crate::settings::OtlpProtocol::HttpJson;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "application/x-protobuf"
            }),
        );
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tandem/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(HttpClient {
            signal,
            client: client(s, https).map_err(|e| invalid(format!("TLS: {e}")))?,
            uri,
            headers,
            gzip,
            json,
        })
    }

    /// The body as sent: compressed when gzip is on (off the async threads).
    pub(super) async fn prepare(&self, body: Bytes) -> Result<Bytes, String> {
        let body = if self.json {
            to_json(self.signal, &body)?
        } else {
            body
        };
        if !self.gzip {
            return Ok(body);
        }
        let input = body.clone();
        match tokio::task::spawn_blocking(move || gzip(&input)).await {
            Ok(done) => done,
            // Only when the runtime is shutting down: compress here.
            Err(_) => gzip(&body),
        }
    }

    /// One attempt (the caller bounds it with the timeout).
    pub(super) async fn send(&self, body: Bytes) -> Attempt {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed {
                    reason: format!("connection failed: {}", chain(&e)),
                    retry: Retry::After(None),
                }
            }
        };
        let status = response.status();
        let protobuf = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = match Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if status.is_success() => {
                // The collector said yes; the data is in, only the details are lost.
                tracing::debug!("OTLP {} HTTP response body unreadable: {e}", self.signal);
                Bytes::new()
            }
            Err(e) => {
                return Attempt::Failed {
                    reason: format!("HTTP {status}, then the response body failed: {e}"),
                    retry: Retry::After(None),
                }
            }
        };
        if status.is_success() && self.json {
            let (rejected, message) = json_partial_success(self.signal, &body);
            return Attempt::Accepted { rejected, message };
        }
        if status.is_success() {
            let (rejected, message) = partial_success(self.signal, &body);
            return Attempt::Accepted { rejected, message };
        }
        let reason = format!("HTTP {status}{}", error_text(&body, protobuf));
        let retry = match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Retry::After(retry_after),
            s => Retry::Never(hint(s)),
        };
        Attempt::Failed { reason, retry }
    }
}

/// The connection pool: every connection setting in one place. TLS (rustls, ALPN
/// http/1.1) for `https` endpoints; plain TCP otherwise.
fn client(s: &TransportSettings, https: bool) -> Result<HyperClient, String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_connect_timeout(Some(s.timeout));
    connector.enforce_http(false);
    let config = if https {
        super::tls::client_config(&s.tls)?
    } else {
        // Never used for http:// (no roots needed).
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(s.max_in_flight)
        .build(connector))
}

/// The OTLP JSON mapping of an encoded export request (`opentelemetry-proto`'s serde
/// support: camelCase names, hex trace and span ids).
fn to_json(signal: Signal, body: &[u8]) -> Result<Bytes, String> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let text = match signal {
        Signal::Traces => ExportTraceServiceRequest::decode(body)
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_vec(&r).map_err(|e| e.to_string())),
        Signal::Metrics => ExportMetricsServiceRequest::decode(body)
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::to_vec(&r).map_err(|e| e.to_string())),
    }
    .map_err(|e| format!("cannot write the {signal} request as JSON: {e}"))?;
    Ok(Bytes::from(text))
}

/// `partialSuccess` of a JSON response: rejected items and message (0 and empty for
/// an empty or unreadable body: the collector said yes).
fn json_partial_success(signal: Signal, body: &[u8]) -> (i64, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let p = &v["partialSuccess"];
    let key = match signal {
        Signal::Traces => "rejectedSpans",
        Signal::Metrics => "rejectedDataPoints",
    };
    let rejected = p[key]
        .as_i64()
        .or_else(|| p[key].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let message = p["errorMessage"].as_str().unwrap_or_default().to_owned();
    (rejected, message)
}

fn gzip(body: &[u8]) -> Result<Bytes, String> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)
        .and_then(|()| enc.finish())
        .map(Bytes::from)
        .map_err(|e| format!("gzip failed: {e}"))
}

/// `rejected_*` and `error_message` of a success response; an empty or unreadable
/// body is plain success.
fn partial_success(signal: Signal, body: &[u8]) -> (i64, String) {
    if body.is_empty() {
        return (0, String::new());
    }
    let decoded = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body).map(|r| {
            let p = r.partial_success.unwrap_or_default();
            (p.rejected_spans, p.error_message)
        }),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body).map(|r| {
            let p = r.partial_success.unwrap_or_default();
            (p.rejected_data_points, p.error_message)
        }),
    };
    decoded.unwrap_or_else(|e| {
        tracing::debug!(
            "undecodable OTLP {signal} HTTP response ({} bytes): {e}",
            body.len()
        );
        (0, String::new())
    })
}

/// The error body as text: a `google.rpc.Status` message (what OTLP/HTTP collectors
/// send as protobuf), else the body itself if it is printable text (cut at 300 chars).
fn error_text(body: &[u8], protobuf: bool) -> String {
    if body.is_empty() {
        return String::new();
    }
    if protobuf {
        if let Ok(s) = tonic_types::Status::decode(body) {
            if !s.message.is_empty() {
                return format!(": {}", s.message);
            }
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
            let text = text.trim();
            let cut: String = text.chars().take(300).collect();
            let more = if cut.len() < text.len() { "..." } else { "" };
            format!(": {cut}{more}")
        }
        _ => format!(" ({} bytes of body)", body.len()),
    }
}

fn hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "; check the authentication headers (OTEL_EXPORTER_OTLP_HEADERS)",
        404 | 405 => {
            "; check the endpoint: an OTLP/HTTP URL ends in /v1/traces or /v1/metrics \
             (usually on port 4318)"
        }
        413 => "; the request was too large for the collector",
        415 => "; the collector does not take application/x-protobuf bodies",
        300..=399 => "; the endpoint redirects: configure the URL it redirects to",
        _ => "",
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (a past date: retry now).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110's example date is 784111777 s after the epoch.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_retry_after(date, now), Some(Duration::ZERO));
        let earlier = now - Duration::from_secs(120);
        assert_eq!(
            parse_retry_after(date, earlier),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn error_bodies() {
        let status = tonic_types::Status {
            code: 3,
            message: "bad span".into(),
            details: vec![],
        };
        assert_eq!(error_text(&status.encode_to_vec(), true), ": bad span");
        assert_eq!(error_text(b"no such route\n", false), ": no such route");
        assert_eq!(error_text(&[0xff, 0x00, 0x01], false), " (3 bytes of body)");
        assert_eq!(error_text(b"", true), "");
        let long = "x".repeat(400);
        assert_eq!(
            error_text(long.as_bytes(), false),
            format!(": {}...", &long[..300])
        );
    }
}
