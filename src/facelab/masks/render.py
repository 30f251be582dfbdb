"""Draw face masks and accessories on a photo, anchored on its facial landmarks.

Everything is procedural (OpenCV polygons and numpy colour fields), seeded and
deterministic: the same image, landmarks, spec and seed give identical pixels. Masks are
shaded by the face's own local luminance (a blurred brightness map of the photo relative to
the skin's median), scaled to the photo's exposure and colour cast, given a soft edge and
the photo's noise level.

Example:
    >>> from facelab.masks import render, detect_landmarks68
    >>> out = render(img, detect_landmarks68(img), kind="kn95", wear="below_nose", seed=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from facelab.errors import ConfigError
from facelab.masks.landmarks import to68
from facelab.masks.shapes import (
    ACCESSORIES,
    INCORRECT_WEARS,
    MASK_KINDS,
    WEARS,
    Frame,
    MaskGeometry,
    ellipse_points,
    face_frame,
    jaw_at,
    lens_geometry,
    lerp,
    mask_geometry,
    smooth_curve,
)
from facelab.masks.textures import PATTERNS, fabric, pick_colour, value_noise

_SHIFT = 3  # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)


@dataclass(frozen=True)
class RenderSpec:
    """What to draw: a mask ``kind`` worn as ``wear``, plus ``accessories``, from ``seed``.

    ``wear`` is "correct", "none", "incorrect" (the seed picks one of the incorrect
    variants) or a variant: "below_nose", "mouth_uncovered", "on_chin".
    """

    kind: str = "surgical"
    wear: str = "correct"
    accessories: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ConfigError(f"unknown mask kind {self.kind!r}; choose one of {list(MASK_KINDS)}")
        if self.wear not in WEARS:
            raise ConfigError(f"unknown wear mode {self.wear!r}; choose one of {list(WEARS)}")
        acc = tuple(self.accessories)
        bad = [a for a in acc if a not in ACCESSORIES]
        if bad:
            raise ConfigError(f"unknown accessory {bad[0]!r}; choose from {list(ACCESSORIES)}")
        object.__setattr__(self, "accessories", acc)

    @property
    def resolved_wear(self) -> str:
        """The concrete wear mode ("incorrect" resolved to a variant by the seed)."""
        if self.wear != "incorrect":
            return self.wear
        rng = np.random.default_rng([self.seed, 2])
        return str(INCORRECT_WEARS[rng.integers(len(INCORRECT_WEARS))])

    @property
    def mask_label(self) -> int:
        """facelab's mask class: 0 worn correctly, 1 worn incorrectly, 2 not worn."""
        return {"correct": 0, "none": 2}.get(self.wear, 1)


# ----------------------------------------------------------------------------- canvas


