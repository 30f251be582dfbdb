"""Mask and accessory outlines fitted to dlib's 68 landmarks (image pixel coordinates).

Every shape is built in the face's own frame: ``s`` = distance between the eye centres,
``r`` = unit vector from the left to the right eye, ``d`` = unit vector pointing down the
face. A mask is a top curve (nose bridge, under the nose, under the lip, ... by wear mode)
and a bottom curve that follows the jaw; points between them, ``(1 - t) * top + t * bottom``,
give pleats and seams that follow the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Wear modes: "correct" covers nose and mouth; the incorrect variants leave the nose
#: ("below_nose"), the mouth ("mouth_uncovered") or both (mask pulled down "on_chin") free.
INCORRECT_WEARS = ("below_nose", "mouth_uncovered", "on_chin")
WEARS = ("correct", "incorrect", "none", *INCORRECT_WEARS)
MASK_KINDS = ("surgical", "kn95", "n95", "cloth")
ACCESSORIES = ("sunglasses", "eyeglasses", "cap", "scarf")


@dataclass
class Frame:
    """The face's frame: eye-centre distance, left-to-right and downward unit vectors."""

    s: float
    r: np.ndarray
    d: np.ndarray
    eye_l: np.ndarray
    eye_r: np.ndarray
    centre: np.ndarray


def face_frame(pts: np.ndarray) -> Frame:
    """The frame of a 68-point face."""
    eye_l, eye_r = pts[36:42].mean(0), pts[42:48].mean(0)
    v = eye_r - eye_l
    s = float(np.linalg.norm(v))
    r = v / max(s, 1e-9)
    d = np.array([-r[1], r[0]])
    return Frame(max(s, 1e-3), r, d, eye_l, eye_r, pts[:17].mean(0))


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


def jaw_at(pts: np.ndarray, f: float) -> np.ndarray:
    """A point on the jaw polyline (landmarks 0..16) at fractional index ``f``."""
    f = float(np.clip(f, 0, 16))
    i = min(int(f), 15)
    return lerp(pts[i], pts[i + 1], f - i)


def smooth_curve(points: np.ndarray, n: int = 25) -> np.ndarray:
    """A Catmull-Rom spline through ``points`` (ends kept), sampled at ``n`` points."""
    p = np.asarray(points, dtype=np.float64)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    segs = len(p) - 1
    t_all = np.linspace(0, segs, n)
    out = np.empty((n, 2))
    for k, t in enumerate(t_all):
        i = min(int(t), segs - 1)
        u = t - i
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out[k] = 0.5 * (
            2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
            + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3
        )
    return out


@dataclass
class MaskGeometry:
    """A mask outline: ``top`` and ``bottom`` curves, both left to right, same length."""

    top: np.ndarray
    bottom: np.ndarray
    frame: Frame

    @property
    def polygon(self) -> np.ndarray:
        return np.vstack([self.top, self.bottom[::-1]])

    def between(self, t: float) -> np.ndarray:
        """The curve at fraction ``t`` from the top (0) to the bottom (1)."""
        return lerp(self.top, self.bottom, t)

    def column(self, u: float, n: int = 12) -> np.ndarray:
        """The top-to-bottom line at fraction ``u`` from the left (0) to the right (1)."""
        k = u * (len(self.top) - 1)
        i = min(int(k), len(self.top) - 2)
        a = lerp(self.top[i], self.top[i + 1], k - i)
        b = lerp(self.bottom[i], self.bottom[i + 1], k - i)
        return np.stack([lerp(a, b, t) for t in np.linspace(0, 1, n)])


