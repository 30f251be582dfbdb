"""Sample frames from videos with PyAV (one frame every ``every`` seconds)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from facelab.errors import ConfigError, ImageDecodeError

log = logging.getLogger(__name__)

# A video whose container promises more frames than decode yields by more than this share
# (and by more than MISSING_FRAMES_OK frames: edit lists and B-frame reordering can drop one
# or two from a short clip) is truncated.
TRUNCATED_SHARE = 0.9
MISSING_FRAMES_OK = 2


def video_stream(container, path: str | Path, noun: str = "video"):
    """The container's first video stream; ImageDecodeError (naming the file and what to do)
    for an audio-only file or a codec FFmpeg does not know. Shared by every video reader."""
    if not container.streams.video:  # e.g. an audio-only .mp4
        kinds = ",".join(s.type for s in container.streams) or "none"
        raise ImageDecodeError(f"{noun} {path} has no video stream (streams: {kinds}; "
                               "audio-only?); remove it from the inputs")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise ImageDecodeError(f"{noun} {path}: its video codec is unknown to FFmpeg; re-encode "
                               "it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
    return stream


def truncation(decoded: int, expected: int, path: str | Path, noun: str = "video") -> str | None:
    """A message when fewer frames decoded than the container promises (a cut-off file);
    None when the count is fine or unknown (expected 0)."""
    missing = expected - decoded
    if expected and missing > max(MISSING_FRAMES_OK, (1 - TRUNCATED_SHARE) * expected):
        return f"{noun} {path} is truncated: {decoded} of its {expected} frames decode"
    return None


def sample_frames(
    path: str | Path, every: float = 1.0, max_frames: int | None = None,
    on_truncated: Callable[[str], None] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in s, RGB uint8 frame) for the first frame at or after each multiple of ``every``.

    A cut-off file decodes without an error but ends early: the frames that decode are
    yielded, then ``on_truncated(message)`` is called (default: a logged warning), so a
    caller can say its results cover only part of the video.

    Example:
        >>> [t for t, _ in sample_frames("clip.mp4", every=0.5)][:3]   # doctest: +SKIP
        [0.0, 0.5, 1.0]
    """
    import av

    if every <= 0:
        raise ConfigError("every must be a positive number of seconds")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ImageDecodeError(f"cannot open video {path}: {exc}") from exc
    with container:
        stream = video_stream(container, path)
        stream.thread_type = "AUTO"
        expected = int(stream.frames or 0)
        next_t, count, decoded = 0.0, 0, 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                t = float(frame.time) if frame.time is not None else count * every
                if t + 1e-6 < next_t:
                    continue
                yield t, frame.to_ndarray(format="rgb24")
                count += 1
                next_t = (np.floor(t / every + 1e-6) + 1) * every
                if max_frames is not None and count >= max_frames:
                    return
        except (av.FFmpegError, ValueError) as exc:
            raise ImageDecodeError(f"video {path} is corrupt after {count} frames: {exc}") from exc
        message = truncation(decoded, expected, path)
        if message:
            message += f"; results cover only its first {max(next_t - every, 0.0):.1f} s"
            (on_truncated or log.warning)(message)


def save_frames(path: str | Path, folder: str | Path, every: float = 1.0,
                max_frames: int | None = None) -> list[Path]:
    """Write sampled frames as JPEGs named ``<video file name>_<ms>.jpg`` (the extension stays
    in the name, so clip.mp4 and clip.mov never overwrite each other); returns their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for t, rgb in sample_frames(path, every, max_frames):
        dest = folder / f"{Path(path).name}_{int(round(t * 1000)):08d}.jpg"
        Image.fromarray(rgb).save(dest, quality=92)
        out.append(dest)
    return out
