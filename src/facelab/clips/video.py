"""Decode clips with PyAV into small uint8 frame stacks, with an on-disk cache.

Sampling is by segment centres: `k` frames of an `n`-frame clip are taken at
floor((i + 0.5) * n / k), i = 0..k-1. k=1 is the middle frame; k=8 is TSN-style uniform
sampling; training with one random frame draws one frame of a `k`-frame stack per epoch.

Every frame is scaled to `size` x `size` (whole frame, aspect not kept: a falling person
can be anywhere in the picture) as soon as it is decoded, so a 4K clip costs no more memory
than a VGA one. Bad input raises ImageDecodeError with a one-line reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facelab.collect.video import truncation, video_stream  # one rule for every video reader
from facelab.errors import ImageDecodeError
from facelab.io.atomic import atomic_path
from facelab.paths import cache_root

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def segment_indices(n: int, k: int) -> np.ndarray:
    """Indices of `k` frames at the centres of `k` equal segments of an `n`-frame clip.

    Example:
        >>> segment_indices(10, 1).tolist(), segment_indices(10, 4).tolist()
        ([5], [1, 3, 6, 8])
    """
    if n <= 0 or k <= 0:
        raise ValueError("n and k must be positive")
    return np.minimum(((np.arange(k) + 0.5) * n / k).astype(int), n - 1)


def decode_clip(path: str | Path, size: int) -> np.ndarray:
    """All frames of a clip as uint8 (n, size, size, 3) RGB.

    Raises ImageDecodeError for a missing file, a file that is not a video, a container with
    no video stream (audio-only), an unknown codec, zero frames, or a truncated stream.
    """
    return decode_timed(path, size, None)[0]


def decode_timed(path: str | Path, size: int,
                 fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames as uint8 (n, size, size, 3) RGB and their times in seconds (n,); with `fps`, at
    most `fps` frames per second are kept (a long video then costs memory by its duration,
    not its frame rate). Every frame is still decoded, so a truncated stream is caught.

    Raises ImageDecodeError as decode_clip does.
    """
    return decode_frames(path, lambda f: f.to_ndarray(width=size, height=size, format="rgb24"), fps)


def decode_frames(path: str | Path, convert: Callable[[Any], np.ndarray],
                  fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`convert(frame)` (a PyAV VideoFrame -> array) of every kept frame, stacked, and the
    frames' times in seconds; `fps` as in decode_timed. Raises ImageDecodeError for a missing
    file, a file that is not a video, a container with no video stream (audio-only), an
    unknown codec, zero frames, or a truncated stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"clip {path} not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot open clip {path}: {exc}") from exc
    frames: list[np.ndarray] = []
    times: list[float] = []
    decoded, next_t = 0, -np.inf
    with container:
        stream = video_stream(container, path, "clip")
        expected = int(stream.frames or 0)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else decoded / rate
                decoded += 1
                if fps and t < next_t:
                    continue
                next_t = t + (1.0 / fps if fps else 0.0) - 1e-6
                frames.append(convert(frame))
                times.append(t)
        except (av.FFmpegError, ValueError) as exc:
            raise ImageDecodeError(
                f"clip {path} is corrupt or truncated after {decoded} frames: {exc}") from exc
    if not frames:
        raise ImageDecodeError(f"clip {path} has zero decodable frames")
    message = truncation(decoded, expected, path, "clip")
    if message:  # a clip is classified whole: part of one is not the clip
        raise ImageDecodeError(message + "; re-encode it to use the part that decodes")
    return np.stack(frames), np.asarray(times) - times[0]


def _key(path: Path, k: int, size: int) -> str:
    st = path.stat()
    ident = f"v{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|seg{k}|{size}"
    return hashlib.sha1(ident.encode()).hexdigest()


class FrameCache:
    """Sampled frame stacks on disk: one .npy per (file identity, sampling, size).

    The key is the resolved path, size in bytes and modification time of the clip, the
    number of segment-centre frames and the frame size; a changed file is decoded again.
    Each entry is written atomically, so a fill interrupted at any point resumes where it
    stopped. `root=None` uses facelab.paths.cache_root()/clips; `enabled=False` always decodes.
    """

    def __init__(self, size: int, root: str | Path | None = None, enabled: bool = True):
        self.size, self.enabled = int(size), enabled
        self.root = Path(root) if root else cache_root() / "clips"
        self.decoded = 0  # clips decoded by this object (the rest came from disk)

    def path_for(self, clip: str | Path, k: int) -> Path:
        h = _key(Path(clip), k, self.size)
        return self.root / h[:2] / f"{h}.npy"

    def frames(self, clip: str | Path, k: int) -> np.ndarray:
        """uint8 (k, size, size, 3): the `k` segment-centre frames of `clip`."""
        return self.fill(clip, (k,))[k]

    def fill(self, clip: str | Path, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
        """The stacks for every k in `ks`, decoding the clip at most once for all missing ones."""
        clip = Path(clip)
        if not clip.is_file():
            raise ImageDecodeError(f"clip {clip} not found")
        out: dict[int, np.ndarray] = {}
        missing = []
        for k in ks:
            p = self.path_for(clip, k) if self.enabled else None
            if p is not None and p.is_file():
                try:
                    out[k] = np.load(p)
                    continue
                except (OSError, ValueError):  # a damaged entry: decode again
                    log.warning("cache entry %s unreadable; decoding %s again", p, clip)
            missing.append(k)
        if missing:
            allf = decode_clip(clip, self.size)
            self.decoded += 1
            for k in missing:
                stack = np.ascontiguousarray(allf[segment_indices(len(allf), k)])
                out[k] = stack
                if self.enabled:
                    with atomic_path(self.path_for(clip, k), ".npy") as tmp, open(tmp, "wb") as fh:
                        np.save(fh, stack)
        return out


def progress_bar(enabled: bool):
    """A transient rich progress bar (disabled: no output)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    transient=True, disable=not enabled)


def load_stacks(clips: list[str], ks: tuple[int, ...], cache: FrameCache,
                progress: bool = False) -> tuple[dict[str, dict[int, np.ndarray]], list[tuple[str, str]]]:
    """Frame stacks per clip for every k in `ks` (decoding each clip at most once), and the
    (clip, reason) list of clips that could not be decoded."""
    stacks: dict[str, dict[int, np.ndarray]] = {}
    bad: list[tuple[str, str]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("decode clips", total=len(clips))
        for clip in clips:
            if clip not in stacks and clip not in dict(bad):
                try:
                    stacks[clip] = cache.fill(clip, ks)
                except ImageDecodeError as exc:
                    log.warning("skipped: %s", exc)
                    bad.append((clip, str(exc)))
            bar.advance(task)
    return stacks, bad
