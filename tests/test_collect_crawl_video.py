"""icrawler wrapper (URL-list engine against a loopback server: no real crawl) and PyAV sampling."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from facelab.collect.crawl import crawl, slug
from facelab.collect.fetch import FetchConfig
from facelab.collect.video import sample_frames, save_frames
from facelab.errors import ConfigError


class _H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        buf = io.BytesIO()
        Image.fromarray(np.full((80, 80, 3), sum(self.path.encode()) % 255, np.uint8)).save(buf, "JPEG")
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())


def test_crawl_urllist_on_loopback(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        urls = tmp_path / "my list.txt"
        urls.write_text("\n".join(f"http://127.0.0.1:{srv.server_address[1]}/{i}.jpg" for i in range(3)))
        out = crawl(str(urls), tmp_path / "raw", engine="urllist", max_num=3, threads=1,
                    config=FetchConfig(allow_hosts=("127.0.0.1",)))
    finally:
        srv.shutdown()
    assert out == tmp_path / "raw" / "my-list"
    files = sorted(p for p in out.iterdir() if p.name != "sources.csv")
    assert len(files) == 3
    for f in files:
        Image.open(f).verify()


def test_crawl_rejects_unknown_engine(tmp_path):
    with pytest.raises(ConfigError, match="bing"):
        crawl("x", tmp_path, engine="altavista")
    assert slug("Ada Lovelace / 1843") == "ada-lovelace-1843"


def _video(path, seconds=2.0, fps=10):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            arr = np.full((48, 64, 3), i * 10 % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_sample_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    _video(path)
    got = list(sample_frames(path, every=0.5))
    assert [round(t, 2) for t, _ in got] == [0.0, 0.5, 1.0, 1.5]
    assert got[0][1].shape == (48, 64, 3) and got[0][1].dtype == np.uint8
    saved = save_frames(path, tmp_path / "frames", every=1.0, max_frames=1)
    assert [p.name for p in saved] == ["clip.mp4_00000000.jpg"]


def test_sample_frames_bad_file(tmp_path):
    from facelab.errors import ImageDecodeError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ImageDecodeError, match="bad.mp4"):
        list(sample_frames(bad))
