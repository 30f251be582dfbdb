"""5-point similarity alignment to the standard ArcFace 112x112 face template."""

from __future__ import annotations

import numpy as np

from facelab.errors import ConfigError

#: ArcFace / insightface template for a 112x112 crop: left eye, right eye, nose tip,
#: left mouth corner, right mouth corner (x, y) in pixels.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def face_template(size: int = 112) -> np.ndarray:
    """The 5-point template scaled to a ``size`` x ``size`` crop.

    Example:
        >>> face_template(224)[0].round(2).tolist()
        [76.59, 103.39]
    """
    if size <= 0:
        raise ConfigError(f"alignment size must be positive, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) taking src to dst.

    Umeyama's closed form (1991), without reflections.

    Args:
        src: (N, 2) source points, N >= 2.
        dst: (N, 2) destination points.

    Returns:
        (2, 3) float64 affine matrix M with dst ~= src @ M[:, :2].T + M[:, 2].

    Example:
        >>> M = estimate_similarity(np.array([[0, 0], [1, 0]]), np.array([[1, 1], [1, 3]]))
        >>> M.round(6).tolist()
        [[0.0, -2.0, 1.0], [2.0, 0.0, 1.0]]
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ConfigError(
            f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}"
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ConfigError("landmarks contain NaN or infinite values")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s < 1e-12:
        raise ConfigError("landmarks are all at one point; cannot estimate an alignment")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(
    image: np.ndarray, landmarks5: np.ndarray, size: int = 112, border: str = "constant"
) -> np.ndarray:
    """Warp a face so its 5 landmarks land on the ArcFace template (scaled to ``size``).

    Args:
        image: RGB uint8 (H, W, 3).
        landmarks5: (5, 2) left eye, right eye, nose, left mouth, right mouth in pixels.
        size: output side in pixels (112 is the ArcFace standard).
        border: "constant" (black) or "edge"/"reflect" for pixels outside the image.

    Returns:
        RGB uint8 (size, size, 3).

    Example:
        >>> img = np.zeros((200, 200, 3), np.uint8)
        >>> align_face(img, face_template(112) + 40).shape
        (112, 112, 3)
    """
    import cv2

    pts = np.asarray(landmarks5, np.float64)
    if pts.shape != (5, 2):
        raise ConfigError(f"align_face needs (5, 2) landmarks, got shape {pts.shape}")
    m = estimate_similarity(pts, face_template(size))
    modes = {
        "constant": cv2.BORDER_CONSTANT,
        "edge": cv2.BORDER_REPLICATE,
        "reflect": cv2.BORDER_REFLECT_101,
    }
    if border not in modes:
        raise ConfigError(f"border must be one of {sorted(modes)}, got {border!r}")
    out = cv2.warpAffine(
        np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
        borderMode=modes[border], borderValue=0,
    )  # fmt: skip
    return out
