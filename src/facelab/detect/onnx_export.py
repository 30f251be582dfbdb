"""ONNX export of MTCNN's three networks (plain or the mask-fine-tuned weights).

P-Net is fully convolutional, so its graph has dynamic height and width; R-Net and O-Net take
24x24 and 48x48 crops. Output names follow the PyTorch modules: `boxes`, `probs` (and
`landmarks` for O-Net). The pyramid, NMS and box regression stay in Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NET_INPUTS = {"pnet": 12, "rnet": 24, "onet": 48}
NET_OUTPUTS = {"pnet": ["boxes", "probs"], "rnet": ["boxes", "probs"],
               "onet": ["boxes", "landmarks", "probs"]}


def export_mtcnn(detector, folder: str | Path) -> dict[str, Path]:
    """Write pnet.onnx, rnet.onnx and onet.onnx of a loaded MTCNN detector into `folder`.

    Example:
        >>> export_mtcnn(get_detector("mtcnn"), "onnx/mtcnn")  # doctest: +SKIP
        {'pnet': PosixPath('onnx/mtcnn/pnet.onnx'), ...}
    """
    import torch

    detector.prepare()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, size in NET_INPUTS.items():
        net = getattr(detector, key).eval()
        dummy = torch.zeros(2, 3, size, size)
        axes = {"input": {0: "batch"}, **{o: {0: "batch"} for o in NET_OUTPUTS[key]}}
        if key == "pnet":
            axes["input"] = {0: "batch", 2: "height", 3: "width"}
            axes.update({o: {0: "batch", 2: "rows", 3: "cols"} for o in NET_OUTPUTS[key]})
        path = folder / f"{key}.onnx"
        with torch.inference_mode():
            torch.onnx.export(net, (dummy,), str(path), input_names=["input"],
                              output_names=NET_OUTPUTS[key], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        out[key] = path
    return out


def parity(detector, paths: dict[str, Path], seed: int = 0) -> dict[str, float]:
    """Max |PyTorch - ONNX Runtime| over every output of each net, on random inputs
    (P-Net at a non-square size to exercise the dynamic axes)."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(seed)
    shapes = {"pnet": (3, 3, 37, 53), "rnet": (5, 3, 24, 24), "onet": (5, 3, 48, 48)}
    out = {}
    for key, path in paths.items():
        x = rng.uniform(-1, 1, shapes[key]).astype(np.float32)
        with torch.inference_mode():
            ref = [t.numpy() for t in getattr(detector, key)(torch.from_numpy(x))]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x})
        out[key] = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    return out
