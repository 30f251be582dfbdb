"""BlazeFace through ONNX Runtime: export, parity check and the ``-onnx`` backends.

The graph takes raw RGB pixels (N, 3, S, S) float32 (S = 128 short-range, 192 full-range,
or another multiple of 32; dynamic batch, height and width) and returns ``regressors`` (N, K, 16) and ``logits`` (N, K); letterboxing,
decoding and weighted NMS are :mod:`facelab.detect.blazeface`'s, shared with PyTorch.

The backends use the ``onnx`` option when given, else export the converted network once
into ``$FACELAB_CACHE/onnx/`` (keyed by the source ``.tflite`` file's hash).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from facelab.detect.base import register_detector
from facelab.detect.blazeface import MODELS, _BlazeBase, build_blazeface, converted
from facelab.errors import ConfigError

OUTPUTS = ["regressors", "logits"]


def _model(kind: str):
    if kind not in MODELS:
        raise ConfigError(f"BlazeFace model {kind!r} unknown; use one of {', '.join(MODELS)}")
    return MODELS[kind]


def export_blazeface(kind: str, out: str | Path, tflite: str | Path | None = None) -> Path:
    """Write the ONNX graph of BlazeFace ``kind`` ("short" or "full") to ``out``.

    Example:
        >>> export_blazeface("short", "blazeface-short.onnx")  # doctest: +SKIP
        PosixPath('blazeface-short.onnx')
    """
    import torch

    model = _model(kind)
    net = build_blazeface(converted(model, tflite))
    from facelab.io.atomic import atomic_path

    out = Path(out)
    if out.is_dir():
        out = out / f"blazeface-{kind}.onnx"
    axes = {"input": {0: "batch", 2: "height", 3: "width"},
            **{o: {0: "batch", 1: "anchors"} for o in OUTPUTS}}  # fmt: skip
    with atomic_path(out, ".onnx") as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constant folding, not errors
        torch.onnx.export(net, (torch.zeros(2, 3, model.size, model.size),), str(tmp),
                          input_names=["input"], output_names=OUTPUTS, dynamic_axes=axes,
                          opset_version=17, dynamo=False)  # fmt: skip
    return out


def blazeface_parity(kind: str, onnx_path: str | Path, tflite: str | Path | None = None,
                     seed: int = 0) -> float:
    """Max |PyTorch - ONNX Runtime| over both outputs on a batch of 3 random-pixel images at
    the model's size and at a larger one (the dynamic height and width).

    Example:
        >>> blazeface_parity("short", "blazeface-short.onnx") < 1e-3  # doctest: +SKIP
        True
    """
    import onnxruntime as ort
    import torch

    model = _model(kind)
    net = build_blazeface(converted(model, tflite))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    gap = 0.0
    for side in (model.size, model.size + 64):
        x = rng.uniform(0, 255, (3, 3, side, side)).astype(np.float32)
        with torch.inference_mode():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        got = sess.run(OUTPUTS, {"input": x})
        gap = max(gap, *(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
    return gap


def cached_blazeface_onnx(kind: str, tflite: str | Path | None = None) -> Path:
    """The ONNX export of BlazeFace ``kind`` in the cache, made on first use."""
    from facelab.paths import cache_root

    ckpt = converted(_model(kind), tflite)
    digest = ckpt["meta"]["sha256"][:16]
    path = cache_root() / "onnx" / f"blazeface-{kind}-{digest}-{ckpt['format'][-1]}.onnx"
    if not path.is_file():
        export_blazeface(kind, path, tflite)
    return path


class _BlazeOnnx(_BlazeBase):
    """BlazeFace run by ONNX Runtime (CPU); options are the PyTorch backend's plus ``onnx``
    (a graph from :func:`export_blazeface`) and ``threads`` (intra-op threads; default:
    torch's thread count)."""

    _extra_options = ("onnx", "threads")

    def _load(self) -> None:
        from facelab.detect.ssd_onnx import cpu_session

        onnx = self.options.get("onnx")
        path = Path(onnx) if onnx else cached_blazeface_onnx(self.kind, self.options.get("tflite"))
        if not path.is_file():
            raise ConfigError(f"ONNX graph {path} not found; write one with "
                              f"`facelab export blazeface-{self.kind} -o {path}`")  # fmt: skip
        self.session = cpu_session(path, self.options.get("threads"))

    def _forward(self, canvas: np.ndarray):
        x = np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32)
        reg, logits = self.session.run(OUTPUTS, {"input": x})
        return reg, logits


@register_detector("blazeface-short-onnx")
class BlazeFaceShortOnnx(_BlazeOnnx):
    """BlazeFace short-range in ONNX Runtime (same faces as ``blazeface-short``).

    Example:
        >>> det = get_detector("blazeface-short-onnx", threads=2)  # doctest: +SKIP
    """

    kind = "short"


@register_detector("blazeface-full-onnx")
class BlazeFaceFullOnnx(_BlazeOnnx):
    """BlazeFace full-range in ONNX Runtime (same faces as ``blazeface-full``).

    Example:
        >>> det = get_detector("blazeface-full-onnx", threads=2)  # doctest: +SKIP
    """

    kind = "full"
