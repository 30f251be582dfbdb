"""Student embedding networks for distillation, and the embedders that serve them.

Every student takes what dlib's network takes, (N, 150, 150, 3) RGB uint8 chips (dlib's
5-point chip of a detected face), and returns (N, 128) vectors, so the chips, the ONNX
interface and the face database plumbing are shared with ``dlib-resnet``:

* ``dlib``: the PyTorch port of dlib's ResNet (``facelab.embed.dlib_torch``), initialised
  from dlib's own weights; Euclidean metric like dlib's.
* ``dlib-lite``: the same network, cut for the <= 5M-parameter, >= 3x-speed track: the
  chip resized to 112 px and the last residual block (1.2M parameters) dropped, 4,427,328
  parameters, initialised from dlib's weights (so distillation starts near the teacher
  instead of from scratch); Euclidean metric.
* ``mobilefacenet``: MobileFaceNet (~1M parameters) on the chip resized to 112 px;
  cosine metric.
* ``mobilenetv2``: ImageNet MobileNetV2 features (the offline weights) + a global
  depthwise head, on the chip resized to 112 px (~3M parameters); cosine metric.

Example:
    >>> net = build_student("mobilefacenet")
    >>> net(torch.zeros(2, 150, 150, 3, dtype=torch.uint8)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facelab.embed.base import register_embedder
from facelab.embed.dlib_resnet import DlibEmbedConfig, DlibResNetEmbedder
from facelab.embed.dlib_torch import CHIP, N_BLOCKS
from facelab.errors import CheckpointError, ConfigError

STUDENTS = ("dlib", "dlib-lite", "mobilefacenet", "mobilenetv2")
METRIC = {"dlib": "l2", "dlib-lite": "l2", "mobilefacenet": "cosine", "mobilenetv2": "cosine"}
#: students built from dlib's network (dlib's weights, per-tensor step scaling, --freeze)
DLIB_FAMILY = ("dlib", "dlib-lite")
#: the compact dlib student: input side and residual blocks kept (of 14)
LITE_CHIP, LITE_BLOCKS = 112, 13
#: the side the mobilefacenet and mobilenetv2 students resize dlib's chip to
SMALL_CHIP = 112
#: embedder names and bundled file names per student kind
EMBEDDER_NAME = {"dlib": "dlib-student", "dlib-lite": "lite-student",
                 "mobilefacenet": "mfn-student", "mobilenetv2": "mbv2-student"}
BUNDLED_FILE = {"dlib": "dlib_student.pt", "dlib-lite": "lite_student.pt",
                "mobilefacenet": "mfn_student.pt", "mobilenetv2": "mbv2_student.pt"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChipNet(nn.Module):
    """(N, 150, 150, 3) uint8 chips -> (N, dim): resize to ``size``, normalise, run ``body``."""

    def __init__(self, body: nn.Module, size: int, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.body, self.size = body, size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = chips.permute(0, 3, 1, 2).to(self.mean.dtype)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=False)
        return self.body((x - self.mean) / self.std)


class MobileNetV2Embed(nn.Module):
    """MobileNetV2 features + MobileFaceNet's head (1x1 conv, global depthwise conv, linear)."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        import torchvision.models as tvm

        self.features = tvm.mobilenet_v2(weights=None).features  # 1280 x 4 x 4 at 112 px
        self.conv = nn.Sequential(nn.Conv2d(1280, 512, 1, bias=False), nn.BatchNorm2d(512), nn.PReLU(512))
        self.gdc = nn.Sequential(nn.Conv2d(512, 512, 4, groups=512, bias=False), nn.BatchNorm2d(512))
        self.proj = nn.Linear(512, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdc(self.conv(self.features(x))).flatten(1)
        return self.bn(self.proj(x))


def build_student(kind: str, init: str | Path | dict | None = None) -> nn.Module:
    """A student network, randomly initialised or from ``init``.

    ``init``: for ``dlib`` / ``dlib-lite`` the converted dlib state (default: dlib's installed
    weights); for ``mobilenetv2`` ImageNet MobileNetV2 weights ("imagenet", the default: the
    offline weight package; or a state-dict file); ignored for ``mobilefacenet`` (trained
    from scratch).
    A dict or file holding a whole student ``state_dict`` (key ``student``) is loaded as is.
    """
    if kind not in STUDENTS:
        raise ConfigError(f"unknown student {kind!r}; choose one of {STUDENTS}")
    blob = _read_init(init)
    whole = isinstance(blob, dict) and "student" in blob
    if kind in DLIB_FAMILY:
        from facelab.embed.dlib_torch import _make_module, build_model

        shape = (LITE_CHIP, LITE_BLOCKS) if kind == "dlib-lite" else ()
        model = _make_module(*shape)()
        if not whole:  # dlib's weights: the converted cache blob {"state": ...} or the installed .dat
            state = blob.get("state") if isinstance(blob, dict) else None
            full = build_model(_float(state) if state is not None else None, channels_last=False)
            # convolution weights do not depend on the input size; dropped blocks are skipped
            model.load_state_dict({k: v for k, v in full.state_dict().items()
                                   if k in model.state_dict()})
        model.requires_grad_(True)
    elif kind == "mobilefacenet":
        from facelab.embed.mobilefacenet import MobileFaceNet

        model = ChipNet(MobileFaceNet(128), SMALL_CHIP, (0.5, 0.5, 0.5), (0.502, 0.502, 0.502))
    else:
        body = MobileNetV2Embed(128)
        if not whole:
            feats = blob.get("features") if isinstance(blob, dict) and "features" in blob else None
            if feats is None:
                feats = _imagenet_features(init if isinstance(init, (str, Path)) else "imagenet")
            body.features.load_state_dict(_float(feats))
        model = ChipNet(body, SMALL_CHIP, IMAGENET_MEAN, IMAGENET_STD)
    if whole:
        model.load_state_dict(_float(blob["student"]))
    return model


def student_input_px(kind: str) -> int:
    """The side the student's network runs at (every student takes 150 px dlib chips)."""
    return {"dlib": CHIP, "dlib-lite": LITE_CHIP}.get(kind, SMALL_CHIP)


def student_blocks(kind: str) -> int | None:
    """Residual blocks of a dlib-family student (None for the others)."""
    return {"dlib": N_BLOCKS, "dlib-lite": LITE_BLOCKS}.get(kind)


def _read_init(init: str | Path | dict | None):
    if init is None or isinstance(init, dict) or init == "imagenet":
        return init
    from facelab.io.torchfile import load_torch_file

    return load_torch_file(Path(init), "student initial weights")


def _float(state: dict) -> dict:
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in state.items()}


