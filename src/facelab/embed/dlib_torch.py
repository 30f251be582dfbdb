"""dlib's 128-d face-recognition ResNet reimplemented in PyTorch (and exportable to ONNX).

The weights come from the installed ``dlib_face_recognition_resnet_model_v1.dat``
(package ``face-recognition-models``): nothing is downloaded and nothing converted is
committed. At first use the ``.dat`` file is parsed (:func:`parse_dlib_resnet`) and the
tensors are cached with ``torch.save`` under ``cache_root()/"weights"``, keyed by the file's
sha256; later loads read that cache with ``weights_only=True``.

The network (``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``)::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    block(N, s)   = affine(con<N,3,3,1,1>(relu(affine(con<N,3,3,s,s>(x)))))
    ares(N)       = relu(x + block(N, 1)(x))
    ares_down(N)  = relu(avg_pool<2,2,2,2>(x) (+) block(N, 2)(x))
    alevel4 = 3 x ares(32); alevel3 = ares_down(64) + 3 x ares(64);
    alevel2 = ares_down(128) + 2 x ares(128); alevel1 = ares_down(256) + 2 x ares(256);
    alevel0 = ares_down(256)

dlib details that the port reproduces:

* input: ``(pixel - mean) / 256`` per channel, means (122.782, 117.001, 104.298) read from
  the file (folded into the first convolution here: it has no padding, so this is exact);
* ``affine`` is a frozen batch norm ``gamma * x + beta`` per channel (folded into the
  convolution before it);
* strided convolutions and pools have no padding (dlib's default padding is ``nr/2`` only
  for stride 1), so a 150 chip goes 72 -> 35 -> 17 -> 8 -> 4|3 -> 2|1 -> 1;
* ``add_prev`` of tensors of different shapes (``(+)`` above) makes the element-wise maximum
  shape and treats what lies outside either tensor as zero, aligned top-left: the pooled
  shortcut has fewer channels than the block, and at 8 -> 4|3 and 4 -> 2|1 the block output
  is spatially smaller than the pooled shortcut;
* ``fc_no_bias`` stores its matrix as (inputs, outputs): ``y = x @ W``.

Input of :class:`DlibResNet`: a batch of aligned 150x150 RGB chips, ``(N, 150, 150, 3)``
(NHWC, as images are stored), ``uint8`` or float in 0..255. The NHWC batch is viewed as
NCHW with channels-last strides (no copy), and the network runs channels-last. Output: the
raw (not normalised) 128-d dlib descriptor, as ``compute_face_descriptor`` returns it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelab.errors import CheckpointError, WeightsError

log = logging.getLogger(__name__)

CHIP = 150
#: Format tag of the cached state dict; bump when the cache layout changes.
CACHE_FORMAT = "dlib-resnet-torch-1"

# ----------------------------------------------------------------------------------------
# dlib's serialization (dlib/serialize.h, dlib/dnn/{core,layers,input,loss,tensor}.h)
# ----------------------------------------------------------------------------------------


class _Reader:
    """Sequential reader of dlib's serialize() byte stream."""

    def __init__(self, data: bytes, name: str = "dlib file") -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.name}: not dlib's face ResNet as expected ({what} at byte "
                            f"{self.pos})")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("unexpected end of file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        """dlib's integer: one byte (bit 7: negative, low 4 bits: byte count), then the
        magnitude as that many little-endian bytes."""
        head = self.take(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise self.fail(f"bad integer header 0x{head:02x}")
        value = int.from_bytes(self.take(size), "little") if size else 0
        return -value if head & 0x80 else value

    def float(self) -> float:
        """dlib's portable float: int64 mantissa and int16 exponent, value = m * 2**e
        (exponents 32000..32002 mark +inf, -inf, nan)."""
        mantissa, exponent = self.int(), self.int()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in special:
            return special[exponent]
        return float(np.ldexp(np.float64(mantissa), exponent))

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r}")
        return ch == b"1"

    def str(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def tensor(self) -> np.ndarray:
        """resizable_tensor: version, (n, k, nr, nc), then float32 values (version 2: raw
        little-endian IEEE; version 1: dlib floats)."""
        version = self.int()
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        if version == 2:
            arr = np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        elif version == 1:
            arr = np.array([self.float() for _ in range(count)], np.float32)
        else:
            raise self.fail(f"tensor version {version}")
        return arr.reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        """alias_tensor: version 1 and its (n, k, nr, nc) shape (offsets are implicit)."""
        if self.int() != 1:
            raise self.fail("alias_tensor version")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def expect(self, value: int, what: str) -> None:
        got = self.int()
        if got != value:
            raise self.fail(f"{what}: expected {value}, found {got}")


@dataclass
class _Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    arg: int = 0  # tag / skip / add_prev id, or filter count for con
    stride: int = 1
    params: dict = field(default_factory=dict)


def _architecture() -> list[_Layer]:
    """The layer stack of dlib's anet_type, bottom (next to the input) first."""
    stack: list[_Layer] = []
    add = stack.append

    def con(n: int, s: int) -> None:
        add(_Layer("con", n, s))

    def block(n: int, s: int) -> None:
        con(n, s), add(_Layer("affine")), add(_Layer("relu")), con(n, 1), add(_Layer("affine"))

    def ares(n: int) -> None:
        add(_Layer("tag", 1)), block(n, 1), add(_Layer("add_prev", 1)), add(_Layer("relu"))

    def ares_down(n: int) -> None:
        add(_Layer("tag", 1)), block(n, 2), add(_Layer("tag", 2)), add(_Layer("skip", 1))
        add(_Layer("avg_pool")), add(_Layer("add_prev", 2)), add(_Layer("relu"))

    con(32, 2), add(_Layer("affine")), add(_Layer("relu")), add(_Layer("max_pool"))
    for _ in range(3):  # alevel4
        ares(32)
    for n, reps in ((64, 3), (128, 2), (256, 2), (256, 0)):  # alevel3..alevel0
        ares_down(n)
        for _ in range(reps):
            ares(n)
    add(_Layer("avg_pool")), add(_Layer("fc", 128))
    return stack


def _read_details(r: _Reader, layer: _Layer) -> None:
    name = r.str()
    p = layer.params
    if layer.kind == "con":
        if name != "con_4":
            raise r.fail(f"layer {name!r} where con_4 was expected")
        params = r.tensor().reshape(-1)
        nf, nr, nc = r.int(), r.int(), r.int()
        sy, sx, py, px = r.int(), r.int(), r.int(), r.int()
        fshape, bshape = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        nw = int(np.prod(fshape))
        if nf != layer.arg or fshape[0] != nf or (nr, nc) != fshape[2:] or sy != sx:
            raise r.fail(f"con shape {fshape} / {nf} filters")
        if sy != layer.stride or params.size != nw + int(np.prod(bshape)):
            raise r.fail("con stride or parameter count")
        p["weight"] = params[:nw].reshape(fshape)
        p["bias"] = params[nw:].reshape(nf)
        p["padding"] = (py, px)
    elif layer.kind == "affine":
        if name != "affine_":
            raise r.fail(f"layer {name!r} where affine_ was expected")
        params = r.tensor().reshape(-1)
        g, b = r.alias(), r.alias()
        mode = r.int()
        k = int(np.prod(g))
        if mode != 0 or params.size != k + int(np.prod(b)):  # 0 = CONV_MODE
            raise r.fail("affine mode or size")
        p["gamma"], p["beta"] = params[:k].copy(), params[k:].copy()
    elif layer.kind in ("max_pool", "avg_pool"):
        if name != f"{layer.kind}_2":
            raise r.fail(f"layer {name!r} where {layer.kind}_2 was expected")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        if (nr, nc) != (nr, nr) or sy != sx or py or px:
            raise r.fail(f"{layer.kind} window {nr}x{nc} stride {sy},{sx} padding {py},{px}")
        p["window"], p["stride"] = nr, sy
    elif layer.kind == "relu":
        if name != "relu_":
            raise r.fail(f"layer {name!r} where relu_ was expected")
    elif layer.kind == "add_prev":
        if name != f"add_prev{layer.arg}_" and name != "add_prev_":
            raise r.fail(f"layer {name!r} where add_prev was expected")
    elif layer.kind == "fc":
        if name != "fc_2":
            raise r.fail(f"layer {name!r} where fc_2 was expected")
        n_out, n_in = r.int(), r.int()
        params = r.tensor().reshape(-1)
        w, b = r.alias(), r.alias()
        mode = r.int()
        for _ in range(4):
            r.float()
        if n_out != layer.arg or mode != 1 or w[:2] != (n_in, n_out) or params.size != n_in * n_out:
            raise r.fail("fc_no_bias shape")
        p["weight"] = params.reshape(n_in, n_out).T.copy()  # torch Linear: (out, in)


def parse_dlib_resnet(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of dlib's face ResNet ``.dat`` as a flat dict of float32 arrays.

    Keys: ``mean`` (RGB input means), ``conv{i}.weight`` / ``conv{i}.bias`` (OIHW), and
    ``affine{i}.gamma`` / ``affine{i}.beta`` for the 29 convolutions in forward order, and
    ``fc.weight`` (128, 256). The whole file must be consumed exactly, and every layer must
    be where dlib's ``anet_type`` puts it, else :class:`WeightsError`.
    """
    path = Path(path)
    r = _Reader(path.read_bytes(), str(path))
    r.expect(1, "loss layer version")
    if r.str() != "loss_metric_2":
        raise r.fail("loss layer is not loss_metric_2")
    r.float(), r.float()  # margin, distance threshold
    stack = _architecture()
    for layer in reversed(stack):  # versions, outermost first (each wraps its subnetwork)
        if layer is stack[0]:
            r.expect(3, "input add_layer version")
        else:
            r.expect(1 if layer.kind in ("tag", "skip") else 2, f"{layer.kind} version")
    if r.str() != "input_rgb_image_sized":
        raise r.fail("input layer is not input_rgb_image_sized")
    mean = np.array([r.float(), r.float(), r.float()], np.float32)
    if (r.int(), r.int()) != (CHIP, CHIP):
        raise r.fail("input size is not 150x150")
    for i, layer in enumerate(stack):  # details, innermost first
        if layer.kind in ("tag", "skip"):
            continue
        _read_details(r, layer)
        r.bool(), r.bool(), r.bool()
        for _ in range(3):  # x_grad, cached_output, params_grad / grad_final
            r.tensor()
        if i == 0:
            r.int()  # sample expansion factor
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes")
    out: dict[str, np.ndarray] = {"mean": mean}
    convs = [x for x in stack if x.kind == "con"]
    affines = [x for x in stack if x.kind == "affine"]
    for i, (c, a) in enumerate(zip(convs, affines, strict=True)):
        out[f"conv{i}.weight"], out[f"conv{i}.bias"] = c.params["weight"], c.params["bias"]
        out[f"affine{i}.gamma"], out[f"affine{i}.beta"] = a.params["gamma"], a.params["beta"]
        want_pad = 0 if c.stride != 1 else c.params["weight"].shape[-1] // 2
        if c.params["padding"] != (want_pad, want_pad):
            raise WeightsError(f"{path}: conv {i} padding {c.params['padding']} unexpected")
    pools = [x.params for x in stack if x.kind in ("max_pool", "avg_pool")]
    if [(q["window"], q["stride"]) for q in pools] != [(3, 2)] + [(2, 2)] * 4 + [(0, 1)]:
        raise WeightsError(f"{path}: pooling layers {pools} unexpected")
    out["fc.weight"] = stack[-1].params["weight"]
    return out


# ----------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------

_CACHE_LOCK = threading.RLock()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_state(dat_path: str | Path | None = None, cache_dir: str | Path | None = None):
    """The converted tensors (dict of torch tensors) of the dlib ``.dat``: read from the
    cache when there, else parsed from the file and cached (keyed by its sha256)."""
    import torch

    from facelab.io.torchfile import load_torch_file
    from facelab.paths import cache_root

    if dat_path is None:
        from facelab.embed.weights import dlib_model_path

        dat_path = dlib_model_path("resnet")
    dat_path = Path(dat_path)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "weights"
    digest = _sha256(dat_path)
    target = folder / f"dlib_resnet_v1_{digest[:16]}.pt"
    with _CACHE_LOCK:
        if target.is_file():
            try:
                blob = load_torch_file(target, what="converted dlib ResNet")
                if blob.get("format") == CACHE_FORMAT and blob.get("sha256") == digest:
                    return blob["state"]
                log.warning("%s: stale cache (format/sha256 differ); converting again", target)
            except (CheckpointError, AttributeError, KeyError) as exc:  # truncated/foreign
                log.warning("%s unreadable (%s); converting again", target, exc)
        log.info("converting %s to PyTorch (once; cached as %s)", dat_path, target)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                 parse_dlib_resnet(dat_path).items()}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        torch.save({"format": CACHE_FORMAT, "sha256": digest, "state": state}, tmp)
        tmp.replace(target)
        return state


# ----------------------------------------------------------------------------------------
# the PyTorch network
# ----------------------------------------------------------------------------------------

#: (filters, stride) of the 14 residual blocks (2 convolutions each; 28 + the stem = 29).
_BLOCKS = ([(32, 1)] * 3 + [(64, 2)] + [(64, 1)] * 3 + [(128, 2)] + [(128, 1)] * 2
           + [(256, 2)] + [(256, 1)] * 2 + [(256, 2)])
N_BLOCKS = len(_BLOCKS)


def _out(n: int, k: int, s: int, pad: int = 0) -> int:
    return 1 + (n + 2 * pad - k) // s  # dlib's (and torch's) output size


def _make_module(chip: int = CHIP, n_blocks: int = N_BLOCKS):
    """The network class for ``chip`` px inputs and the first ``n_blocks`` residual blocks
    (dlib's own: 150 and 14; the compact student runs smaller chips and drops the last,
    1.2M-parameter block). Shape padding of ``add_prev`` is fixed per input size."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        """One ares / ares_down unit; affines already folded into the convolutions."""

        def __init__(self, cin: int, n: int, stride: int, size: int) -> None:
            super().__init__()
            pad = 0 if stride != 1 else 1
            self.conv1 = nn.Conv2d(cin, n, 3, stride, pad)
            self.conv2 = nn.Conv2d(n, n, 3, 1, 1)
            self.down = stride != 1
            # add_prev of unequal shapes: zero-pad both to the max shape (top-left aligned).
            body = _out(size, 3, stride, pad)
            short = _out(size, 2, 2) if self.down else size
            full = max(body, short)
            self.size_body, self.size_out = body, full
            self.pad_body = (0, full - body, 0, full - body)
            self.pad_short = (0, full - short, 0, full - short, 0, n - cin)

        def forward(self, x):
            y = self.conv2(F.relu(self.conv1(x)))
            s = F.avg_pool2d(x, 2, 2) if self.down else x
            if any(self.pad_body):
                y = F.pad(y, self.pad_body)
            if any(self.pad_short):
                s = F.pad(s, self.pad_short)
            return F.relu(y + s)

    class DlibResNet(nn.Module):
        """dlib's face ResNet: (N, 150, 150, 3) RGB chips (uint8 or 0..255 float) ->
        (N, 128) raw descriptors, as dlib's ``compute_face_descriptor``."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 7, 2, 0)
            size = _out(_out(chip, 7, 2), 3, 2)
            blocks, cin = [], 32
            for n, s in _BLOCKS[:n_blocks]:
                blocks.append(Block(cin, n, s, size))
                size, cin = blocks[-1].size_out, n
                if blocks[-1].size_body < 1:
                    raise ValueError(f"a {chip} px input is too small for {n_blocks} dlib blocks")
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(256, 128, bias=False)

        def forward(self, chips):
            # NHWC -> NCHW view with channels-last strides (no copy for a contiguous batch)
            x = chips.permute(0, 3, 1, 2).to(torch.float32)
            if chip != CHIP:  # a compact student takes dlib's 150 px chips, resized
                x = F.interpolate(x, size=(chip, chip), mode="bilinear", align_corners=False)
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            x = self.blocks(x)
            return self.fc(x.mean(dim=(2, 3)))

    return DlibResNet


def build_model(state: dict | None = None, channels_last: bool = True):
    """The PyTorch port in eval mode, with dlib's input normalisation and every ``affine``
    folded into the convolutions. ``state``: from :func:`cached_state` (default)."""
    import torch

    state = cached_state() if state is None else state
    model = _make_module()()
    convs = [model.stem] + [c for b in model.blocks for c in (b.conv1, b.conv2)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            w = state[f"conv{i}.weight"].double()
            b = state[f"conv{i}.bias"].double()
            g, beta = state[f"affine{i}.gamma"].double(), state[f"affine{i}.beta"].double()
            if i == 0:  # (x - mean) / 256 folded in: the stem has no padding
                mean = state["mean"].double()
                b = b - (w.sum(dim=(2, 3)) * mean).sum(dim=1) / 256.0
                w = w / 256.0
            conv.weight.copy_((w * g[:, None, None, None]).float())
            conv.bias.copy_((b * g + beta).float())
        model.fc.weight.copy_(state["fc.weight"])
    model.eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def export_onnx(path: str | Path, model=None, opset: int = 17) -> Path:
    """Write the port as ONNX: input ``chips`` uint8 (N, 150, 150, 3) RGB, output
    ``descriptor`` float32 (N, 128); the batch axis is dynamic."""
    import torch

    model = build_model() if model is None else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, CHIP, CHIP, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(model, (dummy,), str(path), input_names=["chips"],
                          output_names=["descriptor"], opset_version=opset, dynamo=False,
                          dynamic_axes={"chips": {0: "batch"}, "descriptor": {0: "batch"}})
    return path


def export_once(path: Path, model_fn=None) -> Path:
    """``path``, exported first (atomically, once per process group) when missing:
    ``model_fn()`` gives the network to export (default: the dlib port)."""
    with _CACHE_LOCK:
        if not path.is_file():
            tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}.onnx")
            export_onnx(tmp, None if model_fn is None else model_fn())
            tmp.replace(path)
    return path


def onnx_session(path: str | Path | None = None, threads: int | None = None):
    """An ONNX Runtime session of the port; exported once into the weights cache (keyed by
    the ``.dat``'s sha256 like the state dict) when ``path`` is None."""
    import onnxruntime as ort

    if path is None:
        from facelab.embed.weights import dlib_model_path
        from facelab.paths import cache_root

        digest = _sha256(dlib_model_path("resnet"))
        path = export_once(cache_root() / "weights" / f"dlib_resnet_v1_{digest[:16]}.onnx")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # no busy-waiting between runs: the detector and other models share these cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_chips(chips) -> np.ndarray:
    arr = np.asarray(chips)
    if arr.ndim != 4 or arr.shape[1:] != (CHIP, CHIP, 3):
        raise ValueError(f"chips must be (N, {CHIP}, {CHIP}, 3) RGB, got {arr.shape}")
    return arr


class TorchDescriptor:
    """Callable (N, 150, 150, 3) uint8 chips -> (N, 128) float32, the PyTorch port (or any
    network with its interface, e.g. a distilled student)."""

    def __init__(self, batch: int = 64, model=None) -> None:
        self.model = build_model() if model is None else model  # or a student (same interface)
        self.batch = batch

    def __call__(self, chips) -> np.ndarray:
        import torch

        arr = np.ascontiguousarray(_check_chips(chips), dtype=np.uint8)
        outs = []
        with torch.inference_mode():
            for i in range(0, len(arr), self.batch):
                outs.append(self.model(torch.from_numpy(arr[i : i + self.batch])).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 128), np.float32)


class OnnxDescriptor:
    """Callable (N, 150, 150, 3) uint8 chips -> (N, 128) float32, ONNX Runtime."""

    def __init__(self, batch: int = 64, path: str | Path | None = None) -> None:
        self.session = onnx_session(path)
        self.batch = batch

    def __call__(self, chips) -> np.ndarray:
        arr = np.ascontiguousarray(_check_chips(chips), dtype=np.uint8)
        outs = [self.session.run(None, {"chips": arr[i : i + self.batch]})[0]
                for i in range(0, len(arr), self.batch)]
        return np.concatenate(outs) if outs else np.zeros((0, 128), np.float32)

