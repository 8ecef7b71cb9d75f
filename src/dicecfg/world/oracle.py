"""The exact oracle: segment an image into palette-coloured objects and check a caption's spec.

Pipeline (all hand-coded, deterministic):
0. Images with strong pixel noise (estimated on the border) get a 3x3 binomial smoothing.
1. Background: majority vote of the nearest background colour over the border pixels.
2. Pixels: for each palette colour c, a pixel p is explained as ``bg + alpha (c - bg)`` (the
   renderer's blending model, which blur preserves); p belongs to the c with the smallest residual
   among those with ``alpha >= 0.5``, if that residual is below ``TOLERANCE``. This thresholds every
   colour at half coverage, so blur moves no straight edge.
3. Objects: per colour, a 3x3 opening drops specks and thin rims; connected components of at least
   ``MIN_AREA`` pixels are objects; each is regrown inside the raw mask (two dilations) for measuring.
4. Attributes: size from the bounding-box extent; shape by nearest prototype on five geometric features
   (box fill, compactness, diagonal concavity, fourth-moment ratio, vertical skew); relation from
   centroids by the dominant-axis rule of :func:`~dicecfg.world.scenes.relation_holds`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .captions import Spec
from .scenes import BACKGROUND_RGB, BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES, relation_holds

TOLERANCE = 60.0  # RGB distance (0-255 units) allowed off the object-over-background colour line
MIN_AREA = 20  # pixels (after opening) for a blob to count as an object
LARGE_EXTENT = 19.0  # bounding-box side (px) that separates small (14 px) from large (24 px)
# Shape prototypes, measured on clean renders: box fill, compactness, concavity, log 4th-moment ratio, skew.
NOISY = 14.0  # noise estimate (0-255 units) above which an image is smoothed; std 0.05 reads ~10, 0.1 ~19
_PROTOTYPES = np.array(
    [
        [0.787, 1.000, 0.000, 1.099, 0.000],  # circle
        [1.000, 0.958, 0.000, 0.583, 0.000],  # square
        [0.529, 0.821, 0.000, 1.143, -0.571],  # triangle
        [0.530, 0.958, 0.000, 1.800, 0.000],  # diamond
        [0.552, 0.822, 0.326, 2.140, 0.000],  # cross
    ]
)
_SCALES = np.array([0.06, 0.03, 0.05, 0.15, 0.1])  # typical spread of each feature under mild blur/noise
_OBJ_RGB = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)
_BG_RGB = np.array([BACKGROUND_RGB[b] for b in BACKGROUNDS], dtype=np.float32)
_CHUNK = 128  # images segmented at once (bounds memory)


@dataclass(frozen=True)
class Detection:
    """One object found in an image; ``x``, ``y`` is its centroid in [0, 1]."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    area: int


