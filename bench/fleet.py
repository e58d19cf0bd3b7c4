#!/usr/bin/env python3
"""Helpers of bench/fleet.sh.

  fleet.py throttle PORT UPSTREAM_URL MIB_PER_S LOG
      A threaded HTTP proxy on 127.0.0.1:PORT in front of UPSTREAM_URL that sends blob bodies at
      MIB_PER_S in all (one bandwidth shared by every response, as an upstream's) and appends
      one line per blob GET to LOG.
  fleet.py clients OUT PATH N URL...
      N concurrent GETs of PATH spread round-robin over the URLs (the replicas); writes, per
      client, the replica, status, bytes, sha256 and the times to the first and the last byte
      (seconds from the common start) as JSON to OUT.
  fleet.py section RESULTS_JSON MD_PATH
      Write (or replace) the "## Fleet" section of MD_PATH from the results of the setups.
"""

import hashlib
import http.client
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import urllib.parse

CHUNK = 64 * 1024


def throttle(port, upstream, mib_per_s, log):
    up = urllib.parse.urlsplit(upstream)
    rate = float(mib_per_s) * 1024 * 1024
    lock = threading.Lock()
    # One budget for every blob body at once, as an upstream with that much bandwidth: each chunk
    # takes the next free slot of the shared schedule.
    budget = {"free_at": 0.0}

    def pace(n):
        with lock:
            now = time.monotonic()
            start = max(now, budget["free_at"])
            budget["free_at"] = start + n / rate
            due = budget["free_at"]
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self, method):
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, self.path, headers=headers)
            resp = conn.getresponse()
            blob = method == "GET" and "/blobs/sha256:" in self.path
            if blob:
                with lock, open(log, "a") as f:
                    f.write(f"{time.time():.3f} {self.path} {self.headers.get('Range', '-')}\n")
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length")
            if length is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if method == "HEAD":
                return
            while True:
                data = resp.read(CHUNK)
                if not data:
                    break
                if blob and rate > 0:
                    pace(len(data))
                self.wfile.write(data)
            conn.close()

        def do_GET(self):
            self.forward("GET")

        def do_HEAD(self):
            self.forward("HEAD")

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    Server(("127.0.0.1", int(port)), Handler).serve_forever()


def clients(out, path, n, urls):
    results = [None] * n
    start = time.monotonic()
    barrier = threading.Barrier(n)

    def one(i):
        base = urllib.parse.urlsplit(urls[i % len(urls)])
        r = {"client": i, "replica": i % len(urls), "status": None, "bytes": 0,
             "first_byte_s": None, "last_byte_s": None, "sha256": None, "error": None}
        h = hashlib.sha256()
        try:
            conn = http.client.HTTPConnection(base.hostname, base.port, timeout=600)
            barrier.wait()
            conn.request("GET", path)
            resp = conn.getresponse()
            r["status"] = resp.status
            while True:
                data = resp.read1(1 << 20) if hasattr(resp, "read1") else resp.read(1 << 20)
                if not data:
                    break
                if r["first_byte_s"] is None:
                    r["first_byte_s"] = round(time.monotonic() - start, 3)
                h.update(data)
                r["bytes"] += len(data)
            r["last_byte_s"] = round(time.monotonic() - start, 3)
            r["sha256"] = "sha256:" + h.hexdigest()
        except Exception as e:  # reported, not raised: one broken client is a result
            r["error"] = str(e)
        results[i] = r

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


def per_replica(clients_, digest, size):
    rows = {}
    for c in clients_:
        rows.setdefault(c["replica"], []).append(c)
    out = []
    for rep in sorted(rows):
        cs = rows[rep]
        ok = [c for c in cs if c["status"] == 200 and c["bytes"] == size and c["sha256"] == digest]
        firsts = [c["first_byte_s"] for c in cs if c["first_byte_s"] is not None]
        lasts = [c["last_byte_s"] for c in ok]
        out.append({
            "replica": rep, "clients": len(cs), "ok": len(ok),
            "first_byte_min": min(firsts) if firsts else None,
            "first_byte_max": max(firsts) if firsts else None,
            "last_byte_max": max(lasts) if lasts else None,
        })
    return out


def fmt(v):
    return "—" if v is None else f"{v:.2f}"


def worst(reps, key):
    vals = [x[key] for x in reps]
    return None if not vals or any(v is None for v in vals) else max(vals)


