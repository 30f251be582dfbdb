"""Sample frames from videos with PyAV (one frame every ``every`` seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from facelab.errors import ConfigError, ImageDecodeError

# A video whose container promises more frames than decode yields by this share is truncated.
TRUNCATED_SHARE = 0.9


def sample_frames(
    path: str | Path, every: float = 1.0, max_frames: int | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in s, RGB uint8 frame) for the first frame at or after each multiple of ``every``.

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
        if not container.streams.video:  # e.g. an audio-only .mp4
            kinds = ",".join(s.type for s in container.streams) or "none"
            raise ImageDecodeError(f"video {path} has no video stream (streams: {kinds}; "
                                   "audio-only?); remove it from the inputs")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ImageDecodeError(f"video {path}: its codec is unknown to FFmpeg; re-encode it "
                                   "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
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
        # a cut-off recording decodes without an error but ends early: say so rather than
        # return results for part of it as if they were the whole
        if expected and decoded < TRUNCATED_SHARE * expected:
            raise ImageDecodeError(f"video {path} is truncated: {decoded} of its {expected} frames "
                                   "decode; repair or re-encode it (e.g. ffmpeg -i IN OUT.mp4)")


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