def _imagenet_features(pretrained: str | Path) -> dict:
    from facelab.models.weights import KNOWN_WEIGHTS, load_state_dict

    if pretrained == "imagenet":
        known = KNOWN_WEIGHTS[("mobilenet_v2", "imagenet")]
        state = load_state_dict(known.path(), known.sha256)
    else:
        state = load_state_dict(Path(pretrained))
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def count_parameters(model: nn.Module) -> int:
    """All parameters (the <= 5M budget counts every weight)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- serving


def load_student(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(network in eval mode, checkpoint metadata) from a distillation checkpoint."""
    from facelab.io.torchfile import load_torch_file

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"student checkpoint {path} not found; train one with "
                              "`facelab embed-train distill`")
    ck = load_torch_file(path, "student checkpoint")
    if not isinstance(ck, dict) or "student" not in ck or "kind" not in ck:
        raise CheckpointError(f"{path}: not a facelab student checkpoint (written by "
                              "`facelab embed-train distill`)")
    kind = ck["kind"]
    trained = (ck.get("input_px", student_input_px(kind)), ck.get("blocks", student_blocks(kind)))
    if trained != (student_input_px(kind), student_blocks(kind)):
        raise CheckpointError(f"{path}: a {kind} student trained at {trained[0]} px with "
                              f"{trained[1]} blocks; this facelab builds it at "
                              f"{student_input_px(kind)} px with {student_blocks(kind)}: retrain it")
    model = build_student(ck["kind"], {"student": ck["student"]}).eval().requires_grad_(False)
    return model, {k: v for k, v in ck.items() if k != "student"}


