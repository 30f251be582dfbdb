"""Motion cues that do not depend on the room: a clip's motion image, its silhouette
trajectory and the optical flow of what moves (FLOW_FEATURES, `flow_features`: speeds in
person heights per second, no background model).

Motion image (`motion_image`): the frame differences of a clip's sampled frames, scaled by
their 99.5th percentile, with the largest difference of the first, middle and last third
of the clip as red, green and blue. The static room disappears; what is left is the moving
body's shape, colour-coded by time (a motion history image). Frozen ImageNet features of it
transfer across cameras far better than features of the frames themselves.

Silhouette trajectories: a handful of camera-independent numbers per clip.

A fall is a shape change over time: the moving body's box goes from tall to wide, its top
and centre drop by a large share of the person's height within about a second, and then
little moves. Those quantities do not depend on the room, the camera's resolution, frame
rate or distance, which is what a whole-frame CNN learns instead (cross-dataset transfer
was near chance for every CNN method in benchmarks/clips.py). No person detector is
needed: a fixed camera's background is the per-pixel median of the clip.

Per frame (greyscale, decoded at <= `fps` frames per second, height `height`, aspect kept):
the foreground is the pixels far from the background (opened to drop speckle); its box is
the 5-95% percentiles of their coordinates. Per clip, with every length divided by the
person's height (the 90th percentile of the box height over the clip) and times in
seconds, `trajectory_features` gives FEATURES (see there). The idea came after whole-frame
models had failed across data sets on the development clips; each setting here was fixed
before its first run on them, except the motion image's scale floor (MIN_MOTION_SCALE),
added after a review (docs/clips.md, "Motion cues").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from facelab.clips.video import decode_frames
from facelab.errors import ImageDecodeError
from facelab.io.atomic import atomic_path
from facelab.paths import cache_root

CACHE_VERSION = 2  # 2: trajectory and flow sets cached together (.npz)
# differences are scaled by their 99.5th percentile, but never by less than this many grey
# levels: a still clip's compression noise is not blown up into full-scale "motion"
MIN_MOTION_SCALE = 8.0
FEATURES = (
    "drop_centre_1s",    # largest downward move of the box centre within 1 s
    "drop_centre_0.5s",  # the same within 0.5 s (speed: sitting down is slower)
    "drop_top_1s",       # largest downward move of the box top within 1 s
    "centre_end_minus_start",
    "top_end_minus_start",
    "aspect_end_minus_start",  # box width/height, mean of the last vs first quarter
    "aspect_range",
    "height_min_over_max",
    "lying_share",       # share of time with the box wider than tall
    "motion_burst",      # peak frame-difference energy over its median
    "still_after_drop",  # frame-difference energy in the 1 s after the largest drop, / peak
)
# optical flow of the moving pixels (Farneback, same decoded frames), speeds in person
# heights per second: no background model, so a body lying still cannot vanish into it
FLOW_FEATURES = (
    "down_speed_peak",     # fastest mean downward motion of the moving pixels
    "up_speed_peak",       # fastest mean upward motion
    "down_shift_1s",       # largest downward displacement within 1 s, in heights
    "speed_peak",          # fastest mean motion in any direction
    "down_share_at_peak",  # downward component / speed at the fastest frame
    "vertical_share",      # |vy| / (|vx| + |vy|) over the clip, weighted by moving share
    "peak_over_typical",   # fastest speed / median speed of the frames that move
    "still_after_down",    # moving share in the 1 s after the downward peak / its maximum
)
FLOW_MIN_PX = 1.0  # pixels per decoded frame at 120 px high (scaled with the height) below which a pixel is still


def motion_image(frames: np.ndarray) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from uint8 frames (T, H, W, 3): the colour-coded motion
    of the first / middle / last third of the clip (near black when little moves).

    Example:
        >>> f = np.zeros((4, 8, 8, 3), np.uint8); f[3, 2:4, 2:4] = 255  # a late change
        >>> m = motion_image(f); float(m[2, 2, 2]), float(m[2, 2, 0])
        (1.0, 0.0)
    """
    if len(frames) < 2:
        return np.zeros(frames.shape[1:3] + (3,), np.float32)
    grey = frames.astype(np.float32).mean(-1)
    diff = np.abs(np.diff(grey, axis=0))
    diff = np.clip(diff / max(float(np.percentile(diff, 99.5)), MIN_MOTION_SCALE), 0.0, 1.0)
    thirds = [part.max(0) if len(part) else np.zeros_like(diff[0]) for part in np.array_split(diff, 3)]
    return np.stack(thirds, -1).astype(np.float32)


