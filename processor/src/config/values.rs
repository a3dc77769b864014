//! Parsing of single values, shared by the YAML file and the environment so both
//! accept the same spellings and report the same allowed values.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use tandem_proto::v1::PortRange;

use crate::settings::{IgnoreMode, InternalExporter, OtlpProtocol, TracePrinter, Unmatched};

/// A value spelled as text (YAML scalars of any type are read as their text).
pub(crate) trait ParseValue: Sized {
    /// What is expected, for type errors ("a sampler name").
    const EXPECTING: &'static str;
    /// Whether a YAML sequence is accepted (its items are joined with `,`).
    const LIST: bool = false;
    fn parse_value(text: &str) -> Result<Self, String>;
}

/// A YAML value parsed with [`ParseValue`], so serde reports our message together
/// with the key and line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct V<T>(pub T);

impl<'de, T: ParseValue> Deserialize<'de> for V<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParseVisitor::<T>(PhantomData)).map(V)
    }
}

struct ParseVisitor<T>(PhantomData<T>);

impl<'de, T: ParseValue> Visitor<'de> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::parse_value(v).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.visit_str(if v { "true" } else { "false" })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        if !T::LIST {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<V<Scalar>>()? {
            items.push(item.0 .0);
        }
        T::parse_value(&items.join(",")).map_err(de::Error::custom)
    }
}

/// Any scalar, as text (list items).
struct Scalar(String);

impl ParseValue for Scalar {
    const EXPECTING: &'static str = "a number or a string";
    fn parse_value(text: &str) -> Result<Self, String> {
        Ok(Scalar(text.to_string()))
    }
}

/// "unknown value `x`, expected one of a, b, c".
fn one_of<T: Copy>(text: &str, table: &[(&str, T)]) -> Result<T, String> {
    let wanted = text.trim();
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown value `{wanted}`, expected one of {}",
                names.join(", ")
            )
        })
}

impl ParseValue for TracePrinter {
    const EXPECTING: &'static str = "a trace printer (disabled, counter, text, json, json_indent)";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("disabled", TracePrinter::Disabled),
                ("counter", TracePrinter::Counter),
                ("text", TracePrinter::Text),
                ("json", TracePrinter::Json),
                ("json_indent", TracePrinter::JsonIndent),
            ],
        )
    }
}

/// `compression` / `OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompressionName(pub Option<crate::settings::Compression>);

impl ParseValue for CompressionName {
    const EXPECTING: &'static str = "a compression (gzip, none)";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                (
                    "gzip",
                    CompressionName(Some(crate::settings::Compression::Gzip)),
                ),
                ("none", CompressionName(None)),
            ],
        )
    }
}

impl ParseValue for InternalExporter {
    const EXPECTING: &'static str = "an internal metrics exporter (disabled, prometheus, otel)";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("disabled", InternalExporter::Disabled),
                ("prometheus", InternalExporter::Prometheus),
                ("otel", InternalExporter::Otel),
            ],
        )
    }
}

impl ParseValue for OtlpProtocol {
    const EXPECTING: &'static str = "an OTLP protocol (grpc, http/protobuf, http/json)";
    fn parse_value(text: &str) -> Result<Self, String> {
        if text.trim() == "debug" {
            return Err(
                "OTLP protocol `debug` is not supported by tandem, expected one of grpc, \
                 http/protobuf, http/json (use trace_printer for local output)"
                    .to_string(),
            );
        }
        one_of(
            text,
            &[
                ("grpc", OtlpProtocol::Grpc),
                ("http/protobuf", OtlpProtocol::HttpProtobuf),
                ("http/json", OtlpProtocol::HttpJson),
            ],
        )
    }
}

/// A file's `protocol`: OBI's empty string means none given (then it is inferred
/// from the endpoint's port, as with no `protocol` at all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FileProtocol(pub Option<OtlpProtocol>);

impl ParseValue for FileProtocol {
    const EXPECTING: &'static str = OtlpProtocol::EXPECTING;
    fn parse_value(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(FileProtocol(None));
        }
        OtlpProtocol::parse_value(text).map(|p| FileProtocol(Some(p)))
    }
}

impl ParseValue for Unmatched {
    const EXPECTING: &'static str = "an unmatched-route policy";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("heuristic", Unmatched::Heuristic),
                ("path", Unmatched::Path),
                ("wildcard", Unmatched::Wildcard),
                ("unset", Unmatched::Unset),
                ("low-cardinality", Unmatched::LowCardinality),
            ],
        )
    }
}

impl ParseValue for IgnoreMode {
    const EXPECTING: &'static str = "an ignore mode (all, traces, metrics)";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("all", IgnoreMode::All),
                ("traces", IgnoreMode::Traces),
                ("metrics", IgnoreMode::Metrics),
            ],
        )
    }
}

