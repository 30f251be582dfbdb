"""URL downloader against a real HTTP server on loopback."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from facelab.collect.download import DownloadConfig, Refused, check_url, download_urls


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[dict] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code, body=b"", ctype="image/jpeg", length=True, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        p = self.path
        _Handler.hits[p] = _Handler.hits.get(p, 0) + 1
        if p.startswith(("/ok.jpg", "/..%2F")):
            self._send(200, _jpeg())
        elif p == "/ok2.png":
            self._send(200, _png(), "image/png")
        elif p == "/slow.jpg":
            time.sleep(1.5)
            self._send(200, _jpeg())
        elif p == "/page.html":
            self._send(200, b"<html>hi</html>", "text/html")
        elif p == "/fake.jpg":
            self._send(200, b"this is text, not a jpeg" * 4)
        elif p == "/big.jpg":
            self._send(200, _jpeg() + b"\0" * 300_000)
        elif p == "/big-nolength.jpg":
            self._send(200, _jpeg() + b"\0" * 300_000, length=False)
            self.close_connection = True
        elif p == "/redirect-private":
            self._send(302, headers={"Location": "http://10.1.2.3/x.jpg"}, ctype="text/plain")
        elif p == "/redirect-ok":
            self._send(302, headers={"Location": "/ok2.png"}, ctype="text/plain")
        elif p == "/flaky.png":
            if _Handler.hits[p] == 1:
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, _png(), "image/png")
        else:
            self._send(404, b"nope", "text/plain")


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.hits = {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_downloader_against_loopback_server(server, tmp_path):
    cfg = DownloadConfig(workers=4, timeout=0.5, retries=1, backoff=0.01, max_bytes=100_000,
                         allow_hosts=("127.0.0.1",))
    urls = {name: f"{server}/{name}" for name in [
        "ok.jpg", "slow.jpg", "missing.jpg", "page.html", "fake.jpg", "big.jpg",
        "big-nolength.jpg", "redirect-private", "redirect-ok", "flaky.png", "..%2F..%2Fescape.jpg"]}
    out = tmp_path / "dl"
    rep = download_urls(list(urls.values()) + [urls["ok.jpg"]], out, cfg)
    status = {r.url.rsplit("/", 1)[1]: r.status for r in rep.results}
    assert status == {
        "ok.jpg": "ok", "slow.jpg": "error", "missing.jpg": "http-404", "page.html": "not-image",
        "fake.jpg": "not-image", "big.jpg": "too-large", "big-nolength.jpg": "too-large",
        "redirect-private": "refused", "redirect-ok": "ok", "flaky.png": "ok",
        "..%2F..%2Fescape.jpg": "ok",
    }
    assert len(rep.results) == len(urls)  # the repeated URL was fetched once
    assert _Handler.hits["/slow.jpg"] == 2  # one retry
    # everything written is a complete image inside the folder, named by hash
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    images = [p for p in files if p.name != "downloads.jsonl"]
    assert all(p.parent == out for p in files)
    assert sorted(p.suffix for p in images) == [".jpg", ".jpg", ".png", ".png"]
    for p in images:
        Image.open(p).verify()
    # a rerun skips finished URLs and retries only the transient failure
    before = dict(_Handler.hits)
    rep2 = download_urls(list(urls.values()), out, cfg)
    assert rep2.skipped == len(urls) - 1
    assert [r.url for r in rep2.results] == [urls["slow.jpg"]]
    assert _Handler.hits["/ok.jpg"] == before["/ok.jpg"]


def test_private_and_loopback_refused_by_default(server, tmp_path):
    with pytest.raises(Refused, match="non-public"):
        check_url(f"{server}/ok.jpg", DownloadConfig())
    with pytest.raises(Refused):
        check_url("file:///etc/passwd", DownloadConfig(allow_private=True))
    rep = download_urls([f"{server}/ok.jpg", "http://169.254.169.254/latest"], tmp_path, DownloadConfig(retries=0))
    assert {r.status for r in rep.results} == {"refused"}
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".jpg", ".png")]
    ok = download_urls([f"{server}/ok.jpg"], tmp_path / "b", DownloadConfig(allow_private=True))
    assert ok.counts["ok"] == 1
