"""`facelab serve`: the real server (uvicorn on a loopback port, in a thread) called over HTTP.

The attribute model is the session's tiny trained run (tests/conftest.py); the face database
uses the whole-image detector and the `pixels` embedder on synthetic "people" (a fixed random
8x8 pattern scaled up, plus noise), as in tests/test_facedb_hardening.py.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from conftest import running
from PIL import Image
from typer.testing import CliRunner

from facelab.facedb.db import FaceDB, FaceDBConfig
from facelab.serve import ServeConfig, create_app
from facelab.serve.keys import KeyStore

MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000


# -- images ------------------------------------------------------------------------------------------
def person(seed: int, variant: int = 0, size: int = 64) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 255, (8, 8, 3)).astype(np.float32)
    img = np.kron(base, np.ones((size // 8, size // 8, 1)))
    noise = np.random.default_rng(1000 * seed + variant).normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def png_header_bomb(width: int, height: int, rows: int = 64) -> bytes:
    """A PNG that claims width x height pixels of zeros: a few KB that would decode to
    gigabytes (only the first rows' data is included; a real bomb compresses the rest too)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def up(data: bytes, name: str = "a.png", ctype: str = "image/png"):
    return (name, data, ctype)


class Srv:
    def __init__(self, base: str, keys: dict[str, str], app, root: Path) -> None:
        self.base, self.keys, self.app, self.root = base, keys, app, root

    def client(self, key: str | None = "rw") -> httpx.Client:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def srv(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    FaceDB.init(root / "faces.db", FaceDBConfig(embedder="pixels", detector="whole", fallback="whole",
                                               phash_distance=-1)).close()
    cfg = ServeConfig(db=str(root / "faces.db"), run=str(tiny_run), max_body_bytes=MAX_BODY,
                      max_pixels=MAX_PIXELS, url_allow_hosts=("localhost",), url_deadline=10)
    ks = KeyStore(cfg.keys_path)
    keys = {name: ks.add(name, scopes)[1] for name, scopes in
            [("read", "read"), ("write", "write"), ("rw", "read,write"), ("admin", "admin"),
             ("all", "read,write,admin"), ("revoked", "read,write,admin")]}
    ks.revoke(keys["revoked"].split("_")[1])
    ks.close()
    app = create_app(cfg)
    with running(app) as base:
        yield Srv(base, keys, app, root)


def enroll(c: httpx.Client, name: str, *arrays: np.ndarray, **data) -> httpx.Response:
    files = [("images", up(png(a), f"{i}.png")) for i, a in enumerate(arrays)]
    return c.post("/v1/identities", data={"name": name, **data}, files=files)


def err(r: httpx.Response, status: int, kind: str | None = None) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert body["status"] == status and "Traceback" not in r.text
    if kind:
        assert body["type"] == kind, body
    return body["message"]


# -- health, metrics, OpenAPI ----------------------------------------------------------------------
def test_health_ready_metrics_openapi_and_info(srv):
    assert httpx.get(srv.base + "/healthz").json()["status"] == "ok"
    assert httpx.get(srv.base + "/readyz").json()["status"] == "ready"
    spec = httpx.get(srv.base + "/openapi.json").json()
    for path in ("/v1/analyze", "/v1/verify", "/v1/search", "/v1/identities", "/v1/identities/{name}"):
        assert path in spec["paths"], path
    assert {"APIKeyHeader", "HTTPBearer"} <= set(spec["components"]["securitySchemes"])
    with srv.client("read") as c:
        info = c.get("/v1/info").json()
    assert info["attributes"]["backend"] == "torch" and info["database"]["embedder"] == "pixels:1"
    assert info["key"]["scopes"] == ["read"] and info["limits"]["max_pixels"] == MAX_PIXELS
    text = httpx.get(srv.base + "/metrics").text
    load = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("facelab_model_load_seconds ")))
    assert load > 0
    assert 'facelab_requests_total{method="GET",route="/v1/info",status="200"} 1' in text
    assert 'facelab_request_seconds_count{method="GET",route="/healthz"}' in text