/// `otel_traces_export.sampler.name` / `OTEL_TRACES_SAMPLER` (OpenTelemetry names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SamplerName {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl ParseValue for SamplerName {
    const EXPECTING: &'static str = "a sampler name";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("always_on", SamplerName::AlwaysOn),
                ("always_off", SamplerName::AlwaysOff),
                ("traceidratio", SamplerName::TraceIdRatio),
                ("parentbased_always_on", SamplerName::ParentBasedAlwaysOn),
                ("parentbased_always_off", SamplerName::ParentBasedAlwaysOff),
                (
                    "parentbased_traceidratio",
                    SamplerName::ParentBasedTraceIdRatio,
                ),
            ],
        )
    }
}

/// A sampling ratio, 0 to 1 (`"0.01"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ratio(pub f64);

impl ParseValue for Ratio {
    const EXPECTING: &'static str = "a sampling ratio between 0 and 1";
    fn parse_value(text: &str) -> Result<Self, String> {
        match text.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(Ratio(r)),
            _ => Err(format!(
                "`{}` is not a sampling ratio, expected a number between 0 and 1 (e.g. \"0.01\")",
                text.trim()
            )),
        }
    }
}

/// `attributes.kubernetes.enable` / `OTEL_EBPF_KUBE_METADATA_ENABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KubeEnable {
    False,
    True,
    /// Enabled when running inside Kubernetes (OBI's default).
    #[default]
    Autodetect,
}

impl ParseValue for KubeEnable {
    const EXPECTING: &'static str = "true, false or autodetect";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("true", KubeEnable::True),
                ("false", KubeEnable::False),
                ("autodetect", KubeEnable::Autodetect),
            ],
        )
    }
}

/// `log_level` / `OTEL_EBPF_LOG_LEVEL` (OBI spells them in capitals; any case works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl ParseValue for LogLevel {
    const EXPECTING: &'static str = "a log level (debug, info, warn, error)";
    fn parse_value(text: &str) -> Result<Self, String> {
        one_of(
            text,
            &[
                ("debug", LogLevel::Debug),
                ("info", LogLevel::Info),
                ("warn", LogLevel::Warn),
                ("error", LogLevel::Error),
            ],
        )
    }
}

/// `log_format` / `OTEL_EBPF_LOG_FORMAT`: `text` or `json` (any case).
impl ParseValue for tandem_proto::process::LogFormat {
    const EXPECTING: &'static str = "a log format (text, json)";
    fn parse_value(text: &str) -> Result<Self, String> {
        use tandem_proto::process::LogFormat;
        one_of(
            text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
    }
}

/// Process ids: `1234`, `"12,34"`, or a YAML list of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Pids(pub Vec<u32>);

impl ParseValue for Pids {
    const EXPECTING: &'static str = "process ids (1234, \"12,34\" or a list)";
    const LIST: bool = true;
    fn parse_value(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("`{p}` is not a process id"))
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(Pids)
    }
}

/// Ports in OBI syntax: `8080`, `"80,443,8000-8999"`, or a YAML list of those.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Ports(pub Vec<PortRange>);

impl ParseValue for Ports {
    const EXPECTING: &'static str = "ports (8080, \"80,443,8000-8999\" or a list)";
    const LIST: bool = true;
    fn parse_value(text: &str) -> Result<Self, String> {
        let ranges = tandem_proto::selection::parse_port_ranges(text)?;
        if ranges.is_empty() {
            return Err("no port given (expected e.g. 80,443,8000-8999)".to_string());
        }
        Ok(Ports(ranges))
    }
}

/// `true` / `false` (any case), as Go's `strconv.ParseBool` also takes `1`, `0`,
/// `t`, `f`.
impl ParseValue for bool {
    const EXPECTING: &'static str = "true or false";
    fn parse_value(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Ok(true),
            "false" | "f" | "0" => Ok(false),
            other => Err(format!("`{other}` is not true or false")),
        }
    }
}

/// A port number; 0 means "off" where the caller says so.
impl ParseValue for u16 {
    const EXPECTING: &'static str = "a port number (0-65535)";
    fn parse_value(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("`{}` is not a port number (0-65535)", text.trim()))
    }
}

/// An IP address (`127.0.0.1`, `0.0.0.0`, `::`).
impl ParseValue for std::net::IpAddr {
    const EXPECTING: &'static str = "an IP address (127.0.0.1, 0.0.0.0, ::)";
    fn parse_value(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!(
                "`{}` is not an IP address (e.g. 127.0.0.1, 0.0.0.0)",
                text.trim()
            )
        })
    }
}

