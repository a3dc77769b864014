#!/usr/bin/env python3
"""An OTLP receiver for tandem's export tests (the processor's and the end-to-end
ones), built on PyPI's `grpcio` and `opentelemetry-proto`.

    otlp_receiver.py [GRPC_PORT HTTP_PORT]

Listens for OTLP/gRPC (TraceService, MetricsService) and OTLP/HTTP protobuf (POST
/v1/traces, /v1/metrics) on 127.0.0.1, on the given ports or on ephemeral ones;
prints `READY <grpc port> <http port>` once both listen, then one JSON line per
received span or metric (gzip bodies are accepted: gRPC message compression natively,
HTTP `Content-Encoding: gzip`); every line also has "headers", the request's `x-*`
headers (gRPC metadata), and for HTTP "content_encoding":
  {"transport": "grpc"|"http", "signal": "traces", "resource": {...}, "scope": "...",
   "scope_version": "...", "name": ..., "kind": ..., "trace_id": hex, "span_id": hex,
   "parent_span_id": hex, "flags": int, "trace_state": "...", "status": int,
   "status_message": "...", "attributes": {...}, "start": ns, "end": ns}
  {"transport": ..., "signal": "metrics", "resource": {...}, "scope": "...",
   "name": ..., "unit": ..., "kind": "histogram"|..., "temporality": int,
   "points": [{"attributes": {...}, "count": n, "sum": x, "bounds": [...],
               "bucket_counts": [...]}]}
Runs until killed (SIGTERM, SIGKILL).
"""
import base64
import gzip
import json
import os
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

lock = threading.Lock()


local = threading.local()


def emit(obj):
    obj["headers"] = getattr(local, "headers", {})
    if obj["transport"] in ("http", "http/json"):
        obj["content_encoding"] = getattr(local, "content_encoding", "")
    with lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def x_headers(pairs):
    return {k.lower(): v for k, v in pairs if k.lower().startswith("x-")}


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def traces(req, transport):
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                emit({
                    "transport": transport, "signal": "traces", "resource": res,
                    "scope": ss.scope.name, "scope_version": ss.scope.version,
                    "name": s.name, "kind": s.kind,
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(), "flags": s.flags,
                    "trace_state": s.trace_state, "status": s.status.code,
                    "status_message": s.status.message,
                    "attributes": attrs(s.attributes),
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                })


def metrics(req, transport):
    for rm in req.resource_metrics:
        res = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = []
                temporality = 0
                if kind == "histogram":
                    temporality = m.histogram.aggregation_temporality
                    for p in m.histogram.data_points:
                        points.append({"attributes": attrs(p.attributes), "count": p.count,
                                       "sum": p.sum, "bounds": list(p.explicit_bounds),
                                       "bucket_counts": list(p.bucket_counts)})
                elif kind in ("gauge", "sum"):
                    data = m.gauge if kind == "gauge" else m.sum
                    if kind == "sum":
                        temporality = m.sum.aggregation_temporality
                    for p in data.data_points:
                        value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                        points.append({"attributes": attrs(p.attributes), "value": value})
                emit({"transport": transport, "signal": "metrics", "resource": res,
                      "scope": sm.scope.name, "name": m.name, "unit": m.unit,
                      "kind": kind, "temporality": temporality, "points": points})


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        local.headers = x_headers(context.invocation_metadata())
        traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        local.headers = x_headers(context.invocation_metadata())
        metrics(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


HEX_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def hex_ids_to_base64(node):
    # OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping
    # expects base64: convert them before parsing.
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k in HEX_ID_KEYS and isinstance(v, str):
                node[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                hex_ids_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            hex_ids_to_base64(v)


def parse(req, body, as_json):
    if as_json:
        tree = json.loads(body)
        hex_ids_to_base64(tree)
        json_format.ParseDict(tree, req)
    else:
        req.ParseFromString(body)


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        ctype = self.headers.get("content-type", "")
        if ctype not in ("application/x-protobuf", "application/json"):
            self.send_response(415)
            self.end_headers()
            return
        local.headers = x_headers(self.headers.items())
        local.content_encoding = self.headers.get("content-encoding", "")
        if local.content_encoding == "gzip":
            body = gzip.decompress(body)
        elif local.content_encoding not in ("", "identity"):
            self.send_response(415)
            self.end_headers()
            return
        as_json = ctype == "application/json"
        transport = "http/json" if as_json else "http"
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest()
            parse(req, body, as_json)
            traces(req, transport)
            resp = trace_service_pb2.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest()
            parse(req, body, as_json)
            metrics(req, transport)
            resp = metrics_service_pb2.ExportMetricsServiceResponse()
        else:
            self.send_response(404)
            self.end_headers()
            return
        out = json_format.MessageToJson(resp).encode() if as_json else resp.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/json" if as_json else "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    grpc_port, http_port = (int(p) for p in sys.argv[1:3]) if len(sys.argv) >= 3 else (0, 0)
    # TLS (both ports) when RECEIVER_TLS_CERT and RECEIVER_TLS_KEY name PEM files;
    # with RECEIVER_CLIENT_CA too, clients must present a certificate it signed.
    cert, key = os.environ.get("RECEIVER_TLS_CERT"), os.environ.get("RECEIVER_TLS_KEY")
    client_ca = os.environ.get("RECEIVER_CLIENT_CA")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    if cert:
        with open(cert, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
        ca_pem = None
        if client_ca:
            with open(client_ca, "rb") as f:
                ca_pem = f.read()
        creds = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=ca_pem,
            require_client_auth=bool(client_ca))
        grpc_port = server.add_secure_port("127.0.0.1:%d" % grpc_port, creds)
    else:
        grpc_port = server.add_insecure_port("127.0.0.1:%d" % grpc_port)
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", http_port), Http)
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        http.socket = ctx.wrap_socket(http.socket, server_side=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with lock:
        sys.stdout.write("READY %d %d\n" % (grpc_port, http.server_address[1]))
        sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main()
