#!/usr/bin/env python3
"""Soak load: many concurrent clients pulling through a mirror for a bounded time, while the
mirror's RSS, open file descriptors and threads are sampled every second.

Python 3 stdlib only. Each client thread holds one keep-alive connection and loops over a mix:
manifest by tag (GET, HEAD), whole blob (GET; sha256 checked), ranged blob GET (206 and the
bytes of that range checked), blob HEAD. Any unexpected status, wrong byte, or socket error is
an error (the connection is then reopened).

Usage: soak.py BASE_URL IMAGES_JSON PID SECONDS CLIENTS OUT_JSON [--label L]
Prints one JSON summary and writes it (plus the per-second samples) to OUT_JSON.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.parse

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json")
# whole GETs of blobs above this are checked by length only (hashing costs the shared cores)
HASH_LIMIT = 4 << 20
MIX = [("manifest_get", 30), ("manifest_head", 10), ("blob_get", 25), ("blob_range", 25),
       ("blob_head", 10)]


def proc_sample(pid):
    s = {"t": time.time()}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "VmRSS":
                s["rss_kib"] = int(v.split()[0])
            elif k == "Threads":
                s["threads"] = int(v)
    s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return s


def pct(sorted_xs, p):
    if not sorted_xs:
        return None
    i = min(len(sorted_xs) - 1, int(round(p / 100.0 * (len(sorted_xs) - 1))))
    return sorted_xs[i]


class Client(threading.Thread):
    def __init__(self, host, port, targets, deadline, seed):
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.targets, self.deadline = targets, deadline
        self.rng = random.Random(seed)
        self.lat = []  # (op, seconds)
        self.errors = []
        self.conn = None

    def connect(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method, path, headers):
        self.conn.request(method, path, headers=headers)
        r = self.conn.getresponse()
        return r

    def one(self, op):
        name, tag, mdigest, blobs = self.rng.choice(self.targets)
        digest, size = self.rng.choice(blobs)
        if op.startswith("manifest"):
            method = "GET" if op == "manifest_get" else "HEAD"
            r = self.request(method, f"/v2/{name}/manifests/{tag}", {"Accept": ACCEPT})
            body = r.read()
            if r.status != 200:
                return f"{op} {name}:{tag}: {r.status}"
            if r.getheader("Docker-Content-Digest") != mdigest:
                return f"{op} {name}:{tag}: digest {r.getheader('Docker-Content-Digest')}"
            if method == "GET" and "sha256:" + hashlib.sha256(body).hexdigest() != mdigest:
                return f"{op} {name}:{tag}: body does not match"
            return None
        path = f"/v2/{name}/blobs/{digest}"
        if op == "blob_head":
            r = self.request("HEAD", path, {})
            r.read()
            if r.status != 200 or int(r.getheader("Content-Length", -1)) != size:
                return f"HEAD {digest}: {r.status} length {r.getheader('Content-Length')}"
            return None
        if op == "blob_range":
            a = self.rng.randrange(size)
            b = min(size - 1, a + self.rng.randrange(1, 256 << 10))
            r = self.request("GET", path, {"Range": f"bytes={a}-{b}"})
            body = r.read()
            if r.status != 206 or len(body) != b - a + 1:
                return f"range {a}-{b} of {digest}: {r.status}, {len(body)} bytes"
            return None
        r = self.request("GET", path, {})
        h = hashlib.sha256() if size <= HASH_LIMIT else None
        n = 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            if h:
                h.update(chunk)
        if r.status != 200 or n != size:
            return f"GET {digest}: {r.status}, {n} of {size} bytes"
        if h and "sha256:" + h.hexdigest() != digest:
            return f"GET {digest}: wrong bytes"
        return None

    def run(self):
        ops = [o for o, w in MIX for _ in range(w)]
        self.connect()
        while time.time() < self.deadline:
            op = self.rng.choice(ops)
            t = time.perf_counter()
            try:
                err = self.one(op)
            except (OSError, http.client.HTTPException) as e:
                err = f"{op}: {type(e).__name__}: {e}"
                self.connect()
            self.lat.append((op, time.perf_counter() - t))
            if err:
                self.errors.append(err)
        # the end sample is of an idle mirror: no client connection left open
        self.conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("images")
    ap.add_argument("pid", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("clients", type=int)
    ap.add_argument("out")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.base)
    with open(a.images) as f:
        imgs = json.load(f)
    targets = []
    for name, img in imgs.items():
        blobs = [(l["digest"], l["size"]) for l in img["layers"]]
        targets.append((name, img.get("tag", "latest"), img["manifest"], blobs))

    samples = [proc_sample(a.pid)]
    deadline = time.time() + a.seconds
    clients = [Client(u.hostname, u.port, targets, deadline, i) for i in range(a.clients)]
    for c in clients:
        c.start()
    while time.time() < deadline:
        time.sleep(1.0)
        samples.append(proc_sample(a.pid))
    for c in clients:
        c.join(timeout=120)
    # after the load: what the mirror holds once idle again (connections closed)
    time.sleep(2.0)
    samples.append(proc_sample(a.pid))

    lat = sorted(x for c in clients for _, x in c.lat)
    by_op = {}
    for c in clients:
        for op, _ in c.lat:
            by_op[op] = by_op.get(op, 0) + 1
    errors = [e for c in clients for e in c.errors]
    during = samples[1:-1] or samples
    summary = {
        "label": a.label,
        "seconds": a.seconds,
        "clients": a.clients,
        "requests": len(lat),
        "by_op": by_op,
        "errors": len(errors),
        "error_samples": errors[:10],
        "p50_ms": round(pct(lat, 50) * 1000, 2) if lat else None,
        "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None,
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "rss_mib_start": round(samples[0]["rss_kib"] / 1024, 1),
        "rss_mib_max": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "rss_mib_end": round(samples[-1]["rss_kib"] / 1024, 1),
        "fds_start": samples[0]["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "fds_end": samples[-1]["fds"],
        "threads_start": samples[0]["threads"],
        "threads_max": max(s["threads"] for s in samples),
        "threads_end": samples[-1]["threads"],
        # first and last 5 s of load: flat means these agree
        "rss_mib_first5": round(max(s["rss_kib"] for s in during[:5]) / 1024, 1),
        "rss_mib_last5": round(max(s["rss_kib"] for s in during[-5:]) / 1024, 1),
    }
    with open(a.out, "w") as f:
        json.dump({"summary": summary, "samples": samples}, f)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