/// A count (queue sizes, cardinalities).
impl ParseValue for usize {
    const EXPECTING: &'static str = "a positive whole number";
    fn parse_value(text: &str) -> Result<Self, String> {
        match text.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{}` is not a positive whole number", text.trim())),
        }
    }
}

/// `attributes.metric_span_names_limit`: a whole number; 0 or negative is no limit
/// (as in OBI), kept as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanNamesLimit(pub usize);

impl ParseValue for SpanNamesLimit {
    const EXPECTING: &'static str = "a whole number (0 or negative: no limit)";
    fn parse_value(text: &str) -> Result<Self, String> {
        match text.trim().parse::<i64>() {
            Ok(n) => Ok(SpanNamesLimit(
                usize::try_from(n.max(0)).unwrap_or(usize::MAX),
            )),
            Err(_) => Err(format!(
                "`{}` is not a whole number (0 or negative: no limit)",
                text.trim()
            )),
        }
    }
}

/// `wildcard_char`: exactly one character.
impl ParseValue for char {
    const EXPECTING: &'static str = "a single character";
    fn parse_value(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(format!("`{text}` is not a single character")),
        }
    }
}

/// A duration above zero in Go's syntax, as OBI writes them: `30s`, `1m30s`, `1.5h`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GoDuration(pub Duration);

impl ParseValue for GoDuration {
    const EXPECTING: &'static str = "a duration (e.g. 30s, 1m30s, 500ms)";
    fn parse_value(text: &str) -> Result<Self, String> {
        let parsed = parse_go_duration(text.trim());
        if parsed.is_some_and(|d| d.is_zero()) {
            return Err(format!(
                "`{}` is zero, expected a duration above zero",
                text.trim()
            ));
        }
        parsed.map(GoDuration).ok_or_else(|| {
            format!(
                "`{}` is not a duration, expected a number with a unit (ns, us, ms, s, m, h), e.g. 30s, 1m30s, 500ms",
                text.trim()
            )
        })
    }
}

fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// An OTLP endpoint URL: `http(s)://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint(pub String);

impl Endpoint {
    /// The port as written (`None` when the URL gives none).
    pub(crate) fn port(&self) -> Option<&str> {
        let after_scheme = self.0.split_once("://").map_or("", |(_, r)| r);
        let authority = after_scheme
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = match host_port.strip_prefix('[') {
            Some(v6) => v6.split_once("]:").map(|(_, p)| p),
            None => host_port.rsplit_once(':').map(|(_, p)| p),
        };
        port.filter(|p| !p.is_empty())
    }
}

impl ParseValue for Endpoint {
    const EXPECTING: &'static str = "an OTLP endpoint URL (http://host:port)";
    fn parse_value(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!("`{text}` is not an OTLP endpoint URL ({why}; expected e.g. http://otelcol:4317 or https://host:4318/otlp)")
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if !["http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
            return Err(bad("the scheme must be http or https"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("no host"));
        }
        let endpoint = Endpoint(text.to_string());
        if let Some(port) = endpoint.port() {
            if port.parse::<u16>().is_err() {
                return Err(bad("the port is not a number from 0 to 65535"));
            }
        }
        Ok(endpoint)
    }
}

/// `key=value,key2=value2` as in `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`: keys and values are trimmed and percent-decoded, empty
/// items are skipped, a value may contain `=` (only the first one splits). Errors
/// never quote values, which may be secrets.
pub(crate) fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (index, item) in text.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "item {} has no `=` (expected key=value,key2=value2; percent-encode `,` and `=` inside keys)",
                index + 1
            ));
        };
        let key = percent_decode(key.trim()).map_err(|e| format!("item {}: key {e}", index + 1))?;
        if key.is_empty() {
            return Err(format!(
                "item {} has an empty key (expected key=value)",
                index + 1
            ));
        }
        let value = percent_decode(value.trim())
            .map_err(|e| format!("item {} (key `{key}`): value {e}", index + 1))?;
        out.push((key, value));
    }
    Ok(out)
}

/// `%XX` to the byte it encodes. A `%` not followed by two hex digits is kept as it is
/// (so unencoded values such as `Bearer abc%` still work).
pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            // Two ASCII hex digits: the slice is on character boundaries.
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "is not valid UTF-8 once percent-decoded".to_string())
}

/// OBI's instrumentation list (`http`, `grpc`, ..., `*`): a YAML sequence or a
/// comma-separated string.
impl ParseValue for crate::settings::Instrumentations {
    const EXPECTING: &'static str = "a list of instrumentations (`*`, `http`, `grpc`, `sql`, ...)";
    const LIST: bool = true;
    fn parse_value(text: &str) -> Result<Self, String> {
        crate::settings::Instrumentations::parse_list(text)
    }
}

#[cfg(test)]
mod tests;
