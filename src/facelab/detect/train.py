"""``facelab detect-train``: fine-tune MTCNN on a boxes CSV of (masked) faces.

Why MTCNN and not a bigger CNN detector: on a shared 2-core CPU a MobileNetV2 forward pass
at the data's native ~400x300 size alone costs ~0.5 s, so a torchvision detector cannot be
trained in minutes; MTCNN's three tiny nets can. What changes (seed 001's idea of a first
stage that knows masks):

- P-Net and R-Net are fine-tuned end to end on 12x12 / 24x24 crops;
- O-Net keeps its conv trunk; its dense layers are retrained on cached trunk features, with
  its landmark output distilled from the original O-Net so landmarks stay usable;
- crops are jittered ground-truth faces (positives / part faces), random negatives, and the
  candidates the original P-Net proposes (hard negatives and positives); box regression
  learns the data set's box framing;
- the final score threshold is chosen on validation images (a split of the training
  images) for the precision target; the test split (by image hash, see
  :func:`facelab.detect.evaluate.split_images`) is never read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab.detect.evaluate import iou_matrix, read_boxes, split_rows
from facelab.errors import DataFormatError, FacelabError

log = logging.getLogger(__name__)


@dataclass
class DetectTrainConfig:
    """Settings of ``facelab detect-train`` (all saved in the checkpoint's meta).

    Attributes:
        boxes: boxes CSV (image,x1,y1,x2,y2,label) or a folder holding boxes.csv.
        out: checkpoint path to write.
        test_fraction: images held out (by name hash) for reporting; never read here.
        val_fraction: share of the remaining images used to choose thresholds.
        min_face_size: MTCNN pyramid minimum face size used for mining and saved as default.
        jitter_per_face: jittered crops per ground-truth face.
        negatives_per_image: random background crops per image.
        hard_per_image: P-Net candidates per image (labelled by IoU).
        epochs_pnet / epochs_rnet / epochs_onet: passes over each net's crops.
        lr: Adam learning rate.
        batch_size: crops per step.
        pnet_thresh / rnet_thresh: P-/R-Net thresholds saved for inference (lower finds more).
        precision_target: the threshold is the lowest whose validation precision reaches it.
        threads: torch CPU threads.
        seed: random seed.
    """

    boxes: str = ""
    out: str = "runs/detect/mtcnn-mask.pt"
    test_fraction: float = 0.25
    val_fraction: float = 0.2
    min_face_size: float = 10.0
    jitter_per_face: int = 6
    negatives_per_image: int = 24
    hard_per_image: int = 40
    epochs_pnet: int = 4
    epochs_rnet: int = 4
    epochs_onet: int = 8
    lr: float = 1e-3
    batch_size: int = 128
    precision_target: float = 0.9
    pnet_thresh: float = 0.5
    rnet_thresh: float = 0.6
    threads: int = 1
    seed: int = 0


def _square_boxes(rng, gt: np.ndarray, n: int) -> np.ndarray:
    """Jittered square boxes (inclusive pixel coords) around each ground-truth box."""
    out = []
    for x1, y1, x2, y2 in gt:
        w, h = x2 - x1 + 1, y2 - y1 + 1
        for _ in range(n):
            side = max(w, h) * rng.uniform(0.8, 1.25)
            cx = (x1 + x2) / 2 + rng.uniform(-0.15, 0.15) * w
            cy = (y1 + y2) / 2 + rng.uniform(-0.15, 0.15) * h
            out.append([cx - side / 2, cy - side / 2, cx + side / 2 - 1, cy + side / 2 - 1])
    return np.round(np.asarray(out, np.float64).reshape(-1, 4))


def _random_boxes(rng, h: int, w: int, n: int, min_side: float) -> np.ndarray:
    hi = max(min_side + 1, min(h, w) / 2)
    side = rng.uniform(min_side, hi, n)
    x1 = rng.uniform(0, np.maximum(1, w - side))
    y1 = rng.uniform(0, np.maximum(1, h - side))
    return np.round(np.stack([x1, y1, x1 + side - 1, y1 + side - 1], axis=1))


def label_boxes(boxes: np.ndarray, gt: np.ndarray):
    """MTCNN labels for candidate boxes against ground truth (both inclusive coords).

    Returns (labels, offsets): 1 face (IoU >= 0.65), -1 part face (0.4-0.65), 0 background
    (< 0.3), -2 ignored; offsets (K, 4) regress each box onto its best ground truth.

    Example:
        >>> label_boxes(np.array([[0., 0, 9, 9]]), np.array([[0., 0, 9, 9]]))[0].tolist()
        [1]
    """
    if len(gt) == 0:
        return np.zeros(len(boxes), np.int64), np.zeros((len(boxes), 4))
    ious = iou_matrix(boxes + [0, 0, 1, 1], gt + [0, 0, 1, 1])
    best = ious.argmax(1)
    top = ious.max(1)
    labels = np.full(len(boxes), -2, np.int64)
    labels[top >= 0.65] = 1
    labels[(top >= 0.4) & (top < 0.65)] = -1
    labels[top < 0.3] = 0
    wh = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], 1)
    wh = np.concatenate([wh, wh], 1)
    return labels, (gt[best] - boxes) / wh


def _mine(cfg: DetectTrainConfig, images: list[str], gts: dict, progress) -> dict:
    """Crops for the three nets from the training images."""
    import torch

    from facelab.detect.mtcnn import MTCNN
    from facelab.io import load_image

    rng = np.random.default_rng(cfg.seed)
    det = MTCNN(min_face_size=cfg.min_face_size, thresholds=(0.5, 0.7, 0.8)).prepare()
    data = {s: {"x": [], "y": [], "t": []} for s in (12, 24, 48)}
    with progress as bar:
        task = bar.add_task("mining crops", total=len(images))
        for path in images:
            bar.advance(task)
            try:
                img = load_image(path)
            except FacelabError as exc:
                log.warning("skipping %s", exc)
                continue
            h, w = img.shape[:2]
            gt = gts[path]
            tensor = det._to_tensor(img)
            with torch.inference_mode():
                cand, _ = det._stage_p([tensor])
            cand = cand[:, :4]
            if len(cand) > cfg.hard_per_image:
                cand = cand[rng.choice(len(cand), cfg.hard_per_image, replace=False)]
            boxes = np.concatenate([
                _square_boxes(rng, gt, cfg.jitter_per_face),
                _random_boxes(rng, h, w, cfg.negatives_per_image, 12),
                cand,
            ])  # fmt: skip
            labels, offs = label_boxes(boxes, gt)
            keep = labels > -2
            boxes, labels, offs = boxes[keep], labels[keep], offs[keep]
            if not len(boxes):
                continue
            groups = np.zeros(len(boxes), np.int64)
            with torch.inference_mode():
                for size in (12, 24, 48):
                    crops = det._crops([tensor], boxes, groups, size)
                    data[size]["x"].append(crops.half())
                    data[size]["y"].append(torch.from_numpy(labels))
                    data[size]["t"].append(torch.from_numpy(offs).float())
    return {s: {k: torch.cat(v) for k, v in d.items()} for s, d in data.items() if d["x"]}


def _losses(prob, reg, y, t):
    import torch

    cls = y >= 0
    ce = torch.nn.functional.nll_loss(torch.log(prob[cls].clamp_min(1e-6)), y[cls].clamp_min(0))
    box = y != 0
    mse = ((reg[box] - t[box]) ** 2).sum(1).mean() if box.any() else prob.sum() * 0
    return ce, mse


def _fit(net, forward, data, epochs: int, cfg: DetectTrainConfig, label: str, params=None):
    """Adam over (x, y, t[, extra]) tensors; ``forward(net, x) -> (prob, reg, extra_loss)``."""
    import torch

    params = [p for p in (params or net.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = len(data["y"])
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tot, steps = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = {k: v[idx] for k, v in data.items()}
            prob, reg, extra = forward(net, batch)
            ce, mse = _losses(prob, reg, batch["y"], batch["t"])
            loss = ce + 0.5 * mse + extra
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot, steps = tot + loss.item(), steps + 1
        log.info("%s epoch %d/%d loss %.4f", label, epoch + 1, epochs, tot / max(steps, 1))
    net.eval()


def _train_pnet_rnet(nets, data) -> None:
    """Fine-tune P-Net (12x12 crops) and R-Net (24x24) end to end."""
    import torch

    pnet, rnet, cfg = nets["pnet"], nets["rnet"], nets["cfg"]

    cl = torch.channels_last  # much faster max-pooling on CPU

    def fwd_p(net, b):
        reg, prob = net(b["x"].float().contiguous(memory_format=cl))
        return prob[:, :, 0, 0], reg[:, :, 0, 0], 0.0

    def fwd_r(net, b):
        reg, prob = net(b["x"].float().contiguous(memory_format=cl))
        return prob, reg, 0.0

    _fit(pnet, fwd_p, data[12], cfg.epochs_pnet, cfg, "pnet")
    _fit(rnet, fwd_r, data[24], cfg.epochs_rnet, cfg, "rnet")


def _train_onet(onet, data, cfg: DetectTrainConfig) -> None:
    """Retrain O-Net's dense layers on cached trunk features; distil its landmarks."""
    import torch

    trunk = torch.nn.Sequential(*list(onet.features.children())[:-3])  # up to flatten
    head = torch.nn.Sequential(onet.features.conv5, onet.features.drop5, onet.features.prelu5)
    feats, marks = [], []
    with torch.inference_mode():
        for i in range(0, len(data["y"]), 512):
            f = trunk(data["x"][i : i + 512].float().contiguous(memory_format=torch.channels_last))
            feats.append(f)
            marks.append(onet.conv6_3(head.eval()(f)))
    cached = {"x": torch.cat(feats).clone(), "y": data["y"], "t": data["t"],
              "m": torch.cat(marks).clone()}  # fmt: skip

    def fwd(_net, b):
        z = head(b["x"])
        prob = torch.softmax(onet.conv6_1(z), 1)
        face = b["y"] != 0
        lm = onet.conv6_3(z)
        extra = ((lm[face] - b["m"][face]) ** 2).sum(1).mean() if face.any() else 0.0
        return prob, onet.conv6_2(z), extra

    params = [*head.parameters(), *onet.conv6_1.parameters(), *onet.conv6_2.parameters(),
              *onet.conv6_3.parameters()]  # fmt: skip
    _fit(head, fwd, cached, cfg.epochs_onet, cfg, "onet", params=params)
    onet.eval()


def choose_threshold(scores: np.ndarray, hits: np.ndarray, n_gt: int, target: float):
    """Lowest score threshold whose precision reaches ``target`` (max recall), else the best
    precision. Returns (threshold, precision, recall).

    Example:
        >>> choose_threshold(np.array([0.9, 0.8, 0.7]), np.array([1, 1, 0]), 2, 0.9)
        (0.8, 1.0, 1.0)
    """
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order].astype(float)
    tp = np.cumsum(h)
    prec = tp / np.arange(1, len(h) + 1)
    rec = tp / max(n_gt, 1)
    ok = np.nonzero(prec >= target)[0]
    i = int(ok[-1]) if len(ok) else int(np.argmax(prec)) if len(prec) else -1
    if i < 0:
        return 0.8, float("nan"), 0.0
    return float(s[i]), float(prec[i]), float(rec[i])


