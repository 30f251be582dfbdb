"""The PyTorch / ONNX port of dlib's face ResNet against dlib's own network.

Synthetic chips (drawn faces and smoothed noise) always run; a few real UTKFace chips are
checked too when FACELAB_DATA holds them. Needs dlib and the installed
``face-recognition-models`` weights (skips without them).
"""

from __future__ import annotations

import numpy as np
import pytest

dlib = pytest.importorskip("dlib", reason="dlib (dlib-bin) not installed")
cv2 = pytest.importorskip("cv2")

from facelab.embed.weights import dlib_model_path
from facelab.errors import ConfigError, WeightsError

PARITY = 0.9999


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def synthetic_chips(n: int, seed: int = 0) -> np.ndarray:
    """Cartoon faces (skin ellipse, eyes, brows, nose, mouth at dlib's chip positions, random
    colours and jitter) and, every third chip, smoothed noise: (n, 150, 150, 3) uint8."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 3 == 2:
            noise = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
            out.append(cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(1, 4))))
            continue
        img = np.empty((150, 150, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        skin = tuple(int(v) for v in rng.integers(60, 240, 3))
        dx, dy = rng.integers(-4, 5, 2)
        cv2.ellipse(img, (75 + dx, 78 + dy), (52, 68), 0, 0, 360, skin, -1)
        dark = tuple(int(v) for v in rng.integers(0, 60, 3))
        for ex in (47, 101):
            cv2.circle(img, (ex + dx, 45 + dy), 7, (235, 235, 235), -1)
            cv2.circle(img, (ex + dx, 45 + dy), 4, dark, -1)
            cv2.line(img, (ex - 12 + dx, 32 + dy), (ex + 12 + dx, 30 + dy), dark, 3)
        cv2.line(img, (74 + dx, 50 + dy), (74 + dx, 77 + dy), tuple(s // 2 for s in skin), 3)
        cv2.ellipse(img, (74 + dx, 99 + dy), (24, 8), 0, 0, 180, (150, 40, 50), -1)
        noise = rng.normal(0, 6, img.shape)
        out.append(np.clip(cv2.GaussianBlur(img, (0, 0), 1.0) + noise, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("cache")
    mp.setenv("FACELAB_CACHE", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def dlib_net():
    return dlib.face_recognition_model_v1(str(dlib_model_path("resnet")))


@pytest.fixture(scope="module")
def port(cache):
    from facelab.embed.dlib_torch import TorchDescriptor

    return TorchDescriptor(batch=8)


@pytest.fixture(scope="module")
def chips():
    return synthetic_chips(9)


def _dlib(net, chips: np.ndarray) -> np.ndarray:
    return np.asarray(net.compute_face_descriptor(list(chips), 0), np.float32)


def test_parse_reads_the_whole_network():
    from facelab.embed.dlib_torch import parse_dlib_resnet

    state = parse_dlib_resnet(dlib_model_path("resnet"))
    np.testing.assert_allclose(state["mean"], [122.782, 117.001, 104.298], atol=1e-3)
    assert state["conv0.weight"].shape == (32, 3, 7, 7)
    assert state["conv28.weight"].shape == (256, 256, 3, 3) and "conv29.weight" not in state
    assert state["fc.weight"].shape == (128, 256)
    assert all(np.isfinite(v).all() for v in state.values())
    assert sum(v.size for v in state.values()) > 5_000_000  # ~5.6M parameters in the file


def test_parse_refuses_truncated_or_padded_files(tmp_path):
    from facelab.embed.dlib_torch import parse_dlib_resnet

    data = dlib_model_path("resnet").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[:-100])
    (tmp_path / "long.dat").write_bytes(data + b"\x00")
    (tmp_path / "other.dat").write_bytes(dlib_model_path("shape5").read_bytes())
    for name in ("cut.dat", "long.dat", "other.dat"):
        with pytest.raises(WeightsError):
            parse_dlib_resnet(tmp_path / name)


def test_conversion_is_cached_by_sha256(tmp_path, monkeypatch):
    import facelab.embed.dlib_torch as dt

    state = dt.cached_state(cache_dir=tmp_path)
    files = list(tmp_path.glob("dlib_resnet_v1_*.pt"))
    assert len(files) == 1 and dt._sha256(dlib_model_path("resnet"))[:16] in files[0].name

    def no_parse(path):
        raise AssertionError("parsed again although the cache was there")

    monkeypatch.setattr(dt, "parse_dlib_resnet", no_parse)
    again = dt.cached_state(cache_dir=tmp_path)
    assert state.keys() == again.keys()
    assert all(np.array_equal(state[k].numpy(), again[k].numpy()) for k in state)
    files[0].write_bytes(b"not a torch file")  # a broken cache is converted again
    monkeypatch.undo()
    assert dt.cached_state(cache_dir=tmp_path).keys() == state.keys()


def test_torch_port_matches_dlib(dlib_net, port, chips):
    ref = _dlib(dlib_net, chips)
    out = port(chips)
    assert out.shape == (len(chips), 128) and out.dtype == np.float32
    assert _cos(ref, out).min() >= PARITY
    assert np.abs(ref - out).max() < 1e-3
    # distances between different chips agree too (what matching uses)
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    d_out = np.linalg.norm(out[:, None] - out[None], axis=-1)
    assert np.abs(d_ref - d_out).max() < 1e-3


def test_batch_size_does_not_change_vectors(port, chips):
    whole = port(chips)
    one_by_one = np.concatenate([port(chips[i : i + 1]) for i in range(len(chips))])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_float_input_equals_uint8(port, chips):
    import torch

    with torch.inference_mode():
        a = port.model(torch.from_numpy(chips[:3])).numpy()
        b = port.model(torch.from_numpy(chips[:3].astype(np.float32))).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_onnx_matches_torch_port(port, chips, tmp_path):
    pytest.importorskip("onnxruntime")
    from facelab.embed.dlib_torch import OnnxDescriptor, export_onnx

    path = export_onnx(tmp_path / "dlib.onnx", model=port.model)
    onnx_out = OnnxDescriptor(batch=4, path=path)(chips)  # batches of 4, 4 and 1
    torch_out = port(chips)
    assert _cos(onnx_out, torch_out).min() >= 0.99999
    assert np.abs(onnx_out - torch_out).max() < 1e-4


def test_real_utkface_chips(dlib_net, port):
    from facelab.paths import data_root, missing_data

    if missing_data("utkface"):
        pytest.skip(missing_data("utkface"))
    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder
    from facelab.io.image import load_image
    from facelab.types import Face

    names = sorted((data_root() / "utkface" / "images").iterdir())[::997][:6]
    emb = DlibResNetEmbedder(DlibEmbedConfig(net="dlib"))
    chips = []
    for p in names:
        img = load_image(p)
        h, w = img.shape[:2]
        chips += emb.chips(img, [Face((w * 0.12, h * 0.12, w * 0.88, h * 0.88))])
    chips = np.stack(chips)
    assert _cos(_dlib(dlib_net, chips), port(chips)).min() >= PARITY


def test_embedder_backends_agree_and_version_differs(cache, chips):
    from facelab.embed.base import get_embedder

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    image[20:170, 30:180] = chips[0]
    image[120:270, 220:370] = chips[1]
    from facelab.types import Face

    faces = [Face((40, 30, 170, 160)), Face((230, 130, 360, 260))]
    got = {}
    for net in ("dlib", "torch", "onnx"):
        emb = get_embedder("dlib-resnet", net=net, flip=True)
        got[net] = (emb.version, emb.embed_faces(image, faces), emb.embed_chips(list(chips[:4])))
    versions = {v for v, _, _ in got.values()}
    assert len(versions) == 3
    assert got["dlib"][0] == "v1-j0-f1-p0.25-occnone-shape5"  # dlib keeps the old string
    for net in ("torch", "onnx"):
        assert got[net][1].shape == (2, 128)
        assert _cos(got["dlib"][1], got[net][1]).min() >= PARITY
        assert _cos(got["dlib"][2], got[net][2]).min() >= PARITY
    assert get_embedder("dlib-resnet").config.net == "onnx"  # the default (fastest at parity)
    with pytest.raises(ConfigError):
        get_embedder("dlib-resnet", net="tensorflow")


def test_jitter_on_the_port_averages_jittered_views(cache, chips):
    from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder

    plain = DlibResNetEmbedder(DlibEmbedConfig(net="torch", flip=False)).embed_chips([chips[0]])
    jit = DlibResNetEmbedder(DlibEmbedConfig(net="torch", flip=False, jitters=4))
    vec = jit.embed_chips([chips[0]])
    assert vec.shape == (1, 128) and jit.version.startswith("v1-j4-")
    assert not np.allclose(vec, plain)  # jittered views were averaged
    assert _cos(vec, plain)[0] > 0.9  # ... of the same face
