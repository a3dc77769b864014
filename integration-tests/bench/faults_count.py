#!/usr/bin/env python3
"""The span counter and the report of integration-tests/bench/faults.sh.

    faults_count.py receive OUT GRPC_PORT
        runs testdata/otlp_receiver.py (OTLP/gRPC on GRPC_PORT, HTTP on an ephemeral
        port; prints READY like it), writing each span as one tab-separated line to
        OUT: arrival time (s), kind (2 server, 3 client), service.name, span id,
        url.path, start (ns), and the resource (JSON) when it has no service.name.
        Nothing else is kept: the runs make millions of spans.
    faults_count.py report WORK PYNAME SETTLE WARM KILLS RESTARTS OUTAGE
        reads what faults.sh left in WORK, prints one line per phase and the last
        line; exits 1 on loss, RSS growth or a late resume.
"""
import collections
import glob
import importlib.util
import json
import os
import re
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))


def receive(out_path, grpc_port):
    path = os.path.join(HERE, "..", "testdata", "otlp_receiver.py")
    # rotel's requests may exceed gRPC's default 4 MiB (its batches are large, see
    # faults.sh): the receiver's server accepts up to 256 MiB.
    import grpc
    server = grpc.server
    grpc.server = lambda *a, **k: server(*a, options=[("grpc.max_receive_message_length", 256 << 20)], **k)
    spec = importlib.util.spec_from_file_location("otlp_receiver", path)
    r = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(r)
    out = open(out_path, "a", buffering=1)

    def emit(o):
        if o["signal"] != "traces":
            return
        a = o["attributes"]
        url_path = a.get("url.path") or urllib.parse.urlsplit(a.get("url.full", "")).path
        res = o["resource"]
        # Without a service.name, the whole resource, to see what it was.
        more = "" if "service.name" in res else "\t" + json.dumps(res, sort_keys=True)
        with r.lock:
            out.write("%.3f\t%d\t%s\t%s\t%s\t%d%s\n" % (
                time.time(), o["kind"], res.get("service.name", ""), o["span_id"], url_path, o["start"], more))

    r.emit = emit
    sys.argv = [sys.argv[0], grpc_port, "0"]
    r.main()


