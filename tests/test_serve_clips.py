"""`POST /v1/clips`: the real server (uvicorn on a loopback port, in a thread) serving a tiny clip
run trained here on synthetic videos (a square that drops fast = "fall", one that walks
sideways = "adl", as in tests/test_clips.py); and a server started without --clips-run."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch
from conftest import running
from PIL import Image
from test_clips import write_audio_only, write_clip, write_zero_frames

from facelab.clips.config import load_clip_config
from facelab.clips.engine import fit
from facelab.serve import ServeConfig, create_app
from facelab.serve.keys import KeyStore

MAX_BODY = 256 * 1024
CLASSES = ["adl", "fall"]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cliprun")
    (root / "clips").mkdir()
    rows = []
    for s in range(2):
        for kind in ("fall", "adl"):
            name = f"clips/s{s}_{kind}.mp4"
            write_clip(root / name, kind, seed=s * 2 + (kind == "fall"))
            rows.append({"clip": str(root / name), "label": kind, "subject": f"p{s}"})
    torch.manual_seed(0)
    cfg = load_clip_config(None, ["model.pretrained=''", "model.freeze=0", "data.size=32",
                                  "sampling.pool=4", "sampling.eval_frames=2", "epochs=1",
                                  "batch_size=4", f"data.cache_dir={root / 'cache'}"])
    fit(cfg, pd.DataFrame(rows), root / "run")
    return root / "run"


def _keys(cfg: ServeConfig) -> dict[str, str]:
    ks = KeyStore(cfg.keys_path)
    keys = {name: ks.add(name, scopes)[1] for name, scopes in [("read", "read"), ("write", "write")]}
    ks.close()
    return keys


@pytest.fixture(scope="module")
def clip_srv(clip_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-clips")
    cfg = ServeConfig(keys=str(root / "keys.db"), detector="none", clips_run=str(clip_run),
                      max_body_bytes=MAX_BODY, rate_per_minute=0)
    keys = _keys(cfg)
    with running(create_app(cfg)) as base:
        yield base, keys, root


def _post(base: str, key: str | None, data: bytes, name: str = "c.mp4", ctype: str = "video/mp4"):
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(base + "/v1/clips", headers=headers, files={"video": (name, data, ctype)},
                      timeout=60)


def test_classifies_an_uploaded_clip_and_counts_it(clip_srv, tmp_path):
    base, keys, _ = clip_srv
    clip = write_clip(tmp_path / "probe.mp4", "fall", seed=7).read_bytes()
    assert _post(base, None, clip).status_code == 401
    assert _post(base, keys["write"], clip).status_code == 403  # read scope needed
    before = set(os.listdir(tempfile.gettempdir()))
    for ctype in ("video/mp4", "application/octet-stream"):
        r = _post(base, keys["read"], clip, ctype=ctype)
        assert r.status_code == 200, r.text
        out = r.json()
        assert sorted(out["probabilities"]) == CLASSES
        assert abs(sum(out["probabilities"].values()) - 1) < 1e-3
        assert out["label"] in CLASSES and out["probability"] == max(out["probabilities"].values())
        assert out["frames_used"] == 2 and out["run"] == "run"
    # the temporary copy of the upload is gone
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before
            if n.startswith("facelab-clip-")}
    assert not left, left
    info = httpx.get(base + "/v1/info", headers={"X-API-Key": keys["read"]}).json()
    assert info["clips"]["classes"] == CLASSES and info["clips"]["run"] == "run"
    metrics = httpx.get(base + "/metrics").text
    assert 'facelab_requests_total{method="POST",route="/v1/clips",status="200"} 2' in metrics
    assert 'route="/v1/clips",status="401"' in metrics


def test_refuses_non_videos_audio_only_broken_and_oversized(clip_srv, tmp_path):
    base, keys, _ = clip_srv
    key = keys["read"]
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    mkv = write_clip(tmp_path / "t.mkv", "fall", n=40).read_bytes()  # opens, decodes no frame
    cases = {
        "png as octet-stream": (buf.getvalue(), "application/octet-stream", 415, "unsupported_media_type"),
        "png as image/png": (buf.getvalue(), "image/png", 415, "unsupported_media_type"),
        "text": (b"hello, not a video" * 10, "video/mp4", 415, "unsupported_media_type"),
        "empty": (b"", "video/mp4", 415, "unsupported_media_type"),
        "audio only": (write_audio_only(tmp_path / "a.mp2").read_bytes(), "video/mpeg", 415,
                       "unsupported_media_type"),
        "zero frames": (write_zero_frames(tmp_path / "z.mp4").read_bytes(), "video/mp4", 415,
                        "unsupported_media_type"),  # FFmpeg finds no stream in it at all
        "truncated mkv": (mkv[: len(mkv) // 2], "video/x-matroska", 422, "bad_image"),
    }
    for what, (data, ctype, status, kind) in cases.items():
        r = _post(base, key, data, ctype=ctype)
        assert r.status_code == status, (what, r.text)
        err = r.json()["error"]
        assert err["type"] == kind, (what, err)
        assert str(tmp_path) not in err["message"] and "/tmp" not in err["message"], err
    r = _post(base, key, b"\x00" * (MAX_BODY + 1))
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    r = httpx.post(base + "/v1/clips", headers={"X-API-Key": key}, content=b"x" * 10,
                   timeout=30)  # not a form
    assert r.status_code == 415
    assert httpx.get(base + "/healthz").status_code == 200


def test_without_a_clip_model_the_route_says_so(clip_srv, tmp_path):
    cfg = ServeConfig(keys=str(tmp_path / "keys.db"), detector="none", max_body_bytes=MAX_BODY)
    keys = _keys(cfg)
    clip = write_clip(tmp_path / "probe.mp4", "adl").read_bytes()
    with running(create_app(cfg)) as base:
        assert _post(base, None, clip).status_code == 401
        r = _post(base, keys["read"], clip)
        assert r.status_code == 404, r.text
        assert "--clips-run" in r.json()["error"]["message"]
        assert "clips" not in httpx.get(base + "/v1/info", headers={"X-API-Key": keys["read"]}).json()


def test_cli_passes_clips_run(monkeypatch, clip_run):
    from typer.testing import CliRunner

    import facelab.serve.run as serve_run
    from facelab.cli import _register, app

    _register()
    seen = {}
    monkeypatch.setattr(serve_run, "serve", lambda cfg, **kw: seen.update(cfg=cfg))
    r = CliRunner().invoke(app, ["serve", "--clips-run", str(clip_run), "--port", "0"])
    assert r.exit_code == 0, r.output
    assert seen["cfg"].clips_run == str(clip_run)