# -- scopes ------------------------------------------------------------------------------------------
def test_every_endpoint_refuses_without_a_key_and_with_the_wrong_scope(srv):
    img = png(person(1))
    calls = {  # endpoint -> (method, path, kwargs, scope it needs)
        "info": ("GET", "/v1/info", {}, "read"),
        "analyze": ("POST", "/v1/analyze", {"files": {"image": up(img)}}, "read"),
        "verify": ("POST", "/v1/verify", {"files": {"image_a": up(img), "image_b": up(img)}}, "read"),
        "search": ("POST", "/v1/search", {"files": {"image": up(img)}}, "read"),
        "list": ("GET", "/v1/identities", {}, "read"),
        "show": ("GET", "/v1/identities/nobody", {}, "read"),
        "crop": ("GET", "/v1/identities/nobody/faces/1/crop", {}, "read"),
        "enroll": ("POST", "/v1/identities", {"data": {"name": "x"}, "files": [("images", up(img))]}, "write"),
        "delete": ("DELETE", "/v1/identities/nobody", {}, "admin"),
        "keys": ("GET", "/v1/keys", {}, "admin"),
        "add_key": ("POST", "/v1/keys", {"json": {"name": "k", "scopes": ["read"]}}, "admin"),
        "revoke_key": ("DELETE", "/v1/keys/00000000", {}, "admin"),
        "audit": ("GET", "/v1/audit", {}, "admin"),
    }
    wrong = {"read": "write", "write": "read", "admin": "rw"}
    for name, (method, path, kw, scope) in calls.items():
        with srv.client(None) as c:
            assert "API key" in err(c.request(method, path, **kw), 401, "unauthorized"), name
            r = c.request(method, path, headers={"Authorization": "Bearer flk_0000_nope"}, **kw)
            err(r, 401, "unauthorized")
        with srv.client("revoked") as c:
            assert "revoked" in err(c.request(method, path, **kw), 401), name
        with srv.client(wrong[scope]) as c:
            assert repr(scope) in err(c.request(method, path, **kw), 403, "forbidden"), name
    with srv.client("all") as c:  # the right scope gets past auth (here: 404, nothing there)
        err(c.get("/v1/identities/nobody"), 404, "not_found")
        err(c.delete("/v1/identities/nobody"), 404, "not_found")
    # a key in the URL is not a key
    err(httpx.get(srv.base + "/v1/info", params={"api_key": srv.keys["read"]}), 401)


# -- analyze, enroll, verify, search, delete ---------------------------------------------------------------
def test_analyze_returns_faces_with_attributes_and_identity(srv):
    with srv.client("rw") as c:
        r = c.post("/v1/analyze", files={"image": up(png(person(2)))})
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["width"], out["height"]) == (64, 64) and len(out["faces"]) == 1
        face = out["faces"][0]
        assert face["box"] == [0.0, 0.0, 64.0, 64.0] and face["identity"] is None
        assert set(face["attributes"]) == {"mask", "gender", "age"} and 0 <= face["class18"] < 18
        for task, probs in face["probabilities"].items():
            assert abs(sum(probs.values()) - 1) < 1e-3
            assert face["attributes"][task] == max(probs, key=probs.get)
        # JPEG too, and the identity match when asked
        assert enroll(c, "carol", person(3)).status_code == 201
        buf = io.BytesIO()
        Image.fromarray(person(3, 1)).save(buf, "JPEG", quality=95)
        r = c.post("/v1/analyze", files={"image": up(buf.getvalue(), "c.jpg", "image/jpeg")},
                   data={"identify": "true"})
        ident = r.json()["faces"][0]["identity"]
        assert ident["name"] == "carol" and ident["match"] and ident["distance"] <= ident["threshold"]
        r = c.post("/v1/analyze", files={"image": up(png(person(4)))}, data={"identify": "true"})
        ident = r.json()["faces"][0]["identity"]
        assert ident["name"] is None and ident["nearest"] == "carol" and not ident["match"]
        err(c.post("/v1/analyze", data={"identify": "true"}), 400, "bad_request")  # no image, no url


