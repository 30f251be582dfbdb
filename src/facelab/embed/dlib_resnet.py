"""dlib's 128-d ResNet face embedding (offline weights from `face-recognition-models`).

The network expects dlib-style 150x150 "face chips": dlib's 5-point shape predictor is run on
a face box (from any facelab detector), and ``dlib.get_face_chip`` warps the face to dlib's
template. Options on top of the plain recipe:

* ``flip``: average the embedding of the chip and its mirror image (test-time augmentation);
* ``occlude_below``: paint the chip from that row fraction down with a flat grey, on every
  face, so masked and unmasked faces are compared on the upper face only;
* ``align``: "shape5" (dlib's 5-point predictor on the box: the plain recipe), "landmarks"
  (the detector's own 5 landmarks warped onto dlib's chip template, ``DLIB_CHIP_TEMPLATE``),
  or "eyes" (the two eye centres only: for masked faces, whose nose and mouth are hidden).
  Without detector landmarks, both fall back to "shape5".
* ``net``: which implementation runs the network on the chips: "onnx" (default: the
  PyTorch port of dlib's network, exported to ONNX and run by ONNX Runtime; ~10x dlib's
  speed on CPU, cosine >= 0.9999 with dlib's vectors), "torch" (the port, eager
  channels-last) or "dlib" (dlib's own C++ network). See ``facelab.embed.dlib_torch``.
  The chips are the same for all three; the port gets all chips of a call (and their
  mirrors) in one batch. The version string carries the backend (``-onnx`` / ``-torch``;
  "dlib" keeps the historical string), so a face database never mixes their vectors.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from facelab.embed.base import register_embedder
from facelab.embed.weights import dlib_model_path
from facelab.errors import ConfigError
from facelab.types import Face

log = logging.getLogger(__name__)
CHIP = 150
NETS = ("onnx", "torch", "dlib")

#: Where MTCNN-style 5 landmarks (eyes, nose tip, mouth corners) fall in a dlib 150px chip
#: (padding 0.25): the mean over 146 UTKFace faces (dlib HOG + 5-point chip, then MTCNN run on
#: the chip). Measured on UTKFace so no evaluation set shaped it.
DLIB_CHIP_TEMPLATE = np.array(
    [[46.56, 44.77], [101.2, 44.84], [73.79, 76.92], [48.81, 99.6], [98.82, 99.41]]
)


@dataclass
class DlibEmbedConfig:
    """Options of the dlib embedder.

    Attributes:
        jitters: dlib's random jitter count per chip (0 = none; 10 is ~10x slower).
        flip: also embed the mirrored chip and average (small accuracy gain, 2x cost).
        padding: chip padding around dlib's template (dlib default 0.25).
        occlude_below: None, or a row fraction in (0, 1): rows below are painted grey.
        grey: the fill value for occluded rows.
        align: "shape5", "landmarks" or "eyes" (see the module docstring).
        net: "onnx" (default), "torch" or "dlib": the network implementation.
        batch: chips per forward of the "onnx" / "torch" port.
    """

    jitters: int = 0
    flip: bool = True
    padding: float = 0.25
    occlude_below: float | None = None
    grey: int = 128
    align: str = "shape5"
    net: str = "onnx"
    batch: int = 64

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ConfigError(f"dlib embedder net {self.net!r} unknown; choose one of {NETS}")


class DlibResNetEmbedder:
    """dlib ResNet-29 face embedding; Euclidean metric, threshold 0.6 (dlib's own).

    Example:
        >>> emb = DlibResNetEmbedder()
        >>> vecs = emb.embed_faces(image, [Face((60, 70, 190, 200))])   # doctest: +SKIP
        >>> vecs.shape                                                    # doctest: +SKIP
        (1, 128)
    """

    name = "dlib-resnet"
    dim = 128
    metric = "l2"

    def __init__(self, config: DlibEmbedConfig | None = None, threshold: float = 0.6) -> None:
        self.config = config or DlibEmbedConfig()
        self.threshold = threshold
        self._shape = None
        self._net = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        """Changes with every option that changes the vectors."""
        c = self.config
        occ = "none" if c.occlude_below is None else f"{c.occlude_below:.2f}"
        net = "" if c.net == "dlib" else f"-{c.net}"
        return f"v1-j{c.jitters}-f{int(c.flip)}-p{c.padding:.2f}-occ{occ}-{c.align}{net}"

    def prepare(self) -> DlibResNetEmbedder:
        """Load the shape predictor and the network (done on first use otherwise)."""
        with self._lock:
            if self._net is None:
                import dlib

                self._shape = dlib.shape_predictor(str(dlib_model_path("shape5")))
                if self.config.net == "dlib":
                    self._net = dlib.face_recognition_model_v1(str(dlib_model_path("resnet")))
                elif self.config.net == "torch":
                    from facelab.embed.dlib_torch import TorchDescriptor

                    self._net = TorchDescriptor(batch=self.config.batch)
                else:
                    from facelab.embed.dlib_torch import OnnxDescriptor

                    self._net = OnnxDescriptor(batch=self.config.batch)
        return self

    def chips(self, image: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """dlib-aligned 150x150 RGB chips, one per face (dlib 5-point model on each box)."""
        import dlib

        self.prepare()
        img = np.ascontiguousarray(image, dtype=np.uint8)
        out = []
        for face in faces:
            if self.config.align != "shape5" and face.landmarks is not None:
                chip = self._warp(img, np.asarray(face.landmarks, np.float64))
            else:
                x1, y1, x2, y2 = (int(np.rint(v)) for v in face.box)
                shape = self._shape(img, dlib.rectangle(x1, y1, x2, y2))
                chip = np.asarray(dlib.get_face_chip(img, shape, size=CHIP, padding=self.config.padding))
            out.append(self._occlude(chip))
        return out

    def _warp(self, img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        import cv2

        from facelab.align.align import estimate_similarity

        keep = slice(0, 2) if self.config.align == "eyes" else slice(0, 5)
        m = estimate_similarity(landmarks[keep], DLIB_CHIP_TEMPLATE[keep])
        return cv2.warpAffine(img, m, (CHIP, CHIP), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _occlude(self, chip: np.ndarray) -> np.ndarray:
        frac = self.config.occlude_below
        if frac is None:
            return chip
        chip = chip.copy()
        chip[int(np.rint(frac * chip.shape[0])) :] = self.config.grey
        return chip

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) embeddings of already aligned 150x150 chips."""
        self.prepare()
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        batch = [np.ascontiguousarray(c, dtype=np.uint8) for c in chips]
        if self.config.net != "dlib":
            return self._embed_port(batch)
        vecs = np.asarray(self._net.compute_face_descriptor(batch, self.config.jitters), np.float32)
        if self.config.flip:
            mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in batch]
            vecs += np.asarray(
                self._net.compute_face_descriptor(mirrored, self.config.jitters), np.float32
            )
            vecs /= 2.0
        return vecs.reshape(len(chips), self.dim)

    def _embed_port(self, batch: list[np.ndarray]) -> np.ndarray:
        """The PyTorch / ONNX port: every chip (with its jitters and mirror) in one batch.

        Jitter follows dlib's ``compute_face_descriptor``: ``jitters <= 1`` means none, else
        the mean over that many ``dlib.jitter_image`` copies (random, as in dlib).
        """
        n, c = len(batch), self.config
        if c.jitters > 1:
            import dlib

            views = [np.asarray(j, np.uint8) for chip in batch
                     for j in dlib.jitter_image(chip, num_jitters=c.jitters)]
        else:
            views = batch
        per = max(1, c.jitters)
        stack = np.stack(views)
        if c.flip:
            stack = np.concatenate([stack, stack[:, :, ::-1]])
        vecs = self._net(stack).reshape(2 if c.flip else 1, n, per, self.dim)
        return vecs.mean(axis=(0, 2)).astype(np.float32)

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(len(faces), 128) embeddings of faces (boxes) in one RGB image."""
        return self.embed_chips(self.chips(image, faces))


@register_embedder("dlib-resnet")
def _make(threshold: float = 0.6, **kwargs: object) -> DlibResNetEmbedder:
    return DlibResNetEmbedder(DlibEmbedConfig(**kwargs), threshold=threshold)  # type: ignore[arg-type]


@register_embedder("dlib-resnet-upper")
def _make_upper(threshold: float = 0.6, **kwargs: object) -> DlibResNetEmbedder:
    kwargs.setdefault("occlude_below", 0.55)
    return DlibResNetEmbedder(DlibEmbedConfig(**kwargs), threshold=threshold)  # type: ignore[arg-type]
