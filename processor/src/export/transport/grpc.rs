//! OTLP/gRPC: a unary `Export` call on a tonic [`Channel`] (one HTTP/2 connection,
//! made on first use, remade after failures; concurrent exports are streams on it).
//! The request body goes out as it is ([`RawCodec`]); only the small response is
//! decoded, for its partial success.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

use super::{Attempt, Compression, Retry, Signal, TransportError, TransportSettings};

pub(super) struct GrpcClient {
    signal: Signal,
    channel: Channel,
    path: tonic::codegen::http::uri::PathAndQuery,
    metadata: MetadataMap,
    timeout: Duration,
    gzip: bool,
}

impl GrpcClient {
    pub(super) fn new(signal: Signal, s: &TransportSettings) -> Result<Self, TransportError> {
        let channel = channel(signal, s)?;
        let mut metadata = MetadataMap::new();
        for (name, value) in &s.headers {
            let bad = |reason: String| TransportError::InvalidHeader {
                signal,
                name: name.clone(),
                reason,
            };
            if name.ends_with("-bin") {
                return Err(bad("binary (-bin) gRPC metadata is not supported".into()));
            }
            let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| bad(format!("not a gRPC metadata name ({e})")))?;
            let value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|e| bad(format!("value is not printable ASCII ({e})")))?;
            metadata.insert(key, value);
        }
        Ok(GrpcClient {
            signal,
            channel,
            path: tonic::codegen::http::uri::PathAndQuery::from_static(signal.grpc_path()),
            metadata,
            timeout: s.timeout,
            gzip: s.compression == Some(Compression::Gzip),
        })
    }

    /// One attempt (the caller bounds it with the timeout).
    pub(super) async fn send(&self, body: Bytes) -> Attempt {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        if let Err(e) = grpc.ready().await {
            return connection_failed(&Status::from_error(Box::new(e)));
        }
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        match grpc
            .unary(request, self.path.clone(), RawCodec(self.signal))
            .await
        {
            Ok(response) => {
                let r = response.into_inner();
                Attempt::Accepted {
                    rejected: r.rejected,
                    message: r.message,
                }
            }
            Err(status) => classify(&status),
        }
    }
}

/// The channel for the endpoint: all connection settings in one place (TLS goes here).
fn channel(signal: Signal, s: &TransportSettings) -> Result<Channel, TransportError> {
    let invalid = |reason: String| TransportError::InvalidEndpoint {
        signal,
        endpoint: s.endpoint.clone(),
        reason,
        variable: signal.endpoint_variable(),
        port: 4317,
    };
    let uri: tonic::codegen::http::Uri = s
        .endpoint
        .parse()
        .map_err(|e| invalid(format!("not a URL ({e})")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(invalid(format!("scheme {other:?} is not http or https"))),
        None => return Err(invalid("no scheme (expected http://host:port)".into())),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(format!(
            "a gRPC endpoint has no path (got {:?}; the service path is added by tandem)",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or_default()
        )));
    }
    let endpoint = Endpoint::from(uri)
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| invalid(format!("user agent: {e}")))?
        .connect_timeout(s.timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(60)));
    if !https {
        return Ok(endpoint.connect_lazy());
    }
    // TLS: rustls in our own connector (tonic is built without its TLS features), ALPN h2.
    let config = super::tls::client_config(&s.tls).map_err(|e| invalid(format!("TLS: {e}")))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(s.timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http2()
        .wrap_connector(http);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A status tonic made itself (it carries the underlying error as its source) means
/// the request did not get an answer: connection refused or reset, protocol error.
fn classify(status: &Status) -> Attempt {
    if std::error::Error::source(status).is_some() {
        return connection_failed(status);
    }
    let reason = describe(status);
    let retryable = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    );
    let retry = if retryable {
        Retry::After(status.get_details_retry_info().and_then(|r| r.retry_delay))
    } else {
        Retry::Never(hint(status.code()))
    };
    Attempt::Failed { reason, retry }
}

fn connection_failed(status: &Status) -> Attempt {
    let mut reason = format!("connection failed: {}", status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = e.source();
    }
    Attempt::Failed {
        reason,
        retry: Retry::After(None),
    }
}

fn describe(status: &Status) -> String {
    let code = status.code();
    if status.message().is_empty() {
        format!("gRPC status {code:?} ({})", code as i32)
    } else {
        format!(
            "gRPC status {code:?} ({}): {}",
            code as i32,
            status.message()
        )
    }
}

fn hint(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated | Code::PermissionDenied => {
            "; check the authentication headers (OTEL_EXPORTER_OTLP_HEADERS)"
        }
        Code::Unimplemented => {
            "; the endpoint does not serve this OTLP signal: is it an OTLP/gRPC receiver \
             (usually port 4317)?"
        }
        Code::InvalidArgument => "; the collector could not use the data (see its logs)",
        _ => "",
    }
}

/// What the codec decodes from an `Export*ServiceResponse`.
pub(super) struct Response {
    pub(super) rejected: i64,
    pub(super) message: String,
}

/// Sends `Bytes` as the message (already protobuf), decodes the signal's response.
#[derive(Clone, Copy)]
struct RawCodec(Signal);

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Response;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder(self.0)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // Bodies are ~250 KB: start big enough that most need no regrowth.
        BufferSettings::new(64 * 1024, 32 * 1024)
    }
}

struct ResponseDecoder(Signal);

impl Decoder for ResponseDecoder {
    type Item = Response;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Response>, Status> {
        let decoded = match self.0 {
            Signal::Traces => ExportTraceServiceResponse::decode(src).map(|r| {
                let p = r.partial_success.unwrap_or_default();
                (p.rejected_spans, p.error_message)
            }),
            Signal::Metrics => ExportMetricsServiceResponse::decode(src).map(|r| {
                let p = r.partial_success.unwrap_or_default();
                (p.rejected_data_points, p.error_message)
            }),
        };
        // The call succeeded: an answer we cannot read does not make the data lost.
        let (rejected, message) = decoded.unwrap_or_else(|e| {
            tracing::debug!("undecodable OTLP {} gRPC response: {e}", self.0);
            (0, String::new())
        });
        Ok(Some(Response { rejected, message }))
    }
}