def test_enroll_list_show_verify_search_then_delete(srv):
    with srv.client("rw") as c:
        r = enroll(c, "ada", person(10), person(10, 1))
        assert r.status_code == 201 and [x["status"] for x in r.json()["results"]] == ["added", "added"]
        assert enroll(c, "bob", person(11)).status_code == 201
        # all-or-nothing: one unusable photo stores nothing, and the message names no server path
        msg = err(enroll(c, "eve", person(12), np.full((64, 64, 3), 128, np.uint8)), 422, "enroll_refused")
        assert "image-2" in msg and "/tmp" not in msg and "facelab-enroll" not in msg
        names = {i["name"]: i for i in c.get("/v1/identities").json()["identities"]}
        assert {"ada", "bob"} <= set(names) and "eve" not in names and names["ada"]["faces"] == 2
        shown = c.get("/v1/identities/ada").json()
        assert len(shown["faces"]) == 2 and all(f["has_crop"] for f in shown["faces"])
        crop = c.get(f"/v1/identities/ada/faces/{shown['faces'][0]['face_id']}/crop")
        assert crop.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(crop.content)).size[0] > 8
        err(c.get(f"/v1/identities/bob/faces/{shown['faces'][0]['face_id']}/crop"), 404)  # ada's face, not bob's
        # verify: image vs identity, image vs image
        v = c.post("/v1/verify", files={"image_a": up(png(person(10, 2)))}, data={"identity": "ada"}).json()
        assert v["same"] and v["against"] == "identity"
        v = c.post("/v1/verify", files={"image_a": up(png(person(10, 2)))}, data={"identity": "bob"}).json()
        assert not v["same"] and v["distance"] > v["threshold"]
        v = c.post("/v1/verify", files={"image_a": up(png(person(11, 3))), "image_b": up(png(person(11, 4)))}).json()
        assert v["same"] and v["against"] == "image"
        err(c.post("/v1/verify", files={"image_a": up(png(person(10)))}, data={"identity": "/etc/passwd"}), 404)
        err(c.post("/v1/verify", files={"image_a": up(png(person(10)))}), 400)  # neither image_b nor identity
        # search: top-k, ranked
        s = c.post("/v1/search", files={"image": up(png(person(11, 5)))}, data={"k": "3"}).json()
        matches = s["results"][0]["matches"]
        assert matches[0]["identity"] == "bob" and matches[0]["match"] and len(matches) == 3
        assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
        err(c.post("/v1/search", files={"image": up(png(person(11)))}, data={"k": "0"}), 422)
        err(c.post("/v1/search", files={"image": up(png(np.full((64, 64, 3), 9, np.uint8)))}), 422, "no_face")
        # delete needs admin; then bob is gone everywhere
        err(c.delete("/v1/identities/bob"), 403)
    with srv.client("admin") as c:
        d = c.delete("/v1/identities/bob")
        assert d.status_code == 200 and d.json()["embedding_ids"] == 1 and d.json()["wal_truncated"]
        audit = c.get("/v1/audit", params={"action": "delete_identity"}).json()
    import hashlib

    row = audit[0]
    assert row["outcome"] == "ok" and row["target_sha256"] == hashlib.sha256(b"bob").hexdigest()
    assert "bob" not in json.dumps(audit)
    with srv.client("rw") as c:
        s = c.post("/v1/search", files={"image": up(png(person(11, 5)))}, data={"k": "5"}).json()
        assert all(m["identity"] != "bob" for m in s["results"][0]["matches"])
        assert not any(m["match"] for m in s["results"][0]["matches"])
        err(c.get("/v1/identities/bob"), 404)
        err(c.post("/v1/verify", files={"image_a": up(png(person(11)))}, data={"identity": "bob"}), 404)
        assert "bob" not in {i["name"] for i in c.get("/v1/identities").json()["identities"]}
    with srv.client("admin") as c:
        err(c.delete("/v1/identities/bob"), 404)
    db = sqlite3.connect(srv.root / "faces.db")
    assert db.execute("SELECT COUNT(*) FROM identities WHERE name = 'bob'").fetchone()[0] == 0
    db.close()


