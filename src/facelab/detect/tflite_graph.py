"""Run a small float TensorFlow Lite convolutional graph in PyTorch.

:func:`read_tflite` parses a ``.tflite`` flatbuffer (with the ``tflite`` parser package, no
TensorFlow) into plain data: a list of operations and a dict of float32 weights (float16
constants behind ``DEQUANTIZE`` ops are expanded). :class:`TFLiteGraph` executes that list
as an ``nn.Module`` in NCHW layout, so the graph can be cached with ``torch.save``, run with
batched inputs and exported to ONNX. Only the operations MediaPipe's BlazeFace detectors
use are supported (CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, RELU6, PAD, MAX_POOL_2D,
RESIZE_BILINEAR with half-pixel centres or aligned corners, RESHAPE, CONCATENATION,
DEQUANTIZE); anything else is a one-line error.

TFLite's ``SAME`` padding depends on the input size; it is computed from the tensor shapes
stored in the file. Resizes keep their scale factor and reshapes flatten whatever grid they
get, so a graph also runs at other input sizes for which every padding stays the same
(BlazeFace: sides that are multiples of 32), with any batch size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facelab.errors import WeightsError

#: NHWC axis -> NCHW axis for 4-D tensors (concatenation axes).
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1, -1: 1}
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one spatial axis: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def read_tflite(path: str | Path) -> dict:
    """Parse a float TFLite model into ``{"ops", "weights", "inputs", "outputs", "input_shape"}``
    (plain lists/dicts and float32 numpy arrays; convolution weights in PyTorch layout).

    Example:
        >>> g = read_tflite("face_detection_short_range.tflite")  # doctest: +SKIP
        >>> g["input_shape"], len(g["ops"])  # doctest: +SKIP
        ([1, 128, 128, 3], 90)
    """
    path = Path(path)
    try:
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator
    except ImportError:
        raise WeightsError(
            f"reading {path} needs the `tflite` parser package; install it with "
            "`pip install tflite` (or `pip install facelab[blazeface]`)"
        ) from None
    try:
        return _parse(path, tflite, BuiltinOperator)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001  (not a flatbuffer, truncated, ...)
        raise WeightsError(f"{path}: cannot be read as a TFLite model ({type(exc).__name__}: "
                           f"{str(exc)[:160]}); pass an intact .tflite file") from None  # fmt: skip


def _parse(path: Path, tflite, BuiltinOperator) -> dict:
    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    opnames = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    np_types = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}

    def shape(t: int) -> list[int]:
        return [int(v) for v in graph.Tensors(t).ShapeAsNumpy()]

    consts: dict[int, np.ndarray] = {}

    def const(t: int) -> np.ndarray | None:
        if t in consts:
            return consts[t]
        tensor = graph.Tensors(t)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or not len(data):
            return None
        if tensor.Type() not in np_types:
            raise WeightsError(f"{path}: tensor {tensor.Name()!r} has unsupported type {tensor.Type()}")
        arr = np.frombuffer(bytes(data), np_types[tensor.Type()]).reshape(shape(t))
        consts[t] = arr
        return arr

    ops: list[dict] = []
    weights: dict[str, np.ndarray] = {}

    def options(op, cls):
        tab = op.BuiltinOptions()
        opt = cls()
        opt.Init(tab.Bytes, tab.Pos)
        return opt

    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = opnames.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        if name == "DEQUANTIZE":
            src = const(ins[0])
            if src is None:
                raise WeightsError(f"{path}: DEQUANTIZE of a non-constant tensor is not supported")
            consts[out] = src.astype(np.float32)
            continue
        rec: dict = {"op": name, "in": ins[:1], "out": out, "act": None}
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            o = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            w = const(ins[1]).astype(np.float32)
            b = const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            # TFLite: conv OHWI, depthwise 1HW(C*m) -> PyTorch OIHW / (C*m)1HW
            w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)
            key = f"op{len(ops)}"
            weights[f"{key}.weight"] = np.ascontiguousarray(w)
            weights[f"{key}.bias"] = (np.zeros(w.shape[0], np.float32) if b is None
                                      else b.astype(np.float32))  # fmt: skip
            h, wd = shape(ins[0])[1:3]
            sh, sw = o.StrideH(), o.StrideW()
            dh, dw = o.DilationHFactor(), o.DilationWFactor()
            pad = [0, 0, 0, 0]
            if o.Padding() == 0:
                pad = [*_same_pad(h, w.shape[2], sh, dh), *_same_pad(wd, w.shape[3], sw, dw)]
            rec.update(param=key, stride=[sh, sw], dilation=[dh, dw], pad=pad,
                       groups=shape(ins[0])[3] if depthwise else 1,
                       act=_activation(path, o.FusedActivationFunction()))  # fmt: skip
        elif name == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            h, wd = shape(ins[0])[1:3]
            k = [o.FilterHeight(), o.FilterWidth()]
            s = [o.StrideH(), o.StrideW()]
            pad = [0, 0, 0, 0]
            if o.Padding() == 0:
                pad = [*_same_pad(h, k[0], s[0]), *_same_pad(wd, k[1], s[1])]
            rec.update(kernel=k, stride=s, pad=pad, act=_activation(path, o.FusedActivationFunction()))
        elif name == "ADD":
            o = options(op, tflite.AddOptions)
            rec.update(**{"in": ins[:2]}, act=_activation(path, o.FusedActivationFunction()))
        elif name in ("RELU", "RELU6"):
            rec.update(op="ACT", act=name.lower())
        elif name == "PAD":
            p = const(ins[1])  # NHWC (4, 2) before/after
            rec.update(pad=[int(v) for v in p.ravel()])
        elif name == "RESIZE_BILINEAR":
            o = options(op, tflite.ResizeBilinearOptions)
            if not (o.AlignCorners() or o.HalfPixelCenters()):
                raise WeightsError(f"{path}: RESIZE_BILINEAR without half_pixel_centers or "
                                   "align_corners is not supported")  # fmt: skip
            (hi, wi), (ho, wo) = shape(ins[0])[1:3], shape(out)[1:3]
            rec.update(size=[ho, wo], scale=[ho / hi, wo / wi], align_corners=bool(o.AlignCorners()),
                       half_pixel=bool(o.HalfPixelCenters()))  # fmt: skip
        elif name == "RESHAPE":
            if len(shape(out)) == 4:  # the port keeps NCHW tensors; a 4-D reshape would mix them up
                raise WeightsError(f"{path}: RESHAPE to 4 dimensions is not supported")
            rec.update(shape=shape(out), in_rank=len(shape(ins[0])))
        elif name == "CONCATENATION":
            o = options(op, tflite.ConcatenationOptions)
            rank = len(shape(ins[0]))
            axis = o.Axis() % rank
            rec.update(**{"in": ins}, axis=_NHWC_TO_NCHW[axis] if rank == 4 else axis,
                       act=_activation(path, o.FusedActivationFunction()))  # fmt: skip
        else:
            raise WeightsError(f"{path}: TFLite operation {name} is not supported by facelab's "
                               "converter (BlazeFace graphs only)")  # fmt: skip
        ops.append(rec)
    inputs = [graph.Inputs(i) for i in range(graph.InputsLength())]
    outputs = [graph.Outputs(i) for i in range(graph.OutputsLength())]
    return {
        "ops": ops,
        "weights": weights,
        "inputs": inputs,
        "outputs": outputs,
        "output_names": [graph.Tensors(t).Name().decode() for t in outputs],
        "input_shape": shape(inputs[0]),
    }


def _activation(path: Path, code: int) -> str | None:
    if code not in _ACTIVATIONS:
        raise WeightsError(f"{path}: fused activation {code} is not supported")
    return _ACTIVATIONS[code]


def build_graph_module(graph: dict):
    """An ``nn.Module`` running a :func:`read_tflite` graph on NCHW float input; its outputs
    are the graph's outputs in order (3-D tensors keep TFLite's layout).

    Example:
        >>> net = build_graph_module(read_tflite("face_detection_short_range.tflite"))  # doctest: +SKIP
        >>> [t.shape for t in net(torch.zeros(2, 3, 128, 128))]  # doctest: +SKIP
        [torch.Size([2, 896, 16]), torch.Size([2, 896, 1])]
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TFLiteGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ops = graph["ops"]
            self.inputs, self.outputs = graph["inputs"], graph["outputs"]
            self.convs = nn.ModuleDict()
            for rec in self.ops:
                if "param" in rec:
                    w = torch.as_tensor(np.asarray(graph["weights"][f"{rec['param']}.weight"]))
                    conv = nn.Conv2d(w.shape[1] * rec["groups"], w.shape[0], tuple(w.shape[2:]),
                                     stride=tuple(rec["stride"]), dilation=tuple(rec["dilation"]),
                                     groups=rec["groups"])  # fmt: skip
                    with torch.no_grad():
                        conv.weight.copy_(w)
                        conv.bias.copy_(torch.as_tensor(np.asarray(graph["weights"][f"{rec['param']}.bias"])))
                    self.convs[rec["param"]] = conv

        @staticmethod
        def _act(x, act):
            if act == "relu":
                return F.relu(x)
            if act == "relu6":
                return F.relu6(x)
            return x

        def forward(self, x):
            t = {self.inputs[0]: x}
            for rec in self.ops:
                a = t[rec["in"][0]]
                kind = rec["op"]
                if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                    top, bottom, left, right = rec["pad"]
                    if any(rec["pad"]):
                        a = F.pad(a, (left, right, top, bottom))
                    y = self.convs[rec["param"]](a)
                elif kind == "MAX_POOL_2D":
                    top, bottom, left, right = rec["pad"]
                    if any(rec["pad"]):
                        a = F.pad(a, (left, right, top, bottom), value=float("-inf"))
                    y = F.max_pool2d(a, tuple(rec["kernel"]), tuple(rec["stride"]))
                elif kind == "ADD":
                    y = a + t[rec["in"][1]]
                elif kind == "ACT":
                    y = a
                elif kind == "PAD":
                    p = rec["pad"]  # NHWC before/after pairs -> F.pad's last-dim-first order
                    y = F.pad(a, (p[4], p[5], p[2], p[3], p[6], p[7], p[0], p[1]))
                elif kind == "RESIZE_BILINEAR":
                    y = _resize_bilinear(a, rec["scale"], rec["align_corners"], rec["half_pixel"])
                elif kind == "RESHAPE":
                    if rec["in_rank"] == 4:
                        a = a.permute(0, 2, 3, 1)  # back to TFLite's NHWC element order
                    y = a.reshape(a.shape[0], -1, *rec["shape"][2:])  # -1: any input size
                elif kind == "CONCATENATION":
                    y = torch.cat([t[i] for i in rec["in"]], rec["axis"])
                else:  # read_tflite only emits the kinds above
                    raise ValueError(kind)
                t[rec["out"]] = self._act(y, rec["act"])
            return tuple(t[o] for o in self.outputs)

    return TFLiteGraph()


def _resize_bilinear(x, scale, align_corners: bool, half_pixel: bool):
    """TFLite RESIZE_BILINEAR with half-pixel centres or aligned corners (``read_tflite``
    refuses TFLite's legacy mode, which has no ``F.interpolate`` equivalent), by the stored
    scale factor so that other input sizes work."""
    from torch.nn import functional as F

    return F.interpolate(x, scale_factor=tuple(float(v) for v in scale), mode="bilinear",
                         align_corners=align_corners and not half_pixel)
