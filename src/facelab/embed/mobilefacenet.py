"""MobileFaceNet (Chen et al. 2018, ~1M parameters) embedding + ArcFace / CosFace margin heads.

Inputs are 112x112 RGB faces aligned with :func:`facelab.align.align_face` (5-point ArcFace
template); outputs are L2-normalised 128-d vectors compared with cosine distance. The
trained checkpoint (see :mod:`facelab.embed.train`) carries its own threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facelab.embed.base import register_embedder
from facelab.errors import CheckpointError, ConfigError
from facelab.io.torchfile import load_torch_file
from facelab.types import Face


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBN(cin, mid), ConvBN(mid, mid, 3, stride, 1, groups=mid), ConvBN(mid, cout, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


# (expansion, out channels, repeats, first stride) -- the MobileFaceNet paper's table 1
SETTINGS = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone; ``width`` scales channels (1.0 = the paper's 0.99M parameters).

    Example:
        >>> net = MobileFaceNet()
        >>> net(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 128])
    """

    def __init__(self, dim: int = 128, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: max(8, int(round(n * width)))
        self.stem = nn.Sequential(ConvBN(3, c(64), 3, 2, 1), ConvBN(c(64), c(64), 3, 1, 1, groups=c(64)))
        blocks: list[nn.Module] = []
        cin = c(64)
        for t, cout, n, s in SETTINGS:
            for i in range(n):
                blocks.append(Bottleneck(cin, c(cout), s if i == 0 else 1, t))
                cin = c(cout)
        self.blocks = nn.Sequential(*blocks)
        self.conv = ConvBN(cin, c(512))
        self.gdc = ConvBN(c(512), c(512), 7, 1, 0, groups=c(512), act=False)  # global depthwise conv
        self.proj = nn.Conv2d(c(512), dim, 1, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdc(self.conv(self.blocks(self.stem(x))))
        return self.bn(self.proj(x).flatten(1))


class MarginHead(nn.Module):
    """ArcFace (``cos(theta + m)``) or CosFace (``cos(theta) - m``) logits, scaled by ``s``.

    Example:
        >>> head = MarginHead(128, 10, kind="arcface")
        >>> head(torch.randn(4, 128), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 10])
    """

    def __init__(self, dim: int, classes: int, kind: str = "arcface", s: float = 30.0, m: float = 0.4) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ConfigError(f"unknown margin head {kind!r}; use 'arcface' or 'cosface'")
        self.kind, self.s, self.m = kind, s, m
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return cos * self.s
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        if self.kind == "cosface":
            target = cos - self.m
        else:
            theta = torch.acos(cos)
            target = torch.where(theta + self.m < math.pi, torch.cos(theta + self.m), cos - self.m * math.sin(self.m))
        return torch.where(onehot, target, cos) * self.s


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_tensor(faces: list[np.ndarray]) -> torch.Tensor:
    """Aligned RGB uint8 112x112 faces -> normalised (N, 3, 112, 112) float tensor."""
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0


class MobileFaceNetEmbedder:
    """Embedder over a trained checkpoint (cosine metric; flip-averaged).

    Example:
        >>> emb = MobileFaceNetEmbedder("runs/mfn/best.pt")     # doctest: +SKIP
    """

    name = "mobilefacenet"
    dim = 128
    metric = "cosine"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        if checkpoint is None:
            raise ConfigError("the mobilefacenet embedder needs checkpoint=<path to a trained .pt>")
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found; train one with `python -m facelab.embed.train`")
        ck = load_torch_file(path, "mobilefacenet checkpoint", map_location=device)
        if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
            raise CheckpointError(f"{path}: not a mobilefacenet checkpoint (written by "
                                  "`python -m facelab.embed.train`)")
        self.model = MobileFaceNet(ck["config"]["dim"], ck["config"]["width"]).to(device).eval()
        self.model.load_state_dict(ck["model"])
        self.threshold = float(ck.get("threshold", 0.5))
        self.version = f"{path.stem}-e{ck.get('epoch', 0)}"
        self.device = device

    @torch.inference_mode()
    def embed_aligned(self, faces: list[np.ndarray]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        x = to_tensor(faces).to(self.device)
        e = F.normalize(self.model(x)) + F.normalize(self.model(torch.flip(x, dims=[3])))
        return F.normalize(e).cpu().numpy().astype(np.float32)

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_aligned([align_or_crop(image, f) for f in faces])

    def export_onnx(self, path: str | Path) -> Path:
        """Write the network as ONNX: float (B, 3, 112, 112) in [0, 1] -> (B, dim) raw
        embedding (normalise, and average with the mirror image, as `embed_aligned` does).

        Example:
            >>> MobileFaceNetEmbedder("runs/mfn/best.pt").export_onnx("mfn.onnx")  # doctest: +SKIP
        """
        path = Path(path)
        with torch.inference_mode():
            torch.onnx.export(self.model.eval().cpu(), (torch.zeros(2, 3, 112, 112),), str(path),
                              input_names=["faces"], output_names=["embedding"], opset_version=17,
                              dynamic_axes={"faces": {0: "batch"}, "embedding": {0: "batch"}},
                              dynamo=False)
        return path


def align_or_crop(image: np.ndarray, face: Face, size: int = 112) -> np.ndarray:
    """5-point alignment when landmarks exist, else a square crop of the box resized."""
    if face.landmarks is not None:
        from facelab.align import align_face

        return align_face(image, face.landmarks, size=size)
    from PIL import Image

    from facelab.align.crop import crop_box

    return np.asarray(Image.fromarray(crop_box(image, face.box, margin=0.05)).resize((size, size)))


@register_embedder("mobilefacenet")
def _make(checkpoint: str | None = None, **kw: object) -> MobileFaceNetEmbedder:
    return MobileFaceNetEmbedder(checkpoint, **kw)  # type: ignore[arg-type]
