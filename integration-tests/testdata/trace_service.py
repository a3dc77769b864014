"""A small Python service for the trace-linking tests (Debian's python3, stdlib
ThreadingHTTPServer: one thread per connection, each request served on it).

    trace_service.py PORT [--downstream PORT] [--redis PORT] [--postgres PORT]
                          [--delay-ms N]

GET /front/NAME: calls, in this order and on the handler's own thread,
  GET /data/NAME on the downstream (urllib, a new connection), GET key NAME on
  Redis (redis-py, pooled connections), `SELECT relname FROM pg_class WHERE relname = 'NAME'`
  on PostgreSQL (psycopg2, a new connection per request); answers 200 with what it
  got. GET /data/NAME: waits --delay-ms, answers `data NAME`. GET /export (with
--otlp-traces URL): POSTs an empty OTLP/HTTP trace export to URL, as an SDK does.
Prints READY once listening. No traceparent is sent anywhere.
"""

import argparse
import http.server
import sys
import time
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--downstream", type=int)
parser.add_argument("--redis", type=int)
parser.add_argument("--postgres", type=int)
parser.add_argument("--delay-ms", type=int, default=0)
parser.add_argument("--role", default="", help="only part of the command line (selection tests)")
parser.add_argument("--otlp-traces", help="GET /export POSTs an (empty) OTLP export here, as an SDK would")
args = parser.parse_args()

redis_client = None
if args.redis:
    import redis

    redis_client = redis.Redis(host="127.0.0.1", port=args.redis)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, body):
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/export" and args.otlp_traces:
            req = urllib.request.Request(
                args.otlp_traces, data=b"", method="POST",
                headers={"Content-Type": "application/x-protobuf"})
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
            self.answer("exported\n")
            return
        if self.path.startswith("/data/"):
            time.sleep(args.delay_ms / 1000.0)
            self.answer("data " + self.path[len("/data/"):])
            return
        if not self.path.startswith("/front/"):
            self.send_error(404)
            return
        name = self.path[len("/front/"):]
        parts = []
        if args.downstream:
            url = "http://127.0.0.1:%d/data/%s" % (args.downstream, name)
            with urllib.request.urlopen(url, timeout=10) as r:
                parts.append(r.read().decode())
        if redis_client is not None:
            parts.append("redis %r" % redis_client.get(name))
        if args.postgres:
            import psycopg2

            conn = psycopg2.connect(
                host="127.0.0.1", port=args.postgres, user="postgres", dbname="postgres"
            )
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT relname FROM pg_class WHERE relname = '%s'" % name.replace("'", "")
                    )
                    parts.append("pg %r" % (cur.fetchall(),))
            finally:
                conn.close()
        self.answer(" | ".join(parts) + "\n")

    def log_message(self, *a):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print("READY", flush=True)
sys.stdout.flush()
server.serve_forever()