class _Canvas:
    """The float image being drawn on, plus the photo's lighting, exposure and noise."""

    def __init__(self, image: np.ndarray, pts: np.ndarray, seed: int) -> None:
        self.img = image.astype(np.float32)
        self.h, self.w = image.shape[:2]
        self.pts = pts
        self.fr = face_frame(pts)
        self.seed = seed
        self._light: np.ndarray | None = None
        self._k = 1.0
        self._stats()

    def _stats(self) -> None:
        s = self.fr.s
        x0, y0, x1, y1 = self._bbox(self.pts, 0.6 * s)
        face = self.img[y0:y1, x0:x1].reshape(-1, 3) if x1 > x0 and y1 > y0 else self.img[:1, :1, :].reshape(-1, 3)
        grey = face @ np.array([0.299, 0.587, 0.114], np.float32)
        self.exposure = float(np.clip(np.percentile(grey, 97) / 235.0, 0.4, 1.05))
        mean = face.mean(0) + 1.0
        tint = mean / mean.mean()
        self.tint = np.clip(1 + 0.5 * (tint - 1), 0.88, 1.12).astype(np.float32)
        patch = self.img[y0:y1, x0:x1]
        if patch.shape[0] > 4 and patch.shape[1] > 4:
            g = patch @ np.array([0.299, 0.587, 0.114], np.float32)
            resid = g - cv2.GaussianBlur(g, (3, 3), 0)
            self.noise = float(np.clip(1.4826 * np.median(np.abs(resid)) * 1.6, 0.4, 6.0))
        else:
            self.noise = 1.0

    def _bbox(self, pts: np.ndarray, margin: float) -> tuple[int, int, int, int]:
        x0 = int(max(0, np.floor(pts[:, 0].min() - margin)))
        y0 = int(max(0, np.floor(pts[:, 1].min() - margin)))
        x1 = int(min(self.w, np.ceil(pts[:, 0].max() + margin) + 1))
        y1 = int(min(self.h, np.ceil(pts[:, 1].max() + margin) + 1))
        return x0, y0, x1, y1

    def light(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Local face luminance relative to the skin's median, over ``box`` (x0, y0, x1, y1)."""
        if self._light is None:
            k = max(1.0, self.fr.s / 14.0)
            small = cv2.resize(self.img, (max(1, round(self.w / k)), max(1, round(self.h / k))),
                               interpolation=cv2.INTER_AREA) if k > 1 else self.img
            grey = small @ np.array([0.299, 0.587, 0.114], np.float32)
            blur = cv2.GaussianBlur(grey, (0, 0), max(1.0, 0.3 * self.fr.s / k))
            probe = np.vstack([self.pts[1:16], self.pts[[29, 31, 33, 35]], self.pts[17:27]]) / k
            xi = np.clip(np.round(probe[:, 0]).astype(int), 0, blur.shape[1] - 1)
            yi = np.clip(np.round(probe[:, 1]).astype(int), 0, blur.shape[0] - 1)
            ref = max(float(np.median(blur[yi, xi])), 8.0)
            self._light = np.clip(blur / ref, 0.45, 1.5) ** 0.85
            self._k = k
        x0, y0, x1, y1 = box
        k = self._k
        lo = self._light
        sx0, sy0 = int(np.floor(x0 / k)), int(np.floor(y0 / k))
        sx1 = min(lo.shape[1], int(np.ceil(x1 / k)) + 1)
        sy1 = min(lo.shape[0], int(np.ceil(y1 / k)) + 1)
        crop = lo[sy0:sy1, sx0:sx1]
        if k == 1.0:
            return crop[: y1 - y0, : x1 - x0]
        # map pixel centres of the box onto the crop
        xs = ((np.arange(x0, x1) + 0.5) / k - 0.5 - sx0).astype(np.float32)
        ys = ((np.arange(y0, y1) + 0.5) / k - 0.5 - sy0).astype(np.float32)
        mx, my = np.meshgrid(xs, ys)
        return cv2.remap(crop, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def roi(self, pts: np.ndarray, margin: float = 4.0) -> tuple[int, int, int, int] | None:
        box = self._bbox(pts, margin)
        return box if box[2] > box[0] and box[3] > box[1] else None

    def local(self, box: tuple[int, int, int, int], origin: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Face-frame coordinates (x across, y down, in eye distances) of the box's pixels."""
        x0, y0, x1, y1 = box
        xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        dx, dy = xx - origin[0], yy - origin[1]
        r, d, s = self.fr.r, self.fr.d, self.fr.s
        return (dx * r[0] + dy * r[1]) / s, (dx * d[0] + dy * d[1]) / s

    def blend(self, box: tuple[int, int, int, int], alpha: np.ndarray, colour: np.ndarray,
              noise: bool = True) -> None:
        x0, y0, x1, y1 = box
        a = alpha[..., None]
        if noise and self.noise > 0:
            rng = np.random.default_rng([self.seed, 3, x0, y0])
            colour = colour + rng.normal(0, self.noise, colour.shape[:2]).astype(np.float32)[..., None]
        region = self.img[y0:y1, x0:x1]
        region *= 1 - a
        region += a * colour

    def result(self) -> np.ndarray:
        return np.clip(np.round(self.img), 0, 255).astype(np.uint8)


def _fill(shape: tuple[int, int], polys: Sequence[np.ndarray], origin: tuple[int, int],
          feather: float = 0.0) -> np.ndarray:
    """A float alpha map (0..1) of filled polygons, anti-aliased, optionally feathered."""
    canvas = np.zeros(shape, np.uint8)
    off = np.array(origin, np.float64)
    cv2.fillPoly(canvas, [np.round((p - off) * _ONE).astype(np.int32) for p in polys], 255,
                 cv2.LINE_AA, _SHIFT)
    a = canvas.astype(np.float32) / 255.0
    if feather > 0.3:
        a = cv2.GaussianBlur(a, (0, 0), feather)
    return a


def _lines(shape: tuple[int, int], lines: Iterable[np.ndarray], origin: tuple[int, int],
           width: float, closed: bool = False, value: float = 1.0) -> np.ndarray:
    """A float map of anti-aliased polylines (``value`` where drawn)."""
    canvas = np.zeros(shape, np.float32)
    off = np.array(origin, np.float64)
    pl = [np.round((p - off) * _ONE).astype(np.int32) for p in lines]
    cv2.polylines(canvas, pl, closed, float(value), max(1, round(width)), cv2.LINE_AA, _SHIFT)
    return canvas


# ----------------------------------------------------------------------------- masks


def _ear(pts: np.ndarray, fr: Frame, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where ear loops go round the ear: an upper and a lower point behind the jaw line."""
    j = pts[0] if left else pts[16]
    j2 = pts[2] if left else pts[14]
    out = -fr.r if left else fr.r
    return j + out * fr.s * 0.12 - fr.d * fr.s * 0.05, j2 + out * fr.s * 0.1


def _draw_mask(cv: _Canvas, kind: str, wear: str, rng: np.random.Generator) -> None:
    pts, fr = cv.pts, cv.fr
    s = fr.s
    geo = mask_geometry(pts, kind, wear, rng.uniform(-1, 1, 4))
    poly = geo.polygon
    base = pick_colour(rng, kind)
    if kind == "cloth":
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=[0.3, 0.2, 0.2, 0.15, 0.15])]
    else:
        pattern = "noise" if rng.random() < 0.08 else "solid"
    second = pick_colour(rng, "cloth") if kind == "cloth" else np.clip(base * 0.9, 0, 255)
    extra: list[np.ndarray] = [poly]
    ears = [_ear(pts, fr, True), _ear(pts, fr, False)]
    loops = kind in ("surgical", "kn95", "cloth")
    if loops:
        for (hi, lo), top_c, bot_c in ((ears[0], geo.top[0], geo.bottom[0]),
                                       (ears[1], geo.top[-1], geo.bottom[-1])):
            extra.append(np.stack([top_c, hi, lo, bot_c]))
    straps = []
    if kind == "n95":  # two head straps from the sides, one up over the ears, one round the neck
        for i, side in ((0, -1), (-1, 1)):
            a = lerp(geo.top[i], geo.bottom[i], 0.25)
            b = lerp(geo.top[i], geo.bottom[i], 0.75)
            straps.append(np.stack([a, a + fr.r * side * s * 0.6 - fr.d * s * 0.15]))
            straps.append(np.stack([b, b + fr.r * side * s * 0.6 + fr.d * s * 0.1]))
        extra += straps
    box = cv.roi(np.vstack(extra), margin=0.1 * s + 3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    feather = 0.012 * s + 0.35
    alpha = _fill(shape, [poly], (x0, y0), feather)
    x, y = cv.local(box, pts[30])
    colour = fabric(x, y, base, pattern, rng, second)
    # shape: the mask bulges out from the face; lighter in the middle, darker at the rim
    solid = (alpha > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(solid, cv2.DIST_L2, 3)
    dn = dist / max(float(dist.max()), 1.0)
    depth = {"surgical": 0.18, "kn95": 0.22, "n95": 0.3, "cloth": 0.2}[kind]
    shade = (1 - depth) + depth * np.sqrt(dn)
    shade *= 1 - 0.16 * np.clip(np.abs(x) / 1.3, 0, 1) ** 2
    detail = np.zeros(shape, np.float32)
    if kind == "surgical":  # three pleats: a fold shadow with a lit lip under it; bound edges
        n_pleats = 3
        for i in range(n_pleats):
            t = 0.3 + 0.2 * i + 0.03 * rng.uniform(-1, 1)
            line = geo.between(t)
            detail -= 0.22 * _lines(shape, [line], (x0, y0), 0.05 * s)
            detail += 0.1 * _lines(shape, [line + fr.d * s * 0.05], (x0, y0), 0.05 * s)
        detail += 0.06 * _lines(shape, [poly], (x0, y0), 0.1 * s, closed=True)
        nose = geo.top[len(geo.top) // 3: 2 * len(geo.top) // 3 + 1] + fr.d * s * 0.04
        detail += 0.08 * _lines(shape, [nose], (x0, y0), 0.04 * s)
    elif kind in ("kn95", "n95"):
        if kind == "kn95":  # a vertical centre seam and stitched edges
            detail -= 0.2 * _lines(shape, [geo.column(0.5)], (x0, y0), 0.03 * s)
            inset = lerp(poly, poly.mean(0), 0.06)
            detail -= 0.1 * _lines(shape, [inset], (x0, y0), 0.02 * s, closed=True)
            shade *= np.where(x < 0, 0.95, 1.0).astype(np.float32)
        else:
            detail += 0.05 * _lines(shape, [geo.top], (x0, y0), 0.06 * s)
    else:  # cloth: a faint centre seam
        detail -= 0.08 * _lines(shape, [geo.column(0.5)], (x0, y0), 0.025 * s)
    detail = cv2.GaussianBlur(detail, (0, 0), max(0.5, 0.015 * s))
    folds = 1 + 0.05 * value_noise(shape, 4, rng)
    light = cv.light(box)
    colour = colour * ((shade + detail) * folds * light * cv.exposure)[..., None] * cv.tint
    cv.blend(box, alpha, np.clip(colour, 0, 255))
    if kind == "n95" and rng.random() < 0.5:  # an exhalation valve on one side
        c = lerp(geo.column(0.68 if rng.random() < 0.5 else 0.32)[5], pts[30], 0.0)
        valve = ellipse_points(c, fr.r, fr.d, 0.17 * s, 0.15 * s, 32)
        va = _fill(shape, [valve], (x0, y0), feather)
        vcol = np.array([60, 62, 66] if rng.random() < 0.5 else [225, 225, 220], np.float32)
        ring = _lines(shape, [valve], (x0, y0), 0.03 * s, closed=True)
        vshade = (1 - 0.25 * ring) * light * cv.exposure
        cv.blend(box, va, vcol * vshade[..., None] * cv.tint)
    strings = []
    if loops:
        strings = extra[1:3]
    strings += straps
    if strings:
        lc = np.array([245, 245, 245], np.float32) if kind != "cloth" else base
        la = _lines(shape, strings, (x0, y0), max(1.0, 0.03 * s))
        la = cv2.GaussianBlur(la, (0, 0), 0.4) * 0.9
        cv.blend(box, la, lc[None, None] * (light * cv.exposure)[..., None] * cv.tint)


# ----------------------------------------------------------------------------- accessories


def _draw_glasses(cv: _Canvas, sun: bool, rng: np.random.Generator) -> None:
    pts, fr = cv.pts, cv.fr
    s = fr.s
    left, right = lens_geometry(pts, sun, rng.uniform(-1, 1))
    cl, cr = left.mean(0), right.mean(0)
    a = np.abs((left - cl) @ fr.r).max()
    b = np.abs((left - cl) @ fr.d).max()
    bridge = np.stack([cl + fr.r * a * 0.95 - fr.d * b * 0.35, pts[27] - fr.d * s * 0.06,
                       cr - fr.r * a * 0.95 - fr.d * b * 0.35])
    temples = [np.stack([cl - fr.r * a * 0.98 - fr.d * b * 0.4, pts[0] - fr.d * s * 0.12]),
               np.stack([cr + fr.r * a * 0.98 - fr.d * b * 0.4, pts[16] - fr.d * s * 0.12])]
    box = cv.roi(np.vstack([left, right, *temples]), margin=0.1 * s + 3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    light = cv.light(box)
    x, y = cv.local(box, (cl + cr) / 2)
    lens_a = _fill(shape, [left, right], (x0, y0), 0.4)
    streak = np.exp(-(((x + y * 0.8) % 1.1 - 0.35) / 0.09) ** 2).astype(np.float32)
    if sun:
        tint = np.array([[18, 20, 24], [45, 30, 18], [20, 35, 25], [30, 30, 45]][rng.integers(4)],
                        np.float32)
        grad = (1.25 - 0.35 * np.clip((y + 0.3) / 0.6, 0, 1))[..., None]
        lens_col = tint * grad + 200 * streak[..., None] * 0.25
        cv.blend(box, lens_a * (0.9 + 0.06 * streak), lens_col * cv.exposure, noise=False)
    else:
        cv.blend(box, lens_a * (0.06 + 0.18 * streak), np.full(shape + (3,), 235, np.float32) * cv.exposure,
                 noise=False)
    frame_col = pick_colour(rng, "frame")
    width = (0.06 if sun else 0.04 + 0.02 * rng.random()) * s
    fa = _lines(shape, [left, right], (x0, y0), width, closed=True)
    fa = np.maximum(fa, _lines(shape, [bridge, *temples], (x0, y0), width * 0.8))
    fa = cv2.GaussianBlur(fa, (0, 0), 0.45)
    edge_light = 1 + 0.25 * np.clip(-y, -0.5, 0.5)
    cv.blend(box, fa, frame_col * (light * edge_light * cv.exposure)[..., None] * cv.tint)


def _draw_cap(cv: _Canvas, rng: np.random.Generator) -> None:
    pts, fr = cv.pts, cv.fr
    s, r, d = fr.s, fr.r, fr.d
    brows = pts[17:27].mean(0)
    brim_c = brows - d * s * (0.4 + 0.08 * rng.uniform(-1, 1))
    th = np.linspace(np.pi, 2 * np.pi, 40)
    crown = brim_c + np.outer(np.cos(th) * 1.4 * s, r) + np.outer(np.sin(th) * 1.5 * s, d)
    crown = np.vstack([crown, brim_c + r * 1.4 * s + d * s * 0.05, brim_c - r * 1.4 * s + d * s * 0.05])
    visor = ellipse_points(brim_c + d * s * 0.05, r, d, 1.3 * s, (0.3 + 0.08 * rng.random()) * s, 48)
    shadow_poly = ellipse_points(brim_c + d * s * 0.45, r, d, 1.2 * s, 0.45 * s, 32)
    box = cv.roi(np.vstack([crown, visor, shadow_poly]), margin=0.15 * s + 3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    # the brim's shadow on the forehead and eyes
    sh = _fill(shape, [shadow_poly], (x0, y0), 0.12 * s) * 0.38
    region = cv.img[y0:y1, x0:x1]
    region *= (1 - sh)[..., None]
    base = pick_colour(rng, "cap")
    x, y = cv.local(box, brim_c)
    light = cv.light(box)
    crown_a = _fill(shape, [crown], (x0, y0), 0.012 * s + 0.35)
    shade = 0.8 + 0.3 * np.clip(-y / 1.5, 0, 1) - 0.12 * np.clip(np.abs(x) / 1.4, 0, 1) ** 2
    seams = _lines(shape, [np.stack([brim_c, brim_c - d * s * 1.5 + r * s * k]) for k in (-0.7, 0.0, 0.7)],
                   (x0, y0), 0.025 * s)
    shade = shade - 0.12 * cv2.GaussianBlur(seams, (0, 0), 0.6)
    col = fabric(x, y, base, "solid", rng) * (shade * light * cv.exposure)[..., None] * cv.tint
    cv.blend(box, crown_a, col)
    visor_a = _fill(shape, [visor], (x0, y0), 0.012 * s + 0.35)
    vy = np.clip((y - 0.1) / 0.35 + 0.5, 0, 1)
    vshade = 0.95 - 0.3 * vy
    stitch = _lines(shape, [lerp(visor, visor.mean(0), 0.12)], (x0, y0), 0.02 * s, closed=True)
    vcol = base * 0.92 * ((vshade - 0.1 * stitch) * light * cv.exposure)[..., None] * cv.tint
    cv.blend(box, visor_a, vcol)


def _draw_scarf(cv: _Canvas, rng: np.random.Generator) -> None:
    pts, fr = cv.pts, cv.fr
    s, r, d = fr.s, fr.r, fr.d
    lift = 0.15 + 0.1 * rng.uniform(-1, 1)
    top = smooth_curve([jaw_at(pts, 2.5) - r * s * 0.25 + d * s * 0.25,
                        jaw_at(pts, 5) + d * s * lift, pts[8] + d * s * (lift + 0.05),
                        jaw_at(pts, 11) + d * s * lift,
                        jaw_at(pts, 13.5) + r * s * 0.25 + d * s * 0.25], 25)
    bottom = np.stack([top[-1] + r * s * 0.6 + d * s * 3.0, top[0] - r * s * 0.6 + d * s * 3.0])
    poly = np.vstack([top, bottom])
    box = cv.roi(poly, margin=0.1 * s + 3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    alpha = _fill(shape, [poly], (x0, y0), 0.02 * s + 0.4)
    x, y = cv.local(box, pts[8])
    pattern = ["solid", "stripes", "plaid", "noise"][rng.integers(4)]
    col = fabric(x, y, pick_colour(rng, "scarf"), pattern, rng)
    rib = 1 + 0.07 * np.sin(2 * np.pi * x / (0.07 + 0.03 * rng.random()))
    folds = 1 + 0.12 * value_noise(shape, 3, rng) - 0.1 * np.clip(np.abs(x) / 1.5, 0, 1)
    light = cv.light(box)
    cv.blend(box, alpha, col * (rib * folds * light * cv.exposure)[..., None] * cv.tint)


# ----------------------------------------------------------------------------- API


def render_spec(image: np.ndarray, landmarks: Any, spec: RenderSpec) -> np.ndarray:
    """Draw ``spec`` on an RGB uint8 image; returns a new image (the input is not changed)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise ConfigError(f"image must be an RGB uint8 array (H, W, 3), got {img.dtype} {img.shape}")
    pts = to68(landmarks)
    cv = _Canvas(img[..., :3], pts, spec.seed)
    acc = set(spec.accessories)
    if "scarf" in acc:
        _draw_scarf(cv, np.random.default_rng([spec.seed, 13]))
    wear = spec.resolved_wear
    if wear != "none":
        _draw_mask(cv, spec.kind, wear, np.random.default_rng([spec.seed, 1]))
    if "eyeglasses" in acc and "sunglasses" not in acc:
        _draw_glasses(cv, False, np.random.default_rng([spec.seed, 11]))
    if "sunglasses" in acc:
        _draw_glasses(cv, True, np.random.default_rng([spec.seed, 10]))
    if "cap" in acc:
        _draw_cap(cv, np.random.default_rng([spec.seed, 12]))
    return cv.result()


def render(image: np.ndarray, landmarks: Any, kind: str = "surgical", wear: str = "correct",
           accessories: Sequence[str] = (), seed: int = 0) -> np.ndarray:
    """Draw a mask (and accessories) on a face.

    Args:
        image: RGB uint8 array (H, W, 3).
        landmarks: dlib's 68 points, a detector's 5 points (ArcFace order) or a detected
            ``facelab.types.Face``.
        kind: "surgical", "kn95", "n95" or "cloth".
        wear: "correct", "none", "incorrect" (variant picked by the seed), "below_nose",
            "mouth_uncovered" or "on_chin".
        accessories: any of "sunglasses", "eyeglasses", "cap", "scarf".
        seed: colours, prints and small shape variations; same seed, same pixels.

    Raises:
        LandmarksError: landmarks missing or malformed. ConfigError: unknown kind/wear.

    Example:
        >>> render(img, pts68, kind="cloth", wear="correct", seed=1).shape  # doctest: +SKIP
        (200, 200, 3)
    """
    return render_spec(image, landmarks, RenderSpec(kind, wear, tuple(accessories), seed))


@dataclass
class MaskRenderer:
    """A random render sampler for augmentation: draws a spec per call from its weights.

    Attributes:
        kinds: mask kinds to pick from (uniformly).
        wear_weights: relative weights of "correct", "incorrect" and "none" (or variants).
        accessory_prob: chance of each accessory being added independently.
        accessories: the accessories to pick from.
        seed: base seed; ``spec(i)`` is a pure function of (seed, i).

    Example:
        >>> r = MaskRenderer(wear_weights={"correct": 1.0})
        >>> r.spec(0).wear
        'correct'
    """

    kinds: Sequence[str] = MASK_KINDS
    wear_weights: dict[str, float] = field(
        default_factory=lambda: {"correct": 0.6, "incorrect": 0.2, "none": 0.2})
    accessory_prob: float = 0.0
    accessories: Sequence[str] = ACCESSORIES
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ConfigError("MaskRenderer needs at least one mask kind")
        for k in self.kinds:
            RenderSpec(kind=k)
        for w, p in self.wear_weights.items():
            RenderSpec(wear=w)
            if p < 0:
                raise ConfigError(f"wear weight of {w!r} must be >= 0, got {p}")
        if sum(self.wear_weights.values()) <= 0:
            raise ConfigError("wear_weights must have a positive total")
        if not 0 <= self.accessory_prob <= 1:
            raise ConfigError(f"accessory_prob must be in [0, 1], got {self.accessory_prob}")
        RenderSpec(accessories=tuple(self.accessories))

    def sample(self, rng: np.random.Generator) -> RenderSpec:
        """A random spec drawn with ``rng``."""
        wears = list(self.wear_weights)
        p = np.array([self.wear_weights[w] for w in wears], np.float64)
        wear = wears[rng.choice(len(wears), p=p / p.sum())]
        kind = self.kinds[rng.integers(len(self.kinds))]
        acc = tuple(a for a in self.accessories if rng.random() < self.accessory_prob)
        if "sunglasses" in acc and "eyeglasses" in acc:
            acc = tuple(a for a in acc if a != "eyeglasses")
        return RenderSpec(kind, wear, acc, int(rng.integers(2**31)))

    def spec(self, index: int) -> RenderSpec:
        """The ``index``-th spec of this sampler (deterministic)."""
        return self.sample(np.random.default_rng([self.seed, int(index)]))

    def __call__(self, image: np.ndarray, landmarks: Any, index: int | None = None,
                 rng: np.random.Generator | None = None, **overrides: Any
                 ) -> tuple[np.ndarray, RenderSpec]:
        """Render a sampled spec (``index`` -> :meth:`spec`, else drawn from ``rng``)."""
        if index is not None:
            spec = self.spec(index)
        else:
            spec = self.sample(rng if rng is not None else np.random.default_rng(self.seed))
        if overrides:
            spec = replace(spec, **overrides)
        return render_spec(image, landmarks, spec), spec


__all__ = ["MaskGeometry", "MaskRenderer", "RenderSpec", "render", "render_spec"]