# -- limits and hostile input -----------------------------------------------------------------------------
def test_body_limit_bomb_non_image_and_content_types(srv):
    with srv.client("rw") as c:
        big = os.urandom(MAX_BODY + 1000)
        assert "limit" in err(c.post("/v1/analyze", files={"image": up(big)}), 413, "too_large")

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            yield b"Content-Type: image/png\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 65536
        r = c.post("/v1/analyze", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        err(r, 413, "too_large")
        # decompression bombs: refused from the header, before decoding, quickly
        for w, h in [(3000, 3000), (60000, 60000)]:
            bomb = png_header_bomb(w, h)
            assert len(bomb) < 100_000
            t0 = time.perf_counter()
            msg = err(c.post("/v1/analyze", files={"image": up(bomb)}), 413, "too_large")
            assert time.perf_counter() - t0 < 5 and "before decoding" in msg
            err(enroll_raw(c, "bomb", bomb), 413)
        # not images
        err(c.post("/v1/analyze", files={"image": up(b"%PDF-1.4 hello", "a.png", "image/png")}), 415,
            "unsupported_media_type")
        err(c.post("/v1/analyze", files={"image": up(png(person(1)), "a.txt", "text/plain")}), 415)
        err(c.post("/v1/analyze", json={"image": "x"}), 415)
        err(c.post("/v1/search", content=png(person(1)), headers={"Content-Type": "image/png"}), 415)
        err(c.post("/v1/analyze", files={"image": up(png(person(1))[:60])}), 422, "bad_image")  # truncated
    text = httpx.get(srv.base + "/metrics").text
    assert 'facelab_refused_total{reason="body_too_large"}' in text


def enroll_raw(c: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return c.post("/v1/identities", data={"name": name}, files=[("images", up(data))])


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []
    body = b""

    def do_GET(self):
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_url_input_is_fetched_with_the_private_address_guard(srv):
    _ImageHandler.body = png(person(20))
    _ImageHandler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with srv.client("read") as c:
            for url in (f"http://127.0.0.1:{port}/a.png", f"http://[::1]:{port}/a.png",
                        "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.png"):
                msg = err(c.post("/v1/analyze", data={"url": url}), 400, "url_refused")
                assert "private" in msg or "not public" in msg or "refus" in msg, msg
            assert _ImageHandler.hits == []  # not one byte was requested from the private address
            err(c.post("/v1/analyze", data={"url": "file:///etc/passwd"}), 400)
            # a host the operator allowed (here: a local mirror) is fetched, and analyzed
            r = c.post("/v1/analyze", data={"url": f"http://localhost:{port}/a.png"})
            assert r.status_code == 200, r.text
            assert len(r.json()["faces"]) == 1 and _ImageHandler.hits == ["/a.png"]
    finally:
        httpd.shutdown()


# -- concurrency, rate limit, errors, CORS -------------------------------------------------------------------
def test_healthz_answers_while_a_slow_analysis_runs(srv):
    service = srv.app.state.service
    real = service.analyzer.analyze
    started = threading.Event()

    def slow(image):
        started.set()
        time.sleep(2.0)
        return real(image)

    service.analyzer.analyze = slow
    try:
        result = {}

        def call():
            with srv.client("read") as c:
                result["r"] = c.post("/v1/analyze", files={"image": up(png(person(1)))})

        t = threading.Thread(target=call)
        t.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        assert httpx.get(srv.base + "/healthz").status_code == 200
        assert time.perf_counter() - t0 < 0.5  # the event loop is free while the model runs
        t.join()
        assert result["r"].status_code == 200
    finally:
        service.analyzer.analyze = real


def test_unexpected_errors_are_json_without_internals(srv):
    service = srv.app.state.service

    def boom(*a):
        raise RuntimeError("secret detail /srv/internal/path")

    real = service.identities
    service.identities = boom
    try:
        with srv.client("read") as c:
            r = c.get("/v1/identities")
        msg = err(r, 500, "internal")
        assert "reference" in msg and "secret" not in r.text and "/srv" not in r.text
    finally:
        service.identities = real
    with srv.client("read") as c:
        assert "limit" in err(c.get("/v1/identities", params={"limit": "-3"}), 422, "invalid_request")
        err(c.get("/v1/nothing-here"), 404)


def test_cors_is_off_by_default(srv):
    r = httpx.options(srv.base + "/v1/info", headers={"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(srv.base + "/v1/info", headers={"Origin": "https://evil.example", "X-API-Key": srv.keys["read"]})
    assert "access-control-allow-origin" not in r.headers
    with pytest.raises(Exception, match="CORS origin"):
        ServeConfig(cors_origins=["*"])


def test_rate_limit_per_key(tmp_path):
    cfg = ServeConfig(detector="none", keys=str(tmp_path / "k.db"), rate_per_minute=6)
    ks = KeyStore(cfg.keys_path)
    a, b = ks.add("a", "read")[1], ks.add("b", "read")[1]
    ks.close()
    with running(create_app(cfg)) as base:
        codes = [httpx.get(base + "/v1/info", headers={"X-API-Key": a}).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        r = httpx.get(base + "/v1/info", headers={"X-API-Key": a})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limited"
        assert httpx.get(base + "/v1/info", headers={"X-API-Key": b}).status_code == 200  # per key
        assert httpx.get(base + "/healthz").status_code == 200


# -- the CLI ---------------------------------------------------------------------------------------------
def test_cli_keys_add_list_revoke_store_only_hashes(tmp_path):
    from facelab.cli import _register, app

    _register()
    runner = CliRunner()
    db = str(tmp_path / "faces.db")
    res = runner.invoke(app, ["serve", "keys", "add", "door-cam", "--scopes", "read,write", "--db", db])
    assert res.exit_code == 0, res.output
    secret = res.output.strip().splitlines()[1]
    assert secret.startswith("flk_")
    keyfile = tmp_path / "faces.serve.db"
    assert keyfile.is_file() and (keyfile.stat().st_mode & 0o077) == 0
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("faces.serve.db*"))
    assert secret.encode() not in raw  # only the hash is stored
    listed = json.loads(runner.invoke(app, ["serve", "keys", "list", "--db", db]).output)
    assert listed[0]["name"] == "door-cam" and listed[0]["scopes"] == ["read", "write"] and "key" not in listed[0]
    ks = KeyStore(keyfile)
    assert ks.authenticate(secret).name == "door-cam" and ks.authenticate(secret + "x") is None
    res = runner.invoke(app, ["serve", "keys", "revoke", listed[0]["id"], "--db", db])
    assert res.exit_code == 0 and ks.authenticate(secret) is None
    assert [r["action"] for r in ks.audit_rows()] == ["revoke_key", "add_key"]
    ks.close()
    res = runner.invoke(app, ["serve", "keys", "add", "x", "--scopes", "root", "--db", db])
    assert res.exit_code != 0 and "scopes" in str(res.exception)


def test_cli_serve_in_a_subprocess_shares_the_database(srv, tmp_path):
    """`facelab serve` as a second process on the same database: what it enrolls, the first
    server finds (SQLite WAL + the index rebuilt when another process changed the database)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facelab", "serve", "--db", str(srv.root / "faces.db"),
                             "--port", str(port), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = httpx.post(base + "/v1/identities", headers={"X-API-Key": srv.keys["write"]},
                       data={"name": "dora"}, files=[("images", up(png(person(30))))])
        assert r.status_code == 201, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with srv.client("read") as c:
        s = c.post("/v1/search", files={"image": up(png(person(30, 1)))}, data={"k": "1"}).json()
    assert s["results"][0]["matches"][0]["identity"] == "dora"
