"""The exact oracle of the shapes-fine world: objects with their patterns, and the dots (docs/world.md).

It shares the shapes world's pixel model (:mod:`dicecfg.world.oracle`: noise-gated smoothing, background by
border vote, each pixel explained as ``bg + alpha (colour - bg)``) and adds, all vectorised over objects:
1. Objects: per palette colour, isolated pixels are dropped and the mask is closed (two 3x3 dilations, two
   erosions: stripes 2 px apart become one blob), cut into 4-connected components of at least ``MIN_AREA``
   px, and each component is filled row-wise and column-wise (every shape of the world is convex along rows
   and columns, so this fills a hollow outline exactly). Blobs that touch are one object (a ghost of
   anti-aliased edges read as a neighbouring colour), of the colour that fits its pixels best.
2. Pattern, from the object's own coverage ``alpha`` inside its filled mask: the mean coverage of the core
   (the mask less a 2 px rim) parts solid (~1) from the rest; the mean absolute coverage step between
   vertical and between horizontal neighbours in the mask less a 1 px rim shows stripes and their direction
   (horizontal stripes change along y only); what is neither is hollow.
3. Size, position and shape on a shape mask (for stripes, coverage averaged over one stripe period across
   them); shape by the nearest of per-(shape, size, pattern) prototypes of the shapes world's five geometric
   features, measured on clean and blurred renders (:func:`prototypes`).
4. Dots: blobs of the background's contrast colour (black on white, white on black or gray; grey-axis pixels
   only, so no palette colour passes) of ``DOT_AREA`` px at ``DOT_COVERAGE``, at least 2 px clear of every
   object.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..oracle import (
    TOLERANCE,
    colour_features,
    components,
    dilate,
    erode,
    label_planes,
    line_fit,
    match,
    pixel_planes,
    prepare,
    shift,
    to_uint8_hwc,
)
from ..scenes import BACKGROUND_RGB, BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES, SIZES
from .captions import FineSpec
from .scenes import DOT_RGB, MAX_DOTS, PATTERNS

MIN_AREA = 30  # pixels (closed mask) for a blob to count as an object
LARGE_EXTENT = 21.0  # bounding-box side (px) that separates small (16 px) from large (26 px)
OVERLAP = 0.3  # share of an object's filled mask on a bigger one's (grown by 1 px) that makes it a ghost
DOT_COVERAGE = 0.35  # least contrast-colour coverage of a dot pixel (blur 1 and smoothing leave a dot ~0.5)
DOT_AREA = (4, 30)  # pixel area range of a dot at that coverage; a clean dot covers 8-14
DOT_TOLERANCE = 40.0  # RGB distance off the background-to-dot-colour line (grey axis) a dot pixel may have
SOLID_CORE = 0.8  # mean core coverage above which an object is solid (solid: >= 0.93, hollow: <= 0.72)
STRIPE_STEP = 0.09  # least excess of the mean coverage step across stripes over that along them
STRIPE_FILL = 0.2  # core coverage above which lopsided steps mean stripes (stripes: ~0.45, hollow: ~0.05)
STRIPE_RATIO = 0.6  # share of the steps one way above which they mean stripes whatever the core
_OBJ_RGB = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)
_BG_RGB = np.array([BACKGROUND_RGB[b] for b in BACKGROUNDS], dtype=np.float32)
_DOT_RGB = np.array([DOT_RGB[b] for b in BACKGROUNDS], dtype=np.float32)
_CHUNK = 128  # images processed at once (bounds memory)
WINDOW_MARGIN = 6  # px kept around an object's filled mask when measuring it (the filters reach 5)
PROTOTYPE_BLURS = (0.0, 0.7, 1.0)  # shape prototypes are measured on renders this blurred (sigma, px)
_SCALES = np.array([0.06, 0.03, 0.05, 0.15, 0.1])  # typical spread of each feature under mild blur/noise
N_FEATURES = 109 + len(SHAPES) + 2 + len(PATTERNS) + MAX_DOTS + 2 + 1


@dataclass(frozen=True)
class FineDetection:
    """One object found in an image; ``x``, ``y`` is the centroid of its filled mask in [0, 1]."""

    shape: str
    colour: str
    size: str
    pattern: str
    x: float
    y: float
    area: int


def _despeckle(m: np.ndarray) -> np.ndarray:
    """(K,H,W) masks less their isolated pixels (no 8-neighbour in the mask): a stray anti-aliased pixel (a
    dot's rim can read as green on white) must not be closed onto an object 4 px away."""
    rows = shift(m, 1, 0) | shift(m, -1, 0)
    around = rows | shift(m | rows, 0, 1) | shift(m | rows, 0, -1)
    return m & around


def _close(m: np.ndarray) -> np.ndarray:
    """Closing of (K,H,W) masks by a 5x5 square (bridges gaps up to 4 px), outside the image as background."""
    p = np.pad(m, ((0, 0), (2, 2), (2, 2)))
    return erode(erode(dilate(dilate(p))))[:, 2:-2, 2:-2]


def _fill(m: np.ndarray) -> np.ndarray:
    """Fill (K,H,W) masks between their first and last pixel of every row and of every column, and keep
    what both fills cover (exact for shapes convex along rows and columns)."""
    acc = np.logical_or.accumulate
    rows = acc(m, axis=2) & acc(m[:, :, ::-1], axis=2)[:, :, ::-1]
    cols = acc(m, axis=1) & acc(m[:, ::-1], axis=1)[:, ::-1]
    return rows & cols


def _diagonal_gaps(m: np.ndarray) -> np.ndarray:
    """Pixels missing inside the span of each diagonal and anti-diagonal of (K,H,W) masks, summed."""
    k, h, w = m.shape
    ys, xs = np.mgrid[0:h, 0:w]
    total = np.zeros(k)
    for diag in (xs + ys, xs - ys + h - 1):
        sheared = np.zeros((k, h + w - 1, w), dtype=bool)
        sheared[:, diag, xs] = m
        n = sheared.sum(-1)
        lo = sheared.argmax(-1)
        hi = w - 1 - sheared[:, :, ::-1].argmax(-1)
        total += np.where(n > 0, hi - lo + 1 - n, 0).sum(-1)
    return total


def shape_features(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (K,H,W) mask: the five shape features (K,5) (as :mod:`dicecfg.world.oracle` measures them), the
    bounding-box extent (K,) and the centroid (K,2) in pixels (x, y)."""
    k, h, w = m.shape
    mf = m.astype(np.float64)
    area = np.maximum(mf.sum((1, 2)), 1.0)
    rows, cols = m.any(2), m.any(1)
    y0, y1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    box = (x1 - x0 + 1) * (y1 - y0 + 1)
    gx = np.arange(w, dtype=np.float64)[None, None, :]
    gy = np.arange(h, dtype=np.float64)[None, :, None]
    mx = (mf * gx).sum((1, 2)) / area
    my = (mf * gy).sum((1, 2)) / area
    dx = gx - mx[:, None, None]
    dy = gy - my[:, None, None]
    xx, yy = (mf * dx * dx).sum((1, 2)) / area, (mf * dy * dy).sum((1, 2)) / area
    x4, y4 = (mf * dx**4).sum((1, 2)) / area, (mf * dy**4).sum((1, 2)) / area
    xy2 = (mf * dx * dx * dy * dy).sum((1, 2)) / area
    y3 = (mf * dy**3).sum((1, 2)) / area
    var = np.maximum(xx + yy, 1e-6)
    feats = np.stack(
        [
            area / box,
            area / (2 * np.pi * var),
            _diagonal_gaps(m) / area,
            np.log((x4 + y4) / np.maximum(2 * xy2, 1e-6)),
            y3 / np.maximum(yy, 1e-6) ** 1.5,
        ],
        axis=1,
    )
    extent = np.maximum(x1 - x0, y1 - y0) + 1
    return feats, extent, np.stack([mx, my], axis=1)


def pattern_features(alpha: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """(K,3) per object: mean coverage of its core (the filled mask less a 2 px rim; less a 1 px rim where
    that leaves nothing), mean absolute coverage step between vertical and between horizontal neighbours
    inside the mask less a 1 px rim."""
    core1 = erode(filled)
    core2 = erode(core1)
    core = np.where(core2.any((1, 2))[:, None, None], core2, core1)
    fill = (alpha * core).sum((1, 2)) / np.maximum(core.sum((1, 2)), 1)
    py = core1[:, 1:] & core1[:, :-1]
    px = core1[:, :, 1:] & core1[:, :, :-1]
    step_y = (np.abs(np.diff(alpha, axis=1)) * py).sum((1, 2)) / np.maximum(py.sum((1, 2)), 1)
    step_x = (np.abs(np.diff(alpha, axis=2)) * px).sum((1, 2)) / np.maximum(px.sum((1, 2)), 1)
    return np.stack([fill, step_y, step_x], axis=1)


def classify_pattern(pf: np.ndarray) -> np.ndarray:
    """Pattern indices (into ``PATTERNS``) from :func:`pattern_features`: solid if the core is mostly covered;
    else stripes if coverage steps one way clearly more than the other, and the core is partly covered or the
    steps are nearly all one way (the slanted sides of a small hollow triangle, 4.5 px thick vertically, make
    its steps lopsided, but its core is empty); else hollow."""
    fill, step_y, step_x = pf.T
    d = step_y - step_x
    lopsided = np.abs(d) / np.maximum(step_y + step_x, 1e-6)
    striped = (np.abs(d) > STRIPE_STEP) & ((fill > STRIPE_FILL) | (lopsided > STRIPE_RATIO))
    return np.select(
        [fill > SOLID_CORE, striped & (d > 0), striped],
        [PATTERNS.index("solid"), PATTERNS.index("horizontal stripes"), PATTERNS.index("vertical stripes")],
        PATTERNS.index("hollow"),
    )


def classify_shape(feats: np.ndarray, large: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Shape indices (into ``SHAPES``): the nearest of the prototypes of the object's size and pattern (stripes
    are tied to the object's centre, so each (shape, size, pattern) looks the same up to a sub-pixel shift)
    measured at each of ``PROTOTYPE_BLURS`` (blur fattens a small cross's arms towards a diamond)."""
    protos = prototypes()[:, :, large.astype(np.int64), pattern]  # (blurs, shapes, K, 5)
    d = (((feats[None, None] - protos) / _SCALES) ** 2).sum(-1).min(0)
    return d.argmin(0)


def _filter(a: np.ndarray, axis: int, weights: Sequence[float]) -> np.ndarray:
    """(K,H,W) ``a`` filtered along ``axis`` by centred ``weights`` (odd length), zero-padded."""
    h = len(weights) // 2
    p = np.pad(a, [(0, 0)] + [(h, h) if ax == axis else (0, 0) for ax in (1, 2)])
    n = a.shape[axis]
    return sum(wt * np.take(p, range(j, j + n), axis=axis) for j, wt in enumerate(weights))


PERIOD_MEAN = (0.125, 0.25, 0.25, 0.25, 0.125)  # mean over one stripe period: 1/2 on stripes of any phase
BINOMIAL = (0.25, 0.5, 0.25)


def shape_mask(alpha: np.ndarray, filled: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """The mask to measure each object's size, position and shape on: the filled mask, except that a striped
    object's coverage is averaged over a stripe period across its stripes (and smoothed a little along them,
    against noise) and cut at a quarter (half of the striped region's 1/2), so that its outline follows the
    shape rather than the stripes' ends."""
    out = filled.copy()
    near = dilate(dilate(dilate(filled)))
    for across, name in ((1, "horizontal stripes"), (2, "vertical stripes")):
        m = pattern == PATTERNS.index(name)
        if m.any():
            a = _filter(_filter(alpha[m], across, PERIOD_MEAN), 3 - across, BINOMIAL)
            out[m] = _fill((a >= 0.25) & near[m])
    return out


@dataclass(frozen=True)
class _Found:
    """What one chunk of images holds: per object its image, attributes and measurements; per image the
    number of dots, the background and the palette label map."""

    image: np.ndarray  # (J,) image index of each object
    colour: np.ndarray  # (J,) index into COLOURS
    shape: np.ndarray  # (J,) index into SHAPES
    pattern: np.ndarray  # (J,) index into PATTERNS
    extent: np.ndarray  # (J,) bounding-box side, pixels
    centre: np.ndarray  # (J,2) centroid (x, y), pixels
    area: np.ndarray  # (J,) pixels of the shape mask
    dots: np.ndarray  # (N,) dots found per image
    bg: np.ndarray  # (N,) index into BACKGROUNDS
    lab: np.ndarray  # (N,H,W) palette label map


def _objects(q: np.ndarray, qq: np.ndarray, bg: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, ...]:
    """Objects of prepared images (step 1; ``q``, ``qq`` from :func:`~dicecfg.world.oracle.pixel_planes`):
    each one's image, colour and filled mask (J,H,W), and in a square window around it (J,S,S) its filled
    mask and its coverage by its colour, with the windows' corners (J,2) (x, y)."""
    n, h, w = lab.shape
    raw = lab[:, None] == np.arange(len(COLOURS))[None, :, None, None]  # (N,C,H,W)
    pairs = np.argwhere(raw.sum((2, 3)) >= MIN_AREA // 3)
    labels = components(_close(_despeckle(raw[pairs[:, 0], pairs[:, 1]])))
    key = (np.arange(len(pairs))[:, None, None] * (h * w) + labels)[labels >= 0]
    ids, counts = np.unique(key, return_counts=True)
    ids = ids[counts >= MIN_AREA]
    k, cid = ids // (h * w), ids % (h * w)
    filled = _fill(labels[k] == cid[:, None, None])
    image, colour = pairs[k, 0], pairs[k, 1]
    # The anti-aliased edges of stripes and outlines can read as a neighbouring palette colour (orange a
    # little under half over white is nearer yellow, yellow half over black orange) and close into a ghost
    # object on or just around the real one. Objects never come within 4 px of each other, so two that touch
    # are one: it takes the union of their masks and, of their two colours, the one whose line explains the
    # union's coloured pixels with the smaller mean residual (under strong blur most of a striped object's
    # pixels are partial, and the ghost can hold more of them).
    raw_area = (raw[image, colour] & filled).sum((1, 2))
    i, j = np.nonzero((image[:, None] == image[None, :]) & (raw_area[:, None] < raw_area[None, :]))
    on = (filled[i] & dilate(filled[j])).sum((1, 2)) > OVERLAP * filled[i].sum((1, 2))
    i, j = i[on], j[on]
    union = filled[i] | filled[j]
    coloured = union & (lab[image[i]] >= 0)
    fit = [
        (
            line_fit(q[:, image[i]], qq[image[i]], _OBJ_RGB[colour[m]] - _BG_RGB[bg[image[i]]])[1] * coloured
        ).sum((1, 2))
        for m in (i, j)
    ]
    colour = colour.copy()
    colour[j] = np.where(fit[0] < fit[1], colour[i], colour[j])
    np.logical_or.at(filled, j, union)
    filled[j] = _fill(filled[j])
    keep = np.ones(len(k), dtype=bool)
    keep[i] = False
    filled, image, colour = filled[keep], image[keep], colour[keep]
    # From here on each object is measured in a square window around it (a margin of WINDOW_MARGIN px).
    rows, cols = filled.any(2), filled.any(1)
    y0, y1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    side = int(min(max(np.max(np.maximum(y1 - y0, x1 - x0), initial=0) + 1 + 2 * WINDOW_MARGIN, 32), h, w))
    origin = np.stack(
        [np.clip((x0 + x1 + 1 - side) // 2, 0, w - side), np.clip((y0 + y1 + 1 - side) // 2, 0, h - side)], 1
    )  # (J,2) x, y of each window's corner
    yy = (origin[:, 1, None] + np.arange(side))[:, :, None]
    xx = (origin[:, 0, None] + np.arange(side))[:, None, :]
    window = filled[np.arange(len(image))[:, None, None], yy, xx]
    ii = image[:, None, None]
    alpha, resid2 = line_fit(q[:, ii, yy, xx], qq[ii, yy, xx], _OBJ_RGB[colour] - _BG_RGB[bg[image]])
    alpha[resid2 > TOLERANCE**2] = 0.0  # off the colour's line: not this object (a black dot reads blue)
    return image, colour, filled, window, alpha, origin


def _dots(q: np.ndarray, qq: np.ndarray, bg: np.ndarray, image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Dots per prepared image (step 4): contrast-colour blobs of a dot's area away from every object."""
    n, h, w = qq.shape
    occupied = np.zeros((n, h, w), dtype=bool)
    np.logical_or.at(occupied, image, filled)
    alpha, resid2 = line_fit(q, qq, _DOT_RGB[bg] - _BG_RGB[bg])
    dmask = (alpha >= DOT_COVERAGE) & (resid2 <= DOT_TOLERANCE**2) & ~dilate(dilate(occupied))
    dlab = components(dmask)
    dkey = (np.arange(n)[:, None, None] * (h * w) + dlab)[dlab >= 0]
    dids, dcounts = np.unique(dkey, return_counts=True)
    ok = (dcounts >= DOT_AREA[0]) & (dcounts <= DOT_AREA[1])
    return np.bincount(dids[ok] // (h * w), minlength=n)


def _find(x: np.ndarray) -> _Found:
    """Objects and dots in uint8 (N,H,W,3) images (steps 1-4 of the module docstring)."""
    xf, bg = prepare(x)
    q, qq = pixel_planes(xf, bg)
    lab = label_planes(q, qq, bg)
    image, colour, filled, window, alpha, origin = _objects(q, qq, bg, lab)
    pattern = classify_pattern(pattern_features(alpha, window))
    mask = shape_mask(alpha, window, pattern)
    feats, extent, centre = shape_features(mask)
    shape = classify_shape(feats, extent >= LARGE_EXTENT, pattern)
    dots = _dots(q, qq, bg, image, filled)
    return _Found(image, colour, shape, pattern, extent, centre + origin, mask.sum((1, 2)), dots, bg, lab)


@functools.cache
def prototypes() -> np.ndarray:
    """(blurs, shapes, sizes, patterns, 5) shape prototypes: :func:`measure_prototypes` at each of
    ``PROTOTYPE_BLURS`` (computed once per process, about a second; deterministic)."""
    return np.stack([measure_prototypes(blur=b) for b in PROTOTYPE_BLURS])


def measure_prototypes(offsets: int = 3, blur: float = 0.0) -> np.ndarray:
    """(shapes, sizes, patterns, 5) mean shape features of renders, red on white, blurred by ``blur`` px, each
    (shape, size, pattern) centred at ``offsets`` x ``offsets`` sub-pixel positions, measured with the true
    pattern."""
    from ..render import degrade
    from .render import render
    from .scenes import FineObj, FineScene

    sub = (np.arange(offsets) + 0.5) / offsets
    classes = list(itertools.product(range(len(SHAPES)), range(len(SIZES)), range(len(PATTERNS))))
    scenes = [
        FineScene(
            (FineObj(SHAPES[s], "red", SIZES[z], PATTERNS[p], (32 + u) / 64, (32 + v) / 64),),
            "white",
            None,
            (),
        )
        for s, z, p in classes
        for u in sub
        for v in sub
    ]
    images = render(scenes)
    xf, bg = prepare(degrade(images, blur=blur) if blur else images)
    q, qq = pixel_planes(xf, bg)
    image, _, _, window, alpha, _ = _objects(q, qq, bg, label_planes(q, qq, bg))
    if not np.array_equal(image, np.arange(len(scenes))):
        raise RuntimeError("a prototype render did not read as exactly one object")
    pattern = np.repeat([p for _, _, p in classes], offsets * offsets)
    feats = shape_features(shape_mask(alpha, window, pattern))[0]
    return feats.reshape(len(SHAPES), len(SIZES), len(PATTERNS), offsets * offsets, 5).mean(3)


def _detections(f: _Found) -> list[list[FineDetection]]:
    n, h, w = f.lab.shape
    found: list[list[FineDetection]] = [[] for _ in range(n)]
    for j in range(len(f.image)):
        found[f.image[j]].append(
            FineDetection(
                SHAPES[f.shape[j]],
                COLOURS[f.colour[j]],
                "large" if f.extent[j] >= LARGE_EXTENT else "small",
                PATTERNS[f.pattern[j]],
                (f.centre[j, 0] + 0.5) / w,
                (f.centre[j, 1] + 0.5) / h,
                int(f.area[j]),
            )
        )
    return found


def _counts(n: int, image: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """(n, k) per-image histogram of per-object ``values`` in [0, k)."""
    c = np.zeros((n, k))
    np.add.at(c, (image, values), 1.0)
    return c


class FineOracle:
    """Scores images of the shapes-fine world against :class:`FineSpec`s, and gives deterministic features
    for a Frechet distance."""

    world = "shapes-fine"  # the world whose specs it scores (dicecfg.world.worlds)
    keys = ("count", "shape", "colour", "size", "pattern", "dots", "relation", "background", "all")

    def detect(self, images) -> tuple[list[list[FineDetection]], list[int], list[str]]:
        """Objects found in each image, each image's number of dots and its background colour."""
        x = to_uint8_hwc(images)
        dets: list[list[FineDetection]] = []
        dots: list[int] = []
        bgs: list[str] = []
        for s in range(0, len(x), _CHUNK):
            f = _find(x[s : s + _CHUNK])
            dets += _detections(f)
            dots += [int(d) for d in f.dots]
            bgs += [BACKGROUNDS[b] for b in f.bg]
        return dets, dots, bgs

    def score(self, images, specs: Sequence[FineSpec]) -> dict[str, np.ndarray]:
        """Per-image 0/1 floats for each of :attr:`keys`; open attributes (``None``) count as correct."""
        dets, dots, bgs = self.detect(images)
        if len(specs) != len(dets):
            raise ValueError(f"got {len(dets)} images but {len(specs)} specs")
        rows = []
        for spec, d, nd, b in zip(specs, dets, dots, bgs, strict=True):
            r = match(spec, d, b, keys=("shape", "colour", "size", "pattern"))
            r["dots"] = spec.dots is None or spec.dots == nd
            r["all"] = r["all"] and r["dots"]
            rows.append(r)
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in self.keys}

    def features(self, images) -> np.ndarray:
        """(N, N_FEATURES) features: those of the shapes world's colour statistics (per palette colour area,
        centroid, second moments; background one-hot; 4x4x4 colour histogram: 109), counts of detected shapes
        (5), sizes (2) and patterns (4), the dot count one-hot (0-4 and more: 6), and the share of pixels in
        the dot colour (1)."""
        x = to_uint8_hwc(images)
        out = []
        for s in range(0, len(x), _CHUNK):
            xc = x[s : s + _CHUNK]
            f = _find(xc)
            n = len(xc)
            large = (f.extent >= LARGE_EXTENT).astype(np.int64)

            dot_share = (xc == _DOT_RGB[f.bg][:, None, None, :].astype(np.uint8)).all(-1).mean((1, 2))
            out.append(
                np.concatenate(
                    [
                        colour_features(xc, f.lab, f.bg),
                        _counts(n, f.image, f.shape, len(SHAPES)),
                        _counts(n, f.image, large, 2),
                        _counts(n, f.image, f.pattern, len(PATTERNS)),
                        np.eye(MAX_DOTS + 2)[np.minimum(f.dots, MAX_DOTS + 1)],
                        dot_share[:, None],
                    ],
                    axis=1,
                )
            )
        return np.concatenate(out, axis=0) if out else np.zeros((0, N_FEATURES))