def mask_geometry(pts: np.ndarray, kind: str, wear: str, jitter: np.ndarray,
                  n: int = 25) -> MaskGeometry:
    """The outline of a mask of ``kind`` worn as ``wear`` (a concrete mode, not "incorrect").

    ``jitter`` (4 numbers in [-1, 1]) varies the height of the top edge, the side anchors,
    the chin overhang and the width a little, so renders with different seeds differ.
    """
    fr = face_frame(pts)
    s, r, d = fr.s, fr.r, fr.d
    j_top, j_side, j_chin, j_wide = (float(v) for v in jitter)
    nose_bridge = lambda t: lerp(pts[27], pts[30], t)
    if wear == "correct":
        peak = {"surgical": 0.45, "kn95": 0.25, "n95": 0.2, "cloth": 0.38}[kind]
        centre = nose_bridge(peak + 0.06 * j_top)
        side, chin = 1.0 + 0.25 * j_side, 0.16 + 0.04 * j_chin
        under_eye = 0.42 if kind in ("surgical", "cloth") else 0.5
        cheek_l = (pts[40] + pts[41]) / 2 + d * s * under_eye - r * s * 0.05
        cheek_r = (pts[46] + pts[47]) / 2 + d * s * under_eye + r * s * 0.05
    elif wear == "below_nose":
        centre = lerp(pts[33], pts[51], 0.45 + 0.1 * j_top)
        side, chin = 2.6 + 0.3 * j_side, 0.16 + 0.04 * j_chin
        cheek_l = cheek_r = None
    elif wear == "mouth_uncovered":
        centre = pts[57] + d * s * (0.1 + 0.03 * j_top)
        side, chin = 4.2 + 0.3 * j_side, 0.3 + 0.05 * j_chin
        cheek_l = cheek_r = None
    elif wear == "on_chin":
        centre = lerp(pts[57], pts[8], 0.6 + 0.08 * j_top)
        side, chin = 5.3 + 0.3 * j_side, 0.55 + 0.08 * j_chin
        cheek_l = cheek_r = None
    else:
        raise ValueError(f"no mask outline for wear {wear!r}")
    grow = 0.05 + 0.02 * j_wide
    left = jaw_at(pts, side) - r * s * grow
    right = jaw_at(pts, 16 - side) + r * s * grow
    if cheek_l is None:  # a lowered mask: the top edge sags a little between the sides
        sag = d * s * 0.04
        cheek_l = lerp(left, centre, 0.55) + sag
        cheek_r = lerp(right, centre, 0.55) + sag
    if kind in ("kn95", "n95") and wear == "correct":
        top = np.vstack([smooth_curve([left, cheek_l, centre], n // 2 + 1),
                         smooth_curve([centre, cheek_r, right], n // 2 + 1)[1:]])
    else:
        top = smooth_curve([left, cheek_l, centre, cheek_r, right], n)
    # bottom: the jaw between the side anchors, pushed out a little and down under the chin
    fs = np.linspace(side, 16 - side, n)
    jaw = np.stack([jaw_at(pts, f) for f in fs])
    out = jaw - fr.centre
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    bell = np.exp(-(((fs - 8) / 3.2) ** 2))
    chin_shape = {"surgical": 0.75, "kn95": 1.0, "n95": 1.1, "cloth": 1.0}[kind]
    bottom = jaw + out * s * grow + np.outer(s * chin * (0.35 + 0.65 * bell) * chin_shape, d)
    if kind == "surgical":  # a pleated mask hangs straighter under the chin
        bottom = lerp(bottom, smooth_curve([bottom[0], bottom[n // 2], bottom[-1]], n), 0.35)
    return MaskGeometry(top=top, bottom=bottom, frame=fr)


def ellipse_points(centre: np.ndarray, r_vec: np.ndarray, d_vec: np.ndarray, a: float, b: float,
                   n: int = 40, squareness: float = 0.0, lower_bulge: float = 0.0) -> np.ndarray:
    """A (super)ellipse with semi-axes ``a`` along ``r_vec`` and ``b`` along ``d_vec``.

    ``squareness`` > 0 makes it a rounded rectangle; ``lower_bulge`` > 0 widens its lower
    half (aviator lenses).
    """
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, sn = np.cos(th), np.sin(th)
    e = 2.0 / (2.0 + 3.0 * squareness)
    x = np.sign(c) * np.abs(c) ** e * a
    y = np.sign(sn) * np.abs(sn) ** e * b
    x = x * (1 + lower_bulge * np.clip(sn, 0, 1))
    return centre + np.outer(x, r_vec) + np.outer(y, d_vec)


def lens_geometry(pts: np.ndarray, sun: bool, shape_jit: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lens outlines around the eyes."""
    fr = face_frame(pts)
    a = fr.s * (0.42 if sun else 0.37) * (1 + 0.06 * shape_jit)
    b = fr.s * (0.3 if sun else 0.25) * (1 + 0.08 * shape_jit)
    square = 0.6 + 0.4 * shape_jit if not sun else 0.3
    bulge = 0.18 if sun else 0.0
    lenses = []
    for eye, side in ((fr.eye_l, -1), (fr.eye_r, 1)):
        c = eye + fr.d * fr.s * 0.04 + fr.r * fr.s * 0.03 * side
        lenses.append(ellipse_points(c, fr.r, fr.d, a, b, 48, square, bulge))
    return lenses[0], lenses[1]
