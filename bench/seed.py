#!/usr/bin/env python3
"""Push deterministic generated OCI images to a registry with the OCI push API.

Python 3 stdlib only. Content is generated and uploaded in 1 MiB pieces (a
256 MiB layer is never held in memory): each layer is a valid uncompressed tar
holding one file of pseudo-random bytes from random.Random(seed), sized so the
layer blob has exactly the requested size.

Usage: seed.py http://127.0.0.1:PORT [--out images.json]
Writes a JSON description (names, tags, manifest + blob digests and sizes).
"""
import argparse
import hashlib
import http.client
import json
import random
import sys
import tarfile
import urllib.parse

MiB = 1 << 20
CHUNK = MiB

# name -> list of (layer size in bytes, seed)
IMAGES = {
    "bench/small": [(2 * MiB, 1)],
    "bench/multi": [(24 * MiB, 11), (16 * MiB, 12), (10 * MiB, 13), (6 * MiB, 14), (4 * MiB, 15)],
    "bench/big": [(256 * MiB, 21)],
}
TAG = "latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def layer_chunks(size, seed):
    """Yield the bytes of a tar of exactly `size` bytes: header, data, 2 zero blocks."""
    data_len = size - 512 - 1024
    assert data_len > 0 and data_len % 512 == 0, size
    ti = tarfile.TarInfo(name=f"data-{seed}.bin")
    ti.size = data_len
    ti.mode = 0o644
    ti.mtime = 1700000000
    ti.uname = ti.gname = "root"
    header = ti.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(header) == 512
    yield header
    rng = random.Random(seed)
    left = data_len
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n
    yield b"\0" * 1024


class Registry:
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=300, blocksize=CHUNK)

    def request(self, method, path, body=None, headers=None, expect=(200, 201, 202, 204)):
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            if r.status not in expect:
                raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
            return r, data
        finally:
            c.close()

    @staticmethod
    def _path(location):
        u = urllib.parse.urlsplit(location)
        return u.path + ("?" + u.query if u.query else "")

    def exists(self, name, digest):
        r, _ = self.request("HEAD", f"/v2/{name}/blobs/{digest}", expect=(200, 404))
        return r.status == 200

    def push_blob_stream(self, name, size, chunks):
        """POST an upload, PATCH the streamed body (hashing as it goes), PUT ?digest=."""
        r, _ = self.request("POST", f"/v2/{name}/blobs/uploads/")
        loc = self._path(r.getheader("Location"))
        h = hashlib.sha256()
        sent = [0]

        def body():
            for c in chunks:
                h.update(c)
                sent[0] += len(c)
                yield c

        r, _ = self.request("PATCH", loc, body=body(),
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Length": str(size)})
        assert sent[0] == size, (sent[0], size)
        digest = "sha256:" + h.hexdigest()
        loc = self._path(r.getheader("Location"))
        sep = "&" if "?" in loc else "?"
        self.request("PUT", f"{loc}{sep}digest={urllib.parse.quote(digest)}",
                     body=b"", headers={"Content-Length": "0"})
        return digest

    def push_blob_bytes(self, name, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.exists(name, digest):
            got = self.push_blob_stream(name, len(data), [data])
            assert got == digest
        return digest

    def put_manifest(self, name, ref, data, media_type):
        r, _ = self.request("PUT", f"/v2/{name}/manifests/{ref}", body=data,
                            headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        return r.getheader("Docker-Content-Digest")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("registry", help="e.g. http://127.0.0.1:5000")
    ap.add_argument("--out", help="write image description JSON here")
    ap.add_argument("--only", action="append", help="push only these image names")
    ap.add_argument("--big-mib", type=int, help="size of bench/big's layer in MiB (default 256)")
    a = ap.parse_args()
    if a.big_mib:
        IMAGES["bench/big"] = [(a.big_mib * MiB, 21)]
    reg = Registry(a.registry)
    out = {}
    for name, layers in IMAGES.items():
        if a.only and name not in a.only:
            continue
        descs = []
        for size, seed in layers:
            d = reg.push_blob_stream(name, size, layer_chunks(size, seed))
            descs.append({"mediaType": OCI_LAYER, "digest": d, "size": size})
            print(f"  {name}: layer {d[:19]} {size / MiB:.0f} MiB", file=sys.stderr)
        config = json.dumps({
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "bench/seed.py"}
                        for _ in descs],
        }, sort_keys=True, separators=(",", ":")).encode()
        cdigest = reg.push_blob_bytes(name, config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": len(config)},
            "layers": descs,
        }, sort_keys=True, separators=(",", ":")).encode()
        mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        got = reg.put_manifest(name, TAG, manifest, OCI_MANIFEST)
        if got and got != mdigest:
            raise RuntimeError(f"manifest digest mismatch {got} != {mdigest}")
        out[name] = {"tag": TAG, "manifest": mdigest, "manifest_size": len(manifest),
                     "config": cdigest, "layers": descs,
                     "total_size": sum(d["size"] for d in descs)}
        print(f"pushed {name}:{TAG} {mdigest[:19]} ({out[name]['total_size'] / MiB:.0f} MiB "
              f"in {len(descs)} layers)", file=sys.stderr)
    js = json.dumps(out, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(js + "\n")
    else:
        print(js)


if __name__ == "__main__":
    main()
