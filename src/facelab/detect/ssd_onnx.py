"""The ssd-mbv2 detector through ONNX Runtime: export, parity check and a registered backend.

The graph takes raw RGB pixels (N, 3, H, W) float32 with dynamic batch, height and width,
and returns ``boxes`` (N, K, 4), ``logits`` (N, K) and ``landmarks`` (N, K, 10); letterboxing
and decoding are :mod:`facelab.detect.ssd`'s, shared with the PyTorch backend.

The backend ``ssd-mbv2-onnx`` uses the ``onnx`` option when given, else exports the
checkpoint once into ``$FACELAB_CACHE/onnx/`` (keyed by the checkpoint's content hash).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from facelab.detect.base import register_detector
from facelab.detect.ssd import ARCH, _SSDBase, build_model, load_checkpoint

OUTPUTS = ["boxes", "logits", "landmarks"]


def export_ssd(weights: str | Path, out: str | Path) -> Path:
    """Write the ONNX graph of an ssd-mbv2 checkpoint to ``out``.

    Example:
        >>> export_ssd("src/facelab/weights/ssd-mbv2.pt", "ssd-mbv2.onnx")  # doctest: +SKIP
        PosixPath('ssd-mbv2.onnx')
    """
    import torch

    ckpt = load_checkpoint(Path(weights))
    net = build_model(fpn=int(ckpt["meta"].get("fpn", 64)), pretrained=False)
    net.load_state_dict({k: v.float() for k, v in ckpt["state"].items()})
    net.eval()
    from facelab.io.atomic import atomic_path

    out = Path(out)
    axes = {"input": {0: "batch", 2: "height", 3: "width"},
            **{o: {0: "batch", 1: "anchors"} for o in OUTPUTS}}  # fmt: skip
    with atomic_path(out, ".onnx") as tmp, torch.inference_mode():
        torch.onnx.export(net, (torch.zeros(1, 3, 256, 320),), str(tmp), input_names=["input"],
                          output_names=OUTPUTS, dynamic_axes=axes, opset_version=17,
                          dynamo=False)  # fmt: skip
    return out


def ssd_parity(weights: str | Path, onnx_path: str | Path, seed: int = 0) -> float:
    """Max |PyTorch - ONNX Runtime| over all outputs on random pixels at a non-square size.

    Example:
        >>> ssd_parity("src/facelab/weights/ssd-mbv2.pt", "ssd-mbv2.onnx") < 1e-3  # doctest: +SKIP
        True
    """
    import onnxruntime as ort
    import torch

    ckpt = load_checkpoint(Path(weights))
    net = build_model(fpn=int(ckpt["meta"].get("fpn", 64)), pretrained=False)
    net.load_state_dict({k: v.float() for k, v in ckpt["state"].items()})
    net.eval()
    x = np.random.default_rng(seed).uniform(0, 255, (2, 3, 160, 224)).astype(np.float32)
    with torch.inference_mode():
        ref = [t.numpy() for t in net(torch.from_numpy(x))]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(OUTPUTS, {"input": x})
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, got))


def cached_onnx(weights: Path) -> Path:
    """The ONNX export of ``weights`` in the cache, made on first use."""
    from facelab.paths import cache_root

    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    path = cache_root() / "onnx" / f"{ARCH}-{digest}.onnx"
    if not path.is_file():
        export_ssd(weights, path)
    return path


def cpu_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's count)
    and one inter-op thread, as the detector backends run their graphs."""
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@register_detector(f"{ARCH}-onnx")
class SSDOnnxDetector(_SSDBase):
    """The ssd-mbv2 detector run by ONNX Runtime (CPU), same outputs as the PyTorch backend.

    Options are ssd-mbv2's plus ``onnx`` (a graph from :func:`export_ssd`) and ``threads``
    (ONNX Runtime intra-op threads; default: torch's thread count).

    Example:
        >>> det = get_detector("ssd-mbv2-onnx", threads=2)  # doctest: +SKIP
    """

    _extra_options = ("onnx", "threads")

    def _load(self) -> None:
        self._settle(load_checkpoint(self.path)["meta"])
        path = Path(self.options["onnx"]) if self.options.get("onnx") else cached_onnx(self.path)
        self.session = cpu_session(path, self.options.get("threads"))

    def _forward(self, canvas: np.ndarray):
        x = np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32)
        boxes, logits, marks = self.session.run(OUTPUTS, {"input": x})
        return boxes, logits, marks
