"""ONNX export of an attribute run, and int8 quantization calibrated on training images.

The exported graph takes what the pixel cache holds, uint8 (B, S, S, 3) face crops, and
returns per-task probabilities `mask`, `gender`, `age`; normalisation and the run's
evaluation center crop are inside it. TTA and decision biases stay outside (shared with the
PyTorch backend in facelab.predict.run), so both backends decide identically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.data.labels import TASKS
from facelab.errors import CheckpointError
from facelab.io.atomic import atomic_path
from facelab.models.heads import task_log_probs

log = logging.getLogger(__name__)
OPSET = 20  # AffineGrid (the evaluation center crop) needs opset 20


class _ProbsFromPixels(nn.Module):
    """uint8 NHWC pixels -> per-task probabilities (the exported graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor):
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        lp = task_log_probs(self.model(x))
        return tuple(lp[t].exp() for t in TASKS)


def default_onnx_path(run, int8: bool = False) -> Path:
    return run.path.parent / ("model.int8.onnx" if int8 else "model.onnx")


def export_onnx(run, path: str | Path | None = None) -> Path:
    """Write the run's model as ONNX (default `<run>/model.onnx`); returns the path.

    Example:
        >>> export_onnx(AttributeRun.load("runs/mt"))  # doctest: +SKIP
        PosixPath('runs/mt/model.onnx')
    """
    path = Path(path) if path else default_onnx_path(run)
    wrapper = _ProbsFromPixels(run.model).eval()  # the run's model, eval center crop included
    size = run.settings.size
    dummy = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with atomic_path(path, ".onnx") as tmp, torch.inference_mode():
        torch.onnx.export(wrapper, (dummy,), str(tmp), input_names=["pixels"],
                          output_names=list(TASKS), opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, **{t: {0: "batch"} for t in TASKS}})
    return path


def quantize_int8(run, pixels: np.ndarray, path: str | Path | None = None,
                  fp32: str | Path | None = None, fp32_convs: int = 3) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of the exported model, with
    activation ranges calibrated on `pixels` (uint8 training crops, never test ones).

    The task heads and the first `fp32_convs` convolutions (MobileNetV2's stem and first
    block) stay in fp32: on the main job's validation split that raised int8/fp32 label
    agreement on age from 0.907 to 0.953 and did not slow the model down
    (`python benchmarks/int8_choice.py`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = Path(fp32) if fp32 else default_onnx_path(run)
    if not fp32.is_file():
        export_onnx(run, fp32)
    path = Path(path) if path else default_onnx_path(run, int8=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": np.ascontiguousarray(pixels[i : i + 32])}
                                 for i in range(0, len(pixels), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = path.with_name(path.name + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=fp32_nodes(pre, fp32_convs))
    finally:
        pre.unlink(missing_ok=True)
    return path


def fp32_nodes(model_path: str | Path, first_convs: int) -> list[str]:
    """Node names kept in fp32: every Gemm/MatMul (the task heads) and the first convolutions."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return heads + [n.name for n in nodes if n.op_type == "Conv"][:first_convs]


def onnx_path(run, int8: bool = False) -> Path:
    """The run's ONNX file for a backend: fp32 is exported on first use, int8 must exist."""
    path = default_onnx_path(run, int8)
    if int8 and not path.is_file():
        raise CheckpointError(f"{path} not found; make it with `facelab export "
                              f"{run.path.parent} --format onnx --int8`")
    if not int8 and (not path.is_file() or path.stat().st_mtime < run.path.stat().st_mtime):
        log.info("exporting %s to ONNX: %s", run.path, path)
        export_onnx(run, path)
    return path