def ratio_lines(by):
    """The fleet's latest first byte and slowest last byte over every replica, as a ratio of each
    other setup's."""
    if "fleet" not in by:
        return []
    out = []
    for key, reps in by.items():
        if key == "fleet":
            continue
        row = []
        for what, k in (("latest first byte", "first_byte_max"), ("slowest last byte", "last_byte_max")):
            f, o = worst(by["fleet"], k), worst(reps, k)
            row.append(f"{what} {fmt(f)} / {fmt(o)} s = " + ("—" if not f or not o else f"{f / o:.2f}x"))
        out.append(f"- fleet vs {key}: " + "; ".join(row))
    return out


def section(results_json, md_path):
    with open(results_json) as f:
        r = json.load(f)
    size, digest = r["size"], r["digest"]
    lines = [
        "## Fleet",
        "",
        f"Generated by `bench/fleet.sh` on {r['date']} ({r['build']}; load average at the start "
        f"{r['loadavg_start']}, at the end {r['loadavg_end']}).",
        "",
        f"{r['clients']} clients at once GET one uncached {size >> 20} MiB blob, spread round-robin over the "
        f"replicas, from an upstream Distribution registry behind a proxy sending blob bodies at "
        f"{r['mib_per_s']} MiB/s in all (shared by its responses, as an upstream's bandwidth). Every setup starts on an empty SeaweedFS bucket root and a fresh Redis "
        "prefix/db. Times are seconds from the moment all clients send their request; \"first byte\" is "
        "the earliest and the latest first byte among a replica's clients, \"last byte\" its slowest "
        "client's last byte. Upstream GETs are counted by the pacing proxy.",
        "",
        "| setup | replica | clients ok | first byte (earliest / latest) | last byte (slowest) | upstream GETs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setup in r["setups"]:
        reps = per_replica(setup["clients"], digest, size)
        for i, rep in enumerate(reps):
            name = setup["label"] if i == 0 else ""
            ups = str(setup["upstream_gets"]) if i == 0 else ""
            lines.append(
                f"| {name} | {rep['replica']} | {rep['ok']}/{rep['clients']} | "
                f"{fmt(rep['first_byte_min'])} / {fmt(rep['first_byte_max'])} | {fmt(rep['last_byte_max'])} | {ups} |"
            )
    by = {s["key"]: per_replica(s["clients"], digest, size) for s in r["setups"]}
    if "fleet" in by and "alone" in by:
        fleet_last = max((x["last_byte_max"] or float("inf")) for x in by["fleet"])
        alone_last = max((x["last_byte_max"] or float("inf")) for x in by["alone"])
        fleet_first = [x["first_byte_max"] for x in by["fleet"]]
        lines += [
            "",
            f"Targets: every replica's first byte within the holder's plus one hop (fleet, latest first "
            f"byte per replica: {', '.join(fmt(x) for x in fleet_first)} s); every client done within 1.1x "
            f"the single fill's time (fleet slowest {fmt(fleet_last)} s against one replica alone "
            f"{fmt(alone_last)} s: {fleet_last / alone_last:.2f}x).",
        ]
    ratios = ratio_lines(by)
    if ratios:
        lines += ["", "Ratios (the fleet with peer streaming against each other setup; below 1: the "
                  "fleet is faster):", ""] + ratios
    if r.get("problems"):
        lines += ["", "Problems during this run:", ""] + [f"- {p}" for p in r["problems"]]
    text = "\n".join(lines) + "\n"
    try:
        with open(md_path) as f:
            md = f.read()
    except OSError:
        md = ""
    pat = re.compile(r"(?ms)^## Fleet\n.*?(?=^## |\nRaw results \(JSON\)|\Z)")
    if pat.search(md):
        md = pat.sub(lambda _: text + "\n", md, count=1)
    elif "\nRaw results (JSON)" in md:
        head, tail = md.split("\nRaw results (JSON)", 1)
        md = head.rstrip() + "\n\n" + text + "\nRaw results (JSON)" + tail
    else:
        md = md.rstrip() + "\n\n" + text
    with open(md_path, "w") as f:
        f.write(md)
    print(text)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "throttle":
        throttle(*args)
    elif cmd == "clients":
        out, path, n, urls = args[0], args[1], int(args[2]), args[3:]
        clients(out, path, n, urls)
    elif cmd == "section":
        section(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
