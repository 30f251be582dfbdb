"""The guarded fetcher shared by ``db download`` and ``db crawl``, against loopback servers."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import socket
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from facelab.collect import crawl as crawl_mod
from facelab.collect.crawl import crawl, read_sources
from facelab.collect.download import DownloadConfig, download_urls
from facelab.collect.fetch import FetchConfig, Refused, check_url, fetch_to, save_url

LOCAL = ("127.0.0.1",)


def _jpeg(value: int = 120, side: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


_BOMB: list[bytes] = []


def _bomb() -> bytes:
    """About 0.25 MB of gzip that expands to 256 MB (a JPEG header, then zeros)."""
    if not _BOMB:
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [z.compress(_jpeg()[:16])]
        block = b"\0" * (1 << 20)
        parts += [z.compress(block) for _ in range(256)]
        _BOMB.append(b"".join(parts) + z.flush())
    return _BOMB[0]


class _H(BaseHTTPRequestHandler):
    hits: ClassVar[dict] = {}
    sent: ClassVar[dict] = {}
    headers_seen: ClassVar[dict] = {}
    port = 0

    def log_message(self, *a):
        pass

    def _head(self, code=200, ctype="image/jpeg", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _body(self, chunks) -> None:
        """Send a (possibly endless) generator until the client hangs up; count bytes sent."""
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                _H.sent[self.path] = _H.sent.get(self.path, 0) + len(chunk)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        p = self.path
        _H.hits[p] = _H.hits.get(p, 0) + 1
        _H.headers_seen[p] = dict(self.headers)
        if p.startswith("/ok"):
            body = _jpeg(sum(p.encode()) % 255)
            self._head(headers={"Content-Length": str(len(body))})
            self.wfile.write(body)
        elif p == "/redirect-localhost":
            self._head(302, "text/plain", {"Location": f"http://localhost:{_H.port}/ok.jpg",
                                           "Content-Length": "0"})
        elif p == "/redirect-metadata":
            self._head(302, "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/",
                                           "Content-Length": "0"})
        elif p == "/huge":  # 10 GB stream, never materialised
            self._head()
            self._body(_jpeg()[:16] if i == 0 else b"\0" * 65536 for i in range(160_000))
        elif p == "/huge-length":
            self._head(headers={"Content-Length": str(10 * 1024**3)})
            self._body(b"\0" * 65536 for _ in range(160_000))
        elif p == "/bomb":
            body = _bomb()
            self._head(headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))})
            self._body(body[i:i + 65536] for i in range(0, len(body), 65536))
        elif p == "/short.jpg":  # promises 50 kB, sends 1 kB and hangs up
            self._head(headers={"Content-Length": "50000"})
            self._body([_jpeg()[:1000]])
        elif p == "/gz.jpg":
            body = gzip.compress(_jpeg(7))
            self._head(headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))})
            self.wfile.write(body)
        elif p == "/drip":  # a valid start, then one byte every 0.2 s
            self._head(headers={"Content-Length": "100000"})
            self._body(_jpeg()[:16] if i == 0 else (time.sleep(0.2) or b"\0") for i in range(100))
        elif p == "/drip-headers":  # the status line, then the headers one byte every 0.2 s
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._body(time.sleep(0.2) or b"X" for _ in range(100))
        else:
            self._head(404, "text/plain", {"Content-Length": "0"})


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    _H.hits, _H.sent, _H.headers_seen, _H.port = {}, {}, {}, srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture()
def server6():
    """The same handler on [::1] (skipped where the machine has no IPv6 loopback)."""

    class V6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        srv = V6(("::1", 0), _H)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def _journal(folder) -> dict[str, dict]:
    return {r["url"]: r for r in read_sources(folder)}


def test_non_public_addresses_refused_by_fetch_download_and_crawl(server, server6, tmp_path):
    port = server.rsplit(":", 1)[1]
    bad = [f"{server}/ok1.jpg", f"http://localhost:{port}/ok2.jpg", f"http://[::1]:{server6}/ok3.jpg",
           "http://169.254.169.254/latest/meta-data/", f"http://[::ffff:127.0.0.1]:{port}/ok4.jpg",
           f"http://0.0.0.0:{port}/ok5.jpg"]
    for url in bad:
        with pytest.raises(Refused, match="non-public"):
            check_url(url, FetchConfig())
        with pytest.raises(Refused):
            fetch_to(url, tmp_path / "x.part", FetchConfig(retries=0))
    rep = download_urls(bad, tmp_path / "dl", DownloadConfig(retries=0))
    assert {r.status for r in rep.results} == {"refused"}
    urls = tmp_path / "list.txt"
    urls.write_text("\n".join(bad) + "\n")
    out = crawl(str(urls), tmp_path / "raw", engine="urllist", max_num=10, threads=2)
    journal = _journal(out)
    assert set(journal) == set(bad)
    assert {r["status"] for r in journal.values()} == {"refused"}
    assert [p.name for p in out.iterdir()] == ["sources.csv"]
    assert _H.hits == {}  # not one request reached the servers


def test_redirect_hops_are_rechecked(server, tmp_path):
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0)
    for path in ("/redirect-localhost", "/redirect-metadata"):
        res = save_url(f"{server}{path}", tmp_path, cfg)
        assert res.status == "refused" and "non-public" in res.detail
    assert "/ok.jpg" not in _H.hits
    # the allow-list admits the test server itself, and only it
    ok = save_url(f"{server}/ok.jpg", tmp_path, cfg)
    assert ok.status == "ok" and ok.path.endswith(".jpg")
    assert hashlib.sha256(Path(ok.path).read_bytes()).hexdigest() == ok.sha256
    assert _H.headers_seen["/ok.jpg"]["Accept-Encoding"] == "identity"


def test_size_cap_stops_a_huge_stream(server, tmp_path):
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0, max_bytes=1 << 20, deadline=8)
    t0 = time.monotonic()
    res = save_url(f"{server}/huge", tmp_path, cfg)
    assert res.status == "too-large"
    res2 = save_url(f"{server}/huge-length", tmp_path, cfg)
    assert res2.status == "too-large" and "Content-Length" in res2.detail
    assert time.monotonic() - t0 < 5
    time.sleep(0.2)
    assert _H.sent["/huge"] < 32 << 20  # stopped near the cap (plus socket buffers), not 10 GB
    short = save_url(f"{server}/short.jpg", tmp_path, cfg)  # a cut body is no whole image
    assert short.status == "error" and "early" in short.detail
    assert not list(tmp_path.iterdir())  # no .part left behind


def test_gzip_bomb_is_decoded_in_bounded_steps(server, tmp_path):
    _bomb()  # build the body before measuring
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0, max_bytes=2 << 20)
    tracemalloc.start()
    try:
        res = save_url(f"{server}/bomb", tmp_path, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.status == "too-large"
    assert peak < 16 << 20  # 256 MB of decoded zeros never sat in memory
    assert not list(tmp_path.iterdir())
    # a small gzip-encoded image is decoded (bounded) and kept
    ok = save_url(f"{server}/gz.jpg", tmp_path, cfg)
    assert ok.status == "ok"
    assert Path(ok.path).read_bytes() == _jpeg(7)


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_total_deadline_stops_a_slow_drip(server, tmp_path, path):
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0, timeout=5.0, deadline=1.5)
    t0 = time.monotonic()
    res = save_url(f"{server}{path}", tmp_path, cfg)
    took = time.monotonic() - t0
    assert res.status == "error" and "deadline" in res.detail
    assert took < 2.5
    assert not list(tmp_path.iterdir())


def test_malformed_url_lines_are_skipped_and_a_rerun_continues(server, tmp_path):
    port = server.rsplit(":", 1)[1]
    good = [f"{server}/ok-a.jpg", f"{server}/ok-b.jpg"]
    malformed = ["http://[::1", f"http://127.0.0.1:{port}99999/x.jpg", "http://exa mple.com/x.jpg",
                 f"http://127.0.0.1:{port}/\x07bell.jpg"]
    lines = [good[0], *malformed, good[1]]
    urls = tmp_path / "list.txt"
    urls.write_text("\n".join(lines) + "\n# a comment\n\n")
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0)
    out = crawl(str(urls), tmp_path / "raw", engine="urllist", max_num=10, threads=2, config=cfg)
    journal = _journal(out)
    assert {u: journal[u]["status"] for u in malformed} == dict.fromkeys(malformed, "bad-url")
    assert all(journal[u]["status"] == "ok" for u in good)
    hits = dict(_H.hits)
    crawl(str(urls), tmp_path / "raw", engine="urllist", max_num=10, threads=2, config=cfg)
    assert _H.hits == hits  # the rerun skipped everything finished
    assert len(read_sources(out)) == len(lines)
    # the same lines through db download: journaled as bad-url, the rest fetched, rerun fine
    dl = tmp_path / "dl"
    rep = download_urls(lines, dl, DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert sorted(r.status for r in rep.results) == ["bad-url"] * 4 + ["ok"] * 2
    rep2 = download_urls(lines, dl, DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert rep2.results == [] and rep2.skipped == len(lines)


def test_crawl_journal_records_source_urls(server, tmp_path):
    urls = [f"{server}/ok{i}.jpg" for i in range(4)] + [f"{server}/missing.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(urls))
    cfg = FetchConfig(allow_hosts=LOCAL, retries=0)
    out = crawl(str(lst), tmp_path / "raw", engine="urllist", max_num=3, threads=3, config=cfg)
    with open(out / "sources.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 3  # max_num counts kept images, never overshot by the threads
    images = sorted(p.name for p in out.iterdir() if p.suffix == ".jpg")
    assert sorted(r["file"] for r in ok) == images
    for r in ok:
        assert r["url"] in urls
        assert hashlib.sha256((out / r["file"]).read_bytes()).hexdigest() == r["sha256"]
    # a rerun continues: with max_num raised, the rest of the list is fetched
    crawl(str(lst), tmp_path / "raw", engine="urllist", max_num=10, threads=3, config=cfg)
    status = {r["url"]: r["status"] for r in read_sources(out)}
    assert status == {**dict.fromkeys(urls[:4], "ok"), urls[4]: "http-404"}


def test_search_engine_results_go_through_the_guard(server, tmp_path, monkeypatch):
    """A search engine's result URLs are only collected by icrawler; facelab fetches them."""
    from icrawler import builtin

    results = tmp_path / "results.txt"
    found = [f"{server}/ok-found.jpg", f"{server}/redirect-localhost",
             "http://169.254.169.254/latest/meta-data/"]
    results.write_text("\n".join(found))

    class FakeBing(builtin.UrlListCrawler):  # feeds fixed "search results"
        def crawl(self, keyword, max_num=1000, filters=None, **kw):
            super().crawl(str(results), max_num=max_num)

    monkeypatch.setattr(builtin, "BingImageCrawler", FakeBing)
    monkeypatch.setattr(crawl_mod, "search_urls", _fast(crawl_mod.search_urls))
    out = crawl("ada", tmp_path / "raw", engine="bing", max_num=5, min_size=(64, 64),
                config=FetchConfig(allow_hosts=LOCAL, retries=0))
    status = {u: r["status"] for u, r in _journal(out).items()}
    assert status == {found[0]: "ok", found[1]: "refused", found[2]: "refused"}
    assert _H.hits["/ok-found.jpg"] == 1  # fetched once, by facelab, not by icrawler too
    assert "/ok.jpg" not in _H.hits


def _fast(search_urls):
    """icrawler's downloader threads idle 5 s on an empty queue; shorten that for the test."""
    from icrawler.downloader import Downloader

    def wrapped(*args, **kwargs):
        orig = Downloader.worker_exec

        def quick(self, max_num, default_ext="", queue_timeout=5, **kw):
            return orig(self, max_num, default_ext, queue_timeout=0.5, **kw)

        Downloader.worker_exec = quick
        try:
            return search_urls(*args, **kwargs)
        finally:
            Downloader.worker_exec = orig

    return wrapped
