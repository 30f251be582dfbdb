"""Procedural fabric colours and prints (no image assets): solid, stripes, dots, plaid, noise.

Patterns are computed on face-frame coordinates (``x``, ``y`` in units of the eye distance,
``x`` across the face, ``y`` down it), so a print scales and turns with the face.
"""

from __future__ import annotations

import numpy as np

PATTERNS = ("solid", "stripes", "dots", "plaid", "noise")

#: Base colours (RGB) per mask kind; a seed picks one and varies it a little.
PALETTES = {
    "surgical": [(150, 195, 230), (120, 175, 220), (235, 238, 240), (40, 42, 48),
                 (235, 175, 195), (150, 215, 200)],
    "kn95": [(238, 238, 236), (40, 40, 44), (190, 192, 196), (230, 190, 200)],
    "n95": [(236, 232, 222), (245, 245, 240), (215, 215, 210), (70, 110, 160)],
    "cloth": [(30, 45, 90), (25, 25, 28), (150, 30, 40), (60, 110, 70), (200, 190, 170),
              (110, 60, 120), (230, 130, 40), (120, 130, 140), (240, 240, 235)],
    "scarf": [(150, 30, 40), (40, 60, 110), (200, 170, 120), (60, 60, 60), (110, 140, 90),
              (230, 200, 60)],
    "cap": [(25, 30, 60), (20, 20, 22), (170, 30, 35), (235, 235, 230), (80, 100, 60),
            (190, 160, 120)],
    "frame": [(20, 20, 22), (90, 55, 30), (160, 130, 60), (120, 120, 125), (40, 30, 70)],
}


def pick_colour(rng: np.random.Generator, palette: str) -> np.ndarray:
    """One palette colour, varied by up to about +-8% per channel."""
    base = np.array(PALETTES[palette][rng.integers(len(PALETTES[palette]))], np.float32)
    return np.clip(base * rng.uniform(0.92, 1.08, 3), 0, 255).astype(np.float32)


def value_noise(shape: tuple[int, int], cells: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random grid of ``cells`` per side, bicubic-upsampled."""
    import cv2

    h, w = shape
    gh, gw = max(2, int(np.ceil(h / max(w, 1) * cells)) + 2), max(2, int(cells) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def fabric(x: np.ndarray, y: np.ndarray, base: np.ndarray, pattern: str,
           rng: np.random.Generator, second: np.ndarray | None = None) -> np.ndarray:
    """An (H, W, 3) float colour field of ``pattern`` over face-frame coordinates ``x``, ``y``."""
    h, w = x.shape
    out = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if second is None:
        second = np.clip(255 - base * rng.uniform(0.6, 1.0) + rng.uniform(-40, 40, 3), 0, 255)
    second = second.astype(np.float32)
    if pattern == "stripes":
        period = rng.uniform(0.12, 0.3)
        angle = rng.choice([0.0, np.pi / 2, np.pi / 4, -np.pi / 4])
        u = x * np.cos(angle) + y * np.sin(angle)
        duty = rng.uniform(0.3, 0.6)
        wave = ((u / period) % 1.0) < duty
        out[wave] = second
    elif pattern == "dots":
        period = rng.uniform(0.14, 0.26)
        radius = period * rng.uniform(0.18, 0.32)
        gx = (x / period) % 1.0 - 0.5
        row = np.floor(y / period)
        gx = np.where(row % 2 == 0, gx, (x / period + 0.5) % 1.0 - 0.5)
        gy = (y / period) % 1.0 - 0.5
        dist = np.hypot(gx, gy) * period
        a = np.clip((radius - dist) / (0.01 + 0.1 * radius) + 0.5, 0, 1)[..., None]
        out = out * (1 - a) + second * a
    elif pattern == "plaid":
        period = rng.uniform(0.25, 0.45)
        band = rng.uniform(0.15, 0.35)
        vx = (((x / period) % 1.0) < band).astype(np.float32)
        vy = (((y / period) % 1.0) < band).astype(np.float32)
        a = (0.45 * vx + 0.45 * vy)[..., None]
        out = out * (1 - a) + second * a
    elif pattern == "noise":
        n = value_noise((h, w), rng.uniform(5, 12), rng)
        n2 = value_noise((h, w), rng.uniform(14, 30), rng)
        a = np.clip(0.5 + 0.6 * n + 0.25 * n2, 0, 1)[..., None]
        out = out * (1 - a) + second * a
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}")
    # woven grain: a faint fine noise so flat colours do not look painted
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    out *= (1 + 0.025 * grain)[..., None]
    return out
