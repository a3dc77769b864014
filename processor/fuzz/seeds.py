#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: corpus/<target>/<name>.

The byte strings are those of the processor's unit tests (protocols/*/tests.rs,
protocols/hpack/tests.rs: RFC 7541 Appendix C, stitch/tests*.rs), rebuilt here by
the same helpers, in the fuzz input format of src/lib.rs: a flags byte, then
segments `[ctl][len u16 LE][bytes]` (ctl bit 0: the server's bytes; bits 1-3: an
index into UNCAPTURED; bits 4-7: the target's action). Run it again after changing
the format; it replaces the corpora (the seeds are small: a few KiB each).

    python3 processor/fuzz/seeds.py
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
CONFIG_TESTDATA = os.path.join(HERE, "..", "src", "config", "testdata", "obi-docs")

# Index into UNCAPTURED (src/lib.rs) for "100 bytes not captured", "65536", MAX_RW_COUNT.
UNCAPTURED_100 = 4 << 1
UNCAPTURED_64K = 5 << 1
UNCAPTURED_MAX = 7 << 1  # MAX_RW_COUNT


def seg(data, response=False, uncaptured=0, action=0):
    ctl = (1 if response else 0) | uncaptured | (action << 4)
    assert len(data) < 65536
    return bytes([ctl]) + struct.pack("<H", len(data)) + bytes(data)


def conv(flags, parts):
    """parts: (response, bytes[, uncaptured[, action]]) tuples."""
    out = bytes([flags])
    for p in parts:
        out += seg(p[1], p[0], *p[2:]) if isinstance(p, tuple) else seg(p)
    return out


# --- HTTP/1 (protocols/http1/tests.rs) ---------------------------------------------

CURL_GET = b"GET /users/42?verbose=1&x=y HTTP/1.1\r\nHost: localhost:18080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
POST_KEEPALIVE = b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
NGINX_CHUNKED = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n7\r\nMozilla\r\n11;ext=1\r\nDeveloper Network\r\n0\r\nX-Trailer: 1\r\n\r\n"
PYTHON_HEAD = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-type: text/html; charset=utf-8\r\n\r\n"
TWO_RESPONSES = b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def http1():
    req, resp = 0, 1
    return {
        "curl_get": conv(req, [CURL_GET]),
        "keep_alive": conv(req, [POST_KEEPALIVE]),
        "split_bytes": conv(req, [bytes([b]) for b in CURL_GET[:40]] + [CURL_GET[40:]]),
        "upload_uncaptured": conv(req, [(False, b"POST /upload HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100, UNCAPTURED_64K)]),
        "truncated_head": conv(req, [(False, b"GET /very/long/pa", UNCAPTURED_100)]),
        "chunked": conv(resp, [NGINX_CHUNKED]),
        "chunked_split": conv(resp, [NGINX_CHUNKED[:120], NGINX_CHUNKED[120:]]),
        "chunked_lost": conv(resp, [(True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nabc", UNCAPTURED_64K), (True, b"\r\n0\r\n\r\n")]),
        "until_close": conv(resp, [(True, PYTHON_HEAD), (True, b"<html>hello</html>", 0, 2)]),
        "two_responses": conv(resp, [(True, TWO_RESPONSES)]),
        "head_no_body": conv(resp, [(True, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, 1), (True, b"HTTP/1.1 204 No Content\r\n\r\n")]),
        "small_bound": conv(resp | 2, [(True, b"HTTP/1.1 200 OK\r\n" + b"X-Filler: 0123456789\r\n" * 6 + b"\r\n")]),
        "bad_header": conv(resp, [(True, b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n")]),
        "conflicting_length": conv(resp, [(True, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")]),
        "continue": conv(resp, [(True, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]),
    }


# --- HPACK and HTTP/2 (protocols/hpack/tests.rs, protocols/http2.rs testutil) ------

def hexb(s):
    return bytes.fromhex("".join(s.split()))


C3 = ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]
C4 = ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]
C5 = ["3fe1 01",
      "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230"
      "3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65"
      "7861 6d70 6c65 2e63 6f6d",
      "4803 3330 37c1 c0bf",
      "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220"
      "474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157"
      "454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076"
      "6572 7369 6f6e 3d31"]


def hint(first, prefix, v):
    mx = (1 << prefix) - 1
    if v < mx:
        return bytes([first | v])
    out = [first | mx]
    v -= mx
    while v >= 128:
        out.append(v % 128 | 0x80)
        v //= 128
    out.append(v)
    return bytes(out)


def block(fields):
    b = b""
    for n, v in fields:
        b += b"\x40" + hint(0, 7, len(n)) + n + hint(0, 7, len(v)) + v
    return b


def frame(ty, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ty, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
REQ_FIELDS = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/users/42"), (b":authority", b"localhost")]
GRPC_FIELDS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/helloworld.Greeter/SayHello"),
               (b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def h2_client():
    return (PREFACE + SETTINGS + frame(1, 5, 1, block(REQ_FIELDS))
            + frame(1, 4, 3, block(GRPC_FIELDS)) + frame(0, 1, 3, b"\x00\x00\x00\x00\x05hello"))


def h2_server():
    return (SETTINGS + frame(4, 1, 0, b"") + frame(1, 4, 1, block([(b":status", b"200"), (b"content-type", b"text/plain")]))
            + frame(0, 1, 1, b"hello") + frame(1, 4, 3, block([(b":status", b"200")]))
            + frame(1, 5, 3, block([(b"grpc-status", b"0")])))


def hpack():
    big = b"\x40\x01x\x7f" + hint(0, 7, 3000)[1:] + b"v" * 3000 + b"\xbe" * 200
    return {
        "c3": conv(0, [hexb(b) for b in C3]),
        "c4_huffman": conv(0, [hexb(b) for b in C4]),
        "c5_eviction": conv(0, [hexb(b) for b in C5]),
        "c2_literals": conv(0, [hexb("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
                                hexb("040c 2f73 616d 706c 652f 7061 7468"),
                                hexb("1008 7061 7373 776f 7264 0673 6563 7265 74")]),
        "missed_block": conv(0, [hexb(C3[1]), b"\xbe"]),
        "reset": conv(0, [hexb(C3[0]), (False, hexb(C3[1]), 0, 1)]),
        "large_entry_refs": conv(0, [big]),
        "size_updates": conv(0, [b"\x3f\xe1\x1f" + hexb(C3[0]), b"\x20" + hexb(C3[1])]),
    }


def http2():
    client, server = h2_client(), h2_server()
    cont = frame(1, 0, 5, block(REQ_FIELDS)[:20]) + frame(9, 4, 5, block(REQ_FIELDS)[20:])
    padded = frame(1, 0x8 | 0x4 | 0x20, 7, b"\x03" + b"\x00\x00\x00\x01\x10" + block(REQ_FIELDS) + b"\x00\x00\x00")
    return {
        "client": conv(1, [client]),
        "client_split": conv(1, [client[:30], client[30:61], client[61:]]),
        "server": conv(1, [server]),
        "server_midstream": conv(0, [server]),
        "continuation_padding": conv(1, [PREFACE + cont + padded + frame(3, 0, 7, b"\x00\x00\x00\x08")]),
        "large_data_uncaptured": conv(1, [(False, PREFACE + frame(0, 0, 1, b"x" * 100)[:60], UNCAPTURED_100)]),
        "small_bound": conv(3, [PREFACE + frame(1, 5, 1, block(REQ_FIELDS + GRPC_FIELDS))]),
        "push_promise": conv(1, [frame(5, 4, 1, b"\x00\x00\x00\x02" + block([(b":path", b"/style.css")]))]),
    }


# --- PostgreSQL (protocols/postgres/tests.rs) ---------------------------------------

def pg_msg(t, body):
    return bytes([t]) + struct.pack(">I", len(body) + 4) + body


def cstrs(*parts):
    return b"".join(p + b"\x00" for p in parts)


def pg_startup():
    body = b"\x00\x03\x00\x00user\x00postgres\x00database\x00shop\x00\x00"
    return struct.pack(">I", len(body) + 4) + body


def pg_extended(stmt, q):
    return (pg_msg(ord("P"), cstrs(stmt, q) + b"\x00\x00")
            + pg_msg(ord("B"), cstrs(b"", stmt) + b"\x00" * 6)
            + pg_msg(ord("D"), b"P\x00")
            + pg_msg(ord("E"), cstrs(b"") + b"\x00" * 4)
            + pg_msg(ord("S"), b""))


def pg_error(code, m):
    return pg_msg(ord("E"), b"SERROR\x00C" + cstrs(code) + b"M" + cstrs(m) + b"\x00")


READY = pg_msg(ord("Z"), b"I")


def postgres():
    rows = pg_msg(ord("D"), b"\x00" * 40)
    conversation = [
        (False, struct.pack(">II", 8, 80877103)),
        (True, b"N"),
        (False, pg_startup()),
        (True, pg_msg(ord("R"), b"\x00" * 4) + pg_msg(ord("S"), cstrs(b"a", b"b")) + READY),
        (False, pg_msg(ord("Q"), cstrs(b"SELECT name FROM users WHERE id = 42"))),
        (True, pg_msg(ord("T"), b"\x00\x01name\x00" + b"\x00" * 18) + rows + pg_msg(ord("C"), cstrs(b"SELECT 1")) + READY),
        (False, pg_extended(b"s1", b"UPDATE users SET name = $1 WHERE id = $2")),
        (True, pg_msg(ord("1"), b"") + pg_msg(ord("2"), b"") + pg_msg(ord("C"), cstrs(b"UPDATE 1")) + READY),
        (False, pg_msg(ord("Q"), cstrs(b"SELECT * FROM nope"))),
        (True, pg_error(b"42P01", b'relation "nope" does not exist') + READY),
    ]
    return {
        "conversation": conv(1, conversation),
        "midstream": conv(0, conversation[4:]),
        "rows_uncaptured": conv(1, [(False, pg_msg(ord("Q"), cstrs(b"SELECT * FROM big"))),
                                    (True, (pg_msg(ord("D"), b"\x00" * 200) * 3)[:300], UNCAPTURED_64K),
                                    (False, pg_msg(ord("Q"), cstrs(b"SELECT 1")))]),
        "ssl_accepted": conv(1, [(False, struct.pack(">II", 8, 80877103)), (True, b"S\x16\x03\x01")]),
        "cancel": conv(1, [(False, struct.pack(">IIII", 16, 80877102, 1234, 5678))]),
        "close_statement": conv(1, [(False, pg_extended(b"s2", b"SELECT 2") + pg_msg(ord("C"), b"Ss2\x00") + pg_msg(ord("S"), b"")),
                                    (True, READY, 0, 1), (True, READY, 0, 2)]),
    }


# --- MySQL (protocols/mysql/tests.rs) ---------------------------------------------

def my_pkt(seq, body):
    n = len(body)
    return bytes([n & 0xFF, (n >> 8) & 0xFF, n >> 16, seq]) + body


def my_greeting():
    return my_pkt(0, b"\x0a10.11.19-MariaDB\x00\x01\x00\x00\x00" + b"x" * 30)


def my_ok(seq):
    return my_pkt(seq, b"\x00\x00\x00\x02\x00\x00\x00")


def my_eof(seq, status=2):
    return my_pkt(seq, bytes([0xFE, 0, 0, status & 0xFF, status >> 8]))


def my_query(q):
    return my_pkt(0, b"\x03" + q)


def my_rows(n):
    r = my_pkt(1, b"\x01") + my_pkt(2, b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00") + my_eof(3)
    for i in range(n):
        r += my_pkt(4 + i, b"\x0212")
    return r + my_eof(4 + n)


def my_err(seq, code, state, m):
    return my_pkt(seq, bytes([0xFF, code & 0xFF, code >> 8]) + b"#" + state + m)


def mysql():
    handshake = my_pkt(1, bytes([0x0d, 0xa2, 0x0a, 0x00, 0, 0, 0, 1, 33, 0, 0, 0]) + b"root\x00")
    conversation = [
        (True, my_greeting()),
        (False, handshake),
        (True, my_ok(2)),
        (False, my_query(b"INSERT INTO t VALUES (1, 'x')")),
        (True, my_ok(1)),
        (False, my_query(b"SELECT a FROM t")),
        (True, my_rows(3)),
        (False, my_query(b"SELECT * FROM nope")),
        (True, my_err(1, 1146, b"42S02", b"Table 'test.nope' doesn't exist")),
        (False, my_pkt(0, b"\x16SELECT a FROM t WHERE id = ?")),
        (True, my_pkt(1, b"\x00\x07\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00")),
        (False, my_pkt(0, b"\x17\x07\x00\x00\x00\x00\x01\x00\x00\x00")),
        (True, my_rows(1)),
        (False, my_pkt(0, b"\x01")),
    ]
    return {
        "conversation": conv(1, conversation),
        "midstream": conv(0, conversation[5:]),
        "rows_uncaptured": conv(1, [(False, my_query(b"SELECT * FROM big")),
                                    (True, my_rows(50)[:200], UNCAPTURED_64K),
                                    (False, my_query(b"SELECT 1"))]),
        "ssl_request": conv(1, [(True, my_greeting()), (False, my_pkt(1, b"\x00\x0a\x00\x00" + b"\x00" * 28))]),
    }


# --- Redis (protocols/redis/tests.rs) -----------------------------------------------

def cmd(*args):
    b = b"*%d\r\n" % len(args)
    for a in args:
        b += b"$%d\r\n%s\r\n" % (len(a), a)
    return b


def redis_conversation():
    return [
        (False, cmd(b"set", b"user:1", b"alice")),
        (True, b"+OK\r\n"),
        (False, cmd(b"GET", b"user:1")),
        (True, b"$5\r\nalice\r\n"),
        (False, cmd(b"INCR", b"user:1")),
        (True, b"-ERR value is not an integer or out of range\r\n"),
        (False, cmd(b"HGETALL", b"h") + cmd(b"GET", b"missing") + cmd(b"LRANGE", b"l", b"0", b"-1") + b"PING\r\n"),
        (True, b"%1\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n>2\r\n$7\r\nmessage\r\n$1\r\nx\r\n_\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n+PONG\r\n"),
        (False, cmd(b"EVAL", b"x", b"0")),
        (True, b"!21\r\nSYNTAX invalid syntax\r\n"),
    ]


def redis():
    c = redis_conversation()
    return {
        "conversation": conv(1, c),
        "midstream": conv(0, c[2:]),
        "bulk_uncaptured": conv(1, [(False, cmd(b"SET", b"k", b"v" * 200)[:100], UNCAPTURED_64K),
                                    (True, b"+OK\r\n"), (False, cmd(b"GET", b"k")),
                                    (True, b"$100000\r\n" + b"v" * 100, UNCAPTURED_64K)]),
        "pipeline_lost": conv(1, [(False, (cmd(b"GET", b"a") * 20)[:150], UNCAPTURED_100), (True, b"$1\r\na\r\n" * 20)]),
    }


# --- Capture files (proto/src/capture.rs) -------------------------------------------

def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def fv(field, v):
    return varint(field << 3) + varint(v)


def fb(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def event(seq, mono, kind_field, body):
    return fv(1, seq) + fv(2, mono) + fb(kind_field, body)


def addr(port):
    return fb(1, bytes([127, 0, 0, 1])) + fv(2, port)


def data(conn, direction, payload, total=None):
    return (fv(1, 100) + fv(2, 101) + fv(3, conn) + fv(4, direction)
            + fv(5, total if total is not None else len(payload)) + fb(6, payload))


def capture_file(events):
    header = fb(1, fv(1, 1) + fv(2, 1)) + fv(2, 1_700_000_000_000_000_000) + fb(3, b"synthetic") + fb(4, b"seeds.py")
    out = b"TNDMCAP\x00" + struct.pack("<H", 1) + varint(len(header)) + header
    for e in events:
        out += varint(len(e)) + e
    return out


def capture():
    started = fv(1, 100) + fv(2, 1) + fb(3, b"/usr/bin/python3.11") + fb(4, b"python3") + fb(4, b"-m") + fb(4, b"http.server")
    opened = fv(1, 100) + fv(2, 101) + fv(3, 7) + fb(4, addr(18080)) + fb(5, addr(42140)) + fv(6, 1)
    events = [
        event(1, 10, 10, started),
        event(2, 20, 12, opened),
        event(3, 30, 14, data(7, 1, CURL_GET)),
        event(4, 40, 14, data(7, 2, TWO_RESPONSES[:40], 700)),
        event(5, 50, 15, fv(1, 3) + fv(2, 1) + fb(3, b"ring buffer full")),
        event(6, 60, 13, fv(1, 100) + fv(2, 101) + fv(3, 7)),
        event(7, 70, 11, fv(1, 100) + fv(2, 0)),
    ]
    whole = capture_file(events)
    return {
        "http": whole,
        "header_only": capture_file([]),
        "truncated": whole[:-7],
    }


# --- Configuration (processor/src/config/testdata) ----------------------------------

CONFIG_FILES = ["example-1.yml", "routes-decorator-1.yml", "service-discovery-1.yml",
                "export-data-1.yml", "sample-traces-1.yml", "metrics-traces-attributes-1.yml",
                "filter-metrics-traces-1.yml", "options-1.yml"]


def config():
    seeds = {}
    for name in CONFIG_FILES:
        path = os.path.join(CONFIG_TESTDATA, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                seeds[name.removesuffix(".yml")] = f.read()
    seeds["env_and_substitution"] = (
        b"#env OTEL_EBPF_OPEN_PORT=8080-8089,443\n"
        b"#env OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318\n"
        b"#env OTEL_EXPORTER_OTLP_HEADERS=a=b,c=d%20e\n"
        b"#env PRINTER=text\n"
        b"#path /users/42/items/abc123\n"
        b"trace_printer: ${PRINTER}\n"
        b"service_name: ${NAME:-shop}\n"
        b"routes:\n  unmatched: heuristic\n  patterns:\n    - /users/{id}\n    - /items/:item\n"
        b"discovery:\n  instrument:\n    - exe_path: \"*/python*\"\n      open_ports: 8000-8999\n"
    )
    return seeds


# --- The whole stitcher (fuzz_targets/stitch.rs) ------------------------------------

def stitch():
    open_ = 1 << 2   # action bits 2-3: 1 ConnectionOpened before the data
    close = 2 << 2
    loss = 3 << 2

    def on(conn, response, data, then=0, uncaptured=0):
        return (response, data, uncaptured, conn | then)

    pg = [
        (False, struct.pack(">II", 8, 80877103)), (True, b"N"), (False, pg_startup()),
        (True, pg_msg(ord("R"), b"\x00" * 4) + READY),
        (False, pg_msg(ord("Q"), cstrs(b"SELECT 1"))), (True, pg_msg(ord("C"), cstrs(b"SELECT 1")) + READY),
    ]
    parts = [on(0, False, CURL_GET, open_), on(0, True, TWO_RESPONSES)]
    parts += [on(1, r, d, open_ if i == 0 else 0) for i, (r, d) in enumerate(pg)]
    parts += [on(2, False, h2_client(), open_), on(2, True, h2_server())]
    parts += [on(3, r, d, open_ if i == 0 else 0) for i, (r, d) in enumerate(redis_conversation()[:6])]
    parts += [on(0, False, POST_KEEPALIVE, close), on(1, True, b"", loss)]
    my = [(True, my_greeting()), (False, my_pkt(1, b"\x0d\xa2\x0a\x00\x00\x00\x00\x01\x21\x00\x00\x00root\x00")),
          (True, my_ok(2)), (False, my_query(b"SELECT a FROM t")), (True, my_rows(2))]
    return {
        "mixed": conv(0, parts),
        "client_roles": conv(0x3C, [on(0, False, CURL_GET, open_), on(0, True, NGINX_CHUNKED, close)]),
        "no_open_midstream": conv(0, [on(1, False, pg_msg(ord("Q"), cstrs(b"SELECT 1"))), on(1, True, READY),
                                      on(2, True, h2_server()), on(3, False, cmd(b"GET", b"k")), on(3, True, b"$1\r\nv\r\n", loss)]),
        "mysql": conv(0, [on(1, r, d, open_ if i == 0 else 0) for i, (r, d) in enumerate(my)]),
        "small_limits": conv(2 | 0x80, [on(c, False, CURL_GET, open_) for c in range(4)]
                             + [on(c, True, TWO_RESPONSES, then=(close if c == 1 else 0)) for c in range(4)]),
        "preexisting_uncaptured": conv(0x40, [on(0, False, CURL_GET, open_), on(0, True, NGINX_CHUNKED[:100], uncaptured=UNCAPTURED_MAX),
                                              on(0, False, CURL_GET), on(0, True, TWO_RESPONSES, then=loss | 1)]),
    }


def main():
    targets = {
        "http1": http1(), "http2": http2(), "hpack": hpack(), "postgres": postgres(),
        "mysql": mysql(), "redis": redis(), "capture": capture(), "config": config(),
        "stitch": stitch(),
    }
    total = 0
    for target, seeds in targets.items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{target}: {len(seeds)} seeds")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