def bundled_weights(kind: str) -> Path:
    """Where a student checkpoint shipped with facelab lives (``facelab/weights/``). Only
    ``dlib_student.pt`` is shipped (model card beside it); the other students, measured but
    not good enough to ship, need a ``checkpoint``."""
    name = BUNDLED_FILE[kind]
    return Path(__file__).resolve().parent.parent / "weights" / name


class StudentEmbedder(DlibResNetEmbedder):
    """A distilled student behind dlib's chips: same detection, 5-point chip and flip TTA.

    ``net``: "onnx" (default; exported once per checkpoint into the weights cache) or
    "torch". The version string carries the checkpoint's sha256, so a face database never
    mixes vectors of two students or of a student and dlib.

    Example:
        >>> emb = get_embedder("mfn-student", checkpoint="best.pt")  # doctest: +SKIP
        >>> emb.embed_faces(image, faces).shape           # doctest: +SKIP
        (1, 128)
    """

    def __init__(self, kind: str, checkpoint: str | Path | None = None, net: str = "onnx",
                 flip: bool = True, threshold: float | None = None, **options: object) -> None:
        if net not in ("onnx", "torch"):
            raise ConfigError(f"student net {net!r} unknown; choose 'onnx' or 'torch'")
        path = Path(checkpoint) if checkpoint else bundled_weights(kind)
        if not path.is_file():
            raise CheckpointError(
                f"student weights {path} not found; train them with `facelab embed-train "
                f"distill --student {kind}` and pass checkpoint=<best.pt>")
        self.checkpoint = path
        self.kind = kind
        self.student_net = net
        self._meta = None
        from facelab.embed.dlib_torch import _sha256

        self._digest = _sha256(path)[:16]
        super().__init__(DlibEmbedConfig(flip=flip, net="torch", **options))  # type: ignore[arg-type]
        self.name = EMBEDDER_NAME[kind]
        self.metric = METRIC[kind]
        self._threshold = threshold

    @property
    def version(self) -> str:
        c = self.config
        return f"{self._digest}-f{int(c.flip)}-p{c.padding:.2f}-{c.align}-{self.student_net}"

    @property
    def threshold(self) -> float:  # type: ignore[override]
        if self._threshold is not None:
            return self._threshold
        self.prepare()
        return float(self._meta.get("threshold", 0.6 if self.metric == "l2" else 0.5))

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = value

    def prepare(self) -> StudentEmbedder:
        with self._lock:
            if self._net is None:
                import dlib

                from facelab.embed.dlib_torch import OnnxDescriptor, TorchDescriptor, export_once
                from facelab.embed.weights import dlib_model_path
                from facelab.paths import cache_root

                self._shape = dlib.shape_predictor(str(dlib_model_path("shape5")))
                model, self._meta = load_student(self.checkpoint)
                if self.student_net == "torch":
                    self._net = TorchDescriptor(self.config.batch, model)
                else:
                    onnx = cache_root() / "weights" / f"student_{self.kind}_{self._digest}.onnx"
                    self._net = OnnxDescriptor(self.config.batch, export_once(onnx, lambda: model))
        return self

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        vecs = super().embed_chips(chips)
        if self.metric == "cosine" and len(vecs):
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs.astype(np.float32)


def _factory(kind: str):
    def make(checkpoint: str | None = None, **kw: object) -> StudentEmbedder:
        return StudentEmbedder(kind, checkpoint, **kw)  # type: ignore[arg-type]
    return make


for _kind, _name in EMBEDDER_NAME.items():
    register_embedder(_name)(_factory(_kind))