def decode_grey(path: str | Path, height: int = 120, fps: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Greyscale frames (n, height, width) uint8 with the source aspect kept, at most `fps`
    per second, and their times in seconds. Raises ImageDecodeError as
    facelab.clips.video.decode_timed does."""
    def grey(frame) -> np.ndarray:
        width = max(2, round(height * frame.width / max(frame.height, 1)))
        return frame.to_ndarray(width=width, height=height, format="gray")

    return decode_frames(path, grey, fps)


def silhouette_track(grey: np.ndarray, threshold: int = 25, min_share: float = 0.002) -> dict[str, np.ndarray]:
    """Per-frame foreground box of uint8 (T, H, W) frames, lengths in frame heights:
    top, bottom, centre (y), width, height, and `energy` (share of pixels that changed since
    the previous frame). Frames with too little foreground are NaN.

    Example:
        >>> g = np.zeros((3, 50, 50), np.uint8)
        >>> for t in range(3): g[t, 10:40, 5 + 10 * t:15 + 10 * t] = 200
        >>> tr = silhouette_track(g); round(float(tr["height"][0]), 2)  # a 30 px block in 50 px
        0.6
    """
    from scipy.ndimage import binary_opening, uniform_filter

    t, h, w = grey.shape
    smooth = np.stack([uniform_filter(f.astype(np.float32), 3) for f in grey])
    background = np.median(smooth, axis=0)
    out = {k: np.full(t, np.nan) for k in ("top", "bottom", "centre", "width", "height")}
    energy = np.zeros(t)
    energy[1:] = (np.abs(np.diff(smooth, axis=0)) > threshold / 2).mean(axis=(1, 2))
    for i in range(t):
        fg = binary_opening(np.abs(smooth[i] - background) > threshold, np.ones((3, 3), bool))
        ys, xs = np.nonzero(fg)
        if len(ys) < min_share * h * w:
            continue
        y0, y1 = np.percentile(ys, [5, 95])
        x0, x1 = np.percentile(xs, [5, 95])
        out["top"][i], out["bottom"][i] = y0 / h, (y1 + 1) / h
        out["centre"][i] = ys.mean() / h
        out["width"][i], out["height"][i] = (x1 + 1 - x0) / h, (y1 + 1 - y0) / h
    out["energy"] = energy
    return out


def _fill(x: np.ndarray) -> np.ndarray:
    """NaNs replaced by the nearest valid value (linear in between); all-NaN gives zeros."""
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


def _median3(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return x
    padded = np.concatenate([x[:1], x, x[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def _max_drop(x: np.ndarray, lag: int) -> tuple[float, int]:
    """Largest x[t + lag] - x[t] (downward in image coordinates) and the t + lag it ends at."""
    lag = max(1, min(lag, len(x) - 1))
    if len(x) < 2:
        return 0.0, 0
    d = x[lag:] - x[:-lag]
    i = int(np.argmax(d))
    return float(d[i]), i + lag


def trajectory_features(track: dict[str, np.ndarray], times: np.ndarray) -> np.ndarray:
    """FEATURES of one clip's silhouette track (float32, len(FEATURES))."""
    n = len(times)
    dt = float(np.median(np.diff(times))) if n > 1 else 0.1
    per_s = max(1, round(1.0 / max(dt, 1e-3)))
    if np.isfinite(track["height"]).sum() < 2:
        return np.zeros(len(FEATURES), np.float32)
    scale = person_scale(track)
    top = _median3(_fill(track["top"])) / scale
    centre = _median3(_fill(track["centre"])) / scale
    height = _median3(_fill(track["height"]))
    aspect = _median3(_fill(track["width"]) / np.maximum(_fill(track["height"]), 1e-3))
    q = max(1, n // 4)
    drop_c1, end = _max_drop(centre, per_s)
    drop_c05, _ = _max_drop(centre, max(1, per_s // 2))
    drop_t1, _ = _max_drop(top, per_s)
    energy = track["energy"]
    peak = float(energy.max()) or 1e-6
    after = energy[end:end + per_s]
    feats = [
        drop_c1, drop_c05, drop_t1,
        centre[-q:].mean() - centre[:q].mean(),
        top[-q:].mean() - top[:q].mean(),
        aspect[-q:].mean() - aspect[:q].mean(),
        float(aspect.max() - aspect.min()),
        float(height.min() / max(height.max(), 1e-3)),
        float((aspect > 1).mean()),
        peak / max(float(np.median(energy[1:])) if n > 1 else peak, 1e-4),
        (float(after.mean()) if len(after) else 0.0) / peak,
    ]
    return np.nan_to_num(np.asarray(feats, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def person_scale(track: dict[str, np.ndarray]) -> float:
    """The person's height in frame heights: the 90th percentile of the silhouette box's
    height over the clip (0.5 when no frame has a silhouette)."""
    valid = np.isfinite(track["height"])
    if valid.sum() < 2:
        return 0.5
    return max(float(np.percentile(track["height"][valid], 90)), 0.05)


def flow_features(grey: np.ndarray, times: np.ndarray, scale: float, min_share: float = 0.002) -> np.ndarray:
    """FLOW_FEATURES of uint8 frames (T, H, W) at `times` (s); `scale` is the person's height
    in frame heights (person_scale), so speeds come out in person heights per second.

    Example:
        >>> g = np.zeros((12, 60, 60), np.uint8)
        >>> for t in range(12): g[t, 4 * t:4 * t + 12, 20:40] = 200  # a block falling 4 px/frame
        >>> f = flow_features(g, np.arange(12) / 10, scale=0.2)
        >>> bool(f[FLOW_FEATURES.index("down_speed_peak")] > 1.0)
        True
    """
    import cv2

    n, h = len(grey), grey.shape[1]
    if n < 3:
        return np.zeros(len(FLOW_FEATURES), np.float32)
    dt = float(np.median(np.diff(times))) or 0.1
    per_s = max(1, round(1.0 / max(dt, 1e-3)))
    to_heights = 1.0 / (dt * scale * h)  # px per frame -> person heights per second
    vy, vx, speed, share = (np.zeros(n - 1) for _ in range(4))
    for t in range(n - 1):
        flow = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = np.hypot(flow[..., 0], flow[..., 1])
        moving = mag > FLOW_MIN_PX * h / 120
        share[t] = moving.mean()
        if share[t] >= min_share:
            vx[t], vy[t] = flow[..., 0][moving].mean(), flow[..., 1][moving].mean()
            speed[t] = mag[moving].mean()
    vy, vx, speed = (_median3(v) * to_heights for v in (vy, vx, speed))
    moves = share >= min_share
    if not moves.any():
        return np.zeros(len(FLOW_FEATURES), np.float32)
    fastest, down_at = int(np.argmax(speed)), int(np.argmax(vy))
    down_shift, _ = _max_drop(np.concatenate([[0.0], np.cumsum(vy * dt)]), per_s)
    w = share / share.sum()
    after = share[down_at + 1:down_at + 1 + per_s]
    feats = [
        float(vy.max()), float((-vy).max()), down_shift, float(speed[fastest]),
        float(vy[fastest] / max(speed[fastest], 1e-6)),
        float((w * np.abs(vy)).sum() / max((w * (np.abs(vx) + np.abs(vy))).sum(), 1e-6)),
        float(speed[fastest] / max(float(np.median(speed[moves])), 1e-6)),
        (float(after.mean()) if len(after) else 0.0) / max(float(share.max()), 1e-6),
    ]
    return np.nan_to_num(np.asarray(feats, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _key(path: Path, height: int, fps: float) -> str:
    st = path.stat()
    ident = (f"motion-v{CACHE_VERSION}|{','.join(FEATURES)}|{','.join(FLOW_FEATURES)}|{FLOW_MIN_PX}|"
             f"{path.resolve()}|{st.st_size}|"
             f"{st.st_mtime_ns}|{height}|{fps}")
    return hashlib.sha1(ident.encode()).hexdigest()


MOTION_SETS = {"trajectory": FEATURES, "flow": FLOW_FEATURES}


def clip_features(path: str | Path, height: int = 120, fps: float = 10.0,
                  cache_dir: str | Path | None = None, use_cache: bool = True,
                  sets: tuple[str, ...] = tuple(MOTION_SETS)) -> dict[str, np.ndarray]:
    """The clip's motion `sets` from one decode ({"trajectory": FEATURES, "flow":
    FLOW_FEATURES}), cached on disk (keyed by the clip's path, size, mtime and the decode
    settings; written atomically). Only the sets asked for are computed (the flow costs
    more than the trajectory); a later call for another set adds it to the same entry.
    Raises ImageDecodeError for a bad clip."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"clip {path} not found")
    unknown = set(sets) - set(MOTION_SETS)
    if unknown:
        raise ValueError(f"unknown motion sets {sorted(unknown)}; use {list(MOTION_SETS)}")
    # default: beside the frame cache's default root, as FrozenClipModel puts it
    root = Path(cache_dir) if cache_dir else cache_root() / "clips" / "motion"
    entry = root / f"{_key(path, height, fps)}.npz"
    feats: dict[str, np.ndarray] = {}
    if use_cache and entry.is_file():
        try:
            with np.load(entry) as z:
                feats = {k: z[k] for k in MOTION_SETS if k in z.files and z[k].shape == (len(MOTION_SETS[k]),)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            feats = {}  # damaged entry: compute again
        if all(k in feats for k in sets):
            return {k: feats[k] for k in sets}
    grey, times = decode_grey(path, height, fps)
    track = silhouette_track(grey)
    if "trajectory" in sets:
        feats["trajectory"] = trajectory_features(track, times)
    if "flow" in sets:
        feats["flow"] = flow_features(grey, times, person_scale(track))
    if use_cache:
        with atomic_path(entry, ".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **feats)
    return {k: feats[k] for k in sets}
