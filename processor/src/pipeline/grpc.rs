//! gRPC calls: HTTP/2 transactions whose `content-type` is `application/grpc`
//! (or `application/grpc+proto`, ...) get RPC spans and metrics instead of HTTP ones.
//!
//! * **Name**: the request path, `/package.Service/Method`, as OBI names gRPC spans.
//! * **Attributes**: `rpc.system` = `grpc`, `rpc.service` (`package.Service`),
//!   `rpc.method` (`Method`), `rpc.grpc.status_code` (from the trailers'
//!   `grpc-status`, or the headers' for a trailers-only response; absent when no
//!   status was seen), `server.address`, `server.port`, `client.address` (server
//!   spans), `network.peer.address`/`network.peer.port`, `error.type` on errors. OBI
//!   puts the whole path in `rpc.method`; tandem follows the semantic conventions
//!   and splits it into `rpc.service` and `rpc.method`.
//! * **Status**: Error on server spans for UNKNOWN, DEADLINE_EXCEEDED,
//!   UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS; on client spans for any
//!   status but OK; and when no status arrived (`error.type` = `connection_closed`).
//!   `error.type` is the status's name (`NOT_FOUND`).
//! * **Metrics**: `rpc.server.call.duration` / `rpc.client.call.duration`
//!   (histograms, seconds) with `rpc.system`, `rpc.service`, `rpc.method`,
//!   `rpc.grpc.status_code`, `error.type`, `server.port` (and `server.address` on
//!   client metrics).

use opentelemetry::trace::Status;
use opentelemetry::KeyValue;

use crate::model::{HttpExchange, Side, Transaction};

/// Status code names (grpc/status.proto), by code.
const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Codes that are errors on a server span (the server's fault).
const SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// What a gRPC transaction is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// `/package.Service/Method`.
    pub path: String,
    pub service: String,
    pub method: String,
    /// `grpc-status`, when one was seen.
    pub status: Option<i64>,
}

impl GrpcCall {
    /// `Some` when `h` is a gRPC call (HTTP/2, `content-type: application/grpc*`).
    pub fn of(h: &HttpExchange) -> Option<GrpcCall> {
        if !h.is_grpc() {
            return None;
        }
        let path = h.request.path.clone();
        let trimmed = path.strip_prefix('/').unwrap_or(&path);
        let (service, method) = match trimmed.rsplit_once('/') {
            Some((s, m)) => (s.to_string(), m.to_string()),
            None => (String::new(), trimmed.to_string()),
        };
        let status = h
            .response
            .as_ref()
            .and_then(|r| r.headers.iter().find(|(n, _)| n == "grpc-status"))
            .and_then(|(_, v)| v.trim().parse::<i64>().ok());
        Some(GrpcCall {
            path,
            service,
            method,
            status,
        })
    }

    /// `error.type` when the call failed for its side; `None` when it did not.
    pub fn error_type(&self, side: Side) -> Option<String> {
        match self.status {
            None => Some("connection_closed".to_string()),
            Some(code) => {
                let failed = match side {
                    Side::Server => SERVER_ERRORS.contains(&code),
                    Side::Client => code != 0,
                };
                failed.then(|| status_name(code))
            }
        }
    }
}

/// `NOT_FOUND` for 5; the number itself for codes outside the list.
pub fn status_name(code: i64) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| STATUS_NAMES.get(i))
        .map_or_else(|| code.to_string(), |s| (*s).to_string())
}

fn server_address(tx: &Transaction, h: &HttpExchange) -> Option<String> {
    let server_end = match tx.side {
        Side::Server => tx.local,
        Side::Client => tx.peer,
    };
    crate::pipeline::span::server_address(h, server_end)
}

fn rpc_attributes(call: &GrpcCall) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", call.service.clone()),
        KeyValue::new("rpc.method", call.method.clone()),
    ];
    if let Some(code) = call.status {
        attrs.push(KeyValue::new("rpc.grpc.status_code", code));
    }
    attrs
}

/// A gRPC span's attributes and status.
pub fn span_attributes(
    tx: &Transaction,
    h: &HttpExchange,
    call: &GrpcCall,
) -> (Vec<KeyValue>, Status) {
    let mut attrs = rpc_attributes(call);
    let is_server = tx.side == Side::Server;
    let server_end = if is_server { tx.local } else { tx.peer };
    if let Some(a) = server_address(tx, h) {
        attrs.push(KeyValue::new("server.address", a));
    }
    if let Some(s) = server_end {
        attrs.push(KeyValue::new("server.port", i64::from(s.port())));
    }
    if let Some(p) = tx.peer {
        if is_server {
            attrs.push(KeyValue::new(
                "client.address",
                crate::model::ip_text(p.ip()),
            ));
        }
        attrs.push(KeyValue::new(
            "network.peer.address",
            crate::model::ip_text(p.ip()),
        ));
        attrs.push(KeyValue::new("network.peer.port", i64::from(p.port())));
    }
    let error = call.error_type(tx.side);
    let status = match &error {
        Some(_) => Status::error(""),
        None => Status::Unset,
    };
    if let Some(e) = error {
        attrs.push(KeyValue::new("error.type", e));
    }
    (attrs, status)
}