SIZE_EDGES = (0.0, 16.0, 32.0)


def size_threshold(rules: list, width: float) -> float:
    """The score threshold for a face of ``width`` px from [[min_width, threshold], ...].

    Example:
        >>> size_threshold([[0, 0.99], [32, 0.9]], 40.0)
        0.9
    """
    thr = rules[0][1]
    for lo, t in rules:
        if width >= lo:
            thr = t
    return float(thr)


def _validate(det, boxes_df, val_paths: list[str], cfg: DetectTrainConfig) -> dict:
    """Choose O-Net score thresholds on validation images, one per face-width bucket
    (0-16, 16-32, >=32 px): in each bucket the lowest threshold whose precision reaches
    the target, so small faces (where false alarms concentrate) do not force a high
    threshold on large ones. Matching is greedy at IoU 0.5 over all ground truth.
    """
    from facelab.detect.evaluate import match
    from facelab.io import load_image

    det.cfg.thresholds = (cfg.pnet_thresh, cfg.rnet_thresh, 0.3)
    df = boxes_df[boxes_df["path"].isin(val_paths)]
    scores, hits, widths = [], [], []
    for path, g in df.groupby("path", sort=True):
        faces = det.detect(load_image(path))
        gt = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
        sc = np.array([f.score for f in faces])
        _, det_hit = match(gt, np.array([f.box for f in faces], float).reshape(-1, 4), sc)
        scores.append(sc)
        hits.append(det_hit)
        widths.append(np.array([f.width for f in faces]))
    s, h, w = np.concatenate(scores), np.concatenate(hits), np.concatenate(widths)
    gt_w = (df["x2"] - df["x1"]).to_numpy(float)
    rules, report = [], {}
    for lo, hi in zip(SIZE_EDGES, [*SIZE_EDGES[1:], np.inf]):
        m = (w >= lo) & (w < hi)
        n_gt = int(((gt_w >= lo) & (gt_w < hi)).sum())
        thr, prec, rec = choose_threshold(s[m], h[m], n_gt, cfg.precision_target)
        rules.append([lo, thr])
        report[f"{lo:g}-{hi:g}px"] = {"threshold": thr, "precision": prec}
    keep = np.array([sc >= size_threshold(rules, wd) for sc, wd in zip(s, w)], bool)
    tp = int(h[keep].sum())
    return {
        "score_thresh": min(t for _, t in rules),
        "size_thresholds": rules,
        "val_precision": tp / max(int(keep.sum()), 1),
        "val_recall": tp / max(len(df), 1),
        "val_buckets": report,
        "val_images": len(val_paths),
        "val_faces": int(len(df)),
    }


