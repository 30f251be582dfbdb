"""One policy for files written under an output folder with names derived from input paths.

Every command that writes one file per input (``facelab crop`` crops, ...) names it with
:func:`derived_path`, which promises:

* **Contained.** The result is always inside ``out_dir``, whatever the input name: ``..``
  components and absolute paths are encoded into ordinary folder names, and after
  resolving symlinks (a link already inside ``out_dir`` that points elsewhere) a path that
  would land outside is refused with :class:`~facelab.errors.DataFormatError`.
* **Collision-free.** Distinct input names give distinct outputs: the whole relative path
  and the original extension are kept (``face.jpg`` -> ``face.jpg.png``, ``face.png`` ->
  ``face.png.png``), and the few characters that are escaped (``%``, ``#``, ``\\``, ``:``,
  control characters such as a newline) use ``%XX`` so that no two names meet. A variant
  (the second face of an image) adds ``#<variant>``, a character no encoded name holds.
  Only a file-name component longer than the file system allows is shortened, with a
  SHA-256 prefix of the full component appended.
* **Readable.** Plain names stay as they are, so ``train/images/p1/mask1.jpg`` becomes
  ``train/images/p1/mask1.jpg.jpg`` under ``out_dir``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePath

from facelab.errors import ConfigError, DataFormatError

# Characters escaped as %XX (UTF-8 bytes) in every component. '%' must be here for the
# encoding to be reversible (so collision-free); '#' is reserved for variants.
_ESCAPE = frozenset("%#\\:")
# Longest file-name component in bytes (NAME_MAX on Linux, macOS and Windows).
_NAME_MAX = 255
_ROOT = "%2F"  # the component an absolute input path starts with
_PARENT = "%2E%2E"  # what a '..' component becomes


def _tokens(component: str) -> list[str]:
    """The component as output tokens: a character kept as it is or one '%XX' escape each."""
    out = []
    for ch in component:
        if ch in _ESCAPE or ord(ch) < 0x20 or ord(ch) == 0x7F or "\udc80" <= ch <= "\udcff":
            # lone surrogates come from undecodable bytes in POSIX file names
            raw = ch.encode("utf-8", "surrogateescape")
            out.append("".join(f"%{b:02X}" for b in raw))
        else:
            out.append(ch)
    return out


def _fit(component: str, room: int) -> str:
    """Encode one component; if longer than ``room`` bytes, cut it and append a hash."""
    tokens = _tokens(component)
    text = "".join(tokens)
    if len(os.fsencode(text)) <= room:
        return text
    tag = "%~" + hashlib.sha256(component.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    keep, size = [], len(tag)
    for tok in tokens:  # cut between tokens: never inside a %XX escape or a character
        n = len(os.fsencode(tok))
        if size + n > room:
            break
        keep.append(tok)
        size += n
    return "".join(keep) + tag


def relative_output_name(
    name: str | PurePath, *, suffix: str, variant: int | str | None = None
) -> str:
    """The relative POSIX name :func:`derived_path` uses for input ``name`` (no checks on disk).

    Example:
        >>> relative_output_name("face.jpg", suffix=".png")
        'face.jpg.png'
        >>> relative_output_name("../../x/victim/good.jpg", suffix=".jpg")
        '%2E%2E/%2E%2E/x/victim/good.jpg.jpg'
        >>> relative_output_name("/abs/a,b\\nc.png", suffix=".jpg", variant=1)
        '%2F/abs/a,b%0Ac.png#1.jpg'
    """
    if not suffix.startswith(".") or "/" in suffix or "\\" in suffix or len(suffix) > 16:
        raise ConfigError(f"output suffix {suffix!r} must look like '.png'")
    text = name.as_posix() if isinstance(name, PurePath) else str(name)
    # encode ordinary components now, so that an input component spelled like a marker
    # ("%2E%2E") is escaped ("%252E%252E") and cannot meet a real '..' or root
    parts: list[tuple[bool, str]] = [(True, _ROOT)] if text.startswith("/") else []
    for comp in text.split("/"):
        if comp in ("", "."):
            continue
        parts.append((True, _PARENT) if comp == ".." else (False, comp))
    if not parts or parts[-1] == (True, _ROOT):
        raise DataFormatError(f"{text!r}: not a file name; list image files, not folders")
    extra = ("" if variant is None else "#" + "".join(_tokens(str(variant)))) + suffix
    out = [p if special else _fit(p, _NAME_MAX) for special, p in parts[:-1]]
    special, last = parts[-1]
    out.append((last if special else _fit(last, _NAME_MAX - len(extra))) + extra)
    return "/".join(out)


def ensure_inside(path: str | Path, root: str | Path) -> Path:
    """``path`` if it stays inside ``root`` once symlinks are resolved, else DataFormatError.

    Example:
        >>> ensure_inside("/tmp/out/a.png", "/tmp/out")
        PosixPath('/tmp/out/a.png')
    """
    path, root = Path(path), Path(root)
    real, real_root = path.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise DataFormatError(
            f"{path} would be written outside {root} (it resolves to {real} through a "
            "symlink); remove the link or choose another output folder"
        )
    return path


def derived_path(
    out_dir: str | Path,
    name: str | PurePath,
    *,
    suffix: str,
    variant: int | str | None = None,
) -> Path:
    """The output file for input ``name`` (relative or absolute) under ``out_dir``.

    Guarantees (see the module doc): inside ``out_dir`` even for ``..``, absolute names and
    symlinks (DataFormatError otherwise), one distinct file per distinct ``name`` and
    ``variant``, the input's relative path and extension kept. Parent folders are not
    created.

    Args:
        out_dir: the folder all outputs must stay in.
        name: the input's path as the user gave it (relative to the input folder or CSV,
            or absolute).
        suffix: extension of the output format, e.g. ".png".
        variant: a second, third ... output for the same input (e.g. face index).

    Example:
        >>> derived_path("out/crops", "face.jpg", suffix=".png")
        PosixPath('out/crops/face.jpg.png')
        >>> derived_path("out/crops", "face.png", suffix=".png")
        PosixPath('out/crops/face.png.png')
        >>> derived_path("out/crops", "../../etc/passwd", suffix=".png")
        PosixPath('out/crops/%2E%2E/%2E%2E/etc/passwd.png')
    """
    out_dir = Path(out_dir)
    return ensure_inside(
        out_dir / relative_output_name(name, suffix=suffix, variant=variant), out_dir
    )
