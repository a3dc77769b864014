#!/usr/bin/env python3
"""A small OTLP receiver for tandem's export tests.

Listens for OTLP/gRPC (TraceService, MetricsService) and OTLP/HTTP protobuf
(POST /v1/traces, /v1/metrics) on 127.0.0.1 ephemeral ports, prints
`READY <grpc port> <http port>`, then one JSON line per received span or metric:
  {"transport": "grpc"|"http", "signal": "traces", "resource": {...}, "scope": "...",
   "name": ..., "kind": ..., "trace_id": hex, "span_id": hex, "parent_span_id": hex,
   "status": int, "attributes": {...}}
  {"transport": ..., "signal": "metrics", "resource": {...}, "name": ..., "unit": ...,
   "points": [{"attributes": {...}, "count": n, "sum": x, "bounds": [...]}]}
Needs `pip install grpcio opentelemetry-proto`.
"""
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

lock = threading.Lock()


def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


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
                    "scope": ss.scope.name, "name": s.name, "kind": s.kind,
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(), "status": s.status.code,
                    "attributes": attrs(s.attributes),
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                })


def metrics(req, transport):
    for rm in req.resource_metrics:
        res = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points = []
                if m.WhichOneof("data") == "histogram":
                    for p in m.histogram.data_points:
                        points.append({"attributes": attrs(p.attributes), "count": p.count,
                                       "sum": p.sum, "bounds": list(p.explicit_bounds)})
                emit({"transport": transport, "signal": "metrics", "resource": res,
                      "name": m.name, "unit": m.unit, "points": points})


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        metrics(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            traces(req, "http")
            resp = trace_service_pb2.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest()
            req.ParseFromString(body)
            metrics(req, "http")
            resp = metrics_service_pb2.ExportMetricsServiceResponse()
        else:
            self.send_response(404)
            self.end_headers()
            return
        out = resp.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    emit_ready = "READY %d %d\n" % (grpc_port, http.server_address[1])
    with lock:
        sys.stdout.write(emit_ready)
        sys.stdout.flush()
    # Exit when the test closes our stdin (or dies).
    sys.stdin.read()
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    main()