def train_detector(cfg: DetectTrainConfig, progress=None) -> dict:
    """Fine-tune MTCNN on ``cfg.boxes`` and save a checkpoint; returns its meta.

    Example:
        >>> meta = train_detector(DetectTrainConfig(boxes="face-mask-detection"))  # doctest: +SKIP
    """
    import torch

    from facelab.detect.evaluate import _progress
    from facelab.detect.mtcnn import _nets, load_pretrained_states

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        df = read_boxes(cfg.boxes)
        fit_df = split_rows(df, "fit", cfg.test_fraction, cfg.val_fraction)
        val_df = split_rows(df, "val", cfg.test_fraction, cfg.val_fraction)
        val_paths = sorted(val_df["path"].unique())
        if fit_df.empty or not val_paths:
            raise DataFormatError(f"{cfg.boxes}: too few images to split into train/validation")
        gts = {p: g[["x1", "y1", "x2", "y2"]].to_numpy(float) - [0, 0, 1, 1]
               for p, g in fit_df.groupby("path")}  # fmt: skip
        data = _mine(cfg, sorted(gts), gts, progress or _progress(True, "mine"))
        counts = {int(k): int((data[24]["y"] == k).sum()) for k in (1, -1, 0)}
        log.info("crops: %d faces, %d part faces, %d background", counts[1], counts[-1], counts[0])
        pnet, rnet, onet = _nets()
        pretrained = load_pretrained_states()
        for net, key in ((pnet, "pnet"), (rnet, "rnet"), (onet, "onet")):
            net.load_state_dict(pretrained[key])
        _train_pnet_rnet({"pnet": pnet, "rnet": rnet, "cfg": cfg}, data)
        _train_onet(onet, data[48], cfg)
        states = {"pnet": pnet.state_dict(), "rnet": rnet.state_dict(), "onet": onet.state_dict()}
        from facelab.detect.mtcnn import MTCNN

        det = MTCNN(name="mtcnn-mask", min_face_size=cfg.min_face_size)
        det._state_dicts = lambda: states
        meta = _validate(det, df, val_paths, cfg)
        meta.update(
            arch="mtcnn", min_face_size=cfg.min_face_size, thresholds=[cfg.pnet_thresh, cfg.rnet_thresh, meta["score_thresh"]],
            train_images=int(fit_df["image"].nunique()), train_faces=len(fit_df),
            crops=counts, split="image-hash", test_fraction=cfg.test_fraction,
            config=asdict(cfg), train_seconds=round(time.perf_counter() - t0, 1),
        )  # fmt: skip
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"states": states, "meta": meta}, out)
        return meta
    finally:
        torch.set_num_threads(old_threads)
