"""`facelab analyze`: a FaceAnalyzer over images, folders and videos into CSV or JSON Lines.

One output row per face (an image with no face gets one row with `faces = 0`); video
frames are sampled with PyAV every `every` seconds and carry their time. The job is
resumable: inputs already in the output file are skipped, each input's rows are written and
flushed together, and unreadable inputs are listed in `<out>.errors.csv`, not fatal.

With `tracks` (a .csv or .jsonl path), faces of a video are tracked across the sampled
frames (facelab.analyze.tracks): the per-frame rows get a `track` column, one row per track
goes to `tracks`, and the summary holds each video's mask compliance.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelab.analyze.analyzer import AnalyzedFace, FaceAnalyzer, attribute_columns
from facelab.errors import DataFormatError, FacelabError, ImageDecodeError
from facelab.io.image import IMAGE_EXTENSIONS, load_image

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
BASE_COLUMNS = ["source", "frame_time", "faces", "face", "x1", "y1", "x2", "y2", "score",
                "stage", "landmarks"]
ID_COLUMNS = ["identity", "nearest", "distance"]


def list_inputs(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, short name) of the image and video files named or found (recursively, sorted)
    under the given paths; the short name (relative to the folder given, or the file name)
    names annotated outputs."""
    known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    out: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend((f, f.relative_to(p).as_posix()) for f in sorted(p.rglob("*"))
                       if f.is_file() and f.suffix.lower() in known)
        elif p.exists():
            out.append((p, p.name))
        else:
            raise DataFormatError(f"{p}: no such file or folder; check the path")
    if not out:
        raise DataFormatError(f"no image or video files found in {[str(p) for p in paths]}")
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def frames_of(path: Path, every: float, max_frames: int | None,
              on_truncated: Callable[[str], None] | None = None
              ) -> Iterator[tuple[float | None, np.ndarray]]:
    """(time, RGB frame) pairs: sampled frames of a video, or the image itself (time None).
    A cut-off video yields the frames that decode and then calls ``on_truncated``."""
    if not is_video(path):
        try:
            image = load_image(path)
        except ImageDecodeError as exc:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                raise
            # e.g. an audio file given by name: "convert it to JPEG" would be the wrong advice
            raise ImageDecodeError(
                f"{path}: neither an image nor a video facelab reads (videos: "
                f"{', '.join(VIDEO_EXTENSIONS)}; images: {', '.join(IMAGE_EXTENSIONS)}); "
                "remove it from the inputs or convert it") from exc
        yield None, image
        return
    from facelab.collect.video import sample_frames

    n = 0
    for t, frame in sample_frames(path, every, max_frames, on_truncated):
        n += 1
        yield t, frame
    if n == 0:
        raise FacelabError(f"{path}: no decodable video frames; check the file or re-encode it")


@dataclass
class AnalyzeSummary:
    """What a run did: inputs done now, skipped as already done, failed (path -> error)."""

    done: int = 0
    skipped: int = 0
    faces: int = 0
    frames: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    compliance: dict[str, dict] = field(default_factory=dict)  # video -> tracks.compliance
    partial: dict[str, str] = field(default_factory=dict)  # truncated video -> what was used


def is_jsonl(path: Path) -> bool:
    """Whether an output path means JSON Lines (else CSV)."""
    return path.suffix.lower() in (".jsonl", ".json", ".ndjson")


class RecordWriter:
    """Appends records to a CSV (csv module, fixed columns) or JSON Lines file."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self.jsonl = is_jsonl(path)
        new = not path.exists() or path.stat().st_size == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", newline="", encoding="utf-8")
        if not self.jsonl:
            self.writer = csv.DictWriter(self.file, columns, extrasaction="ignore")
            if new:
                self.writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        """Append rows with one write call (an input's rows land together or, if the process
        dies in the call, as a torn last line at worst) and flush."""
        if self.jsonl:
            text = "".join(json.dumps(row) + "\n" for row in rows)
        else:
            buf = io.StringIO()
            w = csv.DictWriter(buf, self.columns, extrasaction="ignore")
            w.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
            text = buf.getvalue()
        self.file.write(text)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def done_sources(path: Path) -> set[str]:
    """Inputs already written to an output file (for resuming)."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        if is_jsonl(path):
            return {json.loads(line)["source"] for line in f if line.strip()}
        return {row["source"] for row in csv.DictReader(f)}