/// A gRPC call's metric attributes (bounded: no peer address, no path beyond the
/// service and method).
pub fn metric_attributes(tx: &Transaction, h: &HttpExchange, call: &GrpcCall) -> Vec<KeyValue> {
    let mut attrs = rpc_attributes(call);
    if let Some(e) = call.error_type(tx.side) {
        attrs.push(KeyValue::new("error.type", e));
    }
    match tx.side {
        Side::Server => {
            if let Some(l) = tx.local {
                attrs.push(KeyValue::new("server.port", i64::from(l.port())));
            }
        }
        Side::Client => {
            if let Some(a) = server_address(tx, h) {
                attrs.push(KeyValue::new("server.address", a));
            }
            if let Some(p) = tx.peer {
                attrs.push(KeyValue::new("server.port", i64::from(p.port())));
            }
        }
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HttpResponse;
    use crate::pipeline::span::tests::{http_mut, tx};

    fn grpc_tx(side: Side, status: Option<&str>) -> Transaction {
        let mut t = tx(side, "POST", "/helloworld.Greeter/SayHello", Some(200));
        let h = http_mut(&mut t);
        h.request.version = "2";
        h.request.headers = vec![
            ("host".into(), "localhost:50051".into()),
            ("content-type".into(), "application/grpc".into()),
        ];
        h.response = Some(HttpResponse {
            status: 200,
            version: "2",
            headers: status
                .map(|s| vec![("grpc-status".into(), s.to_string())])
                .unwrap_or_default(),
            body_size: 7,
        });
        t
    }

    #[test]
    fn call_from_a_transaction() {
        let of = |t: &Transaction| t.http().and_then(GrpcCall::of);
        let call = of(&grpc_tx(Side::Server, Some("5"))).expect("grpc");
        assert_eq!(call.service, "helloworld.Greeter");
        assert_eq!(call.method, "SayHello");
        assert_eq!(call.status, Some(5));
        // Not HTTP/2, or not gRPC content: no call.
        let mut h1 = grpc_tx(Side::Server, Some("0"));
        http_mut(&mut h1).request.version = "1.1";
        assert_eq!(of(&h1), None);
        let mut json = grpc_tx(Side::Server, Some("0"));
        http_mut(&mut json).request.headers[1].1 = "application/json".into();
        assert_eq!(of(&json), None);
        let mut proto = grpc_tx(Side::Server, Some("0"));
        http_mut(&mut proto).request.headers[1].1 = "application/grpc+proto".into();
        assert!(of(&proto).is_some());
    }

    #[test]
    fn errors_per_side() {
        let call = |s| {
            grpc_tx(Side::Server, s)
                .http()
                .and_then(GrpcCall::of)
                .expect("grpc")
        };
        assert_eq!(call(Some("0")).error_type(Side::Server), None);
        assert_eq!(call(Some("5")).error_type(Side::Server), None);
        assert_eq!(
            call(Some("5")).error_type(Side::Client),
            Some("NOT_FOUND".into())
        );
        assert_eq!(
            call(Some("13")).error_type(Side::Server),
            Some("INTERNAL".into())
        );
        assert_eq!(
            call(None).error_type(Side::Server),
            Some("connection_closed".into())
        );
        assert_eq!(status_name(99), "99");
    }

    #[test]
    fn grpc_span_name_attributes_and_status() {
        use crate::pipeline::span::build_span;
        use crate::pipeline::span::tests::SeqIds;
        use crate::settings::Sampler;
        use opentelemetry::trace::SpanKind;
        let t = grpc_tx(Side::Server, Some("13"));
        let s = build_span(
            &t,
            Some(&"/ignored".into()),
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(s.data.name, "/helloworld.Greeter/SayHello");
        assert_eq!(s.data.span_kind, SpanKind::Server);
        assert_eq!(
            s.data.attributes,
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "helloworld.Greeter"),
                KeyValue::new("rpc.method", "SayHello"),
                KeyValue::new("rpc.grpc.status_code", 13),
                KeyValue::new("server.address", "localhost"),
                KeyValue::new("server.port", 8080),
                KeyValue::new("client.address", "10.0.0.2"),
                KeyValue::new("network.peer.address", "10.0.0.2"),
                KeyValue::new("network.peer.port", 51000),
                KeyValue::new("error.type", "INTERNAL"),
            ]
        );
        assert_eq!(s.data.status, Status::error(""));
        let ok = build_span(
            &grpc_tx(Side::Client, Some("0")),
            None,
            Sampler::AlwaysOn,
            &SeqIds::default(),
        );
        assert_eq!(ok.data.span_kind, SpanKind::Client);
        assert_eq!(ok.data.status, Status::Unset);
    }

    #[test]
    fn grpc_metrics_replace_http_ones() {
        use crate::pipeline::metrics::tests::histograms;
        use crate::pipeline::metrics::MetricsRegistry;
        use crate::pipeline::resource::{ProcessMap, ResourceSettings};
        let mut procs = ProcessMap::new(ResourceSettings::default());
        let p = procs.get(42);
        let mut reg = MetricsRegistry::default();
        reg.record(&p, &grpc_tx(Side::Server, Some("5")), None);
        reg.record(&p, &grpc_tx(Side::Client, Some("0")), None);
        let all = reg.collect();
        let h = histograms(&all[0]);
        let with_points: Vec<&str> = h
            .iter()
            .filter(|(_, pts)| !pts.is_empty())
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            with_points,
            ["rpc.server.call.duration", "rpc.client.call.duration"]
        );
        let server = &h
            .iter()
            .find(|(n, _)| n == "rpc.server.call.duration")
            .expect("server")
            .1;
        assert_eq!(server[0].1, 1);
        assert!((server[0].2 - 0.25).abs() < 1e-9);
        let mut keys: Vec<String> = server[0].0.iter().map(|kv| kv.key.to_string()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "rpc.grpc.status_code",
                "rpc.method",
                "rpc.service",
                "rpc.system",
                "server.port"
            ]
        );
    }
}