def to_uint8_hwc(images) -> np.ndarray:
    """Accept uint8 (N,H,W,3), float in [-1, 1] (N,3,H,W) or (N,H,W,3), torch or numpy, or PIL images."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        return np.stack([np.asarray(im.convert("RGB")) for im in images])
    if hasattr(images, "detach"):
        images = images.detach().cpu()
        images = images.numpy() if str(images.dtype) == "torch.uint8" else images.float().numpy()
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images with 4 dimensions, got shape {x.shape}")
    if x.dtype == np.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {x.shape}")
        return x
    if x.shape[1] == 3 and x.shape[-1] != 3:
        x = x.transpose(0, 2, 3, 1)
    return np.rint(np.clip((x.astype(np.float32) + 1.0) * 127.5, 0, 255)).astype(np.uint8)


def shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[..., y, x] = m[..., y - dy, x - dx]``, zero-filled."""
    out = np.zeros_like(m)
    h, w = m.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = m[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def dilate(m: np.ndarray) -> np.ndarray:
    rows = m | shift(m, 1, 0) | shift(m, -1, 0)
    return rows | shift(rows, 0, 1) | shift(rows, 0, -1)


def erode(m: np.ndarray) -> np.ndarray:
    return ~dilate(~m)


def _runs(order: np.ndarray, line: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of runs of consecutive flat indices ``order`` that stay on a line of ``line``."""
    new = np.ones(len(order), dtype=bool)
    new[1:] = (np.diff(order) != 1) | (order[1:] % line == 0)
    starts = np.flatnonzero(new)
    return starts, np.diff(np.append(starts, len(order)))


def components(masks: np.ndarray) -> np.ndarray:
    """Label 4-connected components of (K,H,W) masks: each pixel gets its component's largest index."""
    k, h, w = masks.shape
    pix = np.flatnonzero(masks)  # mask pixels in row-major order
    lab = np.full(masks.shape, -1, dtype=np.int32)
    if len(pix) == 0:
        return lab
    by_col = np.flatnonzero(masks.transpose(0, 2, 1))  # the same pixels, column-major
    img, rem = np.divmod(by_col, h * w)
    col_order = np.searchsorted(pix, img * (h * w) + (rem % h) * w + rem // h)  # positions in pix
    row_starts, row_len = _runs(pix, w)
    col_starts, col_len = _runs(by_col, h)
    where = np.full(k * h * w, -1, dtype=np.int64)
    where[pix] = np.arange(len(pix))
    base = (pix // (h * w)) * (h * w)
    v = (pix - base).astype(np.int64)  # each pixel's own index within its mask
    while True:
        new = np.repeat(np.maximum.reduceat(v, row_starts), row_len)  # the largest label along each row run
        c = np.repeat(np.maximum.reduceat(new[col_order], col_starts), col_len)  # ... and column run
        new[col_order] = c
        new = new[where[base + new]]  # pointer jump: the label of the pixel the label names
        if np.array_equal(new, v):
            break
        v = new
    lab.reshape(-1)[pix] = v
    return lab


def smooth(x: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 binomial filter along both image axes (edge-padded): damps pixel noise."""
    for axis in (1, 2):
        p = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(4)], mode="edge")
        n = x.shape[axis]
        x = (
            0.25 * np.take(p, range(0, n), axis)
            + 0.5 * np.take(p, range(1, n + 1), axis)
            + 0.25 * np.take(p, range(2, n + 2), axis)
        )
    return x


def noise_level(border: np.ndarray) -> np.ndarray:
    """Per-image pixel-noise std from (N,P,3) border pixels: RMS deviation from the per-channel median,
    the top 5% dropped (object pixels), times sqrt(2) for channels pinned at 0 or 255 (half clipped)."""
    med = np.median(border, axis=1, keepdims=True)
    dev2 = np.sort((border - med) ** 2, axis=1)[:, : int(0.95 * border.shape[1])].mean(1)
    dev2 = np.where((med[:, 0] <= 0) | (med[:, 0] >= 255), 2 * dev2, dev2)
    return np.sqrt(dev2.mean(-1))


def prepare(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float pixels (smoothed where the border shows strong noise) and each image's background index, for
    uint8 (N,H,W,3) images (steps 0-1 of the module docstring)."""
    x = x.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    noisy = noise_level(border) > NOISY
    if noisy.any():
        x[noisy] = smooth(x[noisy])
    nearest = ((border[:, :, None, :] - _BG_RGB) ** 2).sum(-1).argmin(-1)
    bg = np.array([np.bincount(v, minlength=len(BACKGROUNDS)).argmax() for v in nearest])
    return x, bg


def pixel_planes(x: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prepared pixels (N,H,W,3) minus their background as contiguous channel planes (3,N,H,W), and their
    squared norms (N,H,W)."""
    q = np.ascontiguousarray(x.transpose(3, 0, 1, 2)) - _BG_RGB[bg].T[:, :, None, None]
    return q, (q[0] * q[0] + q[1] * q[1]) + q[2] * q[2]


def line_fit(q: np.ndarray, qq: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``alpha`` (clipped to [0, 1]) and squared residual of pixels ``bg + q`` (planes of
    :func:`pixel_planes`, (3,N,H,W), or a list of pixels, (3,P)) explained as ``bg + alpha span``, for one
    colour-minus-background ``span`` per image (N,3) or per pixel (P,3): each (N,H,W) or (P,)."""
    s = np.moveaxis(span.astype(np.float32), -1, 0).reshape(3, len(span), *(1,) * (q.ndim - 2))
    norm2 = (s[0] * s[0] + s[1] * s[1]) + s[2] * s[2]
    dot = (q[0] * s[0] + q[1] * s[1]) + q[2] * s[2]
    alpha = np.clip(dot / norm2, 0.0, 1.0)
    return alpha, qq - 2 * alpha * dot + alpha * alpha * norm2


def label_planes(q: np.ndarray, qq: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-pixel palette colour index (-1 = background/unknown) from :func:`pixel_planes` (step 2): the
    colour with the smallest residual among those with ``alpha >= 0.5``, if below ``TOLERANCE``.

    ``alpha >= 0.5`` needs ``|q| >= |span| / 2``, so pixels nearer their background than 0.45 of the
    shortest span are background without being fitted (most of an image; the labels are the same)."""
    spans = _OBJ_RGB[None] - _BG_RGB[bg][:, None, :]  # (N,C,3)
    near = (0.45 * np.sqrt((spans * spans).sum(-1)).min(1)) ** 2  # (N,)
    img, ys, xs = np.nonzero(qq >= near[:, None, None])
    qp, qqp = q[:, img, ys, xs], qq[img, ys, xs]
    best = np.full(len(img), np.inf, dtype=np.float32)
    found = np.full(len(img), -1, dtype=np.int64)
    for c in range(len(_OBJ_RGB)):
        alpha, resid2 = line_fit(qp, qqp, spans[img, c])
        better = (alpha >= 0.5) & (resid2 < best)
        best[better] = resid2[better]
        found[better] = c
    found[best > TOLERANCE**2] = -1
    lab = np.full(qq.shape, -1, dtype=np.int64)
    lab[img, ys, xs] = found
    return lab


def label_pixels(x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-pixel palette colour index (-1 = background/unknown) of prepared pixels (step 2)."""
    return label_planes(*pixel_planes(x, bg), bg)


def segment(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel colour index (-1 = background/unknown) and background index, for uint8 (N,H,W,3)."""
    xf, bg = prepare(x)
    return label_pixels(xf, bg), bg


def _shape_features(m: np.ndarray) -> np.ndarray:
    """Box fill, compactness, diagonal concavity, log 4th-moment ratio, vertical skew of a mask."""
    ys, xs = np.nonzero(m)
    area = len(xs)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    x, y = xs - xs.mean(), ys - ys.mean()
    var = (x * x).mean() + (y * y).mean()
    gaps = 0
    for diag in (xs + ys, xs - ys + m.shape[0]):  # pixels missing inside each diagonal's span
        n = np.bincount(diag, minlength=2 * m.shape[0] + 1)
        lo = np.full(n.shape, m.shape[1])
        hi = np.full(n.shape, -1)
        np.minimum.at(lo, diag, xs)
        np.maximum.at(hi, diag, xs)
        gaps += int((hi - lo + 1 - n)[n > 0].sum())
    m4 = ((x**4).mean() + (y**4).mean()) / max(2 * (x * x * y * y).mean(), 1e-6)
    skew = (y**3).mean() / max((y * y).mean(), 1e-6) ** 1.5
    return np.array([area / box, area / (2 * np.pi * max(var, 1e-6)), gaps / area, np.log(m4), skew])


def _classify_shape(m: np.ndarray) -> str:
    d = (((_shape_features(m) - _PROTOTYPES) / _SCALES) ** 2).sum(-1)
    return SHAPES[int(d.argmin())]


def _detect(lab: np.ndarray, bg: np.ndarray) -> tuple[list[list[Detection]], list[str]]:
    """Objects from a label map of :func:`segment`."""
    n, h, w = lab.shape
    raw = lab[:, None] == np.arange(len(COLOURS))[None, :, None, None]  # (N,C,H,W)
    opened = dilate(erode(raw))
    keep = np.argwhere(opened.sum((-1, -2)) >= MIN_AREA)
    found: list[list[Detection]] = [[] for _ in range(n)]
    if len(keep):
        labels = components(opened[keep[:, 0], keep[:, 1]])
        for (i, c), comp in zip(keep, labels, strict=True):
            ids, counts = np.unique(comp[comp >= 0], return_counts=True)
            for cid in ids[counts >= MIN_AREA]:
                m = raw[i, c] & dilate(dilate(comp == cid))
                ys, xs = np.nonzero(m)
                extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
                size = "large" if extent >= LARGE_EXTENT else "small"
                found[i].append(
                    Detection(
                        _classify_shape(m),
                        COLOURS[c],
                        size,
                        (xs.mean() + 0.5) / w,
                        (ys.mean() + 0.5) / h,
                        len(xs),
                    )
                )
    return found, [BACKGROUNDS[b] for b in bg]


def match(
    spec, dets: Sequence, background: str, keys: tuple[str, ...] = ("shape", "colour", "size")
) -> dict[str, bool]:
    """Attribute checks under the assignment of detections to spec objects that satisfies the most: each of
    ``keys`` (per object), ``relation``, ``count``, ``background`` and ``all``."""
    m = len(spec.objects)
    best: dict[str, bool] | None = None
    for assign in set(itertools.permutations([*range(len(dets)), *[None] * m], m)):
        got = [dets[a] if a is not None else None for a in assign]
        res = {
            key: all(
                getattr(o, key) is None or (d is not None and getattr(d, key) == getattr(o, key))
                for o, d in zip(spec.objects, got, strict=True)
            )
            for key in keys
        }
        if spec.relation is None:
            res["relation"] = True
        else:
            a, b = got[0], got[1] if m > 1 else None
            res["relation"] = (
                a is not None and b is not None and relation_holds(spec.relation, a.x - b.x, a.y - b.y)
            )
        if best is None or (all(res.values()), sum(res.values())) > (all(best.values()), sum(best.values())):
            best = res
    assert best is not None
    best["count"] = len(dets) == m
    best["background"] = spec.background is None or spec.background == background
    best["all"] = all(best.values())
    return best


def colour_features(x: np.ndarray, lab: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(N, 109) features of uint8 images and their label map: per palette colour area, centroid and second
    moments (42), background one-hot (3), a 4x4x4 colour histogram (64)."""
    n, h, w = lab.shape
    masks = (lab[:, None] == np.arange(len(COLOURS))[None, :, None, None]).astype(np.float64)
    gy, gx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    area = masks.sum((-1, -2))
    safe = np.maximum(area, 1.0)
    mx, my = (masks * gx).sum((-1, -2)) / safe, (masks * gy).sum((-1, -2)) / safe
    dx, dy = gx - mx[..., None, None], gy - my[..., None, None]
    mom = [(masks * a).sum((-1, -2)) / safe for a in (dx * dx, dy * dy, dx * dy)]
    colour_stats = np.stack([area / (h * w), mx, my, *mom], axis=-1).reshape(n, -1)
    bins = (x.astype(np.int64) // 64).reshape(n, -1, 3) @ np.array([16, 4, 1])
    hist = np.stack([np.bincount(b, minlength=64) for b in bins]) / (h * w)
    return np.concatenate([colour_stats, np.eye(len(BACKGROUNDS))[bg], hist], axis=1)


class Oracle:
    """Scores images against specs, and gives deterministic features for a Frechet distance."""

    world = "shapes"  # the world whose specs it scores (dicecfg.world.worlds)
    keys = ("count", "shape", "colour", "size", "relation", "background", "all")

    def detect(self, images) -> tuple[list[list[Detection]], list[str]]:
        """Objects found in each image, and each image's background colour."""
        x = to_uint8_hwc(images)
        dets: list[list[Detection]] = []
        bgs: list[str] = []
        for s in range(0, len(x), _CHUNK):
            d, b = _detect(*segment(x[s : s + _CHUNK]))
            dets += d
            bgs += b
        return dets, bgs

    def score(self, images, specs: Sequence[Spec]) -> dict[str, np.ndarray]:
        """Per-image 0/1 floats for each of :attr:`keys`; open attributes count as correct."""
        dets, bgs = self.detect(images)
        if len(specs) != len(dets):
            raise ValueError(f"got {len(dets)} images but {len(specs)} specs")
        rows = [match(s, d, b) for s, d, b in zip(specs, dets, bgs, strict=True)]
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in self.keys}

    def features(self, images) -> np.ndarray:
        """(N, 116) features: per palette colour area/centroid/second moments (42), background one-hot (3),
        a 4x4x4 colour histogram (64), counts of detected shapes (5) and sizes (2)."""
        x = to_uint8_hwc(images)
        out = []
        for s in range(0, len(x), _CHUNK):
            xc = x[s : s + _CHUNK]
            lab, bg = segment(xc)
            base = colour_features(xc, lab, bg)
            dets, _ = _detect(lab, bg)
            counts = np.array(
                [
                    [sum(d.shape == k for d in ds) for k in SHAPES]
                    + [sum(d.size == k for d in ds) for k in ("small", "large")]
                    for ds in dets
                ]
            )
            out.append(np.concatenate([base, counts], axis=1))
        return np.concatenate(out, axis=0) if out else np.zeros((0, 116))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, the trace term from eigenvalues of
    ``S_a^(1/2) S_b S_a^(1/2)`` (symmetric, so numpy's ``eigh`` suffices)."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(mid, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