def output_columns(attributes: bool, identities: bool, with_embedding: bool, tracked: bool) -> list[str]:
    """Columns of the per-face output for an analyzer with / without attributes and a database."""
    columns = list(BASE_COLUMNS)
    if attributes:
        columns += attribute_columns()
    if identities:
        columns += ID_COLUMNS
    if with_embedding:
        columns.append("embedding")
    if tracked:
        columns.insert(columns.index("face") + 1, "track")
    return columns


class ResultSink:
    """Where each input's result goes: its rows (written and flushed together), its track rows
    and compliance, or its error; shared by the local and the Ray engine. Inputs already in
    the output (a resumed run) or already written in this run are not written again."""

    def __init__(self, out: Path, columns: list[str], tracks: str | Path | None,
                 attributes: bool, identities: bool) -> None:
        self.out = out
        self.summary = AnalyzeSummary()
        self.done = done_sources(out)
        self.writer = RecordWriter(out, columns)
        self.track_writer = None
        if tracks is not None:
            from facelab.analyze.tracks import track_columns

            self.track_writer = RecordWriter(Path(tracks), track_columns(attributes, identities))

    def add(self, key: str, rows: list[dict], track_rows: list[dict] | None) -> None:
        if key in self.done:
            return
        self.writer.write(rows)
        if track_rows is not None and self.track_writer is not None:
            from facelab.analyze.tracks import compliance

            self.track_writer.write(track_rows)
            self.summary.compliance[key] = compliance(track_rows)
        self.done.add(key)
        self.summary.done += 1

    def fail(self, key: str, error: str) -> None:
        self.summary.failed[key] = error
        log.warning("%s", error)

    def close(self) -> AnalyzeSummary:
        self.writer.close()
        if self.track_writer is not None:
            self.track_writer.close()
        if self.summary.failed:
            err = self.out.with_name(self.out.name + ".errors.csv")
            with open(err, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["source", "error"])
                w.writerows(self.summary.failed.items())
        return self.summary


def analyze_paths(analyzer: FaceAnalyzer, paths: list[str | Path], out: str | Path,
                  every: float = 1.0, max_frames: int | None = None,
                  annotate: str | Path | None = None, with_embedding: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  tracks: str | Path | None = None,
                  tracker_options: dict | None = None) -> AnalyzeSummary:
    """Analyze every input into `out` (.csv or .jsonl); see the module doc.

    `tracks`: also track faces over each video and write per-track rows there;
    `tracker_options` go to `facelab.analyze.tracks.FaceTracker` (iou_min, max_gap, ...).
    On a Ray cluster: :func:`facelab.engine.ray_jobs.analyze_on_ray`.

    Example:
        >>> fa = FaceAnalyzer("mtcnn", "runs/mt")                      # doctest: +SKIP
        >>> analyze_paths(fa, ["photos/"], "faces.csv")                 # doctest: +SKIP
    """
    out = Path(out)
    inputs = list_inputs(paths)
    attributes, identities = analyzer.run is not None, analyzer.db is not None
    columns = output_columns(attributes, identities, with_embedding, tracks is not None)
    sink = ResultSink(out, columns, tracks, attributes, identities)
    summary = sink.summary
    try:
        for n, (path, short) in enumerate(inputs, 1):
            key = str(path)
            if key in sink.done:
                summary.skipped += 1
            else:
                try:
                    tracked = tracks is not None and is_video(path)
                    rows, track_rows = analyze_one(
                        analyzer, path, short, every, max_frames, annotate, with_embedding,
                        summary, (tracker_options or {}) if tracked else None)
                except FacelabError as exc:
                    sink.fail(key, str(exc))
                else:
                    sink.add(key, rows, track_rows)
            if progress:
                progress(n, len(inputs))
    finally:
        sink.close()
    return summary


