//! One OTLP signal's settings (traces or metrics): endpoint, protocol, headers,
//! timeout, compression and backoff, from the OpenTelemetry variables, OBI's
//! variables and the file (precedence in `config`'s module documentation).

use std::collections::BTreeMap;
use std::time::Duration;

use super::env::{setting, vars, Env};
use super::error::ConfigError;
use super::from_env;
use super::values::{parse_key_values, CompressionName, Endpoint, GoDuration, ParseValue};
use crate::export::transport::TlsSettings;
use crate::settings::{Backoff, OtlpProtocol, OtlpSignal};

/// Milliseconds, as OpenTelemetry's interval and timeout variables are written.
pub(super) struct Millis(pub Duration);

impl ParseValue for Millis {
    const EXPECTING: &'static str = "milliseconds";
    fn parse_value(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<u64>()
            .map(|ms| Millis(Duration::from_millis(ms)))
            .map_err(|_| format!("`{}` is not a whole number of milliseconds", text.trim()))
    }
}

/// The names one OTLP signal is configured with.
pub(super) struct SignalVars {
    endpoint: &'static str,
    protocol: &'static str,
    headers: &'static str,
    timeout: &'static str,
    compression: &'static str,
    certificate: &'static str,
    client_certificate: &'static str,
    client_key: &'static str,
    /// Appended to the generic endpoint for HTTP.
    http_path: &'static str,
}

pub(super) const SIGNAL_TRACES: SignalVars = SignalVars {
    endpoint: vars::OTLP_TRACES_ENDPOINT,
    protocol: vars::OTLP_TRACES_PROTOCOL,
    headers: vars::OTLP_TRACES_HEADERS,
    timeout: vars::OTLP_TRACES_TIMEOUT,
    compression: vars::OTLP_TRACES_COMPRESSION,
    certificate: vars::OTLP_TRACES_CERTIFICATE,
    client_certificate: vars::OTLP_TRACES_CLIENT_CERTIFICATE,
    client_key: vars::OTLP_TRACES_CLIENT_KEY,
    http_path: "/v1/traces",
};

pub(super) const SIGNAL_METRICS: SignalVars = SignalVars {
    endpoint: vars::OTLP_METRICS_ENDPOINT,
    protocol: vars::OTLP_METRICS_PROTOCOL,
    headers: vars::OTLP_METRICS_HEADERS,
    timeout: vars::OTLP_METRICS_TIMEOUT,
    compression: vars::OTLP_METRICS_COMPRESSION,
    certificate: vars::OTLP_METRICS_CERTIFICATE,
    client_certificate: vars::OTLP_METRICS_CLIENT_CERTIFICATE,
    client_key: vars::OTLP_METRICS_CLIENT_KEY,
    http_path: "/v1/metrics",
};

/// What the file says about one signal.
pub(super) struct SignalFile {
    pub endpoint: Option<Endpoint>,
    pub protocol: Option<OtlpProtocol>,
    pub headers: BTreeMap<String, String>,
    pub compression: Option<CompressionName>,
    /// `backoff_initial_interval`, `backoff_max_interval`, `backoff_max_elapsed_time`.
    pub backoff: [Option<GoDuration>; 3],
    pub insecure_skip_verify: Option<bool>,
}

/// Endpoint, protocol, headers, timeout, compression and backoff of one signal
/// (precedence in the module doc).
pub(super) fn resolve_signal(
    v: &SignalVars,
    file: SignalFile,
    env: &dyn Env,
) -> Result<OtlpSignal, ConfigError> {
    let (endpoint, generic) = match from_env::<Endpoint>(env, v.endpoint)? {
        Some(e) => (Some(e), false),
        None => match file.endpoint {
            Some(e) => (Some(e), false),
            None => (from_env::<Endpoint>(env, vars::OTLP_ENDPOINT)?, true),
        },
    };
    let explicit = match from_env::<OtlpProtocol>(env, v.protocol)? {
        Some(p) => Some(p),
        None => from_env::<OtlpProtocol>(env, vars::OTLP_PROTOCOL)?.or(file.protocol),
    };
    let protocol = match &endpoint {
        Some(e) => Some(explicit.unwrap_or_else(|| infer_protocol(e))),
        None => explicit,
    };
    let endpoint = endpoint.map(|e| {
        if generic
            && matches!(
                protocol,
                Some(OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson)
            )
        {
            format!("{}{}", e.0.trim_end_matches('/'), v.http_path)
        } else {
            e.0
        }
    });

    let mut headers = file.headers;
    for var in [vars::OTLP_HEADERS, v.headers] {
        if let Some(text) = setting(env, var) {
            headers.extend(parse_key_values(&text).map_err(|m| ConfigError::env(var, m))?);
        }
    }
    let timeout = match from_env::<Millis>(env, v.timeout)? {
        Some(t) => Some(t.0),
        None => from_env::<Millis>(env, vars::OTLP_TIMEOUT)?.map(|t| t.0),
    };
    let compression = match from_env::<CompressionName>(env, v.compression)? {
        Some(c) => Some(c),
        None => from_env::<CompressionName>(env, vars::OTLP_COMPRESSION)?.or(file.compression),
    }
    .and_then(|c| c.0);
    let d = Backoff::default();
    let [initial, max, elapsed] = file.backoff;
    let pick = |var: &str, file: Option<GoDuration>, default: Duration| {
        Ok::<_, ConfigError>(
            from_env::<GoDuration>(env, var)?
                .or(file)
                .map_or(default, |g| g.0),
        )
    };
    let backoff = Backoff {
        initial_interval: pick(vars::BACKOFF_INITIAL_INTERVAL, initial, d.initial_interval)?,
        max_interval: pick(vars::BACKOFF_MAX_INTERVAL, max, d.max_interval)?,
        max_elapsed: pick(vars::BACKOFF_MAX_ELAPSED_TIME, elapsed, d.max_elapsed)?,
    };
    // TLS files: the signal's variable, else the generic one.
    let path = |specific: &str, generic: &str| {
        setting(env, specific)
            .or_else(|| setting(env, generic))
            .map(std::path::PathBuf::from)
    };
    let tls = TlsSettings {
        ca_file: path(v.certificate, vars::OTLP_CERTIFICATE),
        client_certificate: path(v.client_certificate, vars::OTLP_CLIENT_CERTIFICATE),
        client_key: path(v.client_key, vars::OTLP_CLIENT_KEY),
        insecure_skip_verify: from_env::<bool>(env, vars::INSECURE_SKIP_VERIFY)?
            .or(file.insecure_skip_verify)
            .unwrap_or(false),
    };
    Ok(OtlpSignal {
        endpoint,
        protocol,
        headers,
        timeout,
        compression,
        backoff,
        tls,
    })
}

/// OBI's inference when no protocol is given: a port ending in 4317 (4317, 14317, …)
/// is gRPC, one ending in 4318 is HTTP; anything else, or no port, is http/protobuf
/// (the OpenTelemetry default).
fn infer_protocol(endpoint: &Endpoint) -> OtlpProtocol {
    match endpoint.port() {
        Some(p) if p.ends_with("4317") => OtlpProtocol::Grpc,
        _ => OtlpProtocol::HttpProtobuf,
    }
}