def report(work, pyname, settle, warm, kills, restarts, outage):
    def read(name):
        with open(os.path.join(work, name), errors="replace") as f:
            return f.read()

    phases, kill_at, starts, restart_at, resume, down = [], [], [], [], None, None
    for w in (line.split() for line in read("events").splitlines()):
        if w[0] == "phase":
            phases.append((w[1], float(w[2]), float(w[3])))
        elif w[0] == "kill":
            kill_at.append(float(w[1]))
        elif w[0] == "start":
            starts.append(float(w[1]))
        elif w[0] == "restart":
            restart_at.append((float(w[1]), float(w[2])))
        elif w[0] == "resume":
            resume = None if w[1] == "none" else float(w[1])
        elif w[0] == "outage":
            down = (float(w[1]), float(w[2]))

    # Requests served: path -> (phase, time, the service.name its server span must carry).
    served = {}
    for line in read("logs/access.log").splitlines():
        t, _status, path = line.split(" ", 2)
        phase = "churn" if path.startswith("/cc/") else path.split("/")[1]
        served[path] = (phase, float(t), "nginx")
    servers = glob.glob(os.path.join(work, "srv", "*.log"))
    for f in servers:
        for m in re.finditer(r'"GET (/cs/\S+) HTTP', open(f, errors="replace").read()):
            served[m.group(1)] = ("churn", None, pyname)
    sent = collections.Counter()
    for name, _, _ in phases:
        m = re.search(r"(\d+) requests in", read("wrk-%s.txt" % name))
        sent[name] = int(m.group(1)) if m else 0
    clients = read("churn-clients.out").split()
    sent["churn"] += sum(1 for c in clients + read("churn-servers.out").split() if c == "200")

    # Spans: server spans (span id -> service.name) by path; curl's client spans by path.
    server, client, ids = collections.defaultdict(dict), collections.defaultdict(set), collections.Counter()
    for w in (line.rstrip("\n").split("\t") for line in open(os.path.join(work, "spans.tsv"), errors="replace")):
        if len(w) < 6:
            continue
        ids[w[3]] += 1
        if w[1] == "2":
            server[w[4]][w[3]] = w[2]
        elif w[1] == "3" and w[4].startswith(("/cc/", "/cs/")):
            client[w[4]].add(w[2])

    def accounting(snap):
        """The processors' own counts: the last summary of each, summed."""
        acc = collections.Counter()
        where = collections.Counter()
        path = os.path.join(work, snap)
        for line in (open(path).read().splitlines() if os.path.exists(path) else []):
            m = re.search(r"lost\s+(\d+) events before the processor \((.*)\); (\d+) spans in export", line)
            if m:
                acc["events"] += int(m.group(1))
                acc["spans"] += int(m.group(3))
                where.update({k: int(v) for k, v in re.findall(r"(\w+) (\d+)", m.group(2))})
            m = re.search(r"server spans dropped (\d+), failed (\d+)", line)
            if m:
                acc["server_gone"] += int(m.group(1)) + int(m.group(2))
            m = re.search(r"subscription restarts (\d+)", line)
            if m:
                acc["restarts"] += int(m.group(1))
            for k in ("exported", "dropped", "failed", "abandoned"):
                m = re.search(k + r" (\d+)", line) if " out " in line else None
                acc[k] += int(m.group(1)) if m else 0
        return acc, where

    def describe(acc, where):
        return "lost %d events (%s), %d spans in export (exported %d, dropped %d, failed %d, abandoned %d)" % (
            acc["events"], ", ".join("%s %d" % kv for kv in sorted(where.items())) or "none",
            acc["spans"], acc["exported"], acc["dropped"], acc["failed"], acc["abandoned"])

    # RSS samples: time, loader pid, start, KiB, processor pid, start, KiB.
    rss = [tuple(map(float, line.split())) for line in read("rss.txt").splitlines() if len(line.split()) == 7]

    def rss_range(t0, t1, start, col):
        """(min, max, settled) in MiB over the phase's samples from SETTLE s after its
        start, taken WARM s after the process's start; without any, over all of the
        phase's samples from SETTLE s after its start (settled False)."""
        late = [s for s in rss if t0 + settle <= s[0] <= t1 and s[col] > 0]
        xs = [s[col] / 1024 for s in late if s[0] - s[start] >= warm]
        ys = xs or [s[col] / 1024 for s in late]
        return (min(ys), max(ys), bool(xs)) if ys else None

    def show(r):
        if r is None:
            return "n/a"
        return "%.1f-%.1f MiB (%.2f%s)" % (r[0], r[1], r[1] / r[0], "" if r[2] else ", not settled")

    total = collections.Counter()
    failed, steady, prev = [], {}, accounting("none")
    for name, t0, t1 in phases:
        mine = {p: v for p, v in served.items() if v[0] == name}
        lost_at, wrong, misnamed, several, unique, dups = [], collections.Counter(), 0, 0, 0, 0
        for path, (_, t, svc) in mine.items():
            spans = server.get(path, {})
            right = [s for s, n in spans.items() if n == svc]
            unique += len(right)
            several += len(right) > 1
            dups += sum(ids[s] - 1 for s in spans)
            if not right:
                lost_at.append(t)
                misnamed += bool(spans)
                wrong.update(set(n or "(none)" for n in spans.values()))
        now = accounting("snapshot-" + name)
        acc, where = now[0] - prev[0], now[1] - prev[1]
        prev = now
        lost, extra = len(lost_at), ""
        if name == "kills":
            # Each processor's lifetime: the requests served meanwhile, and how many lost.
            ends = sorted(kill_at + [t1])
            dead = near = 0
            lives = [(max(a, t0), min(e for e in ends if e > a)) for a in starts if a < t1]
            lives = [(a, b) for a, b in lives if b > t0]
            for a, b in lives:
                ts = [v[1] for v in mine.values() if a <= v[1] < b]
                gone = [t for t in lost_at if a <= t < b]
                dead += bool(ts) and len(gone) == len(ts)
                near += 0 if len(gone) == len(ts) else sum(1 for t in gone if b - t <= 2)
            extra = ("; of the %d processors that ran, %d exported no span of the requests served while they ran; "
                     "%d lost in the 2 s before a kill by the others" % (len(lives), dead, near))
        elif name == "loader":
            # What a loader restart loses (its queue, and what happened while no loader
            # ran) is reported by the processor as a gap of unknown size at its place
            # (a Loss "subscription_restarted", counted in its summary): requests lost
            # around a reported restart are not counted as lost; around an unreported
            # one, only up to the lost events the processor reported.
            at = sum(1 for t in lost_at if any(a - 1 <= t <= b + 2 for a, b in restart_at))
            reported = acc["restarts"] >= len(restart_at)
            excused = at if reported else min(at, acc["events"])
            extra = ("; lost at loader restart %d (the processor reported %d subscription restarts of %d as "
                     "gaps and %d lost events, so %d not counted as lost)" % (
                         at, acc["restarts"], len(restart_at), acc["events"], excused))
            lost -= excused
        elif name == "outage":
            # Beyond the export queue's bound spans are dropped or fail, and the
            # processor counts them, server spans apart (one per request served):
            # requests lost up to that count are reported losses.
            excused = min(lost, acc["server_gone"])
            extra = ("; exporting resumed %s after the collector came back; the processor reported %d server "
                     "spans dropped or failed in export, so %d requests not counted as lost" % (
                         "never (30 s)" if resume is None else "%.1f s" % resume, acc["server_gone"], excused))
            lost -= excused
            if resume is None or resume > 10:
                failed.append("outage: spans did not reach the receiver within 10 s of the collector's return")
        elif name == "churn":
            cc = [p for p in served if p.startswith(("/cc/", "/cs/"))]
            curl = sum(1 for p in cc if "curl" in client.get(p, ()))
            other = collections.Counter(n for p in cc for n in client.get(p, ()) if n != "curl")
            extra = "; curl client spans for %d of %d (other names: %s)" % (
                curl, len(cc), ", ".join("%s %d" % kv for kv in other.items()) or "none")
        rl, rp = rss_range(t0, t1, 2, 3), rss_range(t0, t1, 5, 6)
        if name == "steady":
            steady = {"loader": rl, "processor": rp}
        for who, r in (("loader", rl), ("processor", rp)) if name != "warmup" else ():
            base = steady.get(who)
            if r is None:
                continue
            if name == "outage" and who == "processor" and down:
                # Bounded: the second half of the outage's maximum within 1.2 x the first's.
                mid = (down[0] + settle + down[1]) / 2
                h1 = [x[6] / 1024 for x in rss if down[0] + settle <= x[0] < mid and x[6] > 0]
                h2 = [x[6] / 1024 for x in rss if mid <= x[0] <= down[1] and x[6] > 0]
                ok = not h1 or not h2 or max(h2) <= 1.2 * max(h1)
                extra += "; processor RSS max %.1f MiB in the first half of the outage, %.1f in the second" % (
                    max(h1 or [0]), max(h2 or [0]))
            elif r[2]:
                ok = r[1] / r[0] <= 1.2
            else:  # no sample old enough (processors killed within WARM s): against steady
                ok = base is None or r[1] <= 1.2 * base[1]
            if not ok:
                failed.append("%s: %s RSS %s (steady %s)" % (name, who, show(r), show(base)))
        print("phase %-6s %6.1f s: sent %d, served %d (%.0f/s); server spans for %d (%d span ids, %d duplicate ids, "
              "%d requests with several spans), %d with another service.name only (%s); lost %d%s; processor: %s; "
              "RSS loader %s, processor %s" % (
                  name, t1 - t0, sent[name], len(mine), len(mine) / (t1 - t0), len(mine) - len(lost_at), unique,
                  dups, several, misnamed, ", ".join("%s %d" % kv for kv in sorted(wrong.items())) or "none", len(lost_at), extra, describe(acc, where), show(rl), show(rp)))
        total.update(sent=sent[name], spans=unique, lost=lost)

    loaders = sorted(glob.glob(os.path.join(work, "loader-*.log")))
    stops = [line.split("loader stopped", 1)[1].strip() for f in loaders for line in open(f) if "loader stopped" in line]
    print("loaders: %d started; at their stop: %s" % (len(loaders), "; ".join(stops) or "none"))
    print("processors: %d started; in all (each one's last summary): %s; the receiver got %d spans" % (
        len(glob.glob(os.path.join(work, "processor-*.log"))), describe(*accounting("snapshot-final")), sum(ids.values())))
    for f in failed:
        print("FAILED:", f)
    print("faults: %s processor kills, %s loader restarts, collector down %s s, %d processes churned; "
          "%d requests, %d spans, lost %d; RSS loader %.1f MiB, processor %.1f MiB" % (
              kills, restarts, outage, len(servers) + len(clients), total["sent"], total["spans"], total["lost"],
              max(s[3] for s in rss) / 1024, max(s[6] for s in rss) / 1024))
    return 1 if total["lost"] or failed else 0


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        receive(sys.argv[2], sys.argv[3])
    else:
        a = sys.argv[2:]
        sys.exit(report(a[0], a[1], float(a[2]), float(a[3]), a[4], a[5], a[6]))