def analyze_one(analyzer: FaceAnalyzer, path: Path, short: str, every: float,
                 max_frames: int | None,
                 annotate: str | Path | None, with_embedding: bool,
                 summary: AnalyzeSummary, tracker_options: dict | None = None
                 ) -> tuple[list[dict], list[dict] | None]:
    """Rows of one input, and its per-track rows when `tracker_options` is not None."""
    rows: list[dict] = []
    video_writer = None
    tracker = observations = None
    if tracker_options is not None:
        from facelab.analyze.tracks import FaceTracker, Observation

        tracker, observations = FaceTracker(**tracker_options), []
    try:
        def truncated(message: str) -> None:  # its rows are kept: they cover what decodes
            log.warning("%s", message)
            summary.partial[str(path)] = message

        for t, frame in frames_of(path, every, max_frames, truncated):
            faces = analyzer.analyze(frame)
            summary.frames += 1
            summary.faces += len(faces)
            base = {"source": str(path), "frame_time": "" if t is None else round(t, 3),
                    "faces": len(faces)}
            ids: list[int] | None = None
            if tracker is not None:
                ids = tracker.update([f.face.box for f in faces],
                                     [f.embedding for f in faces])
                observations.extend(
                    Observation(i, float(t), f.face.box,
                                None if f.attributes is None else f.attributes.probs,
                                f.identity)
                    for i, f in zip(ids, faces))
            records = [{**base, "face": i, **({} if ids is None else {"track": ids[i]}),
                        **f.to_dict(with_embedding)}
                       for i, f in enumerate(faces)]
            rows.extend(records or [{**base, "face": ""}])
            if annotate is not None:
                drawn = draw_faces(frame, faces, ids)
                if t is None:
                    save_annotated(drawn, short, Path(annotate))
                else:
                    video_writer = video_writer or AnnotatedVideo(short, Path(annotate), every)
                    video_writer.add(drawn)
    finally:
        if video_writer is not None:
            video_writer.close()
    if tracker is None:
        return rows, None
    from facelab.analyze.tracks import summarize_tracks

    return rows, summarize_tracks(observations, every, str(path))


def draw_faces(image: np.ndarray, faces: list[AnalyzedFace],
               tracks: list[int] | None = None) -> np.ndarray:
    """The image with each face's box, landmarks and labels (and track id) drawn on it."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(image.shape[:2]) / 300))
    for k, r in enumerate(faces):
        x1, y1, x2, y2 = r.face.box
        colour = (40, 200, 40)
        if r.attributes is not None:
            colour = {"correct": (40, 200, 40), "incorrect": (240, 170, 0),
                      "none": (220, 40, 40)}[r.attributes.labels["mask"]]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        if r.face.landmarks is not None:
            for x, y in np.asarray(r.face.landmarks):
                draw.ellipse((x - width, y - width, x + width, y + width), fill=colour)
        parts = [] if tracks is None else [f"#{tracks[k]}"]
        if r.attributes is not None:
            parts.append(" ".join(r.attributes.labels.values()))
        if r.distance is not None:
            parts.append(r.identity or "unknown")
        if parts:
            draw.text((x1, max(0, y1 - 12)), " | ".join(parts), fill=colour)
    return np.asarray(img)


def save_annotated(image: np.ndarray, source: str, folder: Path) -> Path:
    """Write an annotated image under `folder`, named after its source (never outside it)."""
    from PIL import Image

    from facelab.io.outpaths import derived_path

    dest = derived_path(folder, source, suffix=".jpg")
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(dest, quality=90)
    return dest


class AnnotatedVideo:
    """An MP4 of annotated sampled frames (PyAV), at 1/`every` frames per second."""

    def __init__(self, source: str, folder: Path, every: float) -> None:
        from facelab.io.outpaths import derived_path

        self.path = derived_path(folder, source, suffix=".mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = max(1, round(1 / every))
        self.container, self.stream = None, None

    def add(self, frame: np.ndarray) -> None:
        import av

        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2  # yuv420p needs even sides
        if self.container is None:
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("mpeg4", rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
